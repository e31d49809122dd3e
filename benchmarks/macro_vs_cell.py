"""Does searching the macro-architecture beside the cell buy accuracy under the main job's budget?

Four arms, the same search otherwise (kernel set, candidates, scoring batches, budget, SAHD, the main
job's T = 2): ``cell``, the cell alone at the ``fmnist-small`` preset (what the main job searches),
and ``macro+cell``, the cell with width (up to the preset's), head hidden width and the pooling before
the head searched beside it; each also with ``--refine 4`` (``+refine4``: SAHD's best four trained
briefly on a validation split, the pick by validation accuracy), since within a size SAHD carries
little signal. Each arm's pick is trained under several seeds for the main job's four epochs (the same
width and T in every arm, so about the same time; each training's seconds and the refinement's are
recorded), on the embedded Fashion-MNIST subset, and tested on its test split.

Resumable and parallel: worker k of n takes every n-th (arm, seed); with two workers each arm
is one worker's, so each searches its own arms. Each finished training is one line appended to the
CSV; ``--summary`` gives per arm mean and sd over seeds (the noise floor: the same network, another
seed) and the differences of ``COMPARISONS`` with a 95% bootstrap interval and Welch's p-value.

    python benchmarks/macro_vs_cell.py --worker 0 --workers 2 &
    python benchmarks/macro_vs_cell.py --worker 1 --workers 2 &
    python benchmarks/macro_vs_cell.py --summary
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from pathlib import Path

from common import study_parser, summary_or_run, welch_difference, work_share

RESULTS = Path(__file__).parent / "results" / "macro_vs_cell.csv"
EQUAL_TIME = RESULTS.with_name("macro_vs_cell_equal_time.csv")
SEARCH = dict(kernels="1x1_3x3", candidates=100, budget="300K", batch=64, repeats=2, seed=0)  # the main job's
# Widths up to the preset's 16, so that an epoch costs about the same in both arms and equal time
# means about equal epochs; the head and the pooling before it are where the preset's parameters are.
MACRO = {"width": (8, 16), "hidden": (32, 64, 128), "second_pool": (2, 4, 7)}
# Each arm: the searched macro settings, and how many of SAHD's best it refines (`--refine K`: the pick
# by validation accuracy after short trainings, docs/EVIDENCE.md), 0 for SAHD's own pick.
ARMS = {"cell": ({}, 0), "macro+cell": (MACRO, 0), "cell+refine4": ({}, 4), "macro+cell+refine4": (MACRO, 4)}
# Differences the summary tests: (arm, against).
COMPARISONS = (("macro+cell", "cell"), ("macro+cell+refine4", "cell+refine4"), ("macro+cell+refine4", "cell"),
               ("cell+refine4", "cell"))


def plan(seeds: int, arms=tuple(ARMS)) -> list[tuple[str, int]]:
    return [(arm, seed) for seed in range(seeds) for arm in arms]


def pick(arm: str, data, work: Path):
    """The arm's search (resumed from ``work`` if it ran before; its ``best`` is the pick)."""
    from spikernel.nas.run import search
    from spikernel.nn.macro import MacroSpace, get_preset

    dimensions, refine = ARMS[arm]
    space = MacroSpace.of(get_preset("fmnist-small", timesteps=2), dimensions)
    found = search(SEARCH["kernels"], space, data, out=work / arm.replace("+", "-"), device="cpu", refine=refine,
                   **{k: v for k, v in SEARCH.items() if k != "kernels"})
    return found


def train_one(arm: str, seed: int, data, work: Path, epochs: int, time_budget: float | None = None) -> dict:
    from spikernel.training.recipe import recipe
    from spikernel.training.run import train

    found = pick(arm, data, work)
    genotype, macro = found.best.genotype, found.best.macro
    started = time.perf_counter()
    config = recipe("fast", epochs=epochs, seed=seed, time_budget=time_budget)
    result = train(genotype, data, macro=macro, config=config, device="cpu")
    history = result.result["history"]
    return {"arm": arm, "genotype": str(genotype), "width": macro.width, "hidden": macro.hidden,
            "second_pool": macro.second_pool, "timesteps": macro.timesteps, "params": result.result["params"],
            "seed": seed, "epochs": len(history), "test_acc": round(result.test_acc, 5),
            "seconds": round(time.perf_counter() - started, 1), "search": json.dumps(SEARCH),
            "refine": ARMS[arm][1], "refine_seconds": refine_seconds(found.selection),
            **({"time_budget": time_budget} if time_budget is not None else {})}


def refine_seconds(selection: dict) -> float | None:
    """The refinement's training time, summed over its candidates (kept per trial, so a resumed
    search reports the first run's, not the resume's)."""
    refined = selection.get("refined")
    return round(sum(o["seconds"] for o in refined["outcomes"]), 1) if refined else None


def summary(path: Path) -> str:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    acc = {arm: [100 * float(r["test_acc"]) for r in rows if r["arm"] == arm] for arm in ARMS}
    lines = ["| arm | pick | params | epochs | n (seeds) | mean test acc (%) | sd over seeds | mean s per training "
             "| refinement s |", "|---|---|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            continue
        r = mine[0]
        at = f" at width {r['width']}, hidden {r['hidden']}, pool {r['second_pool']}"
        sd = f"{statistics.stdev(acc[arm]):.2f}" if len(acc[arm]) > 1 else "—"
        refined = f"{float(r['refine_seconds']):.0f}" if r.get("refine_seconds") else "-"
        lines.append(f"| {arm} | `{r['genotype']}`{at} | {int(r['params']):,} | "
                     f"{', '.join(sorted({m['epochs'] for m in mine}))} | {len(mine)} | "
                     f"{statistics.fmean(acc[arm]):.2f} | {sd} | {statistics.fmean(float(m['seconds']) for m in mine):.0f} | {refined} |")
    lines.append("")
    for arm, against in COMPARISONS:
        a, b = acc[arm], acc[against]
        if len(a) > 1 and len(b) > 1:
            lines.append(f"- {arm} - {against}: {welch_difference(a, b)}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = study_parser(__doc__, RESULTS)
    parser.add_argument("--work", type=Path, default=Path("runs") / "macro_vs_cell", help="the searches' folders")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per training (the main job's)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds per training instead of --epochs: as many epochs as fit (equal time per arm)")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms of the study")
    args = parser.parse_args(argv)
    args.arms = args.arms.split(",")
    if unknown := set(args.arms) - set(ARMS):
        parser.error(f"unknown arm {sorted(unknown)[0]!r}; choose from {', '.join(ARMS)}")
    if args.time_budget is not None and args.out == RESULTS:
        parser.error(f"equal-time trainings go to their own --out (such as {EQUAL_TIME.name})")
    summary_or_run(args, summary, run_worker)


def run_worker(args) -> None:
    from spikernel.data.datasets import load_dataset

    data = load_dataset("fashion-mnist-mini")

    def train(item):
        row = train_one(*item, data, args.work, args.epochs, args.time_budget)
        print(json.dumps({k: row[k] for k in ("arm", "genotype", "params", "seed", "epochs", "test_acc")}), flush=True)
        return row

    work_share(args, plan(args.seeds, args.arms), lambda row: (row["arm"], int(row["seed"])), train)


if __name__ == "__main__":
    main()
