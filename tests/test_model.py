import pytest
import torch
from torch import nn

from helpers import reference_snasnet
from spikernel.errors import ConfigError, GenotypeError
from spikernel.nn.model import PRESETS, MacroConfig, build_model, get_preset
from spikernel.space.genotype import Genotype

SMALL = get_preset("fmnist-tiny", timesteps=3)


def _randomise(net: nn.Module) -> None:
    """Weights that make every layer fire, so outputs are informative (init leaves the head silent)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.3)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.2, 0.5)
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("genotype", ["0302 0030 3003 0000", "0303 0030 2002 0200", "0313 0024 0004 0000"])
@pytest.mark.parametrize("training", [False, True])
def test_matches_spikingjelly_snasnet(genotype, training):
    """Same weights, same input: spikingjelly's SNASNet (single-step, per-timestep BN) gives our output."""
    torch.manual_seed(0)
    net = build_model(genotype, get_preset("snasnet-cifar100", timesteps=3, dropout=0.0))
    _randomise(net)
    ref = reference_snasnet(net, "cifar100")
    ref.classifier[0].p = 0.0
    net.train(training), ref.train(training)
    x = torch.randn(3, 3, 32, 32)
    ours, theirs = net(x), ref(x)
    assert ours.abs().max() > 1  # informative, not all-silent
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    if training:  # running statistics took the same T per-timestep updates
        torch.testing.assert_close(net.reduction[0].running_var, ref.downconv1[0].running_var)


def test_backward_edges_carry_state_and_reset():
    backward = Genotype.parse("0302 0030 3003 0000")  # 2 -> 0 carries node 2 at t-1 into node 0
    forward = Genotype.parse("0302 0030 0003 0000")  # the same cell without that edge
    torch.manual_seed(0)
    net_b = build_model(backward, SMALL)
    _randomise(net_b)
    net_f = build_model(forward, SMALL)
    net_f.load_state_dict({k: v for k, v in net_b.state_dict().items() if "2_0" not in k})
    net_b.eval(), net_f.eval()
    x = torch.randn(4, 1, 28, 28)
    steps_b, steps_f = net_b.forward_steps(x), net_f.forward_steps(x)
    torch.testing.assert_close(steps_b[0], steps_f[0])  # nothing carried yet at t = 0
    assert not torch.allclose(steps_b[1:], steps_f[1:])  # carried from t = 1 on
    # state is reset between batches: a different batch in between changes nothing
    first = net_b(x)
    net_b(torch.randn(4, 1, 28, 28) * 3)
    torch.testing.assert_close(net_b(x), first)


def test_forward_cell_runs_all_steps_at_once_and_shapes():
    net = build_model("0302 0030 0003 0000", SMALL)
    out = net.forward_steps(torch.randn(2, 1, 28, 28))
    assert out.shape == (SMALL.timesteps, 2, 10)
    assert net(torch.randn(5, 1, 28, 28)).shape == (5, 10)


def test_node_fed_only_by_backward_edge():
    # node 1 receives only 3 -> 1 (t-1): zero at t = 0, then node 3's previous value
    net = build_model("0002 0030 0003 0300", SMALL)
    net.eval()
    assert torch.isfinite(net(torch.randn(2, 1, 28, 28))).all()


def test_unconnected_output_is_rejected():
    with pytest.raises(GenotypeError, match="not connected"):
        build_model("0300 0000 0000 0000", SMALL)


def test_presets_and_overrides():
    assert {"snasnet-cifar10", "snasnet-cifar100", "snasnet-tinyimagenet", "fmnist", "fmnist-small",
            "fmnist-tiny"} <= set(PRESETS)
    assert get_preset("snasnet-cifar10", second_pool=4).second_pool == 4
    assert get_preset("fmnist", width=None).width == PRESETS["fmnist"].width
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("resnet")
    with pytest.raises(ConfigError, match="too small"):
        MacroConfig(image_size=8, second_pool=8)
    cfg = get_preset("fmnist")
    assert MacroConfig.from_dict(cfg.to_dict()) == cfg


def test_build_on_a_device_draws_with_that_devices_generator():
    """On the CPU, building there explicitly gives the very same weights as the default build."""
    torch.manual_seed(3)
    default = build_model("0302 0030 3003 0000", "fmnist-tiny")
    torch.manual_seed(3)
    placed = build_model("0302 0030 3003 0000", "fmnist-tiny", device="cpu")
    for (name, a), (_, b) in zip(default.state_dict().items(), placed.state_dict().items()):
        assert torch.equal(a, b), name


def test_neuron_settings_reach_every_lif_layer_and_stay_out_of_old_run_files():
    macro = get_preset("fmnist-tiny", threshold=0.5, tau=2.0, surrogate_alpha=4.0)
    lifs = build_model(Genotype.parse("0302 0030 3003 0000"), macro).lif_layers()
    assert lifs and all((m.v_threshold, m.tau, m.surrogate_function.alpha) == (0.5, 2.0, 4.0) for m in lifs)
    assert MacroConfig.from_dict(macro.to_dict()) == macro
    assert "surrogate_alpha" not in get_preset("fmnist-tiny").to_dict()  # absent at the default: old runs match
    for bad in ({"surrogate_alpha": 0.0}, {"threshold": -1.0}, {"tau": "x"}):
        with pytest.raises(ConfigError):
            MacroConfig.from_dict({**get_preset("fmnist-tiny").to_dict(), **bad})
