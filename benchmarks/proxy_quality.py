"""How well each zero-cost proxy predicts trained accuracy and selects a cell, from a ground-truth CSV.

    python benchmarks/proxy_quality.py truth.csv --out runs/proxy_quality/report.md
    python benchmarks/proxy_quality.py truth.csv --compare other.csv   # the same cells at another recipe

The CSV has one row per training: genotype, cell, params, footprint_bytes, a ``proxy_<name>``
column per proxy, val_acc, test_acc and seed (rows sharing a genotype are its training seeds).
Writes the markdown table (also printed), ``<out>.json`` with every figure, and ``<out>.png``
(Kendall tau per rule with 95% intervals; proxy rank against accuracy). The statistics are
``spikernel.proxy.quality``'s; with the defaults, 500 cells and 8 proxies take about 100 s
on one core (--resamples 200 --selection-resamples 20 for a quick look).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spikernel.files import write_json
from spikernel.proxy.quality import (agreement, agreement_markdown, evaluate, json_ready, markdown, plot_quality,
                                     read_ground_truth, write_text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", type=Path, help="ground truth: one row per (genotype, training seed)")
    parser.add_argument("--target", default="val_acc", help="accuracy column to predict (val_acc or test_acc)")
    parser.add_argument("--extra", type=Path, action="append", default=[],
                        help="a CSV of more proxy_<name> columns by genotype (early_training.py's rungs)")
    parser.add_argument("--bins", type=int, default=5, help="quantile bins of footprint_bytes; 0: exactly equal footprints")
    parser.add_argument("--searches", type=int, default=1000)
    parser.add_argument("--search-size", type=int, default=100)
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the genotypes")
    parser.add_argument("--selection-resamples", type=int, default=100,
                        help="genotype resamples for the search figures' intervals")
    parser.add_argument("--resample-searches", type=int, default=50, help="searches per such resample")
    parser.add_argument("--vote", default=None, help="comma-separated proxies of the vote (default: all but params)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="markdown report; .json and .png beside it")
    parser.add_argument("--compare", type=Path, help="another ground truth of the same cells: how far the two agree")
    args = parser.parse_args(argv)
    truth = read_ground_truth(args.csv, args.target, args.extra)
    if args.compare:
        report = agreement(truth, read_ground_truth(args.compare, args.target), args.bins or None,
                           args.resamples, args.seed)
        print(agreement_markdown(report, [args.csv.name, args.compare.name]), end="")
        return 0
    vote = args.vote.split(",") if args.vote else None
    report = evaluate(truth, bins=args.bins or None, searches=args.searches, search_size=args.search_size,
                      resamples=args.resamples, selection_resamples=args.selection_resamples,
                      resample_searches=args.resample_searches, vote=vote, seed=args.seed)
    table = markdown(json_ready(report))
    print(table, end="")
    if args.out:
        write_text(args.out, table)
        write_json(args.out.with_suffix(".json"), json_ready(report))
        plot_quality(json_ready(report), truth, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
