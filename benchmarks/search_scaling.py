"""How a search scales with N: peak memory should stay flat (results go to storage as they come),
time should grow linearly.

    python benchmarks/search_scaling.py --sizes 100 200 400 --out runs/scaling

Runs ``spikernel search`` once per N, each in a fresh process and run folder, at tiny settings,
and reads each process's own peak resident memory (``wait4``) and wall time. Prints per-N
seconds, seconds per candidate, and peak RSS, plus a least-squares line through time vs N.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

from spikernel.files import read_json, write_json  # noqa: E402


def run_search(n: int, out: Path, args) -> dict:
    if out.exists():
        shutil.rmtree(out)
    command = [sys.executable, "-m", "spikernel", "search", "-n", str(n), "--preset", args.preset,
               "--kernels", args.kernels, "--batch", str(args.batch), "--repeats", str(args.repeats),
               "--seed", str(args.seed), "--out", str(out)]
    if args.fidelity:
        command += ["--fidelity", args.fidelity]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}  # see score_speed.py --threads
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"search of {n} failed:\n{process.stderr.read()}")
    report = read_json(out / "search.json")
    return {"candidates": n, "wall_seconds": round(wall, 2), "seconds_per_candidate": round(wall / n, 4),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "scoring_seconds": report["time"]["scoring_seconds_total"], "counts": report["counts"],
            "db_bytes": (out / "study.db").stat().st_size}


def fit_line(xs, ys) -> tuple[float, float, float]:
    """Least squares y = a + b x and the largest relative residual."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    a = my - b * mx
    worst = max(abs(y - (a + b * x)) / y for x, y in zip(xs, ys))
    return a, b, worst


def plot(rows: list[dict], a: float, b: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["candidates"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    left.plot(n, [r["wall_seconds"] for r in rows], "o", label="measured")
    left.plot([0, max(n)], [a, a + b * max(n)], "-", lw=1, label=f"{a:.0f} s + {b:.2f} s x N")
    left.set(xlabel="candidates N", ylabel="wall time (s)", title="search time")
    left.legend(frameon=False)
    right.plot(n, [r["peak_rss_mib"] for r in rows], "o-")
    right.set(xlabel="candidates N", ylabel="peak RSS (MiB)", title="search peak memory",
              ylim=(0, 1.2 * max(r["peak_rss_mib"] for r in rows)))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400])
    parser.add_argument("--preset", default="fmnist-tiny")
    parser.add_argument("--kernels", default="1x1_3x3_5x5")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fidelity", default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plot", type=Path, default=None, help="also draw time and peak memory vs N (PNG)")
    args = parser.parse_args(argv)
    rows = []
    for n in args.sizes:
        rows.append(run_search(n, args.out / f"n{n}", args))
        r = rows[-1]
        print(f"N={n:>5}: {r['wall_seconds']:>8.1f} s wall ({r['seconds_per_candidate']:.3f} s/candidate, "
              f"CPU {r['cpu_seconds']:.1f} s), peak RSS {r['peak_rss_mib']:.0f} MiB, study.db {r['db_bytes'] / 1024:.0f} KiB",
              flush=True)
    a, b, worst = fit_line([r["candidates"] for r in rows], [r["wall_seconds"] for r in rows])
    print(f"time = {a:.1f} s + {b:.3f} s x N (largest deviation from the line {worst:.1%}); "
          f"peak RSS {min(r['peak_rss_mib'] for r in rows):.0f}-{max(r['peak_rss_mib'] for r in rows):.0f} MiB")
    if args.plot:
        plot(rows, a, b, args.plot)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json(args.out / "scaling.json", {"settings": settings, "machine": machine(args.threads),
                                          "rows": rows, "fit": {"intercept_s": a, "seconds_per_candidate": b,
                                                                "worst_relative_residual": worst}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
