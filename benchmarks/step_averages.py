"""Does keeping BatchNorm running averages per timestep fix a direct network that fails at test time?

The encoding study's direct 1x1_3x3 pick (``docs/results/fmnist-encodings/``: backward cell
``0203 0013 1002 0000``, T = 4, 3 epochs of the ``fast`` recipe on the embedded data) trained to
about 80% and tested at 53.95% and 50.10% under two of three seeds, with SNASNet's one running
average for all steps. This trains the same cell with the same settings and seeds with
``MacroConfig(step_averages=True)``. Training normalises by batch statistics either way, so the
training accuracy must repeat the study's to the digit; only evaluation can differ. Each finished
training is one CSV row; ``--summary`` sets them beside the study's.

    python benchmarks/step_averages.py --worker 0 --workers 2 &
    python benchmarks/step_averages.py --worker 1 --workers 2 &
    python benchmarks/step_averages.py --summary
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from common import append_row, read_rows, study_parser

RESULTS = Path(__file__).parent / "results" / "step_averages.csv"
STUDY = Path(__file__).parents[1] / "docs" / "results" / "fmnist-encodings" / "study"
CELL = ("1x1_3x3", "0203 0013 1002 0000", {"encoding": "direct"})  # kernel set, genotype, searched values


def study_run(seed: int) -> dict:
    from spikernel.files import read_json
    from spikernel.selection.explore import train_dir

    kernel_set, genotype, choice = CELL
    folder = train_dir(STUDY, kernel_set, genotype, seed, choice)  # the study's run folder of that seed
    return {"run": read_json(folder / "run.json"), "result": read_json(folder / "result.json")}


def train_one(seed: int, data) -> dict:
    from spikernel.nn.macro import MacroConfig
    from spikernel.training.loop import TrainConfig
    from spikernel.training.run import train

    stored = study_run(seed)["run"]
    macro = replace(MacroConfig.from_dict(stored["macro"]).for_data(data), step_averages=True)
    config = TrainConfig.from_dict(stored["train"])
    started = time.perf_counter()
    result = train(stored["genotype"], data, macro=macro, config=config, device="cpu", energy=False)
    return {"genotype": stored["genotype"], "timesteps": macro.timesteps, "seed": seed,
            "epochs": len(result.result["history"]), "averages": "per step",
            "train_acc": result.result["history"][-1]["train_acc"], "test_acc": round(result.test_acc, 5),
            "seconds": round(time.perf_counter() - started, 1)}


def summary(path: Path) -> str:
    rows = {int(r["seed"]): r for r in read_rows(path)}
    lines = ["| seed | training accuracy, one average / per step | test accuracy, one average | per step |",
             "|---|---|---|---|"]
    one, per = [], []
    for seed in sorted(rows):
        stored = study_run(seed)["result"]
        shared_train, shared_test = stored["history"][-1]["train_acc"], stored["test"]["test_acc"]
        one.append(100 * shared_test)
        per.append(100 * float(rows[seed]["test_acc"]))
        lines.append(f"| {seed} | {100 * shared_train:.2f}% / {100 * float(rows[seed]['train_acc']):.2f}% | "
                     f"{100 * shared_test:.2f}% | {100 * float(rows[seed]['test_acc']):.2f}% |")
    if len(per) > 1:
        lines.append(f"\nmean (sd): one average {statistics.fmean(one):.2f}% ({statistics.stdev(one):.2f}), "
                     f"per step {statistics.fmean(per):.2f}% ({statistics.stdev(per):.2f})")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = study_parser(__doc__, RESULTS).parse_args(argv)
    if args.summary:
        print(summary(args.out))
        return
    from spikernel.data.datasets import load_dataset

    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = {int(r["seed"]) for r in read_rows(args.out)}
    data = load_dataset("fashion-mnist-mini")
    for seed in range(args.seeds):
        if seed % args.workers == args.worker and seed not in done:
            append_row(args.out, train_one(seed, data))


if __name__ == "__main__":
    main()
