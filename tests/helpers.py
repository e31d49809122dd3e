"""Helpers shared by the tests (no test module imports another): the CLI runner, dataset files
in their publishers' formats, trained-like networks, and spikingjelly's SNASNet as the reference."""

import gzip
import hashlib
import os
import struct
import subprocess
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from spikingjelly.activation_based.model.snas_net import SNASNet
from torch import nn

from spikernel.data.datasets import IDX_FILES, load_dataset
from spikernel.nn.model import build_model
from spikernel.space.genotype import NODES


def cli(*args):
    """``spikernel ARGS`` in-process: (exit code, stdout, stderr)."""
    from spikernel.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def write_idx(path, array: np.ndarray) -> None:
    """An IDX file as Zalando/LeCun distribute it: magic 0x0803 / 0x0801, big-endian dims, gzip."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(directory, train: int = 64, test: int = 32, seed: int = 0):
    """A Fashion-MNIST-format folder holding the first images of the embedded subset."""
    mini = load_dataset("fashion-mnist-mini")
    directory.mkdir(parents=True, exist_ok=True)
    for split, n, (image_file, label_file) in (("train", train, IDX_FILES["train"]), ("test", test, IDX_FILES["test"])):
        source = getattr(mini, split)
        write_idx(directory / image_file, source.images[:n, 0].numpy())
        write_idx(directory / label_file, source.labels[:n].numpy())
    return directory


def trained_like(genotype: str, preset: str = "fmnist-tiny", dtype=torch.float64) -> nn.Module:
    """A network whose BatchNorms hold non-trivial statistics and affines, as after training."""
    torch.manual_seed(0)
    net = build_model(genotype, preset).to(dtype)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.3, 2.0)
                m.weight.uniform_(-0.5, 2.0)  # negative scales too: folding must keep the sign
                m.bias.uniform_(-0.3, 0.6)
    return net.eval()



def built_counts(net) -> tuple[int, int]:
    """(parameters, BatchNorm running statistics) of a built network, as torch counts them."""
    params = sum(p.numel() for p in net.parameters())
    buffers = sum(b.numel() for name, b in net.named_buffers() if "running" in name)
    return params, buffers


def lif_neurons(net, macro) -> dict[int, int]:
    """Neurons per LIF layer, measured from one forward (a layer called per timestep counts once)."""
    from spikernel.nn.neuron import is_lif

    sizes = {}
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.__setitem__(id(m), o[0, 0].numel()))
             for m in net.modules() if is_lif(m)]
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, macro.in_channels, macro.image_size, macro.image_size))
    for h in hooks:
        h.remove()
    return sizes


# The reference builds edge modules column by column (SNASNet's order).
_FORWARD = [(row, col) for col in range(1, NODES) for row in range(col)]
_BACKWARD = [(row, col) for col in range(NODES - 1) for row in range(col + 1, NODES)]


def reference_snasnet(net, dataset: str) -> SNASNet:
    """A SNASNet with ``net``'s genotype and weights; ``dataset`` picks its hard-coded widths."""
    g, m = net.genotype, net.macro
    args = types.SimpleNamespace(timestep=m.timesteps, second_avgpooling=m.second_pool, dataset=dataset,
                                 threshold=m.threshold, tau=m.tau,
                                 celltype="backward" if g.is_backward else "forward")
    ref = SNASNet(args, torch.tensor(g.matrix))
    copy = lambda dst, src: dst.load_state_dict(src.state_dict())  # noqa: E731
    copy(ref.stem, net.stem)
    for ours, theirs in ((net.cell1, ref.cell1), (net.cell2, ref.cell2)):
        for index, (a, b) in enumerate(_FORWARD):
            if g.matrix[a][b]:
                copy(theirs.cell_architecture[index], ours.ops[f"{a}_{b}"])
        for index, (a, b) in enumerate(_BACKWARD):
            if g.is_backward and g.matrix[a][b]:
                copy(theirs.cell_architecture_back[index], ours.ops[f"{a}_{b}"])
    copy(ref.downconv1, net.reduction[:4])
    copy(ref.last_act, net.last[:2])
    copy(ref.classifier, net.head)
    return ref


# --------------------------------------------------------------------------- bad input: checks


def snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (names relative), to prove a failed command left it alone.
    SQLite databases count by their rows: a write-ahead log that another connection's close folds into
    the file (an earlier command's storage, collected later) changes the bytes, not the data."""
    return {str(p.relative_to(folder)): hashlib.sha256(_sqlite_rows(p) if p.suffix == ".db" else p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def _sqlite_rows(path: Path) -> bytes:
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return "\n".join(db.iterdump()).encode()


def assert_one_error(code: int, out: str, err: str, *fragments: str, alone: bool = True) -> str:
    """Exit 2, exactly one ``error:`` line holding every fragment, no traceback. ``alone``: nothing
    else on stderr (a command that failed mid-run has drawn its progress bar before)."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, (code, err)
    assert len(errors) == 1, err
    assert "Traceback" not in out + err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    if alone:
        assert err.strip() == errors[0], err
    return errors[0]


def assert_no_temporaries(folder: Path) -> None:
    assert not [p for p in folder.rglob(".*.tmp")], "an interrupted write left a temporary file"


# --------------------------------------------------------------------------- small filesystems for fault tests
# Mounting needs root; without it a read-only folder falls back to permissions (which root ignores),
# and a full disk cannot be made, so the tests that need one skip.


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
