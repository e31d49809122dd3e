"""Training-based refinement: validation split, successive halving, rungs recorded, resume (after an
exception and after SIGKILL), CLI errors."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest

from spikernel.data.datasets import load_dataset
from spikernel.errors import ConfigError, DatasetError
from spikernel.nas.refine import refine
from spikernel.nas.run import search
from spikernel.nn.model import get_preset

from helpers import cli

MACRO = get_preset("fmnist-tiny", timesteps=2)


@pytest.fixture(scope="module")
def found():
    data = load_dataset("fashion-mnist-mini")
    return data, search("1x1_3x3", MACRO, data, candidates=8, batch=8, repeats=1)


def shortlist(found, k=4):
    return found[1].top[:k]


def run(found, out, on_event=None):
    data, _ = found
    return refine(shortlist(found), data, MACRO.for_data(data), out, epochs=2, validation=200, limit_train=64,
                  on_event=on_event)


def test_rungs_are_recorded_and_the_best_on_validation_comes_first(found, tmp_path):
    rows = run(found, tmp_path / "r")
    assert len(rows) == 4 and {r.state for r in rows} <= {"complete", "pruned"}
    complete = [r for r in rows if r.state == "complete"]
    assert complete and rows[0].state == "complete"
    assert rows[0].val_acc == max(r.val_acc for r in complete)
    study = optuna.load_study(study_name="refine", storage=f"sqlite:///{tmp_path / 'r' / 'refine.db'}")
    assert sorted(len(t.intermediate_values) for t in study.trials) == sorted(r.epochs for r in rows)
    assert all(r.rungs and max(r.rungs) == r.epochs for r in rows)


def test_each_candidate_trains_on_the_first_images_only(found, tmp_path):
    data, _ = found
    refine(shortlist(found, 1), data, MACRO.for_data(data), tmp_path / "r", epochs=1, validation=200, images=48)
    run_dir = next((tmp_path / "r" / "runs").iterdir())
    config = json.loads((run_dir / "run.json").read_text())["train"]
    assert config["limit_train"] == 48 and config["batch_size"] == 16  # the refine recipe, on 48 images


def test_an_interrupted_refinement_resumes_to_the_same_outcome(found, tmp_path):
    whole = run(found, tmp_path / "whole")
    seen = []

    def stop_in_the_second_candidate(event):
        seen.append(event)
        if event.stage == "train" and event.info.startswith("test") and len([e for e in seen if e.stage == "refine"]) >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(found, tmp_path / "cut", stop_in_the_second_candidate)
    again = run(found, tmp_path / "cut")
    drop_time = lambda rows: [{**r.__dict__, "seconds": None} for r in rows]  # noqa: E731
    assert drop_time(again) == drop_time(whole)


def test_nothing_to_refine_and_no_training_data_are_errors(found, tmp_path):
    data, _ = found
    with pytest.raises(ConfigError, match="nothing to refine"):
        refine([], data, MACRO.for_data(data), tmp_path / "a")
    with pytest.raises(DatasetError, match="leaves no training data"):
        refine(shortlist(found, 1), data, MACRO.for_data(data), tmp_path / "b", validation=len(data.train))


def test_refine_more_than_the_candidates_is_one_line(tmp_path):
    code, _, err = cli("search", "-p", "fmnist-tiny", "-T", "2", "-n", "2", "--batch", "8", "--refine", "5",
                       "--out", str(tmp_path / "s"))
    assert code == 2 and err.startswith("error: refine 5 is more than the 2 candidates") and err.count("\n") == 1
    assert not (tmp_path / "s").exists()
    code, _, err = cli("search", "-p", "fmnist-tiny", "-T", "2", "-n", "3", "--batch", "8", "--budget", "12K",
                       "--refine", "3", "--out", str(tmp_path / "t"))  # the search runs; too few fit the budget
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: refine 3 is more than the") and err.count("error:") == 1


REFINE_SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
from spikernel.data.datasets import load_dataset
from spikernel.nas.refine import refine
from spikernel.nas.run import search
from spikernel.nn.model import get_preset
macro = get_preset("fmnist-tiny", timesteps=2)
data = load_dataset("fashion-mnist-mini")
top = search("1x1_3x3", macro, data, candidates=8, batch=8, repeats=1).top[:4]
rows = refine(top, data, macro.for_data(data), sys.argv[1], epochs=3, validation=200, limit_train=64)
print(json.dumps([{**r.__dict__, "seconds": None} for r in rows]))
"""


def test_a_sigkilled_refinement_resumes_to_the_same_outcome(tmp_path):
    """Killed inside a rung (a candidate past its first epoch, another one finished): the rerun keeps
    what finished, resumes the interrupted training from its run folder, and ends where an
    uninterrupted refinement ends."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = lambda out: [sys.executable, "-c", REFINE_SCRIPT, str(out)]  # noqa: E731
    whole = subprocess.run(command(tmp_path / "whole"), env=env, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    worker = subprocess.Popen(command(tmp_path / "cut"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db = tmp_path / "cut" / "refine.db"

    def inside_a_rung() -> bool:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
                finished = con.execute("SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchone()[0]
                running = con.execute("SELECT count(*) FROM trials t JOIN trial_intermediate_values v "
                                      "ON v.trial_id = t.trial_id WHERE t.state = 'RUNNING'").fetchone()[0]
                return finished >= 1 and running >= 1
        except sqlite3.Error:
            return False  # not created yet

    deadline = time.monotonic() + 300
    while not inside_a_rung():
        assert worker.poll() is None, f"refinement ended before it could be killed: {worker.stderr.read().decode()[-500:]}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    again = subprocess.run(command(tmp_path / "cut"), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout.strip().splitlines()[-1]) == json.loads(whole.stdout.strip().splitlines()[-1])
    study = optuna.load_study(study_name="refine", storage=f"sqlite:///{db}")
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.FAIL) == 1  # the killed one, redone after
