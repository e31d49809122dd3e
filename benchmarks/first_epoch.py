"""Does any sampled cell stay at chance after one epoch of the default recipe?

Samples distinct cells (SNASNet's sampler, kernel set 1x1_3x3_5x5_7x7, backward and forward) at a
preset, trains each for one epoch of the embedded Fashion-MNIST subset with the `fast` recipe and
records its test accuracy, the spike rate of its quietest LIF layer after that epoch and whether the
health check called it at chance (below 1.5x chance, 15%). Resumable, worker k of n takes every n-th
cell; ``--summary`` counts the cells at chance and gives the accuracy's range.

    python benchmarks/first_epoch.py --preset fmnist-tiny --cells 30 --worker 0 --workers 2 &
    python benchmarks/first_epoch.py --preset fmnist-tiny --cells 30 --worker 1 --workers 2 &
    python benchmarks/first_epoch.py --preset fmnist-tiny --summary
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from common import append_row, read_rows, study_parser

RESULTS = Path(__file__).parent / "results"


def cells(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct sampled cells, alternately backward and forward."""
    from spikernel.space.genotype import KernelSet, sample

    kernels, rng, found = KernelSet.parse("1x1_3x3_5x5_7x7"), np.random.default_rng(seed), {}
    while len(found) < count:
        cell = ("backward", "forward")[len(found) % 2]
        g = sample(kernels, cell, rng)
        found.setdefault(g.key, str(g))
    return list(found.values())


def train_one(genotype: str, preset: str, timesteps: int | None, data) -> dict:
    from spikernel.nn.model import get_preset
    from spikernel.training.health import chance_finding
    from spikernel.training.recipe import recipe
    from spikernel.training.run import train

    macro = get_preset(preset, timesteps=timesteps)
    started = time.perf_counter()
    result = train(genotype, data, macro=macro, config=recipe("fast", epochs=1, seed=0), device="cpu")
    row = result.result["history"][0]
    rates = {k: v for k, v in row.items() if k.startswith("spike_rate/")}
    quietest = min(rates, key=rates.get)
    return {"genotype": genotype, "preset": preset, "timesteps": macro.timesteps, "params": result.result["params"],
            "test_acc": round(row["test_acc"], 5), "at_chance": chance_finding(row["test_acc"], 10, 1) is not None,
            "quietest_layer": quietest.removeprefix("spike_rate/"), "quietest_rate": round(rates[quietest], 6),
            "seconds": round(time.perf_counter() - started, 1), "recipe": "fast"}


def summary(path: Path) -> str:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    acc = [100 * float(r["test_acc"]) for r in rows]
    stuck = [r["genotype"] for r in rows if r["at_chance"] == "True"]
    return (f"{len(rows)} cells: {len(stuck)} at chance after one epoch{' (' + ', '.join(stuck) + ')' if stuck else ''}; "
            f"test accuracy min {min(acc):.2f}%, median {statistics.median(acc):.2f}%, max {max(acc):.2f}%; "
            f"quietest layer's rate after the epoch: min {min(float(r['quietest_rate']) for r in rows):.4f}")


def main(argv=None) -> None:
    parser = study_parser(__doc__, None)
    parser.add_argument("--preset", default="fmnist-tiny")
    parser.add_argument("--timesteps", type=int, help="T [the preset's]")
    parser.add_argument("--cells", type=int, default=30)
    args = parser.parse_args(argv)
    out = args.out or RESULTS / f"first_epoch_{args.preset}.csv"
    if args.summary:
        print(summary(out))
        return
    from spikernel.data.datasets import load_dataset

    torch.set_num_threads(args.threads)
    done = {r["genotype"] for r in read_rows(out)}
    data = load_dataset("fashion-mnist-mini")
    for i, genotype in enumerate(cells(args.cells)):
        if i % args.workers == args.worker and genotype not in done:
            row = train_one(genotype, args.preset, args.timesteps, data)
            append_row(out, row)
            print(json.dumps({k: row[k] for k in ("genotype", "params", "test_acc", "quietest_rate")}), flush=True)


if __name__ == "__main__":
    main()
