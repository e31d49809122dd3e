"""Datasets read from their standard distributed formats into uint8 tensors, plus batched augmentation.

Images stay uint8 [N, C, H, W] in memory; augmentation and normalisation run on whole batches
(on the training device), never per image in Python. Readers take the files exactly as their
publishers ship them: Fashion-MNIST's IDX .gz files, CIFAR's python-pickle batches, the
tiny-imagenet-200 folder. ``download`` fetches them, checksummed, when a machine is online.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import math
import os
import pickle
import struct
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from spikernel.data import DATASET_NAMES, DEFAULT_DATASET  # noqa: F401  (re-exported)
from spikernel.errors import DatasetError
from spikernel.files import make_dir

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
        if not self.mean:
            self.mean, self.std = channel_stats(self.train.images)
        if self.train.images.shape[1:] != self.test.images.shape[1:]:
            raise DatasetError(f"{self.name}: train images are {tuple(self.train.images.shape[1:])} "
                               f"but test images {tuple(self.test.images.shape[1:])}")
        for split in (self.train, self.test):
            if len(split) and not 0 <= int(split.labels.min()) <= int(split.labels.max()) < len(self.classes):
                raise DatasetError(f"{self.name}: labels outside 0..{len(self.classes) - 1}")

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

    def holdout(self, count: int, seed: int = 0) -> tuple[Dataset, Split]:
        """A validation split of ``count`` training images (seeded) and the dataset without them.

        Selection by validation accuracy never looks at the test split; normalisation keeps the
        full training split's statistics so scores and trainings see the same inputs.
        """
        if not 0 < count < len(self.train):
            raise DatasetError(f"a validation split of {count} images leaves no training data "
                               f"({len(self.train)} training images)")
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed))
        keep, held = order[count:].sort().values, order[:count].sort().values
        pick = lambda index: Split(self.train.images[index], self.train.labels[index])  # noqa: E731
        return replace(self, train=pick(keep)), pick(held)

    def augment(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random crop (zero padding) and horizontal flip for a whole batch (uint8 or float)."""
        return augment(images, self.crop_padding, self.flip, generator)


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1], a chunk at a time (Tiny-ImageNet is 1.2 GB)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        pixels = images[start : start + chunk].transpose(0, 1).flatten(1).double() / 255
        total += pixels.sum(1)
        squares += pixels.square().sum(1)
    count = max(1, images[:, 0].numel())
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt() * (count / max(1, count - 1)) ** 0.5
    return tuple(mean.tolist()), tuple(std.clamp_min(1e-6).tolist())


def augment(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample random crop of a zero-padded batch by two gathers, and a random horizontal flip.

    Offsets are drawn on the CPU generator (the same draws on every device), then moved.
    """
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


# --------------------------------------------------------------------------- finding a dataset on disk


def data_roots() -> list[Path]:
    """Where datasets are looked for when no --data-dir is given (and where --download puts them)."""
    roots = []
    if os.environ.get("SPIKERNEL_DATA"):
        roots.append(Path(os.environ["SPIKERNEL_DATA"]).expanduser())
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    roots.append(Path(cache) / "spikernel" / "data")
    return roots


def locate(name: str, data_dir, folder: str, required: Sequence[str], extra: Sequence[Path] = ()) -> Path:
    """The directory holding ``required`` (relative paths): ``data_dir`` itself or ``data_dir/folder``,
    else ``folder`` under each data root. Names the first missing file and where it looked."""
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise DatasetError(f"data directory {root} does not exist")
        candidates = [root, root / folder]
    else:
        candidates = [r / folder for r in data_roots()] + list(extra)
    present = [d for d in candidates if any((d / f).exists() for f in required)]
    if not present:
        looked = ", ".join(map(str, candidates))
        raise DatasetError(f"{name} not found (looked for {required[0]} in {looked}): pass --data-dir DIR, "
                           f"set SPIKERNEL_DATA, or add --download when online")
    directory = present[0]
    for relative in required:
        if not (directory / relative).exists():
            raise DatasetError(f"missing {relative} in {directory}")
    return directory


# --------------------------------------------------------------------------- IDX (MNIST family)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip-compressed or not) as a uint8 array.

    The header's dimensions must account for the payload exactly: fewer bytes is a truncated
    file, more is a header that undercounts its images (read as is, the rest would be ignored).
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            header = f.read(4)
            if len(header) < 4 or header[:2] != b"\x00\x00" or header[2] != 0x08 or not 1 <= header[3] <= 4:
                raise DatasetError(f"{path}: not an unsigned-byte IDX file of 1 to 4 dimensions")
            ndim = header[3]
            dims = struct.unpack(f">{ndim}I", _read_exact(f, 4 * ndim, path))
            payload = f.read()  # what is there, never what the header claims (it may claim terabytes)
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise DatasetError(f"missing file {path}") from None
        raise DatasetError(f"{path}: corrupt or truncated ({exc})") from None
    count = math.prod(dims)
    if len(payload) < count:
        raise DatasetError(f"{path}: truncated (its header declares {' x '.join(map(str, dims))} = {count} bytes, "
                           f"found {len(payload)})")
    if len(payload) > count:
        raise DatasetError(f"{path}: {len(payload) - count} bytes after the {' x '.join(map(str, dims))} its header "
                           "declares (a wrong count in the header, or another file appended)")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


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
    """The user's directory if given, else $SPIKERNEL_DATA/fashion-mnist, the download cache, Debian's location."""
    required = IDX_FILES["train"] + IDX_FILES["test"]
    return locate("Fashion-MNIST", data_dir, "fashion-mnist", required, extra=[SYSTEM_FASHION_MNIST])


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


# --------------------------------------------------------------------------- CIFAR (python-pickle batches)

CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"], "meta": "batches.meta"}
CIFAR100_FILES = {"train": ["train"], "test": ["test"], "meta": "meta"}


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickled dicts of numpy arrays and lists. Only the handful of numpy
    constructors such a file names may be resolved, so a tampered file cannot run code."""

    SAFE = {
        ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if module.startswith("numpy.core"):  # what numpy 1.x (and the 2009 files) wrote
            module = "numpy._core" + module[len("numpy.core"):]
        if (module, name) not in self.SAFE:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return getattr(importlib.import_module(module), name)


def read_cifar_batch(path: Path) -> dict:
    """One CIFAR batch file: a dict with str keys (python 2 wrote them as byte strings)."""
    try:
        with open(path, "rb") as f:
            content = _ArrayUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DatasetError(f"missing {path.name} in {path.parent}") from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DatasetError(f"{path}: corrupt or not a CIFAR batch ({exc})") from None
    if not isinstance(content, dict):
        raise DatasetError(f"{path}: not a CIFAR batch (a {type(content).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in content.items()}


def _cifar_split(directory: Path, files: list[str], label_key: str) -> Split:
    images, labels = [], []
    for name in files:
        path = directory / name
        batch = read_cifar_batch(path)
        data, target = batch.get("data"), batch.get(label_key)
        if data is None or target is None:
            raise DatasetError(f"{path}: no 'data' / '{label_key}' entries")
        data = np.asarray(data)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DatasetError(f"{path}: wrong image shape {data.dtype} {data.shape}, expected uint8 [N, 3072] (3x32x32)")
        if len(target) != len(data):
            raise DatasetError(f"{path}: {len(data)} images but {len(target)} labels")
        images.append(data.reshape(-1, 3, 32, 32))  # rows are the R, G, B planes one after another
        labels.append(np.asarray(target, dtype=np.int64))
    return Split(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def _load_cifar(name: str, data_dir, folder: str, files: dict, label_key: str, names_key: str,
                mean: tuple, std: tuple) -> Dataset:
    required = files["train"] + files["test"] + [files["meta"]]
    directory = locate(name, data_dir, folder, required)
    classes = tuple(read_cifar_batch(directory / files["meta"]).get(names_key) or ())
    if not classes:
        raise DatasetError(f"{directory / files['meta']}: no '{names_key}' entry")
    return Dataset(
        name, _cifar_split(directory, files["train"], label_key), _cifar_split(directory, files["test"], label_key),
        tuple(str(c) for c in classes), mean=mean, std=std, crop_padding=4, source=str(directory),
    )


def load_cifar10(data_dir=None) -> Dataset:
    return _load_cifar("cifar10", data_dir, "cifar-10-batches-py", CIFAR10_FILES, "labels", "label_names",
                       mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))


def load_cifar100(data_dir=None) -> Dataset:
    return _load_cifar("cifar100", data_dir, "cifar-100-python", CIFAR100_FILES, "fine_labels", "fine_label_names",
                       mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))


# --------------------------------------------------------------------------- Tiny-ImageNet (JPEG folder)

TINY_SIZE = 64


def _decode_images(paths: Sequence[Path]) -> np.ndarray:
    """JPEGs -> uint8 [N, 3, 64, 64]; Pillow releases the GIL while decoding, so threads help."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DatasetError("reading Tiny-ImageNet needs Pillow: pip install pillow") from None
    out = np.empty((len(paths), TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)

    def decode(item):
        i, path = item
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))  # a few of its images are grayscale
        except FileNotFoundError:
            raise DatasetError(f"missing {path.name} in {path.parent}") from None
        except (OSError, UnidentifiedImageError, SyntaxError) as exc:
            raise DatasetError(f"{path}: corrupt image ({exc})") from None
        if pixels.shape != (TINY_SIZE, TINY_SIZE, 3):
            raise DatasetError(f"{path}: wrong image shape {pixels.shape[1]}x{pixels.shape[0]}, expected 64x64")
        out[i] = pixels

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(decode, enumerate(paths)))
    return out.transpose(0, 3, 1, 2).copy()


def load_tiny_imagenet(data_dir=None) -> Dataset:
    """tiny-imagenet-200: train/<wnid>/images/*.JPEG and the labelled val/ split (its test/ has no labels)."""
    directory = locate("tiny-imagenet", data_dir, "tiny-imagenet-200",
                       ["wnids.txt", "train", "val/val_annotations.txt", "val/images"])
    wnids = (directory / "wnids.txt").read_text().split()
    if not wnids:
        raise DatasetError(f"{directory / 'wnids.txt'} lists no classes")
    label_of = {w: i for i, w in enumerate(wnids)}
    train_paths, train_labels = [], []
    for wnid in wnids:
        folder = directory / "train" / wnid / "images"
        if not folder.is_dir():
            raise DatasetError(f"missing train/{wnid}/images in {directory}")
        files = sorted(folder.glob("*.JPEG"))
        train_paths += files
        train_labels += [label_of[wnid]] * len(files)
    val_paths, val_labels = [], []
    annotations = directory / "val" / "val_annotations.txt"
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        parts = line.split("\t")
        if not line.strip():
            continue
        if len(parts) < 2 or parts[1] not in label_of:
            raise DatasetError(f"{annotations}, line {number}: expected 'FILE<TAB>WNID...' with a wnid from wnids.txt")
        val_paths.append(directory / "val" / "images" / parts[0])
        val_labels.append(label_of[parts[1]])
    if not train_paths or not val_paths:
        raise DatasetError(f"{directory}: no {'training' if not train_paths else 'validation'} images")
    classes = _tiny_class_names(directory, wnids)
    train = Split(torch.from_numpy(_decode_images(train_paths)), torch.tensor(train_labels))
    test = Split(torch.from_numpy(_decode_images(val_paths)), torch.tensor(val_labels))
    return Dataset("tiny-imagenet", train, test, classes, crop_padding=8, source=str(directory))


def _tiny_class_names(directory: Path, wnids: list[str]) -> tuple[str, ...]:
    """words.txt's first synonym per wnid where present, else the wnid."""
    names = {}
    words = directory / "words.txt"
    if words.is_file():
        for line in words.read_text().splitlines():
            wnid, _, text = line.partition("\t")
            names[wnid] = text.split(",")[0].strip()
    return tuple(names.get(w) or w for w in wnids)


# --------------------------------------------------------------------------- optional download


@dataclass(frozen=True)
class Remote:
    url: str
    md5: str  # the publishers' checksums (the same ones torchvision verifies)
    extract: bool = False


_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DOWNLOADS: dict[str, tuple[str, list[Remote]]] = {  # name -> (folder under the root, files)
    "fashion-mnist": ("fashion-mnist", [
        Remote(_FASHION_URL + "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        Remote(_FASHION_URL + "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        Remote(_FASHION_URL + "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        Remote(_FASHION_URL + "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    ]),
    "cifar10": ("", [Remote("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                            "c58f30108f718f92721af3b95e74349a", extract=True)]),
    "cifar100": ("", [Remote("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                             "eb9058c3a382ffc7106e4002c42a8d85", extract=True)]),
    "tiny-imagenet": ("", [Remote("http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                                  "90528d7ca1a48142e341f4ef8d21d0de", extract=True)]),
}


def download(name: str, root: str | os.PathLike | None = None) -> Path:
    """Fetch a dataset's files into ``root`` (default: the first data root), verify their MD5, extract.

    Files go to a temporary name and are renamed only once their checksum matches.
    """
    if name not in DOWNLOADS:
        raise DatasetError(f"{name} cannot be downloaded; downloadable: {', '.join(DOWNLOADS)}")
    folder, remotes = DOWNLOADS[name]
    root = Path(root).expanduser() if root is not None else data_roots()[0]
    target = root / folder
    make_dir(target)
    for remote in remotes:
        path = target / remote.url.rsplit("/", 1)[-1]
        if not (path.exists() and _md5(path) == remote.md5):
            _fetch(remote, path)
        if remote.extract:
            _extract(path, target)
    return root


def _md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _fetch(remote: Remote, path: Path) -> None:
    partial = path.with_name(f".{path.name}.part")
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(remote.url, timeout=60) as response, open(partial, "wb") as f:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise DatasetError(f"could not download {remote.url} ({exc}); put the files in {path.parent} yourself") from None
    if digest.hexdigest() != remote.md5:
        partial.unlink(missing_ok=True)
        raise DatasetError(f"checksum mismatch for {remote.url}: MD5 {digest.hexdigest()}, expected {remote.md5}")
    os.replace(partial, path)


def _extract(archive: Path, target: Path) -> None:
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                for member in z.namelist():  # refuse absolute paths and '..' before writing anything
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise DatasetError(f"{archive}: unsafe path {member!r} in the archive")
                z.extractall(target)
        else:
            with tarfile.open(archive) as t:
                t.extractall(target, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{archive}: could not extract ({exc})") from None


# --------------------------------------------------------------------------- registry

DATASETS: dict[str, Callable[..., Dataset]] = {
    "fashion-mnist": load_fashion_mnist,
    "fashion-mnist-mini": load_fashion_mnist_mini,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "tiny-imagenet": load_tiny_imagenet,
}


def load_dataset(name: str, data_dir=None, download_missing: bool = False) -> Dataset:
    """A registered dataset from ``data_dir`` (or the data roots); ``download_missing`` fetches it first
    when it is not found there."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None
    try:
        return loader(data_dir)
    except DatasetError:
        if not download_missing or name not in DOWNLOADS:
            raise
    return loader(download(name, data_dir))
