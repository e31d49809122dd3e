"""What ``--refine 4`` costs beside the final training it precedes, measured side by side in one run.

At the main job's setting (``fashion-mnist-mini``, kernel set 1x1_3x3, ``fmnist-small`` at T = 2,
300K-parameter budget, 100 candidates scored on batches of 64): one search is scored once (not
timed), then every repeat times, in one process on one thread, (a) the refinement of its best four
into a fresh folder, as ``search --refine 4`` runs it, and (b) the final training of the refined
pick, as ``train --from-search`` runs it (the ``fast`` recipe, 4 epochs on all 10,000 training
images, the result's energy count included). The two alternate in order from repeat to repeat, so
a change of load on a shared machine falls on both; each repeat gives one ratio. One CSV row per
repeat (resumable); ``--summary`` gives the median ratio, its range and a bootstrap interval.

    python benchmarks/refine_cost.py --repeats 3
    python benchmarks/refine_cost.py --summary
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path

import torch

from common import append_row, bootstrap_mean, machine, read_rows, study_parser, summary_or_run

RESULTS = Path(__file__).parent / "results" / "refine_cost.csv"
WORK = Path("runs") / "refine-cost"
SEARCH = dict(candidates=100, budget="300K", batch=64, repeats=2, seed=0)
FINAL_EPOCHS = 4


def shortlist(data, macro):
    import spikernel as sk
    from spikernel.nas.engine import top_k

    found = sk.search("1x1_3x3", macro, data, out=WORK / "search", **SEARCH)
    return top_k(found.candidates, 4)


def timed_refinement(candidates, data, macro, folder: Path) -> tuple[float, str]:
    from spikernel.nas.refine import refine

    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    rows = refine(candidates, data, macro, folder)
    return time.perf_counter() - started, rows[0].name


def timed_training(genotype: str, data, macro) -> tuple[float, float]:
    import spikernel as sk

    started = time.perf_counter()
    result = sk.train(genotype, data, macro=macro, epochs=FINAL_EPOCHS, device="cpu")
    return time.perf_counter() - started, result.test_acc


def run(args) -> None:
    import spikernel as sk

    torch.set_num_threads(args.threads)
    data = sk.load_dataset("fashion-mnist-mini")
    macro = sk.preset("fmnist-small", data, timesteps=2)
    candidates = shortlist(data, macro)
    done = read_rows(args.out)
    pick = done[-1]["pick"] if done else None  # the refinement is seeded: every repeat picks the same
    for repeat in range(len(done), args.repeats):
        load = os.getloadavg()[0]
        training_first = repeat % 2 == 1  # repeat 0 refines first, so a pick is known
        if training_first:
            train_s, test_acc = timed_training(pick, data, macro)
        refine_s, pick = timed_refinement(candidates, data, macro, WORK / "refine")
        if not training_first:
            train_s, test_acc = timed_training(pick, data, macro)
        row = {"repeat": repeat, "order": "training first" if training_first else "refinement first",
               "pick": pick, "refine_s": round(refine_s, 1), "train_s": round(train_s, 1),
               "ratio": round(refine_s / train_s, 4), "test_acc": round(test_acc, 5),
               "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
               "machine": machine(args.threads)}
        append_row(args.out, row)
        print(row, flush=True)


def summary(path: Path) -> str:
    rows = read_rows(path)
    ratios = [100 * float(r["ratio"]) for r in rows]
    centre, low, high = bootstrap_mean(ratios)
    return (f"{len(rows)} repeats on {rows[0]['machine']}: refinement {statistics.median(float(r['refine_s']) for r in rows):.1f} s, "
            f"final training {statistics.median(float(r['train_s']) for r in rows):.1f} s (medians); refinement / training "
            f"median {statistics.median(ratios):.1f}% (range {min(ratios):.1f}-{max(ratios):.1f}%), "
            f"mean {centre:.1f}% [{low:.1f}, {high:.1f}]")


def main(argv=None) -> None:
    parser = study_parser(__doc__, RESULTS, seeds=None)
    parser.add_argument("--repeats", type=int, default=3)
    summary_or_run(parser.parse_args(argv), summary, run)


if __name__ == "__main__":
    main()
