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
import random
import sys
import time
from pathlib import Path

import torch
from scipy.stats import kendalltau, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_search_options, machine, normalize, scoring_images  # noqa: E402

from spikernel.nas.fidelity import Fidelity, shortlist  # noqa: E402
from spikernel.nn.model import get_preset  # noqa: E402
from spikernel.proxy.sahd import score_genotype, scoring_batches  # noqa: E402
from spikernel.space.genotype import sample_many  # noqa: E402
from spikernel.files import read_json, write_json  # noqa: E402

GRID = [
    "width=0.5", "width=0.25", "width=0.125",
    "batch=32", "batch=16", "batch=8", "timesteps=2", "repeats=1",
    "width=0.25,batch=32", "batch=16,repeats=1", "batch=8,repeats=1",
    "width=0.5,batch=16,repeats=1", "width=0.25,batch=16,repeats=1", "width=0.125,batch=16,repeats=1",
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


def _score(table: dict, key: str) -> float:
    value = table[key][0]
    return -math.inf if value is None else value


def two_stage_pick(keys, full: dict, cheap: dict, fidelity: Fidelity) -> tuple[str, int, float]:
    """(pick, its rank by full score among ``keys``, compute ratio exhaustive / two-stage)."""
    by_full = sorted(keys, key=lambda k: (-_score(full, k), k))
    rank = {k: i + 1 for i, k in enumerate(by_full)}
    short = shortlist({k: _score(cheap, k) for k in keys}, fidelity.keep(len(keys)))
    pick = min(short, key=lambda k: rank[k])
    exhaustive = sum(full[k][1] for k in keys)
    two_stage = sum(cheap[k][1] for k in keys) + sum(full[k][1] for k in short)
    return pick, rank[pick], exhaustive / two_stage


def evaluate(full: dict, cheap: dict, fidelity_text: str, tops, resamples: int, seed: int) -> dict:
    """Rank agreement over all cells; for each shortlist size, the pick on all cells and how often
    it is right over ``resamples`` random searches of 3/4 of the cells (same scores, no rescoring)."""
    keys = sorted(full)
    finite = [k for k in keys if math.isfinite(_score(full, k)) and math.isfinite(_score(cheap, k))]
    tau = kendalltau([_score(cheap, k) for k in finite], [_score(full, k) for k in finite]).statistic
    rho = spearmanr([_score(cheap, k) for k in finite], [_score(full, k) for k in finite]).statistic
    rng = random.Random(seed)
    subsets = [rng.sample(keys, round(0.75 * len(keys))) for _ in range(resamples)]
    rows = []
    for top in tops:
        fidelity = Fidelity.parse(f"{fidelity_text},top={top}")
        pick, rank, ratio = two_stage_pick(keys, full, cheap, fidelity)
        top1 = max(1, math.ceil(0.01 * len(keys)))
        same = within = 0
        for subset in subsets:
            _, r, _ = two_stage_pick(subset, full, cheap, fidelity)
            same += r == 1
            within += r <= max(1, math.ceil(0.01 * len(subset)))
        rows.append({"top": top, "shortlist": fidelity.keep(len(keys)), "pick": pick, "pick_rank": rank,
                     "same_pick": rank == 1, "within_top_1pct": rank <= top1, "compute_ratio": round(ratio, 2),
                     "resampled_same_pick": round(same / resamples, 3),
                     "resampled_within_top_1pct": round(within / resamples, 3)})
    return {"fidelity": fidelity_text, "kendall_tau": round(tau, 4), "spearman": round(rho, 4),
            "cheap_seconds_per_candidate": round(sum(cheap[k][1] for k in keys) / len(keys), 4),
            "full_seconds_per_candidate": round(sum(full[k][1] for k in keys) / len(keys), 4),
            "exhaustive_pick": min(keys, key=lambda k: (-_score(full, k), k)), "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_search_options(parser, batch=128)
    parser.add_argument("--candidates", type=int, default=320,
                        help="search slots (distinct cells are scored: 210 of the first 320 by default)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--resamples", type=int, default=1000, help="random sub-searches for the pick rates")
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
    # scores depend on these, not on how many cells are scored: a longer stream extends the cache
    setting = {k: v for k, v in vars(args).items() if k not in ("out", "grid", "threads", "candidates", "resamples")}
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
        results.append(evaluate(full, cheap, text, TOPS, args.resamples, args.seed))
    report = {"setting": setting, "candidates": args.candidates, "machine": machine(), "distinct": len(genotypes),
              "results": results}
    write_json(args.out / "fidelity.json", report)

    print(f"\n{'cheap setting':<32} {'tau':>6} {'rho':>6} {'s/cand':>7}   "
          + " ".join(f"{f'top {t:g}':>23}" for t in TOPS))
    for r in results:
        cells = " ".join(f"{'=' if row['same_pick'] else ('~' if row['within_top_1pct'] else 'x')}#{row['pick_rank']:<3}"
                         f"{row['resampled_same_pick']:>5.0%}{row['resampled_within_top_1pct']:>5.0%}"
                         f"{row['compute_ratio']:>6.1f}x" for row in r["rows"])
        print(f"{r['fidelity']:<32} {r['kendall_tau']:>6.3f} {r['spearman']:>6.3f} "
              f"{r['cheap_seconds_per_candidate']:>7.3f}   {cells}")
    print(f"full fidelity: {results[0]['full_seconds_per_candidate']:.3f} CPU s/candidate. Per shortlist size: the "
          "pick's rank by full score on all cells (= the exhaustive pick, ~ within its top 1%, x neither); how often "
          f"the pick is the exhaustive one / within its top 1% over {args.resamples} random searches of 3/4 of the "
          "cells; how many times less compute than scoring every cell at full fidelity")
    return 0


if __name__ == "__main__":
    sys.exit(main())
