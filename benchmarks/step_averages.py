"""Does keeping BatchNorm running averages per timestep fix a direct network that fails at test time?

The encoding study's direct 1x1_3x3 pick (``docs/results/fmnist-encodings/``: backward cell
``0203 0013 1002 0000``, T = 4, 3 epochs of the ``fast`` recipe on the embedded data) trained to
about 80% and tested at 53.95% and 50.10% under two of three seeds, with SNASNet's one running
average for all steps. This trains the same cell with the same settings and seeds with
``MacroConfig(step_averages=True)``, and then the direct 1x1_7x7 pick (forward cell
``0002 0000 0000 0000``) the same way, so that the two kernel sets meet on equal terms. Training
normalises by batch statistics either way, so the training accuracy must repeat the study's to the
digit; only evaluation can differ. Each finished training is one CSV row; ``--summary`` sets them
beside the study's and tests the difference between the sets.

    python benchmarks/step_averages.py --worker 0 --workers 2 &
    python benchmarks/step_averages.py --worker 1 --workers 2 &
    python benchmarks/step_averages.py --summary
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path

from common import read_rows, study_parser, summary_or_run, work_share

RESULTS = Path(__file__).parent / "results" / "step_averages.csv"
STUDY = Path(__file__).parents[1] / "docs" / "results" / "fmnist-encodings" / "study"
CELLS = {"1x1_3x3": "0203 0013 1002 0000", "1x1_7x7": "0002 0000 0000 0000"}  # the study's direct picks
KERNEL_SET = {genotype: kernel_set for kernel_set, genotype in CELLS.items()}
CHOICE = {"encoding": "direct"}  # their searched values


def study_run(kernel_set: str, seed: int) -> dict:
    from spikernel.files import read_json
    from spikernel.selection.explore import train_dir

    folder = train_dir(STUDY, kernel_set, CELLS[kernel_set], seed, CHOICE)  # the study's run of that seed
    return {"run": read_json(folder / "run.json"), "result": read_json(folder / "result.json")}


def train_one(kernel_set: str, seed: int, data) -> dict:
    from spikernel.nn.macro import MacroConfig
    from spikernel.training.loop import TrainConfig
    from spikernel.training.run import train

    stored = study_run(kernel_set, seed)["run"]
    macro = replace(MacroConfig.from_dict(stored["macro"]).for_data(data), step_averages=True)
    config = TrainConfig.from_dict(stored["train"])
    started = time.perf_counter()
    result = train(stored["genotype"], data, macro=macro, config=config, device="cpu", energy=False)
    return {"genotype": stored["genotype"], "timesteps": macro.timesteps, "seed": seed,
            "epochs": len(result.result["history"]), "averages": "per step",
            "train_acc": result.result["history"][-1]["train_acc"], "test_acc": round(result.test_acc, 5),
            "seconds": round(time.perf_counter() - started, 1)}


def summary(path: Path) -> str:
    rows = {(r["genotype"], int(r["seed"])): r for r in read_rows(path)}
    lines = ["| kernel set | seed | training accuracy, one average / per step | test accuracy, one average | per step |",
             "|---|---|---|---|---|"]
    per_step = {}
    for kernel_set, genotype in CELLS.items():
        one, per = [], []
        for seed in sorted(s for g, s in rows if g == genotype):
            stored, row = study_run(kernel_set, seed)["result"], rows[genotype, seed]
            shared_train, shared_test = stored["history"][-1]["train_acc"], stored["test"]["test_acc"]
            one.append(100 * shared_test)
            per.append(100 * float(row["test_acc"]))
            lines.append(f"| {kernel_set} | {seed} | {100 * shared_train:.2f}% / {100 * float(row['train_acc']):.2f}% "
                         f"| {one[-1]:.2f}% | {per[-1]:.2f}% |")
        if len(per) > 1:
            lines.append(f"| {kernel_set} | mean (sd) | | {statistics.fmean(one):.2f}% ({statistics.stdev(one):.2f}) "
                         f"| {statistics.fmean(per):.2f}% ({statistics.stdev(per):.2f}) |")
        per_step[kernel_set] = per
    if all(len(v) > 1 for v in per_step.values()):
        lines.append("\n" + _set_difference(*per_step.values()))
    return "\n".join(lines)


def _set_difference(a: list[float], b: list[float]) -> str:
    """1x1_3x3 less 1x1_7x7, both with per-step averages, as the report tests kernel sets."""
    import numpy as np

    from spikernel.selection.report import _difference

    test = _difference(np.array(a), np.array(b), 10000, np.random.default_rng(0))
    return (f"per step, {' - '.join(CELLS)}: {test['diff (points)']:+.2f} points [{test['lower']:+.2f}, "
            f"{test['upper']:+.2f}], permutation p = {test['permutation p']:.2f}, Welch p = {test['Welch p']:.3f}")


def main(argv=None) -> None:
    summary_or_run(study_parser(__doc__, RESULTS).parse_args(argv), summary, run_worker)


def run_worker(args) -> None:
    from spikernel.data.datasets import load_dataset

    data = load_dataset("fashion-mnist-mini")
    work_share(args, [(k, s) for k in CELLS for s in range(args.seeds)],
               lambda row: (KERNEL_SET[row["genotype"]], int(row["seed"])),
               lambda item: train_one(*item, data))


if __name__ == "__main__":
    main()
