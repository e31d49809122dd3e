"""Thread settings on an idle and on a shared machine: a search and a training, side by side.

Runs the same small ``spikernel search`` and ``spikernel train`` as fresh processes under each
setting: ``--threads`` left to spikernel (the cores the load average leaves idle), ``--threads`` =
all cores (PyTorch's own default), each with OpenMP's default waiting and with
``OMP_WAIT_POLICY=PASSIVE``. ``--load N`` starts N busy processes (a tight loop each) for the
duration, as other users of a shared machine would be. Prints one markdown row per setting.

    python benchmarks/threads.py            # idle
    python benchmarks/threads.py --load 2   # two busy processes beside it
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

SPIKERNEL = [sys.executable, "-m", "spikernel"]
TINY = ["-p", "fmnist-tiny", "-T", "2"]


@contextmanager
def busy(processes: int):
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        time.sleep(2 if processes else 0)  # let the load average notice them
        yield
    finally:
        for p in loops:
            p.kill()


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=int, default=0, help="busy processes to start beside the runs")
    parser.add_argument("--candidates", type=int, default=30)
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    settings = [("auto", None, None), ("auto", None, "PASSIVE"), (str(cores), cores, None),
                (str(cores), cores, "PASSIVE")]
    print(f"| threads | OMP_WAIT_POLICY | search {args.candidates} candidates (s) | train 1 epoch of 2,000 images (s) |"
          f" load: {args.load} busy processes, 1-min load average {os.getloadavg()[0]:.1f} |")
    print("|---|---|---|---|---|")
    with busy(args.load), tempfile.TemporaryDirectory() as folder:
        for i, (label, threads, policy) in enumerate(settings):
            env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
            if policy:
                env["OMP_WAIT_POLICY"] = policy
            extra = ["--threads", str(threads)] if threads else []
            search = timed([*SPIKERNEL, "search", *TINY, "-n", str(args.candidates), "--score-batch", "64", *extra,
                            "--out", str(Path(folder) / f"s{i}")], env)
            train = timed([*SPIKERNEL, "train", "-g", "0302 0030 3003 0000", *TINY, "--epochs", "1", "--limit-train",
                           "2000", *extra, "--out", str(Path(folder) / f"t{i}")], env)
            print(f"| {label} | {policy or 'default'} | {search:.1f} | {train:.1f} | |", flush=True)


if __name__ == "__main__":
    main()
