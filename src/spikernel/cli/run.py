"""``spikernel run``: the four steps end to end on the embedded dataset (explore, search, train, select)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from spikernel.selection.pipeline import RUN_DEFAULTS, run_job
from . import main
from .explore import explore_options, settings_from


@main.command()
@explore_options(RUN_DEFAULTS)
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path),
              help="Run folder [runs/run-TIME]; give an existing one to resume it.")
def run(out, **options):
    """Explore three kernel sets, search each, train the best, pick the best under the budget, report."""
    settings, data_dir = settings_from(options)
    run_job(settings, out or Path("runs") / time.strftime("run-%Y%m%d-%H%M%S"), data_dir)
