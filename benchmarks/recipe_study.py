"""Which training recipe converges fastest: arms side by side, several cells and seeds each.

Every (arm, cell, seed) is one short training on the embedded Fashion-MNIST subset; each finished
one is a line appended (and fsynced) to the results CSV, so the study resumes where it stopped and
worker k of n takes every n-th training (one process per core). ``--summary`` prints per arm the
mean test accuracy, its sd over seeds of the same cell (the noise floor), and a 95% confidence
interval of the arm's difference to the baseline arm, paired by (cell, seed).

    python benchmarks/recipe_study.py --worker 0 --workers 2 &
    python benchmarks/recipe_study.py --worker 1 --workers 2 &
    python benchmarks/recipe_study.py --summary
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from pathlib import Path

from scipy.stats import ttest_1samp

from common import bootstrap_mean, study_parser, summary_or_run, work_share

RESULTS = Path(__file__).parent / "results" / "recipe_study.csv"
BASELINE = "snasnet"
FAST = dict(recipe="fast", augment=True)  # the arms as first measured: crop + flip unless an arm says not
MAIN = {**FAST, "epochs_factor": 2, "augment": False}  # with T = 2: the main job's recipe since the study
# name -> (recipe overrides, macro overrides)
ARMS = {
    "snasnet": ({"recipe": "snasnet"}, {}),
    "fast": (FAST, {}),
    "fast-lr2e-3": ({**FAST, "lr": 2e-3}, {}),
    "fast-lr1e-2": ({**FAST, "lr": 1e-2}, {}),
    "fast-no-smoothing": ({**FAST, "label_smoothing": 0.0}, {}),
    "fast-dropout0.1": (FAST, {"dropout": 0.1}),
    "fast-batch128": ({**FAST, "batch_size": 128, "lr": 7e-3}, {}),
    "fast-T2": (FAST, {"timesteps": 2}),
    "fast-no-augment": ({**FAST, "augment": False}, {}),
    # Equal training time: half the timesteps, twice the epochs (a step costs about T).
    "fast-T2-2x-epochs": ({**FAST, "epochs_factor": 2}, {"timesteps": 2}),
    "fast-T2-2x-epochs-no-augment": ({**FAST, "epochs_factor": 2, "augment": False}, {"timesteps": 2}),
    # One change each to the main job's recipe as it now stands (the arm above, --epochs 2).
    "main-sgd": ({**MAIN, "recipe": "snasnet"}, {"timesteps": 2}),
    "main-lr2e-3": ({**MAIN, "lr": 2e-3}, {"timesteps": 2}),
    "main-lr1e-2": ({**MAIN, "lr": 1e-2}, {"timesteps": 2}),
    "main-no-smoothing": ({**MAIN, "label_smoothing": 0.0}, {"timesteps": 2}),
    "main-batch128": ({**MAIN, "batch_size": 128, "lr": 7e-3}, {"timesteps": 2}),
    "main-cosine-no-warmup": ({**MAIN, "schedule": "cosine", "warmup": 0.0}, {"timesteps": 2}),
    "main-step-averages": (MAIN, {"timesteps": 2, "step_averages": True}),
    "main-step-loss": ({**MAIN, "step_loss": True}, {"timesteps": 2}),
    # The neuron and the head's initialisation (macro settings: they change the network, not the optimizer).
    "main-head-init-0.01": (MAIN, {"timesteps": 2, "head_init_std": 0.01}),  # SNASNet's, not by fan-in
    "main-threshold-0.5": (MAIN, {"timesteps": 2, "threshold": 0.5}),
    "main-tau-2": (MAIN, {"timesteps": 2, "tau": 2.0}),  # the membrane keeps half per step, not a quarter
    "main-surrogate-alpha1": (MAIN, {"timesteps": 2, "surrogate_alpha": 1.0}),  # a wider, flatter ATan
    "main-surrogate-alpha4": (MAIN, {"timesteps": 2, "surrogate_alpha": 4.0}),  # a narrower, steeper one
    # The head's dropout 0.5 (SNASNet's) off: in 3-epoch trainings of small networks it held training
    # accuracy down (benchmarks/seed_noise.py's arm "per-step, no dropout").
    "main-dropout0": (MAIN, {"timesteps": 2, "dropout": 0.0}),
    # BatchNorm averages recomputed for each epoch's final weights on 4,096 training images (TrainConfig.precise_bn).
    "main-precise-bn": ({**MAIN, "precise_bn": 4096}, {"timesteps": 2}),
    # Where crop and flip start to pay: the `fast` recipe turns them on from 5 epochs, which a 520 s
    # budget reaches on an idle CPU (benchmarks/macro_vs_cell.py --time-budget); with --epochs 2, 10 epochs.
    "main-10-epochs": ({**MAIN, "epochs_factor": 5}, {"timesteps": 2}),
    "main-10-epochs-augment": ({**MAIN, "epochs_factor": 5, "augment": True}, {"timesteps": 2}),
}
CELLS = ["0302 0030 3003 0000", "0501 0001 0000 0000", "0012 0000 0004 0000", "0005 3000 0000 0600"]


def plan(arms, cells, seeds) -> list[tuple[str, str, int]]:
    return [(a, c, s) for s in range(seeds) for c in cells for a in arms]


def train_one(arm: str, genotype: str, seed: int, preset: str, epochs: int, timesteps: int | None = None) -> dict:
    from spikernel.data.datasets import load_dataset
    from spikernel.nn.model import get_preset
    from spikernel.training.recipe import recipe
    from spikernel.training.run import train

    settings, macro_overrides = ARMS[arm]
    settings = dict(settings)
    epochs *= settings.pop("epochs_factor", 1)
    config = recipe(settings.pop("recipe"), epochs=epochs, seed=seed, **settings)
    macro = get_preset(preset, **{"timesteps": timesteps, **macro_overrides})
    started = time.perf_counter()
    result = train(genotype, load_dataset("fashion-mnist-mini"), macro=macro, config=config, device="cpu")
    history = result.result["history"]
    return {"arm": arm, "genotype": genotype, "seed": seed, "preset": preset, "timesteps": macro.timesteps,
            "epochs": epochs,
            "test_acc": round(result.test_acc, 5), "first_epoch_acc": round(history[0]["test_acc"], 5),
            "params": result.result["params"], "seconds": round(time.perf_counter() - started, 1),
            "settings": json.dumps({**ARMS[arm][0], **ARMS[arm][1]})}


def summary(path: Path, baseline: str = BASELINE) -> str:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    acc = {(r["arm"], r["genotype"], int(r["seed"])): 100 * float(r["test_acc"]) for r in rows}
    seconds = {r["arm"]: [] for r in rows}
    for r in rows:
        seconds[r["arm"]].append(float(r["seconds"]))
    lines = [f"| arm | n | mean test acc (%) | sd over seeds, same cell (points) | diff to {baseline} [95% CI] "
             "| paired t p | mean s per training |", "|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        mine = {k[1:]: v for k, v in acc.items() if k[0] == arm}
        if not mine:
            continue
        by_cell = {}
        for (cell, _), v in mine.items():
            by_cell.setdefault(cell, []).append(v)
        sds = [statistics.stdev(v) for v in by_cell.values() if len(v) > 1]
        paired = [v - acc[(baseline, *k)] for k, v in mine.items() if (baseline, *k) in acc]
        ci = p = "—"
        if len(paired) > 1 and arm != baseline:
            diff, low, high = bootstrap_mean(paired)
            ci = f"{diff:+.2f} [{low:+.2f}, {high:+.2f}]"
            p = f"{ttest_1samp(paired, 0.0).pvalue:.3f}"  # with 3 pairs the bootstrap interval is narrow by construction
        sd = f"{statistics.fmean(sds):.2f}" if sds else "—"
        lines.append(f"| {arm} | {len(mine)} | {statistics.fmean(mine.values()):.2f} | {sd} | {ci} | {p} | "
                     f"{statistics.fmean(seconds[arm]):.0f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = study_parser(__doc__, RESULTS)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--preset", default="fmnist-small")
    parser.add_argument("--timesteps", type=int, help="T of every arm that does not set its own [the preset's]")
    parser.add_argument("--cells", default=",".join(CELLS), help="comma-separated genotypes")
    parser.add_argument("--baseline", default=BASELINE, help="the arm --summary's differences are paired to")
    args = parser.parse_args(argv)
    summary_or_run(args, lambda path: summary(path, args.baseline), run_worker)


def run_worker(args) -> None:
    def train(item):
        row = train_one(*item, args.preset, args.epochs, args.timesteps)
        print(json.dumps({k: row[k] for k in ("arm", "genotype", "seed", "test_acc", "seconds")}), flush=True)
        return row

    work_share(args, plan(args.arms.split(","), args.cells.split(","), args.seeds),
               lambda row: (row["arm"], row["genotype"], int(row["seed"])), train)


if __name__ == "__main__":
    main()
