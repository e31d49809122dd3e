import gzip
import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from spikernel.cli import main
from spikernel.data.datasets import IDX_FILES
from spikernel.nn.footprint import footprint
from spikernel.nn.model import get_preset
from spikernel.space.genotype import Genotype


def cli(*args):
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_info_json():
    code, out, _ = cli("info", "--genotype", "0302 0030 3003 0000", "--preset", "snasnet-cifar100", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["params"] == 20_624_500
    assert report["footprint_bytes"]["8"] == report["params"] + report["bn_buffers"]
    assert report["lif_neurons"] == footprint(Genotype.parse("0302 0030 3003 0000"),
                                              get_preset("snasnet-cifar100")).lif_neurons
    assert report["cell"] == "backward"


def test_info_second_pool_and_table():
    code, out, _ = cli("info", "-g", "0303 0030 2002 0200", "-p", "snasnet-cifar10", "--second-pool", "4",
                       "--cell", "backward")
    assert code == 0 and "parameters" in out and "19,520,356" in out


def test_sample_json():
    code, out, _ = cli("sample", "--kernels", "1x1_7x7", "--cell", "forward", "-n", "25", "--seed", "4", "--json")
    genotypes = [Genotype.parse(g) for g in json.loads(out)]
    assert code == 0 and len(genotypes) == 25
    assert all(not g.is_backward and set(g.kernels) <= {1, 7} for g in genotypes)


@pytest.mark.parametrize("args,message", [
    (["info", "-g", "0302 003 3003 0000"], "malformed genotype"),
    (["info", "-g", "0302 0030 30#3 0000"], "not an operation code"),
    (["info", "-g", "0302 0030 3003 0000", "--cell", "forward"], "is a backward cell"),
    (["sample", "--kernels", "1x1_4x4"], "positive odd integer"),
    (["sample", "--kernels", "0,3"], "positive odd integer"),
    (["sample", "--kernels", "huge"], "unknown kernel set"),
    (["info", "-g", "0302 0030 3003 0000", "-p", "resnet50"], "resnet50"),
    (["run", "--budget", "lots"], "malformed budget"),
    (["run", "--dataset", "fashion-mnist", "--data-dir", "/nonexistent/fmnist"], "does not exist"),
    (["run", "--dataset", "mnist-9000"], "unknown dataset"),
    (["run", "--budget", "5K"], "no candidate can meet the budget"),
])
def test_bad_input_is_one_clear_line(args, message, tmp_path):
    code, out, err = cli(*args, "--out", str(tmp_path / "run")) if args[0] == "run" else cli(*args)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err
    assert "Traceback" not in out + err
    assert not (tmp_path / "run").exists(), "nothing written on bad input"


def test_truncated_idx_file_is_reported(tmp_path, fashion_mnist_dir):
    data = tmp_path / "fmnist"
    data.mkdir()
    for name in IDX_FILES["train"] + IDX_FILES["test"]:
        shutil.copy(fashion_mnist_dir / name, data / name)
    (data / IDX_FILES["test"][1]).unlink()
    code, _, err = cli("run", "--dataset", "fashion-mnist", "--data-dir", str(data), "--out", str(tmp_path / "r"))
    assert code == 2 and "missing t10k-labels-idx1-ubyte.gz" in err
    shutil.copy(fashion_mnist_dir / IDX_FILES["test"][1], data / IDX_FILES["test"][1])
    raw = gzip.open(data / IDX_FILES["train"][0]).read()
    with gzip.open(data / IDX_FILES["train"][0], "wb") as f:
        f.write(raw[: len(raw) // 2])
    code, _, err = cli("run", "--dataset", "fashion-mnist", "--data-dir", str(data), "--out", str(tmp_path / "r"))
    assert code == 2 and "truncated" in err and "train-images-idx3-ubyte.gz" in err
    assert not (tmp_path / "r").exists()


def test_run_end_to_end_tiny(tmp_path):
    """The four-step main job on the embedded dataset at tiny settings, as a user starts it (new process)."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "spikernel", "run", "--kernel-sets", "1x1_3x3,1x1_7x7", "--preset", "fmnist-tiny",
               "--candidates", "4", "--epochs", "1", "--limit-train", "64", "--score-batch", "8", "--budget", "40K",
               "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    chosen = json.loads((out / "selection.json").read_text())
    assert chosen["kernel_set"] in ("1x1_3x3", "1x1_7x7") and chosen["params"] <= 40_000
    assert 0.0 <= chosen["test"]["test_acc"] <= 1.0
    assert chosen["selected_by"] == {"within_set": "sahd", "across_sets": "test accuracy"}
    assert (out / chosen["weights"]).stat().st_size > 0
    assert (out / "report" / "report.md").exists() and (out / "report" / "accuracy_vs_memory.png").exists()
    assert "best network under the budget" in proc.stdout
    rows = (out / "1x1_7x7" / "search" / "candidates.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("trial,genotype,params")
    # running it again resumes: nothing is searched or trained twice, same choice
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "selection.json").read_text())["genotype"] == chosen["genotype"]
    assert "already finished" in again.stderr
