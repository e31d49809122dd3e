"""Start-up: how long the command line takes before it does any work, side by side in one run.

Each row is the median wall time of fresh processes: ``spikernel --help``, an argument error, a
no-op resume of a finished search and of a finished training (the folders are made first), and
``python -c "import torch"`` as the floor every command that computes must pay. Goals (issue 14):
``--help`` and argument errors under 1 s, a no-op resume under 2 s on the idle 2-core machine.

    python benchmarks/startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPIKERNEL = [sys.executable, "-m", "spikernel"]
TINY = ["-p", "fmnist-tiny", "-T", "2"]


def seconds(command: list[str], repeats: int, ok_codes=(0,)) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if done.returncode not in ok_codes:
            raise SystemExit(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        search, train = Path(folder) / "search", Path(folder) / "train"
        search_cmd = [*SPIKERNEL, "search", *TINY, "-n", "2", "--batch", "8", "--out", str(search)]
        train_cmd = [*SPIKERNEL, "train", "-g", "0001 0000 0000 0000", *TINY, "--epochs", "1", "--limit-train", "32",
                     "--out", str(train)]
        subprocess.run(search_cmd, capture_output=True, check=True)
        subprocess.run(train_cmd, capture_output=True, check=True)
        rows = [
            ("spikernel --help", seconds([*SPIKERNEL, "--help"], args.repeats)),
            ("argument error (search --candidates 0)", seconds([*SPIKERNEL, "search", "--candidates", "0", "--out",
                                                                 str(Path(folder) / "x")], args.repeats, (2,))),
            ("no-op resume: finished search", seconds(search_cmd, args.repeats)),
            ("no-op resume: finished training", seconds(train_cmd, args.repeats)),
            ('python -c "import torch" (floor)', seconds([sys.executable, "-c", "import torch"], args.repeats)),
        ]
    floor = rows[-1][1]
    print(f"| what | median of {args.repeats} (s) | vs import torch |\n|---|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:.2f} | {value / floor:.2f}x |")


if __name__ == "__main__":
    main()
