"""The main job, the method's four steps end to end: explore kernel sets, search each without
training, train the best cells, pick the most accurate network under the budget, report."""

from __future__ import annotations

import time
from pathlib import Path

from spikernel.errors import ConfigError
from spikernel.events import OnEvent
from spikernel.selection.explore import explore, select, slug
from spikernel.selection.settings import RUN_DEFAULTS, ExploreSettings  # noqa: F401
from spikernel.selection.report import write_report
from spikernel.files import read_json, write_json



def run_job(settings: ExploreSettings, out: Path, data_dir: str | None = None,
            on_event: OnEvent | None = None, device: str = "auto") -> tuple[dict, list[dict]]:
    """Explore, select under the budget, write the report and selection.json.

    Returns the selection and the report's per-kernel-set table.
    """
    started = time.perf_counter()
    study = explore(settings, out, data_dir, on_event, device=device)
    chosen = select(study)
    if chosen is None:
        raise ConfigError(f"no trained network fits the budget {settings.budget}")
    report = write_report(study, out / "report")
    run_dir = out / chosen.kernel_set / "train" / slug(chosen.row["genotype"], chosen.row.get("choice"))
    trained = read_json(run_dir / "result.json")
    selection = {
        "kernel_set": chosen.kernel_set,
        **chosen.row,
        "test": trained["test"],
        "footprint": trained["footprint"],
        "budget": settings.budget,
        # How it was chosen: in each set by the proxy (or refinement's validation accuracy), across
        # sets by test accuracy, as SpiKernel compares its sets.
        "selected_by": {"within_set": f"refine {settings.refine} on validation" if settings.refine
                        else settings.proxy, "across_sets": "test accuracy"},
        "weights": str((run_dir / "model.safetensors").relative_to(out)),
        "run": str(run_dir.relative_to(out)),
        "report": "report/report.md",
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out / "selection.json", selection)
    return selection, report["table"]
