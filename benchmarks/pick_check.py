"""Do the picks of another ranking train better than SAHD's at the main job's setting?

The ground truth (``ground_truth.py``, ``proxy_quality.py``) judges rankings on small networks
trained briefly; this checks a ranking where users meet it. For each of the main job's kernel sets,
the main job's search (100 candidates, 300K parameters, ``fmnist-small`` at T = 2, batch 64 x 2)
ranks by each ``--rankings`` entry, and each pick trains under several seeds for the main job's four
epochs of the ``fast`` recipe on the embedded Fashion-MNIST subset, tested on its test split.
Arms whose picks coincide train the same network; the summary says so.

Resumable and parallel: worker k of n takes every n-th (set, ranking, seed); each finished training is
one line of the CSV. ``--summary``: per set and ranking the pick, its mean and sd over seeds, and each
ranking against ``sahd``: per set and pooled over sets (paired by set and seed), a 95% bootstrap
interval and Welch's (per set) or a paired t (pooled) p-value.

    python benchmarks/pick_check.py --worker 0 --workers 2 &
    python benchmarks/pick_check.py --worker 1 --workers 2 &
    python benchmarks/pick_check.py --summary
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from scipy.stats import ttest_rel

from common import bootstrap_mean, read_rows, study_parser, summary_or_run, welch_difference, work_share

RESULTS = Path(__file__).parent / "results" / "pick_check.csv"
KERNEL_SETS = ("1x1_3x3", "1x1_5x5", "1x1_7x7")  # the main job's
SEARCH = dict(candidates=100, budget="300K", batch=64, repeats=2, seed=0)  # the main job's
BASELINE = "sahd"


def plan(seeds: int, rankings) -> list[tuple[str, str, int]]:
    return [(kernels, ranking, seed) for seed in range(seeds) for kernels in KERNEL_SETS for ranking in rankings]


def pick(kernels: str, ranking: str, data, work: Path):
    """The main job's search of ``kernels`` ranked by ``ranking`` (resumed from ``work``)."""
    from spikernel.nas.run import search
    from spikernel.nn.macro import get_preset

    macro = get_preset("fmnist-small", timesteps=2)
    return search(kernels, macro, data, out=work / f"{kernels}-{ranking.replace('+', '-')}", device="cpu",
                  proxy=ranking, **SEARCH)


def train_one(kernels: str, ranking: str, seed: int, data, work: Path, epochs: int, done: list[dict]) -> dict:
    """The pick's training; one another ranking already made of the same network and seed is reused
    (a CPU training is deterministic per seed), marked ``reused``."""
    from spikernel.training.recipe import recipe
    from spikernel.training.run import train

    found = pick(kernels, ranking, data, work)
    for row in done:
        if (row["kernels"], row["genotype"], int(row["seed"])) == (kernels, str(found.best.genotype), seed):
            return {**row, "ranking": ranking, "reused": row["ranking"]}
    started = time.perf_counter()
    result = train(found.best.genotype, data, macro=found.best.macro, config=recipe("fast", epochs=epochs, seed=seed),
                   device="cpu")
    return {"kernels": kernels, "ranking": ranking, "genotype": str(found.best.genotype),
            "params": result.result["params"], "seed": seed, "epochs": len(result.result["history"]),
            "test_acc": round(result.test_acc, 5), "seconds": round(time.perf_counter() - started, 1),
            "search": json.dumps(SEARCH), "reused": ""}


def summary(path: Path) -> str:
    rows = read_rows(path)
    acc = {}
    for r in rows:
        acc.setdefault((r["kernels"], r["ranking"]), {})[int(r["seed"])] = 100 * float(r["test_acc"])
    picks = {(r["kernels"], r["ranking"]): r for r in rows}
    lines = ["| kernel set | ranking | pick | params | n (seeds) | mean test acc (%) | sd over seeds |",
             "|---|---|---|---|---|---|---|"]
    for (kernels, ranking), r in sorted(picks.items()):
        values = list(acc[kernels, ranking].values())
        sd = f"{statistics.stdev(values):.2f}" if len(values) > 1 else "—"
        lines.append(f"| {kernels} | {ranking} | `{r['genotype']}` | {int(r['params']):,} | {len(values)} | "
                     f"{statistics.fmean(values):.2f} | {sd} |")
    lines.append("")
    for ranking in sorted({k[1] for k in acc} - {BASELINE}):
        paired = []
        for kernels in KERNEL_SETS:
            mine, base = acc.get((kernels, ranking), {}), acc.get((kernels, BASELINE), {})
            if len(mine) > 1 and len(base) > 1:
                same = picks[kernels, ranking]["genotype"] == picks[kernels, BASELINE]["genotype"]
                lines.append(f"- {kernels}, {ranking} - {BASELINE}: {welch_difference(mine.values(), base.values())}"
                             + (" (the same pick)" if same else ""))
            paired += [(mine[s], base[s]) for s in sorted(set(mine) & set(base))]
        if len(paired) > 1:
            a, b = zip(*paired)
            diff, low, high = bootstrap_mean([x - y for x, y in paired])
            lines.append(f"- pooled over sets, {ranking} - {BASELINE}: {diff:+.2f} points [{low:+.2f}, {high:+.2f}], "
                         f"paired t p = {ttest_rel(a, b).pvalue:.3f}, n = {len(paired)} (set, seed) pairs")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = study_parser(__doc__, RESULTS)
    parser.add_argument("--work", type=Path, default=Path("runs") / "pick_check", help="the searches' folders")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per training (the main job's)")
    parser.add_argument("--rankings", default=f"{BASELINE},synflow+params", help="comma-separated --proxy values")
    args = parser.parse_args(argv)
    args.rankings = args.rankings.split(",")
    summary_or_run(args, summary, run_worker)


def run_worker(args) -> None:
    from spikernel.data.datasets import load_dataset

    data = load_dataset("fashion-mnist-mini")

    def train(item):
        row = train_one(*item, data, args.work, args.epochs, read_rows(args.out))
        print(json.dumps({k: row[k] for k in ("kernels", "ranking", "genotype", "seed", "test_acc")}), flush=True)
        return row

    work_share(args, plan(args.seeds, args.rankings), lambda row: (row["kernels"], row["ranking"], int(row["seed"])),
               train)


if __name__ == "__main__":
    main()
