"""``spikernel train``: train one cell to accuracy on a real dataset, resumable, optionally on K processes.

``torchrun --nproc_per_node K -m spikernel train ...`` runs the same command data-parallel.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import click
from rich.table import Table

from spikernel.data import DATASET_NAMES
from spikernel.nn.macro import MacroConfig, default_preset, get_preset
from .rerun import finished_results, remember_request, request_of
from .group import main
from .options import (DURATION, ENCODING, ENCODING_HELP, GENOTYPE, PRESET, RECIPE, apply_threads, download_option,
                      step_averages_option, threads_option)
from .render import rendered_events, stdout


DEFAULT_EPOCHS = {"fashion-mnist-mini": 4, "fashion-mnist": 8}


def resolve_macro(dataset, searched: dict | None, preset: str | None, width, timesteps,
                  encoding: str | None = None, step_averages: bool | None = None,
                  dropout: float | None = None) -> MacroConfig:
    """Preset (or the searched macro), overrides, then the dataset's shape and class count."""
    if preset is None and searched is not None:
        macro = MacroConfig.from_dict(searched)
    else:
        macro = get_preset(preset or default_preset(dataset.name))
    overrides = {"width": width, "timesteps": timesteps, "encoding": encoding, "step_averages": step_averages,
                 "dropout": dropout}
    return replace(macro, **{k: v for k, v in overrides.items() if v is not None}).for_data(dataset)


RESULTS = ("result.json",)


@main.command()
@click.option("--genotype", "-g", type=GENOTYPE, help="Cell matrix, e.g. '0302 0030 3003 0000'.")
@click.option("--from-search", type=click.Path(file_okay=False, path_type=Path),
              help="Train the best cell of a `spikernel search` (or `spikernel run`) folder.")
@click.option("--dataset", type=click.Choice(sorted(DATASET_NAMES)),
              help="Dataset [the search's, else fashion-mnist-mini].")
@click.option("--data-dir", type=click.Path(), help="Directory with the dataset's files as distributed.")
@download_option
@click.option("--epochs", "-e", type=click.IntRange(min=1),
              help="Epochs [by dataset: 4 for fashion-mnist-mini, 8 for fashion-mnist, 300 for the others].")
@click.option("--time-budget", type=DURATION,
              help="Train as many epochs as fit in this wall time (90s, 30m, 1h30m); the schedule is sized to them.")
@click.option("--recipe", "recipe_name", type=RECIPE, default="fast", show_default=True,
              help="fast (AdamW, one-cycle, label smoothing), snasnet (SGD + cosine, SPEC 7) or refine "
                   "(refinement's: fast at batch 16, lr 1e-2, no crop/flip).")
@click.option("--batch", "batch_size", type=click.IntRange(min=1), help="Global batch [the recipe's: 64].")
@click.option("--timesteps", "-T", type=click.IntRange(min=1), help="Override the timesteps T.")
@click.option("--preset", "-p", type=PRESET, help="Macro preset [by dataset: fmnist, snasnet-cifar10, ...].")
@click.option("--width", type=click.IntRange(min=1), help="Override the cell width C.")
@click.option("--encoding", type=ENCODING, help=ENCODING_HELP.replace("[the preset's", "[the search's, else the preset's"))
@step_averages_option
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True),
              help="The head's dropout probability [the preset's: 0.5, as SNASNet; the search's for --from-search].")
@click.option("--lr", type=float, help="Peak learning rate [the recipe's: 5e-3 fast, 0.1 snasnet].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds weights, shuffling, augmentation, dropout.")
@click.option("--limit-train", type=click.IntRange(min=1), help="Train on the first N images only (smoke runs).")
@click.option("--augment/--no-augment", default=None,
              help="Random crop and flip [the recipe's: fast from 20 epochs on, snasnet always].")
@click.option("--step-loss/--mean-loss", default=None,
              help="Cross-entropy of every timestep's logits (TET) or of their mean [mean].")
@click.option("--precise-bn", type=click.IntRange(min=0), default=None,
              help="Recompute BatchNorm's running averages for each epoch's final weights on the first N training "
                   "images before evaluating [0: the momentum averages of training].")
@click.option("--amp/--no-amp", default=None, help="bf16 autocast [on for CUDA GPUs].")
@click.option("--compile/--no-compile", "compile_", default=False, show_default=True,
              help="torch.compile the training step (slow first batch, faster after).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@threads_option
@click.option("--resume", is_flag=True, help="Require a run to continue in --out (re-running the command resumes anyway).")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True, help="Run folder.")
def train(genotype, from_search, dataset, data_dir, download, epochs, time_budget, recipe_name, batch_size, timesteps,
          preset, width, encoding, step_averages, dropout, lr, seed, limit_train, augment, step_loss, precise_bn, amp, compile_,
          device, threads, resume, out):
    """Train a cell (BPTT; fast recipe or SNASNet's); checkpoints every epoch, resumes, runs under torchrun."""
    also = [from_search / "selection.json"] if from_search is not None else []
    asked = request_of("train", click.get_current_context().params, data_dir, dataset or (None if from_search else
                          "fashion-mnist-mini"), also) if from_search is None or dataset or data_dir else None
    stored = finished_results(out, asked, RESULTS)
    if stored:  # the same training, already finished: its result, without importing PyTorch
        if _is_main():
            click.echo(f"{out} is already finished; its result is in {out / 'result.json'}", err=True)
            stdout().print(result_table(stored["result.json"]))
            click.echo(f"run folder: {out}", err=True)
        return
    from spikernel.data.datasets import load_dataset
    from spikernel.training.recipe import recipe
    from spikernel.training.run import read_search, train as run_train

    if (genotype is None) == (from_search is None):
        raise click.UsageError("give exactly one of --genotype and --from-search")
    searched_macro = searched_dataset = None
    if from_search is not None:
        genotype, searched_macro, searched_dataset = read_search(from_search)
    data = load_dataset(dataset or searched_dataset or "fashion-mnist-mini", data_dir, download)
    macro = resolve_macro(data, searched_macro, preset, width, timesteps, encoding, step_averages, dropout)
    apply_threads(threads)
    config = recipe(recipe_name, epochs=epochs or DEFAULT_EPOCHS.get(data.name, 300), batch_size=batch_size, lr=lr,
                    seed=seed, limit_train=limit_train, augment=augment, step_loss=step_loss, precise_bn=precise_bn,
                    amp=amp, compile=compile_, time_budget=time_budget)
    with rendered_events() as on_event:
        trained = run_train(genotype, data, out=out, macro=macro, config=config, device=device, resume=resume,
                            command=" ".join(["spikernel", *sys.argv[1:]]), on_event=on_event,
                            data_dir=data_dir)
    if _is_main():
        remember_request(out, asked, RESULTS)
        stdout().print(result_table(trained.result))
        click.echo(f"run folder: {out}", err=True)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


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
