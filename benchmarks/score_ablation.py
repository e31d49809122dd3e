"""What each idea of the fast scorer buys: the same candidates scored with the ideas switched on
one after another, each variant in a fresh process (its own peak memory and page faults).

    python benchmarks/score_ablation.py --preset fmnist-small --batch 64 --candidates 4

Variants, cumulative: the SNASNet-style baseline; spikernel's plain path (multi-step model,
spikingjelly's LIF, hooks); the in-place LIF scan with per-step BatchNorm and inference mode; LIFs
of sibling edges shared; pooling channels-last; one timestep per pass up to the last LIF;
freed blocks up to 64 MiB kept by malloc; instead, up to 1 GiB. Ideas added after this table was
made (BatchNorm in place, window-sum pooling, the last step's backward convolutions skipped,
values let go after their last use) are on in every spikernel variant. Every variant must give
the same scores.
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

VARIANTS = ["snasnet", "plain", "lif+bn", "+shared LIFs", "+channels-last pooling", "+step by step",
            "+malloc keeps <=64 MiB", "malloc keeps <=1 GiB"]


def worker(variant: str, settings: dict, genotypes: list[str], queue) -> None:
    torch.set_num_threads(settings["threads"])
    import spikernel.heap as heap
    import spikernel.proxy.sahd as S
    from spikernel.nn.model import build_model, get_preset
    from spikernel.nn.neuron import is_lif

    level = VARIANTS.index(variant)
    if level < VARIANTS.index("+shared LIFs"):
        S.sibling_lifs = lambda model: [[m] for m in model.modules() if is_lif(m)]
    if level < VARIANTS.index("+channels-last pooling"):
        S.avg_pool_steps = lambda pool, x: type(pool).forward(pool, x)
    if level < VARIANTS.index("+malloc keeps <=64 MiB"):
        heap.keep_glibc_defaults()
    elif variant == "+malloc keeps <=64 MiB":
        heap.keep_freed_memory(64)
    if variant == "malloc keeps <=1 GiB":
        heap.keep_freed_memory(1024)
    macro = get_preset(settings["preset"])
    chunk = 1 if level >= VARIANTS.index("+step by step") else macro.timesteps
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
        return S.score_model(net, batches, fast=variant != "plain", chunk=chunk)

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
    args = parser.parse_args(argv)
    from spikernel.space.genotype import sample_many

    genotypes = list(dict.fromkeys(str(g) for g in sample_many(args.kernels, "backward", 8 * args.candidates, 0)))
    genotypes = genotypes[: args.candidates + 1]
    settings = vars(args)
    ctx = mp.get_context("spawn")
    rows = []
    for variant in VARIANTS:
        queue = ctx.Queue()
        process = ctx.Process(target=worker, args=(variant, settings, genotypes, queue))
        process.start()
        rows.append(queue.get())
        process.join()
    print(f"{machine(args.threads)}; {args.preset}, batch {args.batch} x {args.repeats}, "
          f"{args.candidates} backward cells of {args.kernels} (CPU time, after a warm-up candidate)")
    base = rows[0]
    print(f"{'variant':<24} {'CPU s/cand':>10} {'vs SNASNet':>10} {'faults/cand':>12} {'peak MiB':>9} {'max rel. diff':>13}")
    for r in rows:
        diff = max(abs(a - b) / abs(b) for a, b in zip(r["scores"], base["scores"]))
        print(f"{r['variant']:<24} {r['cpu_per_candidate']:>10.3f} {base['cpu_per_candidate'] / r['cpu_per_candidate']:>9.2f}x "
              f"{r['faults_per_candidate']:>12,.0f} {r['peak_above_idle_mib']:>9.0f} {diff:>13.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
