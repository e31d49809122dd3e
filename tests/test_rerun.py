"""A finished search or training re-run with the same command: answered from the stored results
without importing PyTorch; any change (an option, the results, the data) takes the library's path."""

import json
import os
import subprocess
import sys

import pytest

from helpers import write_fashion_mnist

SEARCH = ["search", "-p", "fmnist-tiny", "-T", "2", "-n", "2", "--batch", "8", "--repeats", "1"]
TRAIN = ["train", "-g", "0001 0000 0000 0000", "-p", "fmnist-tiny", "-T", "2", "--epochs", "1", "--limit-train", "32"]
PROBE = """
import sys
from spikernel.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print("torch imported:", "torch" in sys.modules, "exit", code, file=sys.stderr)
"""


def spikernel(*args, cwd, code=0):
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert f"exit {code}" in done.stderr, done.stderr[-2000:]
    return done.stdout, "torch imported: True" in done.stderr


@pytest.mark.parametrize("command, results", [(SEARCH, "selection.json"), (TRAIN, "result.json")], ids=["search", "train"])
def test_a_finished_command_rerun_needs_no_pytorch(command, results, tmp_path):
    first, imported = spikernel(*command, "--out", "r", cwd=tmp_path)
    assert imported and (tmp_path / "r" / ".request.json").exists()
    again, imported = spikernel(*command, "--out", "r", cwd=tmp_path)
    assert not imported
    rows = lambda text: [line for line in text.splitlines() if "this run" not in line]  # noqa: E731
    assert rows(again) == rows(first)  # the same table (a search's "this run" row says 0 candidates)
    again, imported = spikernel(*command, "--threads", "1", "--out", "r", cwd=tmp_path)
    assert not imported  # the thread count changes no result
    stored = tmp_path / "r" / results
    stored.write_text(stored.read_text())  # rewritten since: the library decides
    _, imported = spikernel(*command, "--out", "r", cwd=tmp_path)
    assert imported
    _, imported = spikernel(*command, "--out", "r", cwd=tmp_path)
    assert not imported  # and remembered again


def test_another_option_takes_the_library_path(tmp_path):
    spikernel(*SEARCH, "--out", "r", cwd=tmp_path)
    _, imported = spikernel(*SEARCH, "--top", "1", "--out", "r", cwd=tmp_path)
    assert imported and len(json.loads((tmp_path / "r" / "selection.json").read_text())["top"]) == 1


def test_changed_data_files_take_the_library_path(tmp_path):
    data = write_fashion_mnist(tmp_path / "data")
    args = [*SEARCH, "--dataset", "fashion-mnist", "--data-dir", str(data), "--out", "r"]
    spikernel(*args, cwd=tmp_path)
    assert not spikernel(*args, cwd=tmp_path)[1]
    write_fashion_mnist(data, train=80)  # the same names, other contents: the library sees other scoring data
    assert spikernel(*args, cwd=tmp_path, code=2)[1]
