"""Dataset readers on small files written here in each publisher's real format, and their bad-input errors."""

import hashlib
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from spikernel.data import datasets as data_module
from spikernel.data.datasets import DOWNLOADS, Remote, augment, load_dataset
from spikernel.errors import DatasetError

from helpers import write_fashion_mnist


def _cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def _pickle(path, content: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(content, f, protocol=2)  # the protocol of the original (python 2) files


def write_cifar10(directory, per_batch: int = 4):
    directory.mkdir(parents=True, exist_ok=True)
    images = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        pixels = _cifar_images(per_batch, i)
        images[name] = pixels
        _pickle(directory / name, {"batch_label": f"batch {i}", "labels": [(i + j) % 10 for j in range(per_batch)],
                                   "data": pixels.reshape(per_batch, -1), "filenames": [f"{j}.png" for j in range(per_batch)]})
    _pickle(directory / "batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                                         "frog", "horse", "ship", "truck"], "num_vis": 3072})
    return images


def write_cifar100(directory, n: int = 6):
    directory.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(["train", "test"]):
        pixels = _cifar_images(n, 10 + i)
        _pickle(directory / name, {"filenames": [], "batch_label": name, "fine_labels": [99 - j for j in range(n)],
                                   "coarse_labels": [j % 20 for j in range(n)], "data": pixels.reshape(n, -1)})
    _pickle(directory / "meta", {"fine_label_names": [f"class{k}" for k in range(100)],
                                 "coarse_label_names": [f"super{k}" for k in range(20)]})


def write_tiny_imagenet(root, wnids=("n01443537", "n01629819"), per_class: int = 3):
    """tiny-imagenet-200's layout: wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/ + annotations."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n")
    colours = [(250, 10, 10), (10, 250, 10)]
    for label, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for k in range(per_class):
            image = Image.new("RGB", (64, 64), colours[label])
            if k == 0 and label == 1:
                image = image.convert("L")  # the real set has some grayscale JPEGs
            image.save(folder / f"{wnid}_{k}.JPEG", "JPEG", quality=95)
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for k in range(4):
        Image.new("RGB", (64, 64), colours[k % 2]).save(root / "val" / "images" / f"val_{k}.JPEG", "JPEG", quality=95)
        lines.append(f"val_{k}.JPEG\t{wnids[k % 2]}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (root / "test" / "images").mkdir(parents=True)  # unlabelled; never read


# --------------------------------------------------------------------------- readers


def test_fashion_mnist_idx_files(tmp_path):
    write_fashion_mnist(tmp_path / "fashion-mnist", train=40, test=20)
    mini = load_dataset("fashion-mnist-mini")
    for where in (tmp_path, tmp_path / "fashion-mnist"):  # the folder itself or its parent
        ds = load_dataset("fashion-mnist", where)
        assert ds.train.images.shape == (40, 1, 28, 28) and ds.test.images.shape == (20, 1, 28, 28)
        assert torch.equal(ds.train.images, mini.train.images[:40]) and torch.equal(ds.test.labels, mini.test.labels[:20])
        assert ds.mean == (0.2860,) and ds.crop_padding == 2


def test_cifar10_pickle_batches(tmp_path):
    images = write_cifar10(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", tmp_path)
    assert ds.train.images.shape == (20, 3, 32, 32) and ds.test.images.shape == (4, 3, 32, 32)
    # Rows hold the red plane, then green, then blue, each row-major: the tensor is [N, C, H, W].
    assert torch.equal(ds.train.images[:4], torch.from_numpy(images["data_batch_1"]))
    assert torch.equal(ds.test.images, torch.from_numpy(images["test_batch"]))
    assert ds.train.labels[4:8].tolist() == [1, 2, 3, 4] and ds.classes[0] == "airplane" and ds.num_classes == 10
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.crop_padding == 4 and ds.flip


def test_cifar100_fine_labels(tmp_path):
    write_cifar100(tmp_path / "cifar-100-python")
    ds = load_dataset("cifar100", tmp_path / "cifar-100-python")
    assert ds.num_classes == 100 and ds.train.labels.tolist() == [99, 98, 97, 96, 95, 94]
    assert ds.train.images.shape == (6, 3, 32, 32) and ds.classes[99] == "class99"


def test_tiny_imagenet_folder(tmp_path):
    write_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    ds = load_dataset("tiny-imagenet", tmp_path)
    assert ds.train.images.shape == (6, 3, 64, 64) and ds.test.images.shape == (4, 3, 64, 64)
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1] and ds.test.labels.tolist() == [0, 1, 0, 1]
    assert ds.classes == ("goldfish", "European fire salamander") and ds.crop_padding == 8
    red = ds.train.images[0].float().mean((1, 2))
    assert red[0] > 240 and red[1] < 20  # decoded colours (JPEG is lossy, so approximately)
    grey = ds.train.images[3]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])  # grayscale -> 3 equal channels
    assert len(ds.mean) == 3  # statistics computed from the training images


def test_data_roots_from_environment(tmp_path, monkeypatch):
    write_cifar100(tmp_path / "cifar-100-python")
    monkeypatch.setenv("SPIKERNEL_DATA", str(tmp_path))
    assert load_dataset("cifar100").num_classes == 100


# --------------------------------------------------------------------------- bad input


def test_missing_files_name_the_file_and_the_place(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match=f"missing data_batch_3 in {folder}"):
        load_dataset("cifar10", tmp_path)
    monkeypatch.setenv("SPIKERNEL_DATA", str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match=r"cifar100 not found \(looked for train in .*empty/cifar-100-python"):
        load_dataset("cifar100")
    write_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    (tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DatasetError, match="missing val/val_annotations.txt in"):
        load_dataset("tiny-imagenet", tmp_path)


def test_corrupt_and_malicious_pickles_are_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "data_batch_2").write_bytes(b"\x80\x02}q\x00(X\x04")  # truncated
    with pytest.raises(DatasetError, match="data_batch_2: corrupt"):
        load_dataset("cifar10", folder)

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    write_cifar10(folder)
    _pickle(folder / "test_batch", {"data": Exploit(), "labels": []})
    with pytest.raises(DatasetError, match="refusing to load"):
        load_dataset("cifar10", folder)
    assert not (tmp_path / "pwned").exists()


def test_wrong_shapes_are_reported(tmp_path):
    folder = tmp_path / "c"
    write_cifar10(folder)
    _pickle(folder / "data_batch_4", {"data": np.zeros((4, 1000), np.uint8), "labels": [0, 1, 2, 3]})
    with pytest.raises(DatasetError, match=r"data_batch_4: wrong image shape .*\(4, 1000\)"):
        load_dataset("cifar10", folder)
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    write_tiny_imagenet(root)
    Image.new("RGB", (32, 32)).save(root / "val" / "images" / "val_2.JPEG", "JPEG")
    with pytest.raises(DatasetError, match="val_2.JPEG: wrong image shape 32x32, expected 64x64"):
        load_dataset("tiny-imagenet", root)
    (root / "val" / "images" / "val_2.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="val_2.JPEG: corrupt image"):
        load_dataset("tiny-imagenet", root)


def test_labels_out_of_range(tmp_path):
    folder = tmp_path / "c"
    write_cifar10(folder)
    _pickle(folder / "test_batch", {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]})
    with pytest.raises(DatasetError, match=r"labels outside 0\.\.9"):
        load_dataset("cifar10", folder)


# --------------------------------------------------------------------------- optional download


def _archive(tmp_path):
    source = tmp_path / "src"
    write_cifar10(source / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_download_verifies_checksum_then_extracts(tmp_path, monkeypatch):
    archive, md5 = _archive(tmp_path)
    monkeypatch.setitem(DOWNLOADS, "cifar10", ("", [Remote(archive.as_uri(), md5, extract=True)]))
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DatasetError, match="cifar10 not found"):
        load_dataset("cifar10", root)
    ds = load_dataset("cifar10", root, download_missing=True)
    assert ds.train.images.shape == (20, 3, 32, 32) and (root / "cifar-10-python.tar.gz").exists()


def test_download_with_wrong_checksum_keeps_nothing(tmp_path, monkeypatch):
    archive, _ = _archive(tmp_path)
    monkeypatch.setitem(DOWNLOADS, "cifar10", ("", [Remote(archive.as_uri(), "0" * 32, extract=True)]))
    root = tmp_path / "data"
    with pytest.raises(DatasetError, match="checksum mismatch .* expected 0000"):
        data_module.download("cifar10", root)
    assert list(root.iterdir()) == []
    monkeypatch.setitem(DOWNLOADS, "cifar10", ("", [Remote((tmp_path / "absent.tar.gz").as_uri(), "0" * 32, True)]))
    with pytest.raises(DatasetError, match="could not download"):
        data_module.download("cifar10", root)


# --------------------------------------------------------------------------- batched augmentation


def test_batched_crop_and_flip_match_per_image_reference():
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    out = augment(images, 2, True, g1)
    dy, dx = torch.randint(0, 5, (16,), generator=g2), torch.randint(0, 5, (16,), generator=g2)
    flip = torch.rand(16, generator=g2) < 0.5
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))  # black borders, as torchvision pads
    for i in range(16):
        crop = padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop)
    assert out.dtype == torch.uint8
