"""NIR export round trip (spike for spike), safetensors export and rebuild, and `spikernel export`."""

import json

import nir
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from spikernel.training.checkpoint import RunSpec, load_model, save_model
from spikernel.cli import main
from spikernel.deploy.export import (ExportError, compare_nir, export_nir, export_safetensors, load_exported, load_run,
                                     simulate_nir_spikingjelly, to_nir, write_nir)
from spikernel.deploy.fold import fold
from spikernel.deploy.quantize import quantize
from spikernel.files import write_json
from helpers import trained_like

BACKWARD = [
    "0303 0030 2002 0200",  # SNASNet's CIFAR-10 cell: 2 backward edges
    "0302 0030 3003 0000",  # SNASNet's CIFAR-100 cell
    "0001 0000 3000 0010",  # node 2 is fed only by a backward skip from node 3; 2 -> 0 backward conv
    "0103 0010 1000 0000",  # skips 0 -> 1 -> 2 and 2 -> 0 back: node 0 accumulates across steps
    "0400 0001 4000 0040",  # backward average pools
]


def images(n=3, seed=0):
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def round_trip(tmp_path, genotype, simulate=None):
    folded = fold(trained_like(genotype, dtype=torch.float32))
    graph, step = to_nir(folded, images(1))
    write_nir(tmp_path / "net.nir", graph)  # compare what a reader of the file gets
    kwargs = {"simulate": simulate} if simulate else {}
    return compare_nir(nir.read(tmp_path / "net.nir"), step, folded, images(), **kwargs), graph


def test_forward_cell_round_trip_through_spikingjelly_import(tmp_path):
    report, graph = round_trip(tmp_path, "0142 0005 0000 0000", simulate_nir_spikingjelly)
    assert report["spikes"] > 1000 and report["mismatched_spikes"] == {}
    assert report["max_logit_error"] < 1e-5
    assert report["lif_layers"] == 2 * 2 + 3  # two cell convs in each cell, reduction, last, head


@pytest.mark.parametrize("genotype", BACKWARD)
def test_backward_cell_round_trip_spike_for_spike(tmp_path, genotype):
    report, graph = round_trip(tmp_path, genotype)
    assert report["spikes"] > 1000
    assert report["mismatched_spikes"] == {}
    assert report["max_logit_error"] < 1e-5


def test_graph_holds_lif_parameters_convs_pools_and_delays(tmp_path):
    _, graph = round_trip(tmp_path, "0400 0001 4000 0040")
    kinds = [type(n).__name__ for n in graph.nodes.values()]
    lif = next(n for n in graph.nodes.values() if isinstance(n, nir.LIF))
    assert np.allclose(lif.tau, 4 / 3 * 1e-4) and np.all(lif.v_threshold == 1.0) and np.all(lif.v_reset == 0.0)
    assert kinds.count("Delay") == 4  # 2 backward edges in each of the 2 cells
    # the 2x2 and p x p pools sum, their 1/k^2 in the convolution before / the linear layer after;
    # the cell's padded 3x3 pools (one forward, two backward per cell) are channel-diagonal convolutions
    assert kinds.count("AvgPool2d") == 0 and kinds.count("SumPool2d") == 2
    pools = [n for n in graph.nodes.values() if isinstance(n, nir.Conv2d) and n.weight.shape[0] == n.weight.shape[1]
             and np.array_equal(n.weight, n.weight * np.eye(len(n.weight))[:, :, None, None]) and n.weight.shape[-1] == 3]
    assert len(pools) == 2 * 3 and all(np.allclose(p.weight[0, 0], 1 / 9) for p in pools)
    assert kinds.count("BatchNorm2d") == 0
    readout = graph.nodes["readout"]
    assert isinstance(readout, nir.Affine) and readout.weight.shape[0] == 10  # votes averaged into 10 classes


def test_parallel_skip_paths_are_refused_without_a_file(tmp_path):
    model = trained_like("0101 0001 0000 0000", dtype=torch.float32)  # skips 0->1->3 and 0->3
    with pytest.raises(ExportError, match="node 0 reaches node 3 along 2 paths of skip edges"):
        export_nir(model, tmp_path / "net.nir", images())
    assert list(tmp_path.iterdir()) == []


def test_export_nir_writes_a_checked_file(tmp_path):
    model = trained_like("0303 0030 2002 0200", dtype=torch.float32)
    report = export_nir(model, tmp_path / "net.nir", images(4))
    assert report["delays"] == 4 and report["mismatched_spikes"] == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.nir"]


def test_safetensors_32_bit_rebuilds_the_same_network(tmp_path):
    model = trained_like("0303 0030 2002 0200", dtype=torch.float32)
    info = export_safetensors(model, tmp_path / "net.safetensors", 32, dataset="fashion-mnist-mini")
    assert json.loads((tmp_path / "net.json").read_text())["genotype"]["genotype"] == "0303 0030 2002 0200"
    x = images(4)
    with torch.no_grad():
        assert torch.equal(load_exported(tmp_path / "net.json")(x), model(x))
        # the training engine's loader (spikernel evaluate --run FILE) reads it as well
        assert torch.equal(load_model(tmp_path / "net.safetensors")[0].eval()(x), model(x))
    assert info["file_bytes"] > 0


@pytest.mark.parametrize("bits", [16, 8, 4])
def test_quantized_safetensors_rebuild_the_quantized_network(tmp_path, bits):
    model = trained_like("0302 0030 3003 0000", dtype=torch.float32)
    info = export_safetensors(model, tmp_path / "q.safetensors", bits)
    x = images(4)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(tmp_path / "q.safetensors")(x), quantize(model, bits)(x))
    plain = export_safetensors(model, tmp_path / "p.safetensors", 32)
    assert info["file_bytes"] < plain["file_bytes"]
    assert info["deployed"]["bits"] == bits


# --------------------------------------------------------------------------- the command


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def run_folder(tmp_path):
    """A run folder as ``spikernel train --out`` leaves it (written with the engine's own writer)."""
    model = trained_like("0303 0030 2002 0200", dtype=torch.float32)
    spec = RunSpec("0303 0030 2002 0200", model.macro.to_dict(), "fashion-mnist-mini", {"epochs": 1})
    run = tmp_path / "run"
    write_json(run / "run.json", spec.to_dict())
    save_model(run / "model.safetensors", model, spec)
    return run


def test_cli_export_nir_and_safetensors(run_folder):
    code, out, err = cli("export", "--run", run_folder, "--format", "nir", "--check-images", "4")
    assert code == 0, err
    assert (run_folder / "network.nir").is_file() and "spikes of 15 LIF layers equal" in " ".join(out.split())
    code, out, err = cli("export", "--run", run_folder, "--format", "safetensors", "--bits", "8")
    assert code == 0, err
    assert load_exported(run_folder / "network-8bit.json") is not None
    assert load_run(run_folder)[1]["dataset"] == "fashion-mnist-mini"


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("untrained", "has no weights yet"),
    ("not-a-run", "is not a training run"),
])
def test_cli_export_bad_runs_one_line_no_file(tmp_path, run_folder, case, message):
    target = tmp_path / "nothing-here"
    if case == "untrained":
        (run_folder / "model.safetensors").unlink()
        target = run_folder
    elif case == "not-a-run":
        target.mkdir()
    code, _, err = cli("export", "--run", target, "--format", "nir")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (target / "network.nir").exists()


def test_cli_export_rejects_bits_for_nir_and_unknown_widths(run_folder):
    code, _, err = cli("export", "--run", run_folder, "--format", "nir", "--bits", "8")
    assert code == 2 and "--bits applies to --format safetensors" in err
    code, _, err = cli("export", "--run", run_folder, "--format", "safetensors", "--bits", "3")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert not list(run_folder.glob("network*"))
