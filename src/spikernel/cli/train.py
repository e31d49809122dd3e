"""``spikernel train``: train one cell to accuracy on a real dataset, resumable, optionally on K processes.

``torchrun --nproc_per_node K -m spikernel train ...`` runs the same command data-parallel.
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.table import Table

from spikernel import __version__
from spikernel.training import distributed
from spikernel.training.checkpoint import CHECKPOINT_FILE, RESULT_FILE, WEIGHTS_FILE, RunSpec, open_run, save_model
from spikernel.data.datasets import DATASETS, load_dataset
from spikernel.selection.energy import measure_dataset
from spikernel.errors import ConfigError, GenotypeError
from spikernel.nn.footprint import footprint
from spikernel.nn.model import MacroConfig, get_preset
from spikernel.selection.pipeline import progress_bar
from spikernel.space.genotype import Genotype
from spikernel.files import read_json, write_json
from spikernel.training.loop import TrainConfig, fit
from . import main
from .options import GENOTYPE, PRESET

ENERGY_IMAGES = 1000  # test images the result's spike, SOP and energy figures are counted on

# The macro preset a dataset trains with unless --preset (or the search folder) says otherwise.
DATASET_PRESETS = {"fashion-mnist": "fmnist", "fashion-mnist-mini": "fmnist-small", "cifar10": "snasnet-cifar10",
                   "cifar100": "snasnet-cifar100", "tiny-imagenet": "snasnet-tinyimagenet"}


def read_search(folder: Path) -> tuple[Genotype, dict | None, str | None]:
    """The best cell of a ``spikernel search`` folder (selection.json), a ``spikernel run`` folder (its
    pick) or a trained run (result.json), with the macro settings and dataset it came with."""
    folder = Path(folder)
    try:
        if (folder / "selection.json").exists() and "run" in read_json(folder / "selection.json"):
            folder = folder / read_json(folder / "selection.json")["run"]  # a `spikernel run` folder's pick
        if (folder / "selection.json").exists():
            best = read_json(folder / "selection.json")["best"]
            if best is None:
                raise ConfigError(f"{folder}: the search selected nothing (every cell was over its budget)")
            settings = read_json(folder / "search.json")["settings"] if (folder / "search.json").exists() else {}
            dataset = settings.get("scoring", {}).get("dataset")
            return Genotype.parse(best["genotype"]), settings.get("macro"), dataset
        if (folder / "result.json").exists():
            result = read_json(folder / "result.json")  # a trained run: retrain its cell
            return Genotype.parse(result["genotype"]), result.get("macro"), result["dataset"]["name"]
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, GenotypeError):
            raise
        raise ConfigError(f"{folder}: unreadable search results ({exc})") from None
    raise ConfigError(f"{folder} holds no search results (selection.json or result.json)")


def resolve_macro(dataset, searched: dict | None, preset: str | None, width, timesteps) -> MacroConfig:
    """Preset (or the searched macro), overrides, then the dataset's shape and class count."""
    if preset is None and searched is not None:
        macro = MacroConfig.from_dict(searched)
    else:
        macro = get_preset(preset or DATASET_PRESETS.get(dataset.name, "fmnist"))
    overrides = {"width": width, "timesteps": timesteps}
    return replace(macro, in_channels=dataset.in_channels, image_size=dataset.image_size,
                   num_classes=dataset.num_classes, **{k: v for k, v in overrides.items() if v is not None})


@main.command()
@click.option("--genotype", "-g", type=GENOTYPE, help="Cell matrix, e.g. '0302 0030 3003 0000'.")
@click.option("--from-search", type=click.Path(file_okay=False, path_type=Path),
              help="Train the best cell of a `spikernel search` (or `spikernel run`) folder.")
@click.option("--dataset", type=click.Choice(sorted(DATASETS)),
              help="Dataset [the search's, else fashion-mnist-mini].")
@click.option("--data-dir", type=click.Path(), help="Directory with the dataset's files as distributed.")
@click.option("--download", is_flag=True, help="Fetch the dataset (checksummed) if it is not on disk.")
@click.option("--epochs", "-e", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--batch", "batch_size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Global batch (split over torchrun processes).")
@click.option("--timesteps", "-T", type=click.IntRange(min=1), help="Override the timesteps T.")
@click.option("--preset", "-p", type=PRESET, help="Macro preset [by dataset: fmnist, snasnet-cifar10, ...].")
@click.option("--width", type=click.IntRange(min=1), help="Override the cell width C.")
@click.option("--lr", type=float, default=0.1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds weights, shuffling, augmentation, dropout.")
@click.option("--limit-train", type=click.IntRange(min=1), help="Train on the first N images only (smoke runs).")
@click.option("--no-augment", is_flag=True, help="Skip random crop and flip.")
@click.option("--amp/--no-amp", default=None, help="bf16 autocast [on for CUDA GPUs].")
@click.option("--compile/--no-compile", "compile_", default=False, show_default=True,
              help="torch.compile the training step (slow first batch, faster after).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--resume", is_flag=True, help="Require a run to continue in --out (re-running the command resumes anyway).")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True, help="Run folder.")
def train(genotype, from_search, dataset, data_dir, download, epochs, batch_size, timesteps, preset, width, lr, seed,
          limit_train, no_augment, amp, compile_, device, resume, out):
    """Train a cell (BPTT, SGD + cosine); checkpoints every epoch, resumes, runs under torchrun."""
    if (genotype is None) == (from_search is None):
        raise click.UsageError("give exactly one of --genotype and --from-search")
    searched_macro = searched_dataset = None
    if from_search is not None:
        genotype, searched_macro, searched_dataset = read_search(from_search)
    world, device = distributed.init(device)
    try:
        data = load_dataset(dataset or searched_dataset or "fashion-mnist-mini", data_dir, download)
        macro = resolve_macro(data, searched_macro, preset, width, timesteps)
        config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, limit_train=limit_train,
                             augment=not no_augment, amp=amp, compile=compile_)
        if batch_size < world.size:
            raise ConfigError(f"--batch {batch_size} is smaller than the {world.size} processes")
        spec = RunSpec(str(genotype.pruned()), macro.to_dict(), data.name, config.identity())
        status = _open(out, spec, resume, world)
        console = Console(stderr=True, quiet=not world.is_main)
        if status == "finished":
            click.echo(f"{out} is already finished; its result is in {out / RESULT_FILE}", err=True)
            if world.is_main:
                Console().print(result_table(read_json(out / RESULT_FILE)))
            return
        torch.manual_seed(seed)
        model = spec.build()
        started = time.perf_counter()
        history = _train(model, data, config, device, out, world, console)
        if world.is_main:
            result = _result(spec, model, history, data, world, device, time.perf_counter() - started)
            save_model(out / WEIGHTS_FILE, model, spec)
            write_json(out / RESULT_FILE, result)  # last: its presence marks a finished run
            Console().print(result_table(result))
            click.echo(f"run folder: {out}", err=True)
    finally:
        distributed.shutdown(world)


def _open(out: Path, spec: RunSpec, resume: bool, world) -> str:
    """Rank 0 creates or checks the folder first; the others then check against what it wrote."""
    status = open_run(out, spec, resume) if world.is_main else None
    world.barrier()
    return status if world.is_main else open_run(out, spec, resume=False)


def _train(model, data, config, device, out, world, console) -> list[dict]:
    done = read_json(out / CHECKPOINT_FILE)["epoch"] if (out / CHECKPOINT_FILE).exists() else 0
    if done and world.is_main:
        click.echo(f"resuming {out} after epoch {done}", err=True)
    images = min(config.limit_train or len(data.train), len(data.train))
    with progress_bar(console) as progress:
        task = progress.add_task("train", total=config.epochs * images, completed=done * images, info="")
        clock = {"t": time.perf_counter(), "n": 0, "last": ""}

        def on_batch(n, loss):
            clock["n"] += n
            rate = clock["n"] / max(time.perf_counter() - clock["t"], 1e-9)
            progress.update(task, advance=n, info=f"loss {loss:.3f} · {rate:,.0f} img/s{clock['last']}")

        def on_epoch(row):
            clock.update(t=time.perf_counter(), n=0, last=f" · test {row['test_acc']:.2%}")
            progress.update(task, completed=row["epoch"] * images)

        return fit(model, data, config, device, on_batch=on_batch, on_epoch=on_epoch, run_dir=out, world=world,
                   tensorboard=True)


def _result(spec: RunSpec, model, history, data, world, device, seconds: float) -> dict:
    fp = footprint(Genotype.parse(spec.genotype), MacroConfig.from_dict(spec.macro))
    last = history[-1]
    return {
        "spikernel": __version__,
        "command": " ".join(["spikernel", *sys.argv[1:]]),
        "genotype": spec.genotype,
        "macro": spec.macro,
        "dataset": {"name": data.name, "train": len(data.train), "test": len(data.test), "source": data.source},
        "train": spec.train,
        "params": fp.params,
        "footprint": fp.to_dict(),
        "test": {k: v for k, v in last.items() if k.startswith("test_")},
        "spike_rate": last.get("spike_rate"),
        "energy": measure_dataset(model, data, limit=ENERGY_IMAGES, device=device).to_dict(),
        "best_test_acc": max(row["test_acc"] for row in history),
        "epochs": len(history),
        "train_img_per_s": sum(r["train_img_per_s"] for r in history) / len(history),
        "seconds_this_session": seconds,
        "seconds_all_epochs": sum(r["seconds"] for r in history),
        "history": history,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                    "device": distributed.device_label(device), "processes": world.size,
                    "threads": torch.get_num_threads()},
    }


def energy_rows(energy: dict | None) -> list[tuple[str, str]]:
    """Operations and energy per image, as counted on the first test images after training."""
    if not energy:
        return []
    return [("SOPs / image", f"{energy['sops'] / 1e6:,.2f} M (+ {energy['stem_macs']:,} stem MACs)"),
            ("energy / image", f"{energy['energy_pj'] / 1e6:,.3f} uJ (on {energy['images']:,} test images)")]


def result_table(result: dict) -> Table:
    table = Table(title="spikernel train", show_header=False)
    test = result["test"]
    top5 = next((v for k, v in test.items() if k.startswith("test_top")), None)
    rows = [
        ("dataset", f"{result['dataset']['name']} ({result['dataset']['train']} train / {result['dataset']['test']} test)"),
        ("genotype", result["genotype"]),
        ("parameters", f"{result['params']:,}"),
        ("test accuracy", f"{test['test_acc']:.2%}" + (f" (top-5 {top5:.2%})" if top5 is not None else "")),
        ("best epoch accuracy", f"{result['best_test_acc']:.2%}"),
        ("spike rate", f"{result['spike_rate']:.3f}" if result.get("spike_rate") is not None else "-"),
        *energy_rows(result.get("energy")),
        ("training", f"{result['epochs']} epochs, {result['seconds_all_epochs']:.0f} s, "
                     f"{result['train_img_per_s']:,.0f} img/s on {result['machine']['device']}"
                     + (f" x {result['machine']['processes']}" if result['machine']['processes'] > 1 else "")),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table
