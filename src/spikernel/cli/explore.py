"""``spikernel explore`` and ``spikernel report``: kernel-size exploration and its trade-off analysis."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from spikernel.data import DEFAULT_DATASET
from spikernel.selection.settings import ExploreSettings
from .group import main
from .render import rendered_events
from .options import (BITS, BUDGET_HELP, CELL, PRESET, RECIPE, apply_threads, download_option, macro_options,
                      macro_values, selection_options, threads_option)

_D = ExploreSettings()


def _int_list(ctx, param, value):
    if value is None:
        return ()
    try:
        numbers = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if any(n < 1 for n in numbers):
        raise click.BadParameter("sizes must be positive")
    return numbers


def explore_options(defaults: ExploreSettings = _D):
    """Options shared by ``explore`` and ``run``, which differ only in their defaults."""
    _D = defaults
    options = [
        click.option("--dataset", default=DEFAULT_DATASET, show_default=True),
        click.option("--data-dir", type=click.Path(), help="Directory with the dataset's files."),
        download_option,
        click.option("--kernels", "-k", multiple=True,
                     help="One kernel set, as in every command (1x1_3x3_5x5 or 1,3,5); repeat for several "
                          f"[{' '.join('-k ' + k for k in _D.kernel_sets)}]."),
        click.option("--kernel-sets", help="The kernel sets as one comma-separated list of names (1x1_3x3,1x1_5x5)."),
        click.option("--candidates", "-n", type=click.IntRange(min=1), default=_D.candidates, show_default=True,
                     help="Cells searched per kernel set."),
        click.option("--budget", default=_D.budget, show_default=True, help=BUDGET_HELP + " 'none': no limit."),
        click.option("--bits", type=BITS, default="32", show_default=True),
        click.option("--top-k", type=click.IntRange(min=1), default=_D.top_k, show_default=True,
                     help="Best-scoring cells trained per kernel set."),
        click.option("--seeds", type=click.IntRange(min=1), default=_D.seeds, show_default=True,
                     help="Trainings per cell (seeds seed, seed+1, ...): the report's intervals and tests need >= 2."),
        click.option("--epochs", "-e", type=click.IntRange(min=1), default=_D.epochs, show_default=True),
        click.option("--recipe", type=RECIPE, default=_D.recipe, show_default=True,
                     help="fast (AdamW, one-cycle, label smoothing), snasnet (the paper's SGD + cosine) or refine "
                          "(refinement's: fast at batch 16, lr 1e-2, no crop/flip)."),
        click.option("--preset", "-p", type=PRESET, default=_D.preset, show_default=True),
        click.option("--cell", type=CELL, default=_D.cell, show_default=True),
        click.option("--score-batch", type=click.IntRange(min=2), default=_D.score_batch, show_default=True),
        click.option("--repeats", type=click.IntRange(min=1), default=_D.repeats, show_default=True),
        click.option("--train-batch", type=click.IntRange(min=1), default=_D.train_batch, show_default=True),
        click.option("--limit-train", type=click.IntRange(min=1), help="Train on the first N images only."),
        macro_options({"timesteps": _D.timesteps}),
        click.option("--seed", type=int, default=_D.seed, show_default=True),
        click.option("--fidelity", default=_D.fidelity,
                     help="Multi-fidelity search, as in `spikernel search` (e.g. fast or batch=16,repeats=1,top=0.02)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        threads_option,
        click.option("--ablation", callback=_int_list,
                     help="Search sizes to compare, e.g. 1000,2500,5000 [a fifth, half, all]."),
    ]

    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return selection_options(f)

    return decorate


def settings_from(options: dict) -> tuple[ExploreSettings, str | None, str]:
    """The settings, and the data directory (the dataset fetched into it first with --download)."""
    options = dict(options)
    apply_threads(options.pop("threads"))
    device = options.pop("device")
    data_dir, download = options.pop("data_dir"), options.pop("download")
    kernels, listed = options.pop("kernels"), options.pop("kernel_sets")
    if kernels and listed:
        raise click.UsageError("give the kernel sets with -k (repeated) or --kernel-sets, not both")
    kernel_sets = kernels or (tuple(k.strip() for k in listed.split(",") if k.strip()) if listed is not None
                              else ExploreSettings().kernel_sets)
    budget = options.pop("budget")
    state_bits = options.pop("state_bits")
    macro = macro_values(options)
    timesteps = macro.pop("timesteps", None)
    if timesteps is not None and len(timesteps) > 1:
        macro["timesteps"] = timesteps  # searched; a single T stays the plain override it always was
    settings = ExploreSettings(kernel_sets=kernel_sets, bits=int(options.pop("bits")),
                               budget=None if budget is None or budget.lower() == "none" else budget,
                               timesteps=timesteps[0] if timesteps is not None and len(timesteps) == 1 else None,
                               state_bits=int(state_bits) if state_bits else None, macro_values=macro, **options)
    if download:
        from spikernel.data.datasets import load_dataset

        load_dataset(settings.dataset, data_dir, download_missing=True)
    return settings, data_dir, device


@main.command("explore")
@explore_options()
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True, help="Study folder.")
def explore_command(out, **options):
    """Per kernel set: search, train the top-K under the budget, evaluate; one resumable study folder."""
    from spikernel.selection.explore import explore

    settings, data_dir, device = settings_from(options)
    with rendered_events() as on_event:
        explore(settings, out, data_dir, on_event, device=device)
    report_command.main([str(out)], standalone_mode=False)


@main.command("report")
@click.argument("folder", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), help="Report folder [FOLDER/report].")
def report_command(folder, out):
    """Write report.md and figures (PNG, SVG) from an exploration folder's stored results."""
    from spikernel.selection.explore import load_study
    from spikernel.selection.report import encoding_answer, write_report

    study = load_study(folder)
    out = out or folder / "report"
    result = write_report(study, out)
    Console().print(main_table(result["table"]))
    if result["encodings"]:
        click.echo(encoding_answer(result["encodings"]).strip())
    for line in study.missing:
        click.echo(f"missing: {line}", err=True)
    click.echo(f"report: {out / 'report.md'} ({len(result['figures'])} figures)")


def main_table(rows: list[dict]) -> Table:
    table = Table(title="best network per kernel set")
    if not rows:
        return table
    for key in rows[0]:
        table.add_column(key)
    for row in rows:
        table.add_row(*(_fmt(k, v) for k, v in row.items()))
    return table


def _fmt(column: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2%}" if "accuracy" in column else f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
