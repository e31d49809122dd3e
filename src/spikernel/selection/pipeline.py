"""The main job, the method's four steps end to end: explore kernel sets, search each without
training, train the best cells, pick the most accurate network under the budget, report."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from spikernel.errors import ConfigError
from spikernel.selection.explore import ExploreSettings, explore, select, slug
from spikernel.selection.report import write_report
from spikernel.files import read_json, write_json

# Sized to stay under ten minutes on a 2-core CPU on the embedded fashion-mnist-mini (8 min 16 s measured, idle).
RUN_DEFAULTS = ExploreSettings(
    kernel_sets=("1x1_3x3", "1x1_5x5", "1x1_7x7"), candidates=100, top_k=1, epochs=2, budget="300K",
    preset="fmnist-small", timesteps=4, score_batch=64, repeats=2,
)


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )


def run_job(settings: ExploreSettings, out: Path, data_dir: str | None = None,
            console: Console | None = None) -> dict:
    console = console or Console(stderr=True)
    started = time.perf_counter()
    study = explore(settings, out, data_dir, on_stage=lambda stage: console.rule(stage))
    chosen = select(study)
    if chosen is None:
        raise ConfigError(f"no trained network fits the budget {settings.budget}")
    report = write_report(study, out / "report")
    run_dir = out / chosen.kernel_set / "train" / slug(chosen.row["genotype"])
    trained = read_json(run_dir / "result.json")
    selection = {
        "kernel_set": chosen.kernel_set,
        **chosen.row,
        "test": trained["test"],
        "footprint": trained["footprint"],
        "budget": settings.budget,
        "weights": str((run_dir / "model.safetensors").relative_to(out)),
        "run": str(run_dir.relative_to(out)),
        "report": "report/report.md",
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out / "selection.json", selection)
    Console().print(selection_table(selection, report["table"]))
    Console().print(f"run folder: {out}  (report: {out / 'report' / 'report.md'})")
    return selection


def selection_table(selection: dict, per_set: list[dict]) -> Table:
    table = Table(title="spikernel run: best network under the budget")
    for column in ("set", "genotype", "params", "top-1", "uJ/img", "score", "pick"):
        table.add_column(column, no_wrap=True)
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
                     f"{selection['wall_seconds']:.0f} s")
    return table
