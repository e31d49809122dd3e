"""Shared set-up for the benchmark scripts: scoring images for any preset, machine description,
resumable result files."""

from __future__ import annotations

import csv
import os
import platform
import resource
import time

import torch
import torch.nn.functional as F

from spikernel.data.datasets import load_dataset


def scoring_images(macro, dataset_name: str = "fashion-mnist-mini", data_dir: str | None = None):
    """uint8 training images shaped for ``macro`` plus their per-channel mean and std.

    Presets made for other data (the CIFAR widths) get Fashion-MNIST resized to their image
    size and repeated over their channels: scoring cost depends on shapes, not on content.
    """
    dataset = load_dataset(dataset_name, data_dir)
    images = dataset.train.images
    if images.shape[-1] != macro.image_size:
        images = F.interpolate(images.float(), size=macro.image_size, mode="bilinear").round().clamp(0, 255).byte()
    if images.shape[1] != macro.in_channels:
        images = images.repeat(1, macro.in_channels, 1, 1)
    channels = macro.in_channels // len(dataset.mean)
    return images, dataset.mean * channels, dataset.std * channels


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def best_ms(fn, repeats: int = 15) -> float:
    """Fastest of ``repeats`` calls after one warm-up call, in milliseconds."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times) * 1e3


def machine(threads: int | None = None) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()}-core CPU ({cpu}), torch {torch.__version__}, {threads or torch.get_num_threads()} threads"


def current_rss_mib() -> float:
    """This process's resident memory now (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_rows(path) -> list[dict]:
    """A result CSV's rows, none when it does not exist yet (a study that has not started)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_row(path, row: dict) -> None:
    """One finished measurement appended (and fsynced) to a CSV, so a killed run loses only the one
    it was making; the header comes with the first row."""
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def add_search_options(parser, batch: int) -> None:
    """The options every scoring benchmark takes: what is searched and how it is scored."""
    parser.add_argument("--preset", default="fmnist-small")
    parser.add_argument("--kernels", default="1x1_3x3_5x5")
    parser.add_argument("--cell", default="backward")
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)


def bootstrap_mean(values, minus=None, draws: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` (less the mean of ``minus``, resampled independently) and its 95% bootstrap
    interval: (mean, low, high). Paired differences go in as ``values`` alone."""
    import numpy as np

    rng = np.random.default_rng(seed)
    means = rng.choice(values, (draws, len(values))).mean(1)
    centre = float(np.mean(values))
    if minus is not None:
        means = means - rng.choice(minus, (draws, len(minus))).mean(1)
        centre -= float(np.mean(minus))
    return centre, float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def welch_difference(a, b) -> str:
    """``a`` less ``b`` (independent samples, in points): the difference, its 95% bootstrap interval and
    Welch's p, as one phrase."""
    from scipy.stats import ttest_ind

    a, b = list(a), list(b)
    diff, low, high = bootstrap_mean(a, minus=b)
    return f"{diff:+.2f} points [{low:+.2f}, {high:+.2f}], Welch p = {ttest_ind(a, b, equal_var=False).pvalue:.3f}"


def study_parser(doc: str, out, seeds: int | None = 3, summary: bool = True):
    """The options every resumable training study shares: its CSV, seeds, this worker's share and threads
    (``seeds=None`` / ``summary=False``: a study without those options)."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=out)
    if seeds is not None:
        parser.add_argument("--seeds", type=int, default=seeds)
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    if summary:
        parser.add_argument("--summary", action="store_true")
    return parser


def summary_or_run(args, summary, work) -> None:
    """``--summary`` prints the study's summary of its CSV; otherwise this worker does its share."""
    if args.summary:
        print(summary(args.out))
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        work(args)


def work_share(args, plan, key, train) -> None:
    """This worker's share of a study: every ``args.workers``-th item of ``plan`` that no row of
    ``args.out`` holds yet (``key(row)`` names a row's item), trained by ``train(item)`` and its row
    appended as soon as it is done."""
    torch.set_num_threads(args.threads)
    done = {key(row) for row in read_rows(args.out)}
    for i, item in enumerate(plan):
        if i % args.workers == args.worker and item not in done:
            append_row(args.out, train(item))
