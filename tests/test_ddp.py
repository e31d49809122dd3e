"""`torchrun --nproc_per_node 2 -m spikernel train`: data-parallel training with gloo on the CPU."""

import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist
from click.testing import CliRunner

from spikernel.cli import main
from helpers import write_fashion_mnist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")


def test_two_process_gloo_run_reduces_metrics_over_ranks(tmp_path):
    data = write_fashion_mnist(tmp_path / "fashion-mnist", train=64, test=30)
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "spikernel", "train", "-g", "0303 0030 2002 0200", "--preset", "fmnist-tiny", "-T", "2",
               "--dataset", "fashion-mnist", "--data-dir", str(data), "--epochs", "2", "--batch", "16",
               "--out", str(out)]
    proc = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.load(open(out / "result.json"))
    assert result["machine"]["processes"] == 2 and result["epochs"] == 2
    # Each rank evaluated 15 of the 30 test images; the reported figures cover all 30.
    final = result["history"][-1]
    assert abs(final["test_acc"] * 30 - round(final["test_acc"] * 30)) < 1e-9
    # A single process evaluating the saved weights gets the same numbers (rank 0's BatchNorm
    # statistics were broadcast before the DDP evaluation, and the weights are equal on all ranks).
    single = CliRunner().invoke(main, ["evaluate", "--run", str(out), "--data-dir", str(data), "--json"])
    assert single.exit_code == 0, single.stderr
    report = json.loads(single.stdout)
    assert report["test_acc"] == final["test_acc"]
    assert report["test_loss"] == pytest.approx(final["test_loss"], rel=1e-5)
    assert report["spike_rate"] == pytest.approx(final["spike_rate"], rel=1e-5)
