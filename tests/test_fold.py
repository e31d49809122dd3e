"""BatchNorm folding: the folded network computes what the trained one computes in eval mode."""

import pytest
import torch
from torch import nn

from spikernel.deploy.export import model_spikes
from spikernel.deploy.fold import ChannelAffine, fold, is_folded
from helpers import trained_like

CELLS = ["0303 0030 2002 0200", "0302 0030 3003 0000", "0142 0005 0000 0000"]  # backward x2, forward


@pytest.mark.parametrize("genotype", CELLS)
def test_folded_equals_unfolded_in_eval_mode(genotype):
    net = trained_like(genotype)
    folded = fold(net)
    images = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    logits, spikes = model_spikes(net, images)
    folded_logits, folded_spikes = model_spikes(folded, images)
    assert sum(s.sum() for s in spikes.values()) > 1000  # the comparison is not between silent networks
    assert spikes.keys() == folded_spikes.keys()
    for name in spikes:
        assert torch.equal(spikes[name], folded_spikes[name]), name
    torch.testing.assert_close(folded_logits, logits)


def test_folded_float32_agrees():
    net = trained_like(CELLS[0], dtype=torch.float32)
    images = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fold(net)(images), net(images), atol=1e-3, rtol=1e-3)


def test_fold_removes_every_batchnorm_and_keeps_the_original():
    net = trained_like(CELLS[0])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = fold(net)
    assert is_folded(folded) and not is_folded(net)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    # BatchNorms before a LIF become affines (reduction and last stage); the rest fold into convs.
    assert [type(m) for m in folded.modules() if isinstance(m, ChannelAffine)] == [ChannelAffine] * 2
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is not None for c in convs)


def test_fold_uses_running_statistics_even_from_training_mode():
    net = trained_like(CELLS[1]).train()
    folded = fold(net)
    images = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(images), net.eval()(images))


def test_step_averages_keep_a_direct_network_s_averages_per_step_and_fold_them():
    from dataclasses import replace

    from spikernel.deploy.export import ExportError, to_nir
    from spikernel.deploy.quantize import deployed_size, measured_size
    from spikernel.nn.footprint import footprint
    from spikernel.nn.layers import TimestepBatchNorm2d
    from spikernel.nn.macro import MacroConfig, get_preset
    from spikernel.space.genotype import Genotype
    from helpers import built_counts

    macro = replace(get_preset("fmnist-tiny"), timesteps=3, step_averages=True)
    assert MacroConfig.from_dict(macro.to_dict()) == macro and "step_averages" not in get_preset("fmnist-tiny").to_dict()
    net = trained_like(CELLS[0], macro)
    norms = [m for m in net.modules() if isinstance(m, TimestepBatchNorm2d)]
    assert net.stem[1].steps is None  # direct input: one stem output for every step, one average
    assert all(m.steps == 3 and m.running_mean.shape == (3, m.num_features) for m in norms if m is not net.stem[1])
    assert built_counts(net) == (footprint(Genotype.parse(CELLS[0]), macro).params,
                                 footprint(Genotype.parse(CELLS[0]), macro).bn_buffers)
    folded = fold(net)
    images = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    logits, spikes = model_spikes(net, images)
    folded_logits, folded_spikes = model_spikes(folded, images)
    assert sum(s.sum() for s in spikes.values()) > 1000
    for name in spikes:
        assert torch.equal(spikes[name], folded_spikes[name]), name
    torch.testing.assert_close(folded_logits, logits)
    assert measured_size(net.float(), 8) == deployed_size(footprint(Genotype.parse(CELLS[0]), macro), macro, 8)
    with pytest.raises(ExportError, match="per step"):
        to_nir(net, images[:1].float())


def test_step_averages_is_a_flag_of_search_train_explore_and_run(tmp_path):
    import json

    from spikernel.selection.settings import ExploreSettings
    from helpers import cli

    search = tmp_path / "s"
    code, _, err = cli("search", "-p", "fmnist-tiny", "--batch", 8, "--repeats", 1, "-T", 2, "-n", 2,
                       "--step-averages", "-o", search)
    assert code == 0, err
    assert json.loads((search / "selection.json").read_text())["best"]["macro"]["step_averages"] is True
    run = tmp_path / "t"
    code, _, err = cli("train", "--from-search", search, "--epochs", 1, "--limit-train", 16, "--batch", 8, "-o", run)
    assert code == 0, err
    assert json.loads((run / "run.json").read_text())["macro"]["step_averages"] is True  # the search's, kept
    plain = tmp_path / "p"
    code, _, err = cli("train", "-g", CELLS[0], "-p", "fmnist-tiny", "-T", 2, "--epochs", 1, "--limit-train", 16,
                       "--batch", 8, "-o", plain)
    assert code == 0, err
    assert "step_averages" not in json.loads((plain / "run.json").read_text())["macro"]
    settings = ExploreSettings(kernel_sets=("1x1_3x3",), preset="fmnist-tiny", step_averages=True)
    assert settings.macro_space().base.step_averages and settings.to_dict()["step_averages"] is True
    assert "step_averages" not in ExploreSettings(step_averages=None).to_dict()  # the CLI's default: as before
    assert all("--step-averages" in cli(command, "--help")[1] for command in ("explore", "run"))
