"""Build the embedded `fashion-mnist-mini`: a stratified, seeded subset of the real Fashion-MNIST.

    python tools/make_fashion_mnist_mini.py FASHION_MNIST_DIR [--train-per-class 1000] [--test-per-class 200]

Writes standard IDX .gz files into src/spikernel/datasets/fashion-mnist-mini/.
"""

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np

from spikernel.data.datasets import IDX_FILES, read_idx

OUT = Path(__file__).resolve().parents[1] / "src" / "spikernel" / "datasets" / "fashion-mnist-mini"


def write_idx(path: Path, array: np.ndarray) -> None:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as f:  # mtime=0: reproducible bytes
        f.write(header + array.astype(np.uint8).tobytes())


def stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source", type=Path)
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    OUT.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        image_file, label_file = IDX_FILES[split]
        images, labels = read_idx(args.source / image_file), read_idx(args.source / label_file)
        keep = stratified(labels, per_class, rng)
        write_idx(OUT / image_file, images[keep])
        write_idx(OUT / label_file, labels[keep])
        print(f"{split}: {len(keep)} images")


if __name__ == "__main__":
    main()
