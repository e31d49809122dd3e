"""Where spikernel's scoring time goes: operator table of a few candidates under torch.profiler.

    python benchmarks/score_profile.py --preset snasnet-cifar100 --batch 256 --device cuda
    python benchmarks/score_profile.py --quick

Scores ``--candidates`` sampled cells (after one warm-up candidate) exactly as a search does
(``score_genotype``: weights drawn on the device, the fast path) and prints the operators that
took the most time on the device (self time), then the wall time per candidate next to the
device's busy time: on a GPU, a busy time well below the wall time means the host (Python,
kernel launches) is the limit, not the GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, normalize, scoring_images  # noqa: E402

from spikernel.training.distributed import device_label  # noqa: E402
from spikernel.nn.model import get_preset  # noqa: E402
from spikernel.proxy.sahd import score_genotype, scoring_batches  # noqa: E402
from spikernel.space.genotype import sample_many  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fmnist-small, batch 64, 2 candidates")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--preset", default="snasnet-cifar100")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--kernels", default="1x1_3x3_5x5")
    parser.add_argument("--rows", type=int, default=15, help="operators listed")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.batch, args.candidates = "fmnist-small", 64, 2
    device = torch.device(args.device)
    macro = get_preset(args.preset)
    images, mean, std = scoring_images(macro)
    batches = [normalize(b.to(device), mean, std) for b in scoring_batches(images, args.batch, args.repeats, 0)]
    genotypes = list(dict.fromkeys(str(g) for g in sample_many(args.kernels, "backward", 4 * args.candidates + 1, 0)))
    score_genotype(genotypes[0], macro, batches)  # warm-up: library set-up, kernel selection

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        for genotype in genotypes[1 : args.candidates + 1]:
            score_genotype(genotype, macro, batches)
        if device.type == "cuda":
            torch.cuda.synchronize()
    wall = (time.perf_counter() - started) / args.candidates
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"machine: {machine()}; device {device_label(device)}")
    print(f"preset {args.preset}, batch {args.batch} x {args.repeats} repeats, {args.candidates} candidates (profiled)")
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows))
    # Kernels are events of the device's own type; the operators that launched them are CPU events.
    kind = DeviceType.CUDA if device.type == "cuda" else DeviceType.CPU
    busy = sum(getattr(e, key) for e in prof.key_averages() if e.device_type == kind) / 1e6 / args.candidates
    print(f"per candidate: {wall:.3f} s wall (profiler on), {busy:.3f} s "
          + ("GPU busy" if device.type == "cuda" else "CPU self time"))


if __name__ == "__main__":
    main()
