"""glibc malloc settings for activation-sized tensors: keep freed blocks, hand them back between jobs.

By default glibc returns freed memory to the OS (blocks above a few MB are unmapped, the heap top
is trimmed), so the next activation page-faults fresh, zeroed pages in again. That is much of
SNASNet's scoring CPU time (SPEC 9), and each oneDNN convolution allocates three activation-sized
buffers. Kept blocks are reused instead, but they fragment the heap as different candidates
allocate in different orders, so the scorer hands the free pages back after each candidate
(docs/BENCHMARKS.md, section 1, has the figures). Off glibc every call here does nothing.
"""

from __future__ import annotations

import ctypes
import functools
from contextlib import contextmanager

SCORING_KEPT_MIB = 512  # every activation and convolution buffer at CIFAR widths, batch 256
TRAINING_KEPT_MIB = 64

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_START = 128 << 10  # both thresholds' documented start values (glibc then adapts the mmap one)
_chosen = False  # a process-wide choice (keep_freed_memory / keep_glibc_defaults) wins over scoped ones
_depth = 0


@functools.cache
def _libc():
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError, TypeError):  # not glibc
        return None


def _set(mmap_threshold: int, trim_threshold: int) -> bool:
    libc = _libc()
    if libc is None:
        return False
    libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    return True


def keep_freed_memory(max_block_mib: int = TRAINING_KEPT_MIB) -> bool:
    """Process-wide, for the rest of the process: keep freed blocks up to ``max_block_mib`` for
    reuse (larger ones still come and go fresh) and let the heap top shrink only past 2 GiB free.
    Scoped settings (``kept_freed_memory``) then leave malloc alone. Returns False off glibc."""
    global _chosen
    _chosen = True
    return _set(max_block_mib << 20, 2**31 - 1)


def keep_glibc_defaults() -> None:
    """Leave malloc as glibc sets it, and stop the scorer and trainer from changing it (benchmarks)."""
    global _chosen
    _chosen = True


@contextmanager
def kept_freed_memory(max_block_mib: int = TRAINING_KEPT_MIB):
    """Within the block, malloc keeps freed blocks up to ``max_block_mib`` (what a scoring or a
    training allocates again and again); after it, glibc's start values again. Nested blocks and a
    process-wide choice are left as they are. The scorer keeps ``SCORING_KEPT_MIB`` (at CIFAR-100
    widths with batch 256: 62 s per candidate instead of 74 at 64 MiB), training ``TRAINING_KEPT_MIB``.
    Yields whether this block changed the setting."""
    global _depth
    scoped = not _chosen and _depth == 0 and _set(max_block_mib << 20, 2**31 - 1)
    _depth += 1
    try:
        yield scoped
    finally:
        _depth -= 1
        if scoped:
            _set(_GLIBC_START, _GLIBC_START)


def release_freed_memory() -> bool:
    """Return the heap's free pages to the OS (``malloc_trim``), keeping its layout.

    Called between candidates: the heap's high-water mark stays, but only what the next candidate
    touches is resident again, so a search's peak is that of one candidate instead of the fragments
    every earlier one left. The price is a page fault per page touched again (about 0.3M per
    candidate at CIFAR-100 widths, batch 256). Returns False off glibc.
    """
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
