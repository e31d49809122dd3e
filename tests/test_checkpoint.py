"""Run folders: SIGKILL + resume = uninterrupted, atomic checkpoints, strict reruns, loading without pickle."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from spikernel.training.checkpoint import (CHECKPOINT_FILE, CheckpointError, join_state, load_model, read_checkpoint,
                                  split_state)
from spikernel.cli import main
from helpers import write_fashion_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

GENOTYPE = "0303 0030 2002 0200"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count in every process: bitwise-equal runs


def train_args(data, out, epochs=3, *extra):
    return ["train", "-g", GENOTYPE, "--preset", "fmnist-tiny", "-T", "2", "--dataset", "fashion-mnist",
            "--data-dir", str(data), "--epochs", str(epochs), "--batch", "16", "--out", str(out), *extra]


def spikernel(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "spikernel", *args], env=ENV, capture_output=True, text=True,
                          timeout=600, **kwargs)


def cli(*args):
    result = CliRunner().invoke(main, list(map(str, args)))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("data") / "fashion-mnist", train=64, test=32)



def test_sigkill_during_training_then_resume_gives_the_same_weights(tmp_path, fmnist):
    code, _, err = cli(*train_args(fmnist, tmp_path / "straight"))  # the reference run, uninterrupted
    assert code == 0, err

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "spikernel", *train_args(fmnist, killed)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed / CHECKPOINT_FILE).exists():  # epoch 1 is saved; epoch 2 is under way
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "result.json").exists() and json.load(open(killed / CHECKPOINT_FILE))["epoch"] < 3

    resumed = spikernel(*train_args(fmnist, killed))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history = [json.load(open(d / "result.json"))["history"] for d in (tmp_path / "straight", killed)]
    assert [r["test_loss"] for r in history[0]] == [r["test_loss"] for r in history[1]]


def test_reruns_must_match_and_finished_runs_are_not_retrained(tmp_path, fmnist):
    out = tmp_path / "run"
    code, _, err = cli(*train_args(fmnist, out, 1, "--limit-train", "32"))
    assert code == 0, err
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    code, _, err = cli(*train_args(fmnist, out, 1, "--limit-train", "32"))
    assert code == 0 and "already finished" in err and (out / "model.safetensors").stat().st_mtime_ns == stamp
    code, _, err = cli(*train_args(fmnist, out, 1, "--limit-train", "32", "--lr", "0.05"))
    assert code == 2 and err.startswith("error:") and "holds a different run (train differs: lr 0.005 -> 0.05)" in err
    code, _, err = cli(*train_args(fmnist, tmp_path / "new", 1, "--resume"))
    assert code == 2 and "nothing to resume" in err
    code, _, err = cli("train", "--out", str(tmp_path / "x"))
    assert code == 2 and "exactly one of --genotype and --from-search" in err


def test_evaluate_a_run_folder_or_its_weights_file_alone(tmp_path, fmnist):
    out = tmp_path / "run"
    assert cli(*train_args(fmnist, out, 1, "--limit-train", "32"))[0] == 0
    result = json.load(open(out / "result.json"))
    final = result["test"]
    assert result["energy"]["images"] == 32  # the whole (small) test split: ENERGY_IMAGES is 1000
    for target in (out, out / "model.safetensors"):
        code, stdout, err = cli("evaluate", "--run", target, "--data-dir", fmnist, "--json")
        assert code == 0, err
        report = json.loads(stdout)
        assert report["test_acc"] == final["test_acc"] and report["images"] == 32
        # the operations counted after training are those evaluate counts on the same images
        assert report["energy"]["sops"] == pytest.approx(result["energy"]["sops"], rel=1e-9)
        assert report["energy"]["energy_pj"] == pytest.approx(result["energy"]["energy_pj"], rel=1e-9)
        assert report["test_loss"] == pytest.approx(final["test_loss"], rel=1e-6)
    # Only JSON, CSV, safetensors (and TensorBoard events): nothing that would be unpickled.
    files = [p for p in out.rglob("*") if p.is_file() and "tensorboard" not in p.parts]
    assert {p.suffix for p in files} <= {".json", ".csv", ".safetensors"}
    (out / "model.safetensors").unlink()  # a run still training: evaluate its last checkpoint
    code, stdout, err = cli("evaluate", "--run", out, "--data-dir", fmnist, "--json")
    assert code == 0 and "epoch 1" in json.loads(stdout)["weights"]


def test_corrupt_checkpoint_is_refused(tmp_path, fmnist):
    out = tmp_path / "run"
    code, _, err = cli(*train_args(fmnist, out, 2, "--limit-train", "32"))
    (out / "result.json").unlink()
    weights = out / json.load(open(out / CHECKPOINT_FILE))["weights"]
    raw = bytearray(weights.read_bytes())
    raw[-5] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="does not match the checksum"):
        read_checkpoint(out)
    code, _, err = cli(*train_args(fmnist, out, 2, "--limit-train", "32"))
    assert code == 2 and "does not match the checksum" in err


def test_optimizer_state_round_trips_through_json_and_tensors():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    tensors = {}
    encoded = json.loads(json.dumps(split_state(optimizer.state_dict(), "optimizer", tensors)))
    restored = join_state(encoded, tensors)
    original = optimizer.state_dict()
    assert restored["param_groups"] == original["param_groups"]
    assert restored["state"].keys() == original["state"].keys()  # integer keys survive JSON
    assert torch.equal(restored["state"][0]["momentum_buffer"], original["state"][0]["momentum_buffer"])


def test_load_model_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a training run folder"):
        load_model(tmp_path)
    (tmp_path / "w.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a spikernel weights file"):
        load_model(tmp_path / "w.safetensors")


def test_a_run_remembers_its_data_dir(tmp_path, fmnist):
    out = tmp_path / "run"
    code, _, err = cli(*train_args(fmnist, out, 1, "--limit-train", "32"))
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["data_dir"] == str(fmnist)
    code, stdout, err = cli("evaluate", "--run", out, "--json")  # no --data-dir: the run's own
    assert code == 0, err
    assert json.loads(stdout)["images"] == 32
    code, _, err = cli("export", "--run", out, "--format", "nir", "--check-images", "4")
    assert code == 0, err
