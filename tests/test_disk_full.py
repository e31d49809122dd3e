"""A disk that fills up mid-run: `train` and `search` stop with one line, keep a consistent folder,
and, once space is freed, the same command resumes and ends exactly where an uninterrupted run does.

The disk is a small tmpfs (root only; the tests skip elsewhere). It is filled from inside the run,
at a chosen moment (after epoch 1, after two candidates), through the progress events the
command renders: as another program filling the disk at that instant would.
"""

from __future__ import annotations

import csv
import json
from contextlib import contextmanager

import pytest
import torch
from safetensors.torch import load_file

import spikernel.cli.search as search_command
import spikernel.cli.train as train_command
from spikernel.training.checkpoint import CHECKPOINT_FILE, RESULT_FILE, WEIGHTS_FILE, read_checkpoint
from helpers import assert_no_temporaries, assert_one_error, cli, fill, small_disk, snapshot, write_fashion_mnist

GENOTYPE = "0303 0030 2002 0200"
TINY = ["--preset", "fmnist-tiny", "-T", "2"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("data") / "fashion-mnist", train=32, test=16)


@pytest.fixture
def disk(tmp_path):
    with small_disk(tmp_path / "disk", "4m") as mounted:
        yield mounted


def fill_when(module, monkeypatch, disk, when):
    """Make ``module``'s command fill ``disk`` the first time ``when(event)`` holds."""
    real = module.rendered_events
    filled = []

    @contextmanager
    def rendered_then_filled(*args, **kwargs):
        with real(*args, **kwargs) as on_event:
            def on_event_filling(event):
                on_event(event)
                if not filled and when(event):
                    filled.append(fill(disk))

            yield on_event_filling

    monkeypatch.setattr(module, "rendered_events", rendered_then_filled)
    return filled


def train_args(data, out):
    return ["train", "-g", GENOTYPE, *TINY, "--dataset", "fashion-mnist", "--data-dir", data, "--epochs", 2,
            "--batch", 8, "--out", out]


def test_train_on_a_disk_that_fills_after_epoch_1_resumes_exactly(fmnist, disk, tmp_path, monkeypatch):
    code, _, err = cli(*train_args(fmnist, tmp_path / "straight"))  # the reference, never interrupted
    assert code == 0, err
    out = disk / "run"
    filled = fill_when(train_command, monkeypatch, disk, lambda e: e.info.startswith("test"))  # epoch 1 saved
    line = assert_one_error(*cli(*train_args(fmnist, out)), str(out), alone=False)
    assert filled and line.endswith("No space left on device"), line
    assert not (out / RESULT_FILE).exists() and not (out / WEIGHTS_FILE).exists()
    assert_no_temporaries(out)
    state, _ = read_checkpoint(out)  # the last good checkpoint, intact (its checksum verified)
    assert state["epoch"] == 1

    filled[0].unlink()
    monkeypatch.undo()
    code, _, err = cli(*train_args(fmnist, out))
    assert code == 0 and "resuming" in err and "after epoch 1" in err, err
    a, b = load_file(tmp_path / "straight" / WEIGHTS_FILE), load_file(out / WEIGHTS_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / CHECKPOINT_FILE).read_text())["epoch"] == 2


def search_args(out):
    return ["search", "-k", "1x1_3x3", *TINY, "-n", 6, "--batch", 8, "--repeats", 1, "--heartbeat", 1, "-o", out]


def scored(folder) -> list[tuple[str, str, str]]:
    with open(folder / "candidates.csv", newline="") as f:
        return [(row["genotype"], row["score"], row["status"]) for row in csv.DictReader(f)]


def test_search_on_a_disk_that_fills_after_two_candidates_resumes_exactly(disk, tmp_path, monkeypatch):
    code, _, err = cli(*search_args(tmp_path / "straight"))
    assert code == 0, err
    out = disk / "search"
    filled = fill_when(search_command, monkeypatch, disk, lambda e: e.stage == "search" and e.done == 2)
    line = assert_one_error(*cli(*search_args(out)), str(out / "study.db"), alone=False)
    assert filled and line.endswith("database or disk is full"), line
    assert not (out / "search.json").exists()  # not marked finished
    assert_no_temporaries(out)

    filled[0].unlink()
    monkeypatch.undo()
    code, _, err = cli(*search_args(out))
    assert code == 0, err
    assert scored(out) == scored(tmp_path / "straight")  # every candidate, each scored as without the fault
    report = json.loads((out / "search.json").read_text())
    assert 1 <= report["this_run"]["candidates"] <= 4  # the two scored before the fault were kept


def test_a_full_disk_leaves_an_existing_run_folder_alone(fmnist, disk):
    """Re-running a finished train into its folder on a full disk writes nothing, so nothing breaks."""
    out = disk / "run"
    code, _, err = cli(*train_args(fmnist, out))
    assert code == 0, err
    before = snapshot(out)
    filler = fill(disk)
    code, _, err = cli(*train_args(fmnist, out))
    assert code == 0 and "already finished" in err, err
    assert snapshot(out) == before
    filler.unlink()
