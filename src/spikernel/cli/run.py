"""``spikernel run``: the four steps end to end on the embedded dataset (explore, search, train, select)."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.table import Table

from spikernel.selection.settings import RUN_DEFAULTS
from .group import main
from .explore import explore_options, settings_from
from .render import rendered_events, stdout


@main.command()
@explore_options(RUN_DEFAULTS)
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path),
              help="Run folder [runs/run-TIME]; give an existing one to resume it.")
def run(out, **options):
    """Explore three kernel sets, search each, train the best, pick the best under the budget, report."""
    from spikernel.selection.pipeline import run_job

    settings, data_dir, device = settings_from(options)
    out = out or Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
    with rendered_events() as on_event:
        selection, per_set = run_job(settings, out, data_dir, on_event, device=device)
    stdout().print(selection_table(selection, per_set))
    stdout().print(f"run folder: {out}  (report: {out / 'report' / 'report.md'})")


def selection_table(selection: dict, per_set: list[dict]) -> Table:
    table = Table(title="spikernel run: best network under the budget")
    for column in ("set", "genotype", "params", "top-1", "uJ/img", "score", "pick"):
        table.add_column(column, overflow="fold")
    for row in per_set:
        picked = row["kernel set"] == selection["kernel_set"]
        acc = row["test accuracy"]
        table.add_row(row["kernel set"], row["best genotype"],
                      f"{row['parameters']:,}" if row["parameters"] is not None else "-",
                      f"{acc:.2%}" if acc is not None else "-",
                      f"{row['energy / image (uJ)']:.2f}" if row.get("energy / image (uJ)") is not None else "-",
                      f"{row['score']:.2f}" if row["score"] is not None else "-", "<-" if picked else "")
    fp = selection["footprint"]["footprint_bytes"]
    table.caption = (f"{selection['genotype']} from {selection['kernel_set']}: {selection['params']:,} parameters, "
                     f"{int(fp['32']) / 1e3:,.1f} KB at 32 bits / {int(fp['8']) / 1e3:,.1f} KB at 8 bits, "
                     f"test accuracy {selection['test']['test_acc']:.2%}, "
                     + (f"{selection['energy_uj']:.2f} uJ / image, " if selection.get("energy_uj") is not None else "")
                     + f"budget {selection['budget'] or 'none'}, "
                     + (f"picked in each set by {selection['selected_by']['within_set']}, across sets by test "
                        "accuracy, " if selection.get("selected_by") else "")
                     + f"{selection['wall_seconds']:.0f} s")
    return table

