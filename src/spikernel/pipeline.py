"""The main job end to end: search a kernel set, select under a budget, train, evaluate, save."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .data import load_dataset
from .memory import Budget, footprint
from .model import build_model, get_preset
from .score import scoring_batches
from .search import best, candidate_summary, pareto_front, random_search
from .space import KernelSet
from .storage import save_weights, write_json
from .train import TrainConfig, fit


@dataclass(frozen=True)
class JobSettings:
    dataset: str = "fashion-mnist-mini"
    data_dir: str | None = None
    kernels: str = "1x1_3x3_5x5"
    cell: str = "backward"
    candidates: int = 40
    preset: str = "fmnist-small"
    width: int | None = None
    timesteps: int | None = None
    budget: str | None = "300K"
    bits: int = 32
    score_batch: int = 64
    repeats: int = 2
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.1
    seed: int = 0
    limit_train: int | None = None


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )


def run_job(settings: JobSettings, out: Path, console: Console) -> dict:
    started = time.perf_counter()
    kernel_set = KernelSet.parse(settings.kernels)
    budget = Budget.parse(settings.budget, settings.bits) if settings.budget else None
    dataset = load_dataset(settings.dataset, settings.data_dir)
    macro = get_preset(settings.preset, width=settings.width, timesteps=settings.timesteps,
                       in_channels=dataset.in_channels, image_size=dataset.image_size,
                       num_classes=dataset.num_classes)
    torch.manual_seed(settings.seed)
    batches = [dataset.normalize(b) for b in
               scoring_batches(dataset.train.images, settings.score_batch, settings.repeats, settings.seed)]

    with progress_bar(console) as progress:
        task = progress.add_task("search", total=settings.candidates, info="")
        top = [None]

        def on_candidate(c):
            if c.score is not None and (top[0] is None or c.score > top[0]):
                top[0] = c.score
            progress.update(task, advance=1, info=f"best {top[0]:.2f}" if top[0] is not None else "")

        search_started = time.perf_counter()
        candidates = random_search(kernel_set, settings.cell, settings.candidates, macro, batches, budget,
                                   settings.seed, on_candidate)
        search_seconds = time.perf_counter() - search_started
    chosen = best(candidates)

    config = TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                         seed=settings.seed, limit_train=settings.limit_train)
    torch.manual_seed(settings.seed)
    model = build_model(chosen.genotype, macro)
    images = config.limit_train or len(dataset.train)
    with progress_bar(console) as progress:
        task = progress.add_task("train", total=settings.epochs * images, info="")
        last = {}

        def on_batch(n, loss):
            progress.update(task, advance=n, info=f"loss {loss:.3f}" + (f" test {last['test_acc']:.2%}" if last else ""))

        train_started = time.perf_counter()
        history = fit(model, dataset, config, on_batch=on_batch, on_epoch=last.update)
        train_seconds = time.perf_counter() - train_started

    fp = footprint(chosen.genotype, macro)
    result = {
        "spikernel": __version__,
        "settings": asdict(settings),
        "dataset": {"name": dataset.name, "train": len(dataset.train), "test": len(dataset.test)},
        "kernel_set": kernel_set.name,
        "macro": macro.to_dict(),
        "budget": str(budget) if budget else None,
        "genotype": chosen.genotype.to_dict(),
        "score": chosen.score,
        "footprint": fp.to_dict(),
        "test": {k: v for k, v in history[-1].items() if k.startswith("test_")},
        "history": history,
        "search": {
            "candidates": len(candidates),
            "scored": sum(c.status == "scored" for c in candidates),
            "over_budget": sum(c.status == "over_budget" for c in candidates),
            "seconds": search_seconds,
            "pareto_front": [candidate_summary(c) for c in pareto_front(candidates)],
        },
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "candidates.json", [c.row(settings.bits) for c in candidates])
    save_weights(out / "model.safetensors", model, {"genotype": str(chosen.genotype)})
    write_json(out / "result.json", result)  # last: its presence marks a finished run
    console.print(result_table(result))
    console.print(f"run folder: {out}")
    return result


def result_table(result: dict) -> Table:
    table = Table(title="spikernel run", show_header=False)
    fp = result["footprint"]
    rows = [
        ("dataset", f"{result['dataset']['name']} ({result['dataset']['train']} train / {result['dataset']['test']} test)"),
        ("kernel set", result["kernel_set"]),
        ("budget", result["budget"] or "none"),
        ("candidates", f"{result['search']['candidates']} sampled, {result['search']['scored']} scored, "
                       f"{result['search']['over_budget']} over budget ({result['search']['seconds']:.1f} s)"),
        ("genotype", f"{result['genotype']['genotype']} ({result['genotype']['cell']})"),
        ("score", f"{result['score']:.3f}"),
        ("parameters", f"{fp['params']:,}"),
        ("footprint", "  ".join(f"{b}-bit {v / 1e3:,.1f} KB" for b, v in fp["footprint_bytes"].items())),
        ("LIF neurons", f"{fp['lif_neurons']:,} in {fp['lif_layers']} layers"),
        ("test accuracy", f"{result['test']['test_acc']:.2%} (top-5 {result['test'].get('test_top5', 0):.2%})"),
        ("training", f"{len(result['history'])} epochs, {result['train_seconds']:.0f} s"),
        ("wall time", f"{result['wall_seconds']:.0f} s"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table
