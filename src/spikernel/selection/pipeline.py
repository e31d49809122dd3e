"""The main job, the method's four steps end to end: explore kernel sets, search each without
training, train the best cells, pick the most accurate network under the budget, report."""

from __future__ import annotations

import time
from pathlib import Path

from spikernel.errors import ConfigError
from spikernel.events import OnEvent
from spikernel.selection.explore import ExploreSettings, explore, select, slug
from spikernel.selection.report import write_report
from spikernel.files import read_json, write_json

# Sized to stay under ten minutes on a 2-core CPU on the embedded fashion-mnist-mini (8 min 16 s measured, idle).
RUN_DEFAULTS = ExploreSettings(
    kernel_sets=("1x1_3x3", "1x1_5x5", "1x1_7x7"), candidates=100, top_k=1, epochs=2, budget="300K",
    preset="fmnist-small", timesteps=4, score_batch=64, repeats=2,
)


def run_job(settings: ExploreSettings, out: Path, data_dir: str | None = None,
            on_event: OnEvent | None = None) -> tuple[dict, list[dict]]:
    """Explore, select under the budget, write the report and selection.json.

    Returns the selection and the report's per-kernel-set table.
    """
    started = time.perf_counter()
    study = explore(settings, out, data_dir, on_event)
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
    return selection, report["table"]
