"""Small filesystems for fault tests: a read-only folder and a disk that is (nearly) full.

Mounting needs root; without it a read-only folder falls back to permissions (which root ignores),
and a full disk cannot be made, so the tests that need one skip.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(path: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def _unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def read_only_folder(path: Path):
    """An empty folder nothing can be written into (a read-only tmpfs, else mode 0555 for non-root)."""
    path.mkdir(parents=True, exist_ok=True)
    if _mount(path, "ro,size=64k"):
        try:
            yield path
        finally:
            _unmount(path)
        return
    if os.geteuid() == 0:
        pytest.skip("root ignores permissions and mounting a read-only tmpfs is not permitted here")
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


@contextmanager
def small_disk(path: Path, size: str = "2m"):
    """A tmpfs of ``size`` at ``path``; skips the test where mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    if not _mount(path, f"size={size}"):
        pytest.skip("mounting a tmpfs is not permitted here (needs root)")
    try:
        yield path
    finally:
        _unmount(path)


def fill(disk: Path, leave: int = 0) -> Path:
    """Write a filler file so that about ``leave`` bytes stay free; returns it (delete it to free the space)."""
    filler = disk / "filler"
    chunk = b"\0" * (1 << 16)
    with open(filler, "wb", buffering=0) as f:
        remaining = max(0, free_bytes(disk) - leave)
        try:
            while remaining > 0:
                remaining -= f.write(chunk[: min(len(chunk), remaining)])
        except OSError:  # the disk is full: that is the point
            pass
    return filler
