"""How many threads the heavy work gets: what the user asks, or the cores nobody else is using.

PyTorch starts one OpenMP thread per core. On a machine where other processes already keep
cores busy, those threads contend with them and with each other (each parallel region waits
for its slowest thread), which is where a shared machine's 16-45x slowdowns came from. So by
default spikernel takes the cores the load average leaves idle, at least one.
"""

from __future__ import annotations

import os

from spikernel.errors import ConfigError


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def idle_cores() -> int:
    """Cores the last minute's load leaves free (rounded), at least 1."""
    cores = available_cores()
    try:
        busy = os.getloadavg()[0]
    except OSError:
        return cores
    return max(1, min(cores, round(cores - busy)))


def choose_threads(requested: int | None = None) -> int:
    """``requested`` if it is a sane count for this machine, else the idle cores."""
    if requested is None:
        return idle_cores()
    cores = available_cores()
    if not 1 <= requested <= cores:
        raise ConfigError(f"--threads must be between 1 and the {cores} cores this process may use, got {requested}")
    return requested


def use_threads(requested: int | None = None) -> int:
    """Set PyTorch's intra-op thread count (``choose_threads``) and return it."""
    import torch

    threads = choose_threads(requested)
    torch.set_num_threads(threads)
    return threads
