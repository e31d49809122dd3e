"""Seconds per candidate of each zero-cost proxy (network build included), on the same fixed batches.

    python benchmarks/proxy_speed.py --preset fmnist-small --batch 64 --repeats 2 --candidates 4

Candidates are SNASNet-sampled cells; every proxy scores every candidate once, after one
untimed warm-up candidate, and then all of them score it together (``compute_proxies``, what a
vote computes). Prints one line per proxy (mean and slowest candidate), the together-vs-one-by-one
ratio and, with --out, writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_search_options, machine, normalize, scoring_images  # noqa: E402

from spikernel.data.datasets import load_dataset  # noqa: E402
from spikernel.files import write_json  # noqa: E402
from spikernel.nn.model import get_preset  # noqa: E402
from spikernel.proxy.zero_cost import PROXIES, check_names, compute_proxies, labelled_batches, proxy_rows  # noqa: E402
from spikernel.space.genotype import sample_many  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_search_options(parser, batch=64)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--proxies", default=",".join(PROXIES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = check_names(args.proxies.split(","))
    macro = get_preset(args.preset)
    images, mean, std = scoring_images(macro)
    labels = load_dataset("fashion-mnist-mini").train.labels
    raw, label_batches = labelled_batches(images, labels, args.batch, args.repeats, args.seed)
    batches = [normalize(b, mean, std) for b in raw]
    genotypes = list(sample_many(args.kernels, args.cell, args.candidates + 1, seed=args.seed))
    proxy_rows(genotypes[:1], macro, batches, label_batches, names, args.seed)  # warm-up
    rows, together = [], []
    for genotype in genotypes[1:]:  # one by one, then all at once (a vote's cost), candidate by candidate
        rows += proxy_rows([genotype], macro, batches, label_batches, names, args.seed)
        started = time.perf_counter()
        compute_proxies(genotype, macro, batches, label_batches, names, args.seed)
        together.append(time.perf_counter() - started)
    print(f"{args.preset}, batch {args.batch} x {args.repeats}, {len(rows)} {args.cell} cells, {machine(args.threads)}")
    figures = {}
    for name in names:
        seconds = [r[f"seconds_{name}"] for r in rows]
        figures[name] = {"mean_seconds": sum(seconds) / len(seconds), "max_seconds": max(seconds)}
        print(f"{name:>10}: {figures[name]['mean_seconds']:7.3f} s per candidate (slowest {max(seconds):.3f} s)")
    alone = sum(f["mean_seconds"] for f in figures.values())
    figures["together"] = {"mean_seconds": sum(together) / len(together), "max_seconds": max(together),
                           "one_by_one_seconds": alone}
    print(f"  together: {figures['together']['mean_seconds']:7.3f} s per candidate, one by one {alone:.3f} s: "
          f"{alone / figures['together']['mean_seconds']:.2f}x (snip, grad_norm, zico share their gradients)")
    if args.out:
        write_json(args.out, {"settings": vars(args) | {"out": str(args.out)}, "machine": machine(args.threads),
                              "proxies": figures, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
