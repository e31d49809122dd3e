"""What each idea of the fast scorer buys: the same candidates scored by the full fast path and
by the fast path with one idea switched off at a time, each variant in a fresh process (its own
peak memory and page faults), beside the plain path and a SNASNet-style scorer.

    python benchmarks/score_ablation.py --preset fmnist-small --batch 64 --candidates 4

Ideas (``nn.layers.use_kernels(model, "inference")`` and ``SNN.fire``): the in-place LIF scan (and
its cache-sized chunks), per-step BatchNorm without running statistics, pooling on the
channels-last schedule, one timestep per pass up to the last LIF, malloc keeping freed blocks.
(Measured and removed since: BatchNorm in place, window-sum pooling, sibling LIFs sharing one scan,
the reduction by channel halves; docs/BENCHMARKS.md.)
A row's ``vs fast`` is the full fast path's time over the row's: below 1.00 the idea pays.
Every variant must give the same scores.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import current_rss_mib, machine, normalize, peak_rss_mib, scoring_images  # noqa: E402

VARIANTS = ["snasnet", "plain", "fast", "- LIF scan", "- LIF chunks", "- per-step BatchNorm", "- pooling schedule",
            "- step by step", "- kept memory"]


def switch_off(variant: str) -> int | None:
    """Turn one idea off in this (fresh) process; the timesteps per pass to score with."""
    import spikernel.heap as heap
    import spikernel.nn.layers as layers
    import spikernel.nn.neuron as neuron

    if variant == "- LIF scan":
        neuron.LIF.KERNELS = ("spikingjelly", "fused")
    elif variant == "- LIF chunks":
        neuron.LIF_CHUNK = 1 << 62
    elif variant == "- per-step BatchNorm":
        layers.TimestepBatchNorm2d.KERNELS = ("spikingjelly",)
    elif variant == "- pooling schedule":
        layers.StepAvgPool2d.KERNELS = ("spikingjelly",)
    elif variant == "- kept memory":
        heap.keep_glibc_defaults()
    return None if variant == "- step by step" else 1


def worker(variant: str, settings: dict, genotypes: list[str], queue) -> None:
    torch.set_num_threads(settings["threads"])
    import spikernel.proxy.sahd as S
    from spikernel.nn.model import build_model, get_preset

    chunk = switch_off(variant)
    macro = get_preset(settings["preset"])
    images, mean, std = scoring_images(macro)
    raw = S.scoring_batches(images, settings["batch"], settings["repeats"], 0)
    batches = [normalize(b, mean, std) for b in raw]
    if variant == "snasnet":
        from snasnet_baseline import BaselineSNASNet, make_loader, snasnet_score

        loader = make_loader(raw, mean, std)

    def score(g):
        torch.manual_seed(0)
        net = build_model(g, macro)
        if variant == "snasnet":
            net = BaselineSNASNet(net)
            torch.manual_seed(1)
            return snasnet_score(net, loader, settings["repeats"], "cpu")
        torch.manual_seed(1)
        return S.score_model(net, batches, fast=variant != "plain", chunk=chunk or macro.timesteps)

    idle = current_rss_mib()
    score(genotypes[0])  # warm-up
    cpu, faults = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    scores = [score(g) for g in genotypes[1:]]
    n = len(scores)
    queue.put({"variant": variant, "scores": scores, "cpu_per_candidate": (time.process_time() - cpu) / n,
               "faults_per_candidate": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / n,
               "peak_above_idle_mib": peak_rss_mib() - idle})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="fmnist-small")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--kernels", default="1x1_3x3_5x5")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", help="comma-separated subset of the variants (snasnet is always run)")
    args = parser.parse_args(argv)
    variants = ["snasnet"] + [v for v in (args.variants.split(",") if args.variants else VARIANTS) if v != "snasnet"]
    from spikernel.space.genotype import sample_many

    genotypes = list(dict.fromkeys(str(g) for g in sample_many(args.kernels, "backward", 8 * args.candidates, 0)))
    genotypes = genotypes[: args.candidates + 1]
    settings = vars(args)
    ctx = mp.get_context("spawn")
    rows = []
    for variant in variants:
        queue = ctx.Queue()
        process = ctx.Process(target=worker, args=(variant, settings, genotypes, queue))
        process.start()
        rows.append(queue.get())
        process.join()
    print(f"{machine(args.threads)}; {args.preset}, batch {args.batch} x {args.repeats}, "
          f"{args.candidates} backward cells of {args.kernels} (CPU time, after a warm-up candidate)")
    base = rows[0]
    fast = next((r for r in rows if r["variant"] == "fast"), base)
    print(f"{'variant':<22} {'CPU s/cand':>10} {'vs SNASNet':>10} {'vs fast':>8} {'faults/cand':>12} {'peak MiB':>9} "
          f"{'max rel. diff':>13}")
    for r in rows:
        diff = max(abs(a - b) / abs(b) for a, b in zip(r["scores"], base["scores"]))
        cpu = r["cpu_per_candidate"]
        print(f"{r['variant']:<22} {cpu:>10.3f} {base['cpu_per_candidate'] / cpu:>9.2f}x "
              f"{fast['cpu_per_candidate'] / cpu:>7.2f}x {r['faults_per_candidate']:>12,.0f} "
              f"{r['peak_above_idle_mib']:>9.0f} {diff:>13.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
