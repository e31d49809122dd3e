"""`spikernel evaluate --bits`: quantized accuracy, footprint at the width and the energy report."""

import json

import pytest
import torch
from click.testing import CliRunner

from spikernel.training.checkpoint import RunSpec, save_model
from spikernel.cli import main
from spikernel.nn.footprint import footprint
from spikernel.nn.model import MacroConfig, build_model
from spikernel.space.genotype import Genotype
from spikernel.files import write_json

GENOTYPE = "0001 0000 0000 0000"  # no cell convolutions: the cheapest network that reads 28x28 images


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(GENOTYPE, MacroConfig(width=2, hidden=8, votes=1, second_pool=7, timesteps=2))
    spec = RunSpec(GENOTYPE, model.macro.to_dict(), "fashion-mnist-mini", {"epochs": 1})
    folder = tmp_path_factory.mktemp("run")
    write_json(folder / "run.json", spec.to_dict())
    save_model(folder / "model.safetensors", model, spec)
    return folder, model.macro


def evaluate(*args):
    result = CliRunner().invoke(main, ["evaluate", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("bits", [32, 8])
def test_evaluate_reports_footprint_and_energy_at_the_width(run, bits):
    folder, macro = run
    code, out, err = evaluate("--run", folder, "--bits", bits, "--e-ac", "1.0", "--json")
    assert code == 0, err
    report = json.loads(out)
    fp = footprint(Genotype.parse(GENOTYPE), macro)
    assert report["footprint"]["bits"] == bits and report["footprint"]["budget_bytes"] == fp.bytes(bits)
    energy = report["energy"]
    assert energy["images"] == report["images"] == 2000
    assert energy["energy_model"] == {"e_ac": 1.0, "e_mac": 4.6}
    assert energy["energy_pj"] == pytest.approx(energy["sops"] * 1.0 + energy["stem_macs"] * 4.6)
    assert 0 <= report["test_acc"] <= 1


def test_evaluate_table_and_bad_width(run):
    folder, _ = run
    code, out, _ = evaluate("--run", folder, "--bits", "4")
    assert code == 0 and "footprint at 4 bits" in out and "energy / image" in out
    code, _, err = evaluate("--run", folder, "--bits", "3")
    assert code == 2 and len(err.strip().splitlines()) == 1
