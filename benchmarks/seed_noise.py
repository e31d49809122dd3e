"""Where does the ground truth's seed noise come from, and which recipe removes it?

The ground truth (``ground_truth.py``) trained 24 of its cells under two seeds: pooled sd 4.61
points, a few cells 10+ points apart. Two causes are suspected: crop and flip on a 3-epoch training
(the recipe no longer augments trainings this short), and one BatchNorm running average shared by
both timesteps of a direct-input network (``MacroConfig.step_averages`` keeps one per step). This
retrains those same 24 cells under the same two seeds, macro, data split and epochs in two arms:

- ``plain``: the ``fast`` recipe without crop and flip (today's default at 3 epochs);
- ``plain, per-step averages``: the same with ``step_averages=True``.

Later arms change more settings of that last one, to see whether the recipe, not only the
BatchNorm averages, sets the noise of these short trainings (their training accuracies were 59-78%):
``per-step, lr 1e-2`` (twice the ``fast`` recipe's peak learning rate), ``per-step, no dropout``
(the head's dropout 0.5 off) and ``per-step, no dropout, precise BN`` (that, with the running averages
recomputed for the final weights on 4,096 training images: ``TrainConfig.precise_bn``). ``--arm NAME`` (repeated) picks the arms a worker trains.

The ground truth's own trainings are the third arm (``augmented``), read from its CSV. Each finished
training is one row of its worker's part CSV (resumable, worker k of n takes every n-th); cell by cell, both
arms and both seeds, so a partial run compares the arms on the same cells. ``--summary``
prints per arm the pooled sd, the median and largest seed difference, the retest tau, and each
arm's absolute differences against the ground truth's, paired over cells (Wilcoxon).

    python benchmarks/seed_noise.py --worker 0 --workers 2 &
    python benchmarks/seed_noise.py --worker 1 --workers 2 &
    python benchmarks/seed_noise.py --summary
"""

from __future__ import annotations

import functools
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from common import append_row, read_rows, study_parser, summary_or_run
from ground_truth import DEFAULT_OUT as GROUND_TRUTH, split_setting, training_split, macro_config

RESULTS = Path(__file__).parent / "results" / "seed_noise_fmnist_mini.csv"
PRECISE_BN = 4096  # training images the BatchNorm averages are recomputed on (TrainConfig.precise_bn)
# arm -> its setting (ground_truth.split_setting: MacroConfig fields and recipe fields)
ARMS = {"plain": {}, "plain, per-step averages": {"step_averages": True},
        "per-step, lr 1e-2": {"step_averages": True, "lr": 1e-2},
        "per-step, no dropout": {"step_averages": True, "dropout": 0.0},
        "per-step, no dropout, precise BN": {"step_averages": True, "dropout": 0.0, "precise_bn": PRECISE_BN}}
FIRST_ARMS = tuple(ARMS)[:2]  # the study as it first ran: one average against per-step ones
# Later arms and what each is compared with: the per-step arm, and for precise BN also the arm whose
# trainings it repeats (it changes only the averages evaluation uses, so training accuracy must match).
LATER = tuple((arm, FIRST_ARMS[1]) for arm in tuple(ARMS)[2:]) + (
    ("per-step, no dropout, precise BN", "per-step, no dropout"),)
SEEDS = (0, 1)


@functools.cache  # read once: every table of the summary looks the ground truth up
def ground_truth_pairs(path: Path = GROUND_TRUTH) -> dict[str, dict[int, dict]]:
    """The ground truth's cells trained under both seeds: genotype -> seed -> row."""
    cells: dict[str, dict[int, dict]] = {}
    for row in read_rows(path):
        cells.setdefault(row["genotype"], {})[int(row["seed"])] = row
    return {g: seeds for g, seeds in cells.items() if set(SEEDS) <= set(seeds)}


def plan(arms=tuple(ARMS)) -> list[tuple[str, str, int]]:
    """(arm, genotype, seed), cell by cell in the ground truth's CSV order: the plain arm's first three
    cells (the pilot that found a 14.7-point seed difference without crop and flip), then each cell's
    first two arms and two seeds together, then the later arms' the same way."""
    cells = list(ground_truth_pairs())
    pilot = [("plain", g, seed) for g in cells[:3] for seed in SEEDS]
    first = pilot + [(arm, g, seed) for g in cells for arm in FIRST_ARMS for seed in SEEDS if (arm, g, seed) not in pilot]
    later = [(arm, g, seed) for g in cells for arm in ARMS if arm not in FIRST_ARMS for seed in SEEDS]
    return [item for item in first + later if item[0] in arms]


def train_one(arm: str, genotype: str, seed: int, data, val, epochs: int) -> dict:
    from spikernel.nn.model import SNN
    from spikernel.space.genotype import Genotype
    from spikernel.training.loop import evaluate, fit
    from spikernel.training.recipe import recipe

    network, overrides = split_setting(ARMS[arm])
    macro = replace(macro_config().for_data(data), **network)
    config = recipe("fast", epochs=epochs, seed=seed, augment=False, **overrides)
    torch.manual_seed(seed)  # as the ground truth seeds its trainings
    model = SNN(Genotype.parse(genotype), macro)
    started = time.perf_counter()
    history = fit(model, data, config)
    val_acc = evaluate(model, data, val, spike_rates=False)["test_acc"]
    return {"arm": arm, "genotype": genotype, "seed": seed, "epochs": epochs,
            "train_acc": round(history[-1]["train_acc"], 5), "val_acc": round(val_acc, 5),
            "test_acc": round(history[-1]["test_acc"], 5), "seconds": round(time.perf_counter() - started, 1)}


def run_worker(args) -> None:
    torch.set_num_threads(args.threads)
    data, val = training_split(args.data_dir)
    done = {(r["arm"], r["genotype"], int(r["seed"])) for r in trained(args.out)}
    part = args.out.with_name(f"{args.out.stem}.part{args.worker}.csv")  # one writer per file
    for i, (arm, genotype, seed) in enumerate(plan(args.arms)):
        if i % args.workers == args.worker and (arm, genotype, seed) not in done:
            row = train_one(arm, genotype, seed, data, val, args.epochs)
            append_row(part, row)
            print(row, flush=True)


def trained(out: Path) -> list[dict]:
    """Every finished training, from the workers' part files."""
    return [row for path in sorted(out.parent.glob(f"{out.stem}.part*.csv")) for row in read_rows(path)]


def seed_differences(path: Path) -> dict[str, dict[str, float]]:
    """arm -> genotype -> seed 1 less seed 0 validation accuracy in points, for cells with both."""
    arms: dict[str, dict[str, dict[int, float]]] = {"augmented": {}}
    for genotype, seeds in ground_truth_pairs().items():
        arms["augmented"][genotype] = {s: float(seeds[s]["val_acc"]) for s in SEEDS}
    for row in trained(path):
        arms.setdefault(row["arm"], {}).setdefault(row["genotype"], {})[int(row["seed"])] = float(row["val_acc"])
    return {arm: {g: 100 * (v[1] - v[0]) for g, v in cells.items() if len(v) == 2} for arm, cells in arms.items()}


def pooled_sd(differences) -> float:
    """The sd of one training, from two seeds per cell: sqrt(mean(d^2) / 2)."""
    return float(np.sqrt(np.mean(np.square(differences)) / 2))


def summary(path: Path) -> str:
    from scipy.stats import kendalltau, wilcoxon

    from common import bootstrap_mean

    differences = seed_differences(path)
    rows = {(r["arm"], r["genotype"], int(r["seed"])): r for r in trained(path)}
    lines = ["| arm | cells | pooled sd [95% CI] | median / largest seed difference | retest tau | mean val acc |"
             " mean train acc | trainings testing 10+ points below training | vs augmented: mean abs difference, paired "
             "[95% CI], Wilcoxon p |",
             "|---|---|---|---|---|---|---|---|---|"]
    rng = np.random.default_rng(0)
    reference = differences["augmented"]
    for arm, cells in differences.items():
        if not cells:
            continue
        d = np.array(list(cells.values()))
        draws = [pooled_sd(rng.choice(d, len(d))) for _ in range(2000)]
        accs = _accuracies(arm, cells, rows)
        tau = kendalltau(accs[:, 0], accs[:, 1]).statistic if len(d) > 2 else float("nan")
        own = [rows[arm, g, s] for g in cells for s in SEEDS if (arm, g, s) in rows]
        train = [float(r["train_acc"]) for r in own]
        failing = sum(float(r["train_acc"]) - float(r["val_acc"]) >= 0.10 for r in own)  # health.AVERAGES_GAP
        versus = "—"
        if arm != "augmented" and len(d) > 1:
            paired = np.abs(d) - np.abs([reference[g] for g in cells])
            centre, low, high = bootstrap_mean(paired)
            versus = f"{centre:+.2f} [{low:+.2f}, {high:+.2f}], p = {wilcoxon(paired).pvalue:.3g}"
        lines.append(f"| {arm} | {len(d)} | {pooled_sd(d):.2f} [{np.percentile(draws, 2.5):.2f}, "
                     f"{np.percentile(draws, 97.5):.2f}] | {np.median(np.abs(d)):.2f} / {np.abs(d).max():.2f} | "
                     f"{tau:.2f} | {100 * accs.mean():.2f}% | "
                     f"{f'{100 * np.mean(train):.2f}%' if train else '—'} | "
                     f"{f'{failing} of {len(own)}' if own else '—'} | {versus} |")
    return "\n".join(lines + ["", same_trainings(differences, rows), "", *later_arms(differences, rows), "",
                               proxy_agreement(differences, rows)])


def same_trainings(differences: dict, rows: dict) -> str:
    """Per-step against one average on the same trainings: training normalises by batch statistics
    either way, so the two differ only at evaluation (their training accuracies must be equal)."""
    one, per = FIRST_ARMS
    trainings = [(g, s) for (arm, g, s) in rows if arm == per and (one, g, s) in rows]
    if len(trainings) < 2:
        return ""
    c = compare(per, one, trainings, differences, rows)
    (gain, glo, ghi), (centre, low, high) = c["accuracy"], c["spread"]
    return (f"Per-step against one average, the same {len(trainings)} trainings ({c['equal']} with equal training "
            f"accuracy): validation accuracy {gain:+.2f} points [{glo:+.2f}, {ghi:+.2f}]; over {c['cells']} cells the "
            f"seed difference {centre:+.2f} points [{low:+.2f}, {high:+.2f}] in size"
            + (f", Wilcoxon p = {c['p']:.3g}" if c["p"] is not None else "") + ".")


def later_arms(differences: dict, rows: dict) -> list[str]:
    """Each later arm against its references (``LATER``), paired over the cells both have: the size of
    the seed difference and the validation accuracy (paired by cell and seed)."""
    lines = []
    for arm, against in LATER:
        cells = [g for g in differences.get(arm, {}) if g in differences.get(against, {})]
        if len(cells) < 2:
            continue
        c = compare(arm, against, [(g, s) for g in cells for s in SEEDS], differences, rows)
        (centre, low, high), (gain, glo, ghi) = c["spread"], c["accuracy"]
        lines.append(f"- {arm} against {against}, {c['cells']} cells: seed difference {centre:+.2f} points "
                     f"[{low:+.2f}, {high:+.2f}] in size" + (f" (Wilcoxon p = {c['p']:.3g})" if c["p"] is not None else "")
                     + f"; validation accuracy {gain:+.2f} [{glo:+.2f}, {ghi:+.2f}] over {len(c['pairs'])} trainings"
                     + (f" ({c['equal']} with equal training accuracy)." if c["equal"] else "."))
    return lines


def compare(arm: str, against: str, trainings: list[tuple[str, int]], differences: dict, rows: dict) -> dict:
    """``arm`` less ``against``: over ``trainings`` ((cell, seed) both arms have, in the order given) the
    validation accuracy in points and how many have equal training accuracy; over the cells both have the
    change in the size of the seed difference (mean and 95% bootstrap interval each; Wilcoxon's p)."""
    from scipy.stats import wilcoxon

    from common import bootstrap_mean

    pairs = [(rows[arm, g, s], rows[against, g, s]) for g, s in trainings]
    cells = [g for g in differences[arm] if g in differences[against]]
    spread = [abs(differences[arm][g]) - abs(differences[against][g]) for g in cells]
    return {"pairs": pairs, "cells": len(cells), "equal": sum(a["train_acc"] == b["train_acc"] for a, b in pairs),
            "accuracy": bootstrap_mean([100 * (float(a["val_acc"]) - float(b["val_acc"])) for a, b in pairs]),
            "spread": bootstrap_mean(spread), "p": wilcoxon(spread).pvalue if any(spread) else None}


def proxy_agreement(differences: dict, rows: dict, proxies=("params", "sahd", "grad_norm")) -> str:
    """How each arm's cell ranking (mean of the two seeds) agrees with the ground truth's and with
    a few proxies (Kendall tau), over the cells every arm has: does the arm change what a proxy is judged on?"""
    from scipy.stats import kendalltau

    cells = sorted(set.intersection(*(set(c) for c in differences.values())))
    if len(cells) < 3:
        return ""
    pairs = ground_truth_pairs()
    means = {arm: _accuracies(arm, {g: None for g in cells}, rows).mean(1) for arm in differences}
    lines = [f"Kendall tau over the {len(cells)} cells every arm has (cell means of two seeds):", "",
             "| arm | with the ground truth (augmented) | " + " | ".join(proxies) + " |",
             "|---|---|" + "---|" * len(proxies)]
    for arm, mean in means.items():
        taus = [kendalltau(mean, [float(pairs[g][0][f"proxy_{p}"]) for g in cells]).statistic for p in proxies]
        lines.append(f"| {arm} | {kendalltau(mean, means['augmented']).statistic:.2f} | "
                     + " | ".join(f"{t:.2f}" for t in taus) + " |")
    return "\n".join(lines)


def _accuracies(arm: str, cells: dict, rows: dict) -> np.ndarray:
    """[cell, seed] validation accuracies of one arm (the augmented arm from the ground truth)."""
    if arm == "augmented":
        pairs = ground_truth_pairs()
        return np.array([[float(pairs[g][s]["val_acc"]) for s in SEEDS] for g in cells])
    return np.array([[float(rows[arm, g, s]["val_acc"]) for s in SEEDS] for g in cells])


def main(argv=None) -> None:
    parser = study_parser(__doc__, RESULTS, seeds=None)
    parser.add_argument("--epochs", type=int, default=3, help="the ground truth's")
    parser.add_argument("--data-dir")
    parser.add_argument("--arm", dest="arms", action="append", choices=list(ARMS),
                        help="an arm this worker trains (repeat for more) [all]")
    args = parser.parse_args(argv)
    args.arms = args.arms or list(ARMS)
    summary_or_run(args, summary, run_worker)


if __name__ == "__main__":
    main()
