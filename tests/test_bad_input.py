"""Every mistake a user can make ends in one clear line (issue 17), for every command it applies to.

Each case asserts the exit status, a single ``error:`` line (or one ``warning:`` line where the input
is legitimate) and no traceback, and that a run folder that existed before is byte-identical after.
The trained, unfinished and searched folders are built once per module at tiny settings.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from spikernel.data.datasets import IDX_FILES
from spikernel.deploy.export import ExportError, export_nir
from spikernel.errors import WriteError
from spikernel.files import write_json
from spikernel.nn.model import build_model
from spikernel.training.checkpoint import (CHECKPOINT_FILE, DIGEST_KEY, RUN_FILE, WEIGHTS_FILE, read_weights,
                                           write_weights)
from spikernel.training.recipe import recipe
from spikernel.training.run import train as run_train
from helpers import (assert_no_temporaries, assert_one_error, cli, fill, read_only_folder, small_disk, snapshot,
                     write_fashion_mnist, write_idx)

pytestmark = pytest.mark.usefixtures("one_thread")

GENOTYPE = "0303 0030 2002 0200"
OTHER = "0302 0030 3003 0000"  # another backward cell: other tensors
TINY = ["--preset", "fmnist-tiny", "-T", "2"]
COMMANDS = ("info", "sample", "search", "explore", "run", "train", "evaluate", "export", "report")


# --------------------------------------------------------------------------- folders, built once


@dataclass
class World:
    data: Path  # Fashion-MNIST-format folder (32 train / 16 test images)
    trained: Path  # a finished `spikernel train` run of GENOTYPE
    other: Path  # a finished run of OTHER, seed 1
    unfinished: Path  # GENOTYPE set to 3 epochs, stopped after epoch 1
    searched: Path  # a finished `spikernel search` folder
    scratch: Path


def train_args(data: Path, out: Path, genotype: str = GENOTYPE, epochs: int = 1, *extra) -> list:
    return ["train", "-g", genotype, *TINY, "--dataset", "fashion-mnist", "--data-dir", data, "--epochs", epochs,
            "--batch", 8, "--limit-train", 32, "--out", out, *extra]


class Stop(Exception):
    pass


def stop_after_first_epoch(event) -> None:
    if event.stage == "train" and event.info.startswith("test"):  # epoch 1 is checkpointed: "kill" it here
        raise Stop


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("bad-input")
    data = write_fashion_mnist(root / "fashion-mnist", train=32, test=16)
    runs = {}
    for name, genotype, extra in (("trained", GENOTYPE, ()), ("other", OTHER, ("--seed", 1))):
        code, _, err = cli(*train_args(data, root / name, genotype, 1, *extra))
        assert code == 0, err
        runs[name] = root / name
    from spikernel.data.datasets import load_dataset
    from spikernel.nn.model import get_preset

    dataset = load_dataset("fashion-mnist", data)
    with pytest.raises(Stop):
        run_train(GENOTYPE, dataset, out=root / "unfinished", macro=get_preset("fmnist-tiny", timesteps=2),
                  config=recipe("fast", epochs=3, batch_size=8, limit_train=32), device="cpu",
                  on_event=stop_after_first_epoch)
    code, _, err = cli("search", "-k", "1x1_3x3", *TINY, "-n", 2, "--batch", 8, "--repeats", 1,
                       "-o", root / "searched")
    assert code == 0, err
    return World(data, runs["trained"], runs["other"], root / "unfinished", root / "searched", root / "scratch")


def copy_of(world: World, name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(getattr(world, name), target)
    return target


# --------------------------------------------------------------------------- damage, as a user (or a disk) does it


def flip_data_byte(run: Path) -> None:
    raw = bytearray((run / WEIGHTS_FILE).read_bytes())
    raw[-7] ^= 0x40  # inside the last tensor's data: the header still parses
    (run / WEIGHTS_FILE).write_bytes(bytes(raw))


def rewrite_tensors(run: Path, change: Callable[[dict], None]) -> None:
    """Change the tensors and write the file back with a valid digest: the damage is not in the bytes."""
    tensors, metadata = read_weights(run / WEIGHTS_FILE)
    change(tensors)
    write_weights(run / WEIGHTS_FILE, tensors, {k: v for k, v in metadata.items() if k != DIGEST_KEY})


def nan_weight(tensors: dict) -> None:
    name = next(k for k, v in tensors.items() if k.endswith("weight") and v.is_floating_point())
    tensors[name].view(-1)[0] = float("nan")


def extra_tensor(tensors: dict) -> None:
    tensors["cell1.ops.9_9.weight"] = torch.zeros(3)


def missing_tensor(tensors: dict) -> None:
    del tensors[next(k for k in tensors if k.startswith("cell2."))]


def wrong_shape(tensors: dict) -> None:
    name = next(k for k in tensors if k.startswith("head.") and k.endswith("weight"))
    tensors[name] = tensors[name][:, :-1].contiguous()


def edit_run_json(run: Path, genotype: str) -> None:
    spec = json.loads((run / RUN_FILE).read_text())
    (run / RUN_FILE).write_text(json.dumps({**spec, "genotype": genotype}))


def swap_weights(world: World):
    return lambda run: shutil.copy(world.other / WEIGHTS_FILE, run / WEIGHTS_FILE)


# --------------------------------------------------------------------------- the table: damaged run folders


def _evaluate(world, run):
    return ["evaluate", "--run", run, "--data-dir", world.data, "--json"]


def _evaluate_file(world, run):
    return ["evaluate", "--run", run / WEIGHTS_FILE, "--data-dir", world.data, "--json"]


def _export_nir(world, run):
    return ["export", "--run", run, "--format", "nir", "--data-dir", world.data, "--check-images", 2]


def _export_safetensors(world, run):
    return ["export", "--run", run, "--format", "safetensors"]


def _resume_train(world, run):
    return train_args(world.data, run, GENOTYPE, 3)


@dataclass(frozen=True)
class Damaged:
    source: str  # which World folder is copied
    damage: Callable  # (world) -> (run folder) -> None
    fragment: str  # in the one error line


DAMAGE = {
    "flipped-data-byte": Damaged("trained", lambda w: flip_data_byte, "is damaged"),
    "nan-weights": Damaged("trained", lambda w: lambda run: rewrite_tensors(run, nan_weight), "non-finite weights"),
    "extra-tensor": Damaged("trained", lambda w: lambda run: rewrite_tensors(run, extra_tensor), "1 unexpected"),
    "missing-tensor": Damaged("trained", lambda w: lambda run: rewrite_tensors(run, missing_tensor), "1 missing"),
    "wrong-shape-tensor": Damaged("trained", lambda w: lambda run: rewrite_tensors(run, wrong_shape),
                                  "of the wrong shape"),
    "weights-of-another-run": Damaged("trained", swap_weights, "was trained as another run"),
    "edited-genotype-in-run-json": Damaged("trained", lambda w: lambda run: edit_run_json(run, OTHER),
                                           "was trained as another run"),
    "edited-genotype-unfinished-run": Damaged("unfinished", lambda w: lambda run: edit_run_json(run, OTHER),
                                              "does not fit the network"),
    "disconnected-genotype-in-run-json": Damaged("trained", lambda w: lambda run: edit_run_json(run, "0300 0000 0000 0000"),
                                                 "is not connected"),
    "checkpoint-json-not-json": Damaged("unfinished", lambda w: lambda run: (run / CHECKPOINT_FILE).write_text("{nope"),
                                        "not valid JSON"),
}
BARE_FILE_DAMAGE = ("flipped-data-byte", "nan-weights", "extra-tensor", "missing-tensor", "wrong-shape-tensor")
COMMANDS_ON_RUNS = {"evaluate": _evaluate, "export-nir": _export_nir, "export-safetensors": _export_safetensors}

DAMAGED_CASES = [pytest.param(damage, command, id=f"{damage}-{command}")
                 for damage in DAMAGE for command in COMMANDS_ON_RUNS]
DAMAGED_CASES += [pytest.param(damage, "evaluate-weights-file", id=f"{damage}-evaluate-weights-file")
                  for damage in BARE_FILE_DAMAGE]
DAMAGED_CASES += [pytest.param(damage, "train-resume", id=f"{damage}-train-resume")
                  for damage in ("checkpoint-json-not-json", "edited-genotype-unfinished-run")]


@pytest.mark.parametrize("damage, command", DAMAGED_CASES)
def test_damaged_run_folder_is_refused_in_one_line_and_left_as_it_is(world, tmp_path, damage, command):
    case = DAMAGE[damage]
    run = copy_of(world, case.source, tmp_path)
    case.damage(world)(run)
    before = snapshot(run)
    args = {**COMMANDS_ON_RUNS, "evaluate-weights-file": _evaluate_file, "train-resume": _resume_train}[command]
    fragment = case.fragment
    if command == "train-resume" and damage == "edited-genotype-unfinished-run":
        fragment = "holds a different run"  # a rerun checks its settings against run.json first
    assert_one_error(*cli(*args(world, run)), fragment)
    assert snapshot(run) == before, "a refused command changed the run folder"


def test_evaluate_of_a_damaged_checkpoint_json_names_it(world, tmp_path):
    run = copy_of(world, "unfinished", tmp_path)
    (run / CHECKPOINT_FILE).write_text("[1, 2")
    assert_one_error(*cli(*_evaluate(world, run)), CHECKPOINT_FILE, "not valid JSON")


def test_nir_check_refuses_a_nan_network(world):
    """In memory, past every loader: the spike-for-spike check must not pass a NaN network."""
    model = build_model(GENOTYPE, "fmnist-tiny").eval()
    with torch.no_grad():
        model.head[1].weight.fill_(float("nan"))
    images = torch.randn(2, 1, 28, 28)
    with pytest.raises(ExportError, match="not finite"):
        export_nir(model, world.scratch / "nan.nir", images)
    assert not (world.scratch / "nan.nir").exists()


# --------------------------------------------------------------------------- unfinished runs: a warning, and recorded


def warning_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


def test_evaluate_of_an_unfinished_run_warns_and_reports_the_epoch(world):
    before = snapshot(world.unfinished)
    code, out, err = cli(*_evaluate(world, world.unfinished))
    assert code == 0, err
    assert warning_lines(err) == [f"warning: {world.unfinished} is unfinished: using the weights of epoch 1 of 3"]
    report = json.loads(out)
    assert (report["epoch"], report["epochs"]) == (1, 3)
    assert snapshot(world.unfinished) == before


@pytest.mark.parametrize("fmt", ["safetensors", "nir"])
def test_export_of_an_unfinished_run_warns_and_records_the_epoch(world, tmp_path, fmt):
    run = copy_of(world, "unfinished", tmp_path)
    code, _, err = cli(*(_export_nir if fmt == "nir" else _export_safetensors)(world, run))
    assert code == 0, err
    assert len(warning_lines(err)) == 1 and "epoch 1 of 3" in err
    if fmt == "safetensors":
        assert json.loads((run / "network.json").read_text())["trained"] == {"epoch": 1, "epochs": 3}
        code, out, err = cli("evaluate", "--run", run / "network.safetensors", "--data-dir", world.data, "--json")
        assert code == 0 and "epoch 1 of 3" in err  # the exported file still says so
        assert (json.loads(out)["epoch"], json.loads(out)["epochs"]) == (1, 3)
    else:
        import nir

        metadata = nir.read(str(run / "network.nir")).metadata
        assert int(metadata["trained_epoch"]) == 1 and int(metadata["planned_epochs"]) == 3


def test_finished_runs_load_without_a_warning(world):
    code, out, err = cli(*_evaluate(world, world.trained))
    assert code == 0 and not warning_lines(err), err
    assert (json.loads(out)["epoch"], json.loads(out)["epochs"]) == (1, 1)


# --------------------------------------------------------------------------- usage


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_an_unknown_option_in_one_line(command):
    assert_one_error(*cli(command, "--no-such-option"), "No such option")


# --------------------------------------------------------------------------- budgets


BAD_BUDGETS = ["inf", "nan", "-inf", "1e3", "1E6", "-5K", "0", "0.4", "5 apples", "1,000"]


@pytest.mark.parametrize("budget", BAD_BUDGETS)
@pytest.mark.parametrize("command", ["search", "explore", "run"])
def test_malformed_budget_is_one_line_before_anything_is_written(world, tmp_path, command, budget):
    out = tmp_path / "out"
    code, stdout, err = cli(command, "--budget", budget, "-n", 2, "--out", out)
    assert_one_error(code, stdout, err, "budget", repr(budget))
    assert not out.exists()


@pytest.mark.parametrize("budget", ["inf", "1e3"])
def test_malformed_budget_leaves_an_existing_search_alone(world, budget):
    before = snapshot(world.searched)
    code, out, err = cli("search", "-k", "1x1_3x3", *TINY, "-n", 2, "--batch", 8, "--repeats", 1,
                         "--budget", budget, "-o", world.searched)
    assert_one_error(code, out, err, "malformed budget")
    assert snapshot(world.searched) == before


@pytest.mark.parametrize("command", ["search", "explore", "run"])
def test_help_states_the_accepted_budget_forms(command):
    code, out, _ = cli(command, "--help")
    text = " ".join(out.split())
    assert code == 0 and "500K" in text and "800KB" in text and "MiB" in text and "Exponents (1e3)" in text


# --------------------------------------------------------------------------- macro dimensions and objectives

# (extra search options, fragment of the one error line): each refused before the study is touched.
BAD_SEARCH_SETTINGS = {
    "width-zero": (["--width", "8,0"], "width values must be positive integers, got 0"),
    "hidden-not-a-number": (["--hidden", "32,abc"], "got 'abc' in '32,abc'"),
    "empty-product": (["--votes", ","], "the product of the dimensions is empty"),
    "invalid-combination": (["--second-pool", "2,30"], "macro combination second_pool=30 is invalid"),
    "unknown-encoding": (["--encoding", "direct,rate"], "unknown encoding 'rate'; choose one of direct, poisson, latency"),
    "state-budget-no-combination-meets": (["--width", "4,8", "--state-budget", "1KB"],
                                          "smallest possible network (at width=4) holds"),
    "weight-budget-no-combination-meets": (["--width", "4,8", "--budget", "1K"],
                                           "smallest possible network (at width=4) has"),
    "energy-budget-no-combination-meets": (["--width", "4,8", "--energy-budget", "10nJ"],
                                           "(at width=4) spends"),
    "nsga2-without-a-second-objective": (["--sampler", "nsga2", "--objectives", "score"], "second objective"),
    "unknown-objective": (["--objectives", "score,speed"], "unknown objective 'speed'"),
}


@pytest.mark.parametrize("case", list(BAD_SEARCH_SETTINGS))
def test_bad_macro_dimensions_and_objectives_are_one_line_and_leave_the_study(world, case):
    extra, fragment = BAD_SEARCH_SETTINGS[case]
    before = snapshot(world.searched)
    code, out, err = cli("search", "-k", "1x1_3x3", *TINY, "-n", 2, "--batch", 8, "--repeats", 1, *extra,
                         "-o", world.searched)
    assert_one_error(code, out, err, fragment)
    assert snapshot(world.searched) == before


# --------------------------------------------------------------------------- genotypes and kernels


@pytest.mark.parametrize("genotype", ["0000 0000 0000 0000", "0300 0000 0000 0000", "0000 0003 0000 0000",
                                      "0000 0000 0000 3000"])
@pytest.mark.parametrize("command", ["info", "train"])
def test_a_disconnected_cell_is_refused_by_every_command_alike(world, tmp_path, command, genotype):
    args = (["info", "-g", genotype] if command == "info"
            else train_args(world.data, tmp_path / "run", genotype))
    line = assert_one_error(*cli(*args), "is not connected")
    assert genotype in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("code_letter, kernel", [("a", 15), ("f", 25), ("z", 65)])
def test_a_kernel_larger_than_the_feature_map_warns_once(code_letter, kernel):
    code, out, err = cli("info", "-g", f"000{code_letter} 0000 0000 0000", "-p", "fmnist-tiny", "--json")
    assert code == 0, err
    assert json.loads(out)["kernels"] == [kernel]
    assert len(warning_lines(err)) == 1 and f"{kernel}x{kernel} kernels are larger than" in err


def test_a_search_with_an_oversized_kernel_warns_once(tmp_path):
    code, _, err = cli("search", "-k", "1,15", *TINY, "-n", 3, "--batch", 8, "--repeats", 1, "-o", tmp_path / "s")
    assert code == 0, err
    assert len(warning_lines(err)) == 1 and "15x15 kernels are larger than cell 2's 14x14 feature map" in err


def test_kernels_that_fit_give_no_warning():
    code, _, err = cli("info", "-g", "0009 0000 0000 0000", "-p", "fmnist-tiny")  # 13x13 on a 14x14 map
    assert code == 0 and not warning_lines(err), err


# --------------------------------------------------------------------------- datasets


def test_an_idx_header_that_undercounts_its_images_is_refused(world, tmp_path):
    data = tmp_path / "fmnist"
    shutil.copytree(world.data, data)
    images = np.zeros((32, 28, 28), dtype=np.uint8)
    write_idx(data / IDX_FILES["train"][0], images)
    raw = bytearray(gzip.open(data / IDX_FILES["train"][0]).read())
    raw[4:8] = struct.pack(">I", 31)  # the header claims 31 images; the file holds 32
    with gzip.open(data / IDX_FILES["train"][0], "wb") as f:
        f.write(bytes(raw))
    line = assert_one_error(*cli(*train_args(data, tmp_path / "run")), IDX_FILES["train"][0], "784 bytes after")
    assert "31 x 28 x 28" in line and not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["search", "explore", "run", "train", "evaluate", "export"])
def test_every_command_reading_a_dataset_has_the_download_option_its_errors_suggest(world, tmp_path, command):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, _ = cli(command, "--help")
    assert code == 0 and "--download" in out
    if command in ("search", "explore", "run"):
        line = assert_one_error(*cli(command, "--dataset", "fashion-mnist", "--data-dir", empty, "--out", tmp_path / "o"),
                                "not found")
        assert "--download" in line and not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- --out paths


@pytest.mark.parametrize("name", ["what?", "100%", "a%20b", "hash#tag", "semi;colon", "at@host:1"])
def test_out_folders_with_url_characters_hold_their_own_study(tmp_path, name):
    out = tmp_path / name
    args = ["search", "-k", "1x1_3x3", *TINY, "-n", 2, "--batch", 8, "--repeats", 1, "-o", out]
    code, _, err = cli(*args)
    assert code == 0, err
    names = {p.name for p in out.iterdir()} - {"study.db-wal", "study.db-shm"}  # SQLite's own, while it is open
    assert names == {"candidates.csv", "search.json", "selection.json", "study.db", ".request.json"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [name], "nothing is written beside the folder"
    code, _, err = cli(*args, "--top", 3)  # a rerun (through the library) finds the same study: nothing is scored again
    assert code == 0 and json.loads((out / "search.json").read_text())["this_run"]["candidates"] == 0


@pytest.fixture
def read_only(tmp_path):
    with read_only_folder(tmp_path / "read-only") as folder:
        yield folder


def writing_commands(world: World, out: Path) -> dict[str, list]:
    return {
        "train": train_args(world.data, out / "run"),
        "search": ["search", "-k", "1x1_3x3", *TINY, "-n", 2, "--batch", 8, "--repeats", 1, "-o", out / "s"],
        "explore": ["explore", "-k", "1x1_3x3", "-p", "fmnist-tiny", "-T", 2, "-n", 2, "--top-k", 1, "--epochs", 1,
                    "--limit-train", 32, "--score-batch", 8, "-o", out / "e"],
        "run": ["run", "-k", "1x1_3x3", "-p", "fmnist-tiny", "-T", 2, "-n", 2, "--epochs", 1, "--limit-train", 32,
                "--score-batch", 8, "--budget", "none", "-o", out / "r"],
        "export-nir": ["export", "--run", world.trained, "--data-dir", world.data, "--check-images", 2,
                       "--out", out / "net.nir"],
        "export-safetensors": ["export", "--run", world.trained, "--format", "safetensors", "--out",
                               out / "net.safetensors"],
        "report": ["report", world.searched.parent / "study", "--out", out / "report"],
    }


@pytest.fixture(scope="module")
def study(world):
    """A finished exploration folder (the report's input), next to the other module folders."""
    out = world.searched.parent / "study"
    code, _, err = cli(*writing_commands(world, out.parent)["explore"][:-1], out)
    assert code == 0, err
    return out


WRITERS = ["train", "search", "explore", "run", "export-nir", "export-safetensors", "report"]


@pytest.mark.parametrize("command", WRITERS)
def test_a_read_only_out_folder_is_one_line(world, study, read_only, command):
    before = snapshot(world.trained), snapshot(study)
    line = assert_one_error(*cli(*writing_commands(world, read_only)[command]), "cannot write", str(read_only),
                            alone=False)
    assert line.endswith(("Read-only file system", "Permission denied")), line
    assert (snapshot(world.trained), snapshot(study)) == before


@pytest.fixture
def full_disk(tmp_path):
    with small_disk(tmp_path / "full", "256k") as disk:
        fill(disk)
        yield disk


@pytest.mark.parametrize("command", WRITERS)
def test_a_full_disk_is_one_line_and_leaves_no_partial_file(world, study, full_disk, command):
    before = snapshot(world.trained), snapshot(study)
    line = assert_one_error(*cli(*writing_commands(world, full_disk)[command]), str(full_disk), alone=False)
    assert "cannot write" in line or "cannot open storage" in line, line
    assert line.endswith(("No space left on device", "database or disk is full")), line
    assert_no_temporaries(full_disk)
    assert (snapshot(world.trained), snapshot(study)) == before


def test_write_error_names_the_file_and_the_reason(read_only):
    with pytest.raises(WriteError, match=r"cannot write .*x\.json: (Read-only file system|Permission denied)"):
        write_json(read_only / "x.json", {"a": 1})


# --------------------------------------------------------------------------- file modes


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_written_files_follow_the_umask(world, tmp_path, umask):
    previous = os.umask(umask)
    try:
        out = tmp_path / "run"
        code, _, err = cli(*train_args(world.data, out, GENOTYPE, 1, "--no-augment"))
        assert code == 0, err
        code, _, err = cli("export", "--run", out, "--format", "safetensors", "--bits", 8)
        assert code == 0, err
    finally:
        os.umask(previous)
    written = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".csv", ".safetensors")]
    assert {p.name for p in written} >= {RUN_FILE, CHECKPOINT_FILE, WEIGHTS_FILE, "result.json", "metrics.csv",
                                         "network-8bit.safetensors", "network-8bit.json"}
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(0o666 & ~umask)}


# --------------------------------------------------------------------------- end to end, as a user starts them


def spikernel(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "spikernel", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("args, fragment", [
    (["search", "--budget", "inf", "-o", "{tmp}/s"], "malformed budget 'inf'"),
    (["explore", "--budget", "nan", "-o", "{tmp}/e"], "malformed budget 'nan'"),
    (["info", "-g", "0000 0000 0000 0000"], "is not connected"),
])
def test_end_to_end_one_line(tmp_path, args, fragment):
    done = spikernel(*[a.format(tmp=tmp_path) for a in args])
    assert_one_error(done.returncode, done.stdout, done.stderr, fragment)
    assert list(tmp_path.iterdir()) == []


def test_end_to_end_resume_with_a_damaged_checkpoint_json(world, tmp_path):
    run = copy_of(world, "unfinished", tmp_path)
    (run / CHECKPOINT_FILE).write_text("{\"epoch\": 1,")  # cut off mid-write by hand
    before = snapshot(run)
    done = spikernel(*_resume_train(world, run))
    assert_one_error(done.returncode, done.stdout, done.stderr, CHECKPOINT_FILE, "not valid JSON")
    assert snapshot(run) == before
