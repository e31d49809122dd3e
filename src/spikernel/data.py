"""Datasets read from their standard distributed formats into uint8 tensors, plus batched augmentation.

Images stay uint8 [N, C, H, W] in memory; normalisation and augmentation run on whole batches
(on the training device), never per image in Python.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import DatasetError

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Where Debian's dataset-fashion-mnist package installs the files.
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DatasetError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise DatasetError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    classes: tuple[str, ...]
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())
    crop_padding: int = 0
    flip: bool = True
    source: str = ""

    def __post_init__(self):
        if not self.mean:  # per-channel statistics of the training images
            pixels = self.train.images.float().div_(255).transpose(0, 1).flatten(1)
            self.mean = tuple(pixels.mean(1).tolist())
            self.std = tuple(pixels.std(1).tolist())

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> float batch with per-channel mean/std, on the batch's device."""
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images.float() / 255 - mean) / std

    def augment(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random crop (zero padding) and horizontal flip for a whole normalised batch."""
        return augment(images, self.crop_padding, self.flip, generator)


def augment(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    batch, _, height, width = images.shape
    device = images.device
    if padding:
        padded = torch.nn.functional.pad(images, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device="cpu").to(device)
        dx = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device="cpu").to(device)
        rows = (dy.view(-1, 1) + torch.arange(height, device=device)).view(batch, 1, height, 1)
        cols = (dx.view(-1, 1) + torch.arange(width, device=device)).view(batch, 1, 1, width)
        channels = padded.shape[1]
        padded = padded.gather(2, rows.expand(batch, channels, height, padded.shape[3]))
        images = padded.gather(3, cols.expand(batch, channels, height, width))
    if flip:
        mask = torch.rand(batch, generator=generator, device="cpu").to(device) < 0.5
        images = torch.where(mask.view(-1, 1, 1, 1), images.flip(-1), images)
    return images


# --------------------------------------------------------------------------- IDX (MNIST family)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip-compressed or not) as a uint8 array; clear errors for truncation."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            header = f.read(4)
            if len(header) < 4 or header[:2] != b"\x00\x00" or header[2] != 0x08:
                raise DatasetError(f"{path}: not an unsigned-byte IDX file")
            ndim = header[3]
            dims = struct.unpack(f">{ndim}I", _read_exact(f, 4 * ndim, path))
            count = int(np.prod(dims))
            data = _read_exact(f, count, path)
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise DatasetError(f"missing file {path}") from None
        raise DatasetError(f"{path}: corrupt or truncated ({exc})") from None
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _read_exact(f, size: int, path) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise DatasetError(f"{path}: truncated (expected {size} bytes, found {len(data)})")
    return data


def load_idx_split(directory: Path, split: str) -> Split:
    image_file, label_file = (directory / name for name in IDX_FILES[split])
    for path in (image_file, label_file):
        if not path.is_file():
            raise DatasetError(f"missing {path.name} in {directory}")
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.ndim != 1:
        raise DatasetError(f"{directory}: expected images [N, H, W] and labels [N], got {images.shape} / {labels.shape}")
    if len(images) != len(labels):
        raise DatasetError(f"{directory}: {len(images)} {split} images but {len(labels)} labels")
    return Split(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def find_fashion_mnist(data_dir: str | os.PathLike | None) -> Path:
    """The user's directory if given, else $SPIKERNEL_DATA/fashion-mnist, else Debian's location."""
    if data_dir is not None:
        directory = Path(data_dir).expanduser()
        if not directory.is_dir():
            raise DatasetError(f"data directory {directory} does not exist")
        nested = directory / "fashion-mnist"
        if not (directory / IDX_FILES["train"][0]).exists() and nested.is_dir():
            return nested
        return directory
    candidates = []
    if os.environ.get("SPIKERNEL_DATA"):
        candidates.append(Path(os.environ["SPIKERNEL_DATA"]) / "fashion-mnist")
    candidates.append(SYSTEM_FASHION_MNIST)
    for directory in candidates:
        if (directory / IDX_FILES["train"][0]).exists():
            return directory
    raise DatasetError(
        "Fashion-MNIST not found: pass --data-dir DIR (the four IDX .gz files), set SPIKERNEL_DATA, "
        f"or install Debian's dataset-fashion-mnist (looked in {', '.join(map(str, candidates))})"
    )


def load_fashion_mnist(data_dir=None) -> Dataset:
    directory = find_fashion_mnist(data_dir)
    return Dataset(
        "fashion-mnist", load_idx_split(directory, "train"), load_idx_split(directory, "test"),
        FASHION_CLASSES, mean=(0.2860,), std=(0.3530,), crop_padding=2, source=str(directory),
    )


def load_fashion_mnist_mini(data_dir=None) -> Dataset:
    """A stratified 10k/2k subset of the real Fashion-MNIST shipped inside the package."""
    directory = Path(str(resources.files("spikernel") / "datasets" / "fashion-mnist-mini"))
    return Dataset(
        "fashion-mnist-mini", load_idx_split(directory, "train"), load_idx_split(directory, "test"),
        FASHION_CLASSES, mean=(0.2860,), std=(0.3530,), crop_padding=2, source="embedded",
    )


# --------------------------------------------------------------------------- registry

DATASETS: dict[str, Callable[..., Dataset]] = {
    "fashion-mnist": load_fashion_mnist,
    "fashion-mnist-mini": load_fashion_mnist_mini,
}
DEFAULT_DATASET = "fashion-mnist-mini"


def load_dataset(name: str, data_dir=None) -> Dataset:
    try:
        loader = DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None
    return loader(data_dir)
