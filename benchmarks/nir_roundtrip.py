"""How many sampled cells export to NIR and come back spike for spike.

    OMP_NUM_THREADS=1 python benchmarks/nir_roundtrip.py --kernels 1x1_3x3_5x5 --cell backward -n 100

Each cell is built at fmnist-tiny widths with random BatchNorm statistics (as after training),
exported with ``export_nir`` (which writes only after the file read back reproduces every spike
of 3 random images) and counted as exported, refused (an ``ExportError`` naming what NIR cannot
hold) or failed (anything else: a bug).
"""

import argparse
import collections
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from spikernel.deploy.export import ExportError, export_nir
from spikernel.nn.model import build_model
from spikernel.space.genotype import sample_many


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernels", default="1x1_3x3_5x5")
    parser.add_argument("--cell", default="backward")
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts, reasons = collections.Counter(), collections.Counter()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for k, genotype in enumerate(sample_many(args.kernels, args.cell, args.n, args.seed)):
            torch.manual_seed(k)
            model = build_model(genotype, "fmnist-tiny").eval()
            with torch.no_grad():
                for m in model.modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.running_mean.uniform_(-0.5, 0.5)
                        m.running_var.uniform_(0.3, 2.0)
                        m.weight.uniform_(-0.5, 2.0)
                        m.bias.uniform_(-0.3, 0.6)
            try:
                report = export_nir(model, Path(tmp) / "net.nir", torch.randn(3, 1, 28, 28))
                counts["exported"] += 1
                counts["with delays"] += report["delays"] > 0
            except ExportError as exc:
                counts["refused"] += 1
                reasons[str(exc).split(": ", 1)[1].split(" along")[0].split(" paths")[0][:60]] += 1
            except Exception as exc:  # noqa: BLE001 - a sweep reports every failure
                counts["failed"] += 1
                print(genotype, type(exc).__name__, exc)
    print(f"{args.n} {args.cell} cells from {args.kernels}: {dict(counts)} in {time.perf_counter() - started:.0f} s")
    for reason, n in reasons.most_common():
        print(f"  refused {n}: {reason}")


if __name__ == "__main__":
    main()
