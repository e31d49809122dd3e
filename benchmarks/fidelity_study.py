"""Multi-fidelity measurement: do cheap scores rank candidates like full ones, and does screening
with them find the exhaustive search's pick for a fraction of the compute?

    python benchmarks/fidelity_study.py --candidates 200 --out runs/fidelity

Every candidate of a seeded search stream is scored at full fidelity (the exhaustive search) and
at each cheap setting of a grid. For each setting it reports Kendall's tau between cheap and full
scores (scipy), and for each shortlist size whether the two-stage pick (the best full score among
the top cheap candidates) is the exhaustive pick or within its top 1%, and the compute it took
(CPU seconds of cheap scoring of all + full scoring of the shortlist) against the exhaustive
search's.
Scores are cached in ``--out`` (scores.json), so a rerun only scores what is missing.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from scipy.stats import kendalltau, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, normalize, scoring_images  # noqa: E402

from spikernel.fidelity import Fidelity, shortlist  # noqa: E402
from spikernel.model import get_preset  # noqa: E402
from spikernel.score import score_genotype, scoring_batches  # noqa: E402
from spikernel.space import sample_many  # noqa: E402
from spikernel.storage import read_json, write_json  # noqa: E402

GRID = [
    "width=0.5", "width=0.25", "width=0.125",
    "batch=32", "batch=16", "timesteps=2", "repeats=1",
    "width=0.25,batch=32", "width=0.25,batch=16,repeats=1", "width=0.125,batch=16,repeats=1",
]
TOPS = (0.01, 0.02, 0.05, 0.1, 0.2)


def score_all(genotypes, macro, batches, seed, cache: dict, label: str, save) -> dict:
    """{genotype: [score, seconds]}, scoring only what ``cache`` lacks."""
    done = cache.setdefault(label, {})
    todo = [g for g in genotypes if g not in done]
    started = time.perf_counter()
    for i, g in enumerate(todo, 1):
        t0 = time.process_time()  # compute, not waiting: the machine may be shared
        value = score_genotype(g, macro, batches, seed=seed)
        done[g] = [value if math.isfinite(value) else None, time.process_time() - t0]
        if i % 25 == 0 or i == len(todo):
            save()
            print(f"  {label}: {i}/{len(todo)} scored ({time.perf_counter() - started:.0f} s)", flush=True)
    return done


def evaluate(full: dict, cheap: dict, fidelity_text: str, tops) -> dict:
    keys = sorted(full)
    f = [full[k][0] if full[k][0] is not None else -math.inf for k in keys]
    c = [cheap[k][0] if cheap[k][0] is not None else -math.inf for k in keys]
    finite = [i for i in range(len(keys)) if math.isfinite(f[i]) and math.isfinite(c[i])]
    tau = kendalltau([c[i] for i in finite], [f[i] for i in finite]).statistic
    rho = spearmanr([c[i] for i in finite], [f[i] for i in finite]).statistic
    by_full = sorted(keys, key=lambda k: (-(full[k][0] if full[k][0] is not None else -math.inf), k))
    rank = {k: i + 1 for i, k in enumerate(by_full)}
    exhaustive = by_full[0]
    top1 = max(1, math.ceil(0.01 * len(keys)))
    full_cost = sum(full[k][1] for k in keys)
    cheap_cost = sum(cheap[k][1] for k in keys)
    rows = []
    for top in tops:
        fidelity = Fidelity.parse(f"{fidelity_text},top={top}")
        short = shortlist({k: cheap[k][0] if cheap[k][0] is not None else -math.inf for k in keys},
                          fidelity.keep(len(keys)))
        pick = min(short, key=lambda k: rank[k])
        cost = cheap_cost + sum(full[k][1] for k in short)
        rows.append({"top": top, "shortlist": len(short), "pick": pick, "pick_rank": rank[pick],
                     "same_pick": pick == exhaustive, "within_top_1pct": rank[pick] <= top1,
                     "compute_ratio": round(full_cost / cost, 2)})
    return {"fidelity": fidelity_text, "kendall_tau": round(tau, 4), "spearman": round(rho, 4),
            "cheap_seconds_per_candidate": round(cheap_cost / len(keys), 4),
            "full_seconds_per_candidate": round(full_cost / len(keys), 4),
            "exhaustive_pick": exhaustive, "top_1pct_size": top1, "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", type=int, default=200, help="search slots (distinct cells are scored)")
    parser.add_argument("--preset", default="fmnist-small")
    parser.add_argument("--kernels", default="1x1_3x3_5x5")
    parser.add_argument("--cell", default="backward")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--grid", nargs="*", default=GRID, help="cheap settings (Fidelity syntax without top)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    macro = get_preset(args.preset)
    images, mean, std = scoring_images(macro)
    batches = [normalize(b, mean, std) for b in scoring_batches(images, args.batch, args.repeats, args.seed)]
    stream = [str(g) for g in sample_many(args.kernels, args.cell, args.candidates, args.seed)]
    genotypes = list(dict.fromkeys(stream))
    cache_path = args.out / "scores.json"
    cache = read_json(cache_path) if cache_path.exists() else {}
    setting = {k: v for k, v in vars(args).items() if k not in ("out", "grid", "threads")}
    if cache.get("setting", setting) != setting:
        parser.error(f"{cache_path} holds scores for other settings: {cache['setting']}")
    cache["setting"] = setting
    save = lambda: write_json(cache_path, cache)  # noqa: E731
    print(f"{len(stream)} slots, {len(genotypes)} distinct cells; full fidelity: {args.preset}, "
          f"batch {args.batch} x {args.repeats}, T={macro.timesteps}; {machine()}", flush=True)

    full = score_all(genotypes, macro, batches, args.seed, cache.setdefault("scores", {}), "full", save)
    results = []
    for text in args.grid:
        fidelity = Fidelity.parse(f"{text},top=1")
        cheap = score_all(genotypes, fidelity.macro(macro), fidelity.batches(batches), args.seed,
                          cache["scores"], text, save)
        results.append(evaluate(full, cheap, text, TOPS))
    report = {"setting": setting, "machine": machine(), "distinct": len(genotypes), "results": results}
    write_json(args.out / "fidelity.json", report)

    print(f"\n{'cheap setting':<32} {'tau':>6} {'rho':>6} {'s/cand':>7}   "
          + " ".join(f"{f'top {t:g}':>15}" for t in TOPS))
    for r in results:
        cells = " ".join(f"{'=' if row['same_pick'] else ('~' if row['within_top_1pct'] else 'x')}"
                         f"#{row['pick_rank']:<3} {row['compute_ratio']:>6.1f}x  " for row in r["rows"])
        print(f"{r['fidelity']:<32} {r['kendall_tau']:>6.3f} {r['spearman']:>6.3f} "
              f"{r['cheap_seconds_per_candidate']:>7.3f}   {cells}")
    print(f"full fidelity: {results[0]['full_seconds_per_candidate']:.3f} s/candidate. Per shortlist size: "
          "the pick's rank by full score (= the exhaustive pick, ~ within its top 1%, x neither) and how many "
          "times less compute than scoring all at full fidelity")
    return 0


if __name__ == "__main__":
    sys.exit(main())
