"""Side by side: spikernel's scorer vs a faithful SNASNet-style scorer, on the same candidates.

    python benchmarks/score_speed.py --quick            # < 1 minute on a 2-core CPU
    python benchmarks/score_speed.py --preset snasnet-cifar100 --batch 256 --candidates 5

Each scorer runs in its own worker process (so each one's peak memory and page faults are its
own), and the two take turns candidate by candidate (so both see the same machine load). Both
build the candidate with the same seed, check that they hold the same weights, and score the
same batches after reseeding the same way; every pair of scores must agree to 1e-6 relative.
The last line is ``speedup: X.XX`` (baseline time / spikernel time, summed over candidates).
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

import torch

# SNASNet's spikingjelly ran its LIFs as plain torch operations; spikingjelly 2 picks its own CUDA
# kernels on a GPU, which round the charge differently. The baseline keeps SNASNet's (and
# spikernel's) arithmetic, so the two scorers fire the same spikes on a GPU too.
os.environ.setdefault("SJ_LIF_CUDA_IMPLEMENTATION", "torch")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import current_rss_mib, machine, normalize, peak_rss_mib, scoring_images  # noqa: E402

from spikernel.training.distributed import device_label  # noqa: E402
from spikernel.nn.model import build_model, get_preset  # noqa: E402
from spikernel.heap import keep_freed_memory  # noqa: E402
from spikernel.proxy.sahd import score_model, scoring_batches  # noqa: E402
from spikernel.space.genotype import sample_many  # noqa: E402

TOLERANCE = 1e-6
SCORERS = ("snasnet", "spikernel")


def weights_digest(net) -> str:
    """A hash of every weight and buffer, read in place (no copy to add to the peak memory)."""
    h = hashlib.sha1()
    for key, value in net.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy())
    return h.hexdigest()[:12]


def worker(kind: str, settings: dict, conn) -> None:
    """Set up once, then score each genotype sent until ``None``; reply with score and costs."""
    if settings["threads"]:
        torch.set_num_threads(settings["threads"])
    device = torch.device(settings["device"])
    macro = get_preset(settings["preset"], timesteps=settings["timesteps"])
    images, mean, std = scoring_images(macro, settings["dataset"], settings["data_dir"])
    raw = scoring_batches(images, settings["batch"], settings["repeats"], settings["seed"])
    if kind == "snasnet":
        from snasnet_baseline import BaselineSNASNet, make_loader, snasnet_score

        loader = make_loader(raw, mean, std)
    else:
        batches = [normalize(b.to(device), mean, std) for b in raw]  # prepared once, on the device
        if settings["keep_freed_mib"] is not None:
            keep_freed_memory(settings["keep_freed_mib"])

    def score(genotype: str) -> tuple[float, torch.nn.Module]:
        """Build (weights drawn on the device, as score_genotype does) and score one candidate."""
        torch.manual_seed(settings["seed"])
        net = build_model(genotype, macro, device=device)
        if kind == "snasnet":
            with torch.device(device):
                baseline = BaselineSNASNet(net)
            torch.manual_seed(settings["seed"] + 1)  # same dropout masks in both workers
            return snasnet_score(baseline, loader, settings["repeats"], device), net
        torch.manual_seed(settings["seed"] + 1)
        return score_model(net, batches, chunk=settings["chunk"]), net

    idle = current_rss_mib()  # imports, data and batches in memory, nothing scored yet
    score(settings["warmup"])  # one-time costs (library initialisation, kernel selection)
    conn.send({"idle_rss_mib": idle, "threads": torch.get_num_threads()})
    while (genotype := conn.recv()) is not None:
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        cpu, wall = time.process_time(), time.perf_counter()
        value, net = score(genotype)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        digest = weights_digest(net)  # checked after the clock stops
        del net  # with its LIFs' last membrane potentials, before the next candidate is scored
        conn.send({
            "score": value, "weights": digest,
            "seconds": seconds, "cpu_seconds": cpu_seconds, "page_faults": faults,
            "gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        })
    conn.send({"peak_rss_mib": peak_rss_mib()})


def run(settings: dict, genotypes: list[str]) -> dict:
    ctx = mp.get_context("spawn")  # a fresh interpreter each: no shared allocator state
    workers = {}
    for kind in SCORERS:
        here, there = ctx.Pipe()
        process = ctx.Process(target=worker, args=(kind, settings, there), daemon=True)
        process.start()
        workers[kind] = (process, here)
    setup = {kind: conn.recv() for kind, (_, conn) in workers.items()}
    rows = []
    for index, genotype in enumerate(genotypes):
        order = SCORERS if index % 2 == 0 else SCORERS[::-1]  # alternate who goes first
        row = {"genotype": genotype}
        for kind in order:
            workers[kind][1].send(genotype)
            row[kind] = workers[kind][1].recv()
        rows.append(row)
    peaks = {}
    for kind, (process, conn) in workers.items():
        conn.send(None)
        peaks[kind] = {**setup[kind], **conn.recv()}
        process.join()
    return {"rows": rows, "memory": peaks}


def relative_error(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def report(settings: dict, result: dict) -> tuple[bool, float]:
    rows, memory = result["rows"], result["memory"]
    print(f"machine: {machine(memory['spikernel']['threads'])}; device {device_label(settings['device'])}")
    print(f"preset {settings['preset']}, kernels {settings['kernels']}, {settings['cell']} cells, "
          f"batch {settings['batch']} x {settings['repeats']} repeats, {len(rows)} candidates, "
          f"spikernel chunk {settings['chunk']}")
    print(f"{'genotype':<20} {'SNASNet score':>15} {'spikernel score':>16} {'rel. diff':>9} "
          f"{'SNASNet s':>10} {'spikernel s':>11} {'ratio':>6}")
    same = True
    for row in rows:
        base, fast = row["snasnet"], row["spikernel"]
        err = relative_error(fast["score"], base["score"])
        ok = err <= TOLERANCE and base["weights"] == fast["weights"]
        same &= ok
        print(f"{row['genotype']:<20} {base['score']:>15.6f} {fast['score']:>16.6f} {err:>9.1e} "
              f"{base['seconds']:>10.3f} {fast['seconds']:>11.3f} {base['seconds'] / fast['seconds']:>6.2f}"
              + ("" if ok else "  MISMATCH"))
    total = {k: sum(r[k]["seconds"] for r in rows) for k in SCORERS}
    cpu = {k: sum(r[k]["cpu_seconds"] for r in rows) for k in SCORERS}
    faults = {k: sum(r[k]["page_faults"] for r in rows) / len(rows) for k in SCORERS}
    for k in SCORERS:
        gpu = [r[k]["gpu_peak_mib"] for r in rows if r[k]["gpu_peak_mib"] is not None]
        print(f"{k:>9}: {total[k] / len(rows):.3f} s/candidate (CPU time {cpu[k] / len(rows):.3f} s), "
              f"{faults[k]:,.0f} page faults/candidate, peak RSS {memory[k]['peak_rss_mib']:.0f} MiB "
              f"({memory[k]['peak_rss_mib'] - memory[k]['idle_rss_mib']:+.0f} MiB for scoring)"
              + (f", GPU peak {max(gpu):.0f} MiB" if gpu else ""))
    print(f"equality (same weights, scores within {TOLERANCE:g} relative): {'pass' if same else 'FAIL'}")
    return same, total["snasnet"] / total["spikernel"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 candidates at fmnist-small widths, batch 64")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--preset", default=None, help="macro preset (default fmnist; fmnist-small with --quick)")
    parser.add_argument("--candidates", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None, help="scoring batch (default 64; SNASNet used 256)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timesteps", type=int, default=None)
    parser.add_argument("--chunk", type=int, default=1,
                        help="spikernel's timesteps per pass (1: SNASNet's memory profile; T: one pass)")
    parser.add_argument("--kernels", default="1x1_3x3_5x5")
    parser.add_argument("--cell", choices=("forward", "backward"), default="backward")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per worker (0: torch's default). 1 keeps timings stable on a shared "
                             "machine, where waiting OpenMP threads cost more than they gain")
    parser.add_argument("--keep-freed-mib", type=int, default=None,
                        help="spikernel's malloc setting: keep freed blocks up to this size (default: score.py's)")
    parser.add_argument("--dataset", default="fashion-mnist-mini")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the measurements to this file")
    args = parser.parse_args(argv)
    args.preset = args.preset or ("fmnist-small" if args.quick else "fmnist")
    args.candidates = args.candidates or (4 if args.quick else 10)
    args.batch = args.batch or 64
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = {k: getattr(args, k) for k in ("device", "preset", "batch", "repeats", "timesteps", "threads",
                                               "dataset", "data_dir", "seed", "kernels", "cell", "keep_freed_mib",
                                               "chunk")}
    unique = list(dict.fromkeys(str(g) for g in sample_many(args.kernels, args.cell, 4 * args.candidates + 1,
                                                             args.seed)))
    settings["warmup"], genotypes = unique[0], unique[1 : args.candidates + 1]
    started = time.perf_counter()
    result = run(settings, genotypes)
    same, speedup = report(settings, result)
    print(f"wall time {time.perf_counter() - started:.1f} s")
    if args.json:
        from spikernel.files import write_json

        write_json(args.json, {"settings": settings, "machine": machine(result["memory"]["spikernel"]["threads"]),
                               "device": device_label(args.device), **result, "speedup": speedup, "equal": same})
    print(f"speedup: {speedup:.2f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
