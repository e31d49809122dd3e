"""``spikernel run``: the main job on the embedded dataset (search, select, train, evaluate)."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console

from ..pipeline import JobSettings, run_job
from . import main
from .options import BITS, CELL, KERNELS, PRESET

_D = JobSettings()


@main.command()
@click.option("--dataset", default=_D.dataset, show_default=True, help="fashion-mnist-mini (embedded) or fashion-mnist.")
@click.option("--data-dir", type=click.Path(), help="Directory with the dataset's files.")
@click.option("--kernels", "-k", type=KERNELS, default=_D.kernels, show_default=True)
@click.option("--cell", type=CELL, default=_D.cell, show_default=True)
@click.option("--candidates", "-n", type=click.IntRange(min=1), default=_D.candidates, show_default=True)
@click.option("--preset", "-p", type=PRESET, default=_D.preset, show_default=True)
@click.option("--width", type=click.IntRange(min=1), help="Override the cell width C.")
@click.option("--timesteps", "-T", type=click.IntRange(min=1), help="Override the timesteps T.")
@click.option("--budget", default=_D.budget, show_default=True, help="Parameters (300K, 10M) or bytes (800KB, 8MB); 'none' for no limit.")
@click.option("--bits", type=BITS, default=str(_D.bits), show_default=True, help="Bits per weight for byte budgets.")
@click.option("--score-batch", type=click.IntRange(min=2), default=_D.score_batch, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=_D.repeats, show_default=True)
@click.option("--epochs", "-e", type=click.IntRange(min=1), default=_D.epochs, show_default=True)
@click.option("--batch", "batch_size", type=click.IntRange(min=1), default=_D.batch_size, show_default=True)
@click.option("--lr", type=float, default=_D.lr, show_default=True)
@click.option("--seed", type=int, default=_D.seed, show_default=True)
@click.option("--limit-train", type=click.IntRange(min=1), help="Train on the first N images only (smoke runs).")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), help="Run folder [runs/run-TIME].")
def run(out, kernels, bits, budget, **options):
    """Search a kernel set, pick the best cell under the budget, train it, evaluate, save."""
    settings = JobSettings(kernels=kernels.name, bits=int(bits),
                           budget=None if budget.lower() == "none" else budget, **options)
    out = out or Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
    run_job(settings, out, Console())
