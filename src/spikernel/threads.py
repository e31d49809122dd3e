"""How many threads the heavy work gets: what the user asks, or the cores nobody else is using.

PyTorch starts one OpenMP thread per core. On a machine where other processes already keep
cores busy, those threads contend with them and with each other (each parallel region waits
for its slowest thread), which is where a shared machine's 16-45x slowdowns came from. So by
default spikernel takes the cores other processes leave idle, at least one, unless
``OMP_NUM_THREADS`` pins a count.

Idle is counted from the tasks runnable right now (``/proc/loadavg``'s fourth field, the median of
three reads 5 ms apart), not from the one-minute load average: that average lags by a minute, and
right after other jobs stopped it left a 14-minute main job on one of two idle cores.
"""

from __future__ import annotations

import os
import time

from spikernel.errors import ConfigError


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def idle_cores() -> int:
    """Cores the processes running elsewhere leave free, at least 1."""
    cores = available_cores()
    busy = busy_elsewhere()
    return cores if busy is None else max(1, min(cores, cores - busy))


def busy_elsewhere(reads: int = 3) -> int | None:
    """Runnable tasks other than this one (median of ``reads`` snapshots); None where unknown."""
    counts = []
    try:
        for i in range(reads):
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
            counts.append(running - 1)  # this process is running while it reads
            if i < reads - 1:
                time.sleep(0.005)
    except (OSError, ValueError, IndexError):  # not Linux: the one-minute average is all there is
        try:
            return round(os.getloadavg()[0])
        except OSError:
            return None
    return sorted(counts)[len(counts) // 2]


def choose_threads(requested: int | None = None) -> int:
    """``requested`` if it is a sane count for this machine; else ``OMP_NUM_THREADS`` where it is set
    (up to the cores), else the idle cores."""
    if requested is None:
        return pinned_threads() or idle_cores()
    cores = available_cores()
    if not 1 <= requested <= cores:
        raise ConfigError(f"--threads must be between 1 and the {cores} cores this process may use, got {requested}")
    return requested


def pinned_threads() -> int | None:
    """The thread count ``OMP_NUM_THREADS`` pins, up to the cores; None where it is unset or not a count.

    A pinned count must win over the idle cores: those change with the load, and a training resumed
    on another thread count than it began with sums its convolutions in another order, so it would
    no longer end bit for bit as an uninterrupted one.
    """
    try:
        pinned = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return min(pinned, available_cores()) if pinned >= 1 else None


def use_threads(requested: int | None = None) -> int:
    """Set PyTorch's intra-op thread count (``choose_threads``) and return it."""
    import torch

    threads = choose_threads(requested)
    torch.set_num_threads(threads)
    return threads
