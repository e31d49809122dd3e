"""Spike rates, synaptic operations and energy: checked by hand and against spikingjelly's counter."""

import pytest
import torch
from torch import nn

from spikernel.nn.energy import EnergyModel, measure, synapses
from spikernel.errors import ConfigError
from spikernel.deploy.fold import fold
from spikernel.nn.model import MacroConfig, build_model

TINY = MacroConfig(in_channels=1, image_size=4, num_classes=2, width=2, hidden=3, votes=1, second_pool=2,
                   timesteps=2, dropout=0.0)


def forced_network():
    """A network whose every LIF either always fires or never does, so counts follow by hand.

    The stem conv is zero and its BatchNorm bias 2, so cell 1 sees 2.0 everywhere: its LIF gets
    0.75 x 2 = 1.5 >= 1 and fires on both steps. BatchNorm affines set the later layers the same
    way: the reduction and last LIFs fire everywhere, cell 2's LIF never (input 0), and the head
    LIF fires because every head weight is 1.
    """
    net = build_model("0002 0000 0000 0000", TINY).eval()  # one edge: 0 -> 3 conv1x1
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.zero_()
                m.bias.zero_()
        net.stem[0].weight.zero_()
        net.stem[1].bias.fill_(2.0)
        net.reduction[0].bias.fill_(2.0)  # before the reduction LIF
        net.last[0].bias.fill_(2.0)  # before the last LIF
        net.head[1].weight.fill_(1.0)
    return net


def test_sops_counted_by_hand():
    report = measure(forced_network(), [torch.randn(3, 1, 4, 4)])
    rates = {layer.name: layer.rate for layer in report.lif}
    assert rates == {"cell1.ops.0_3.0": 1.0, "reduction.1": 1.0, "cell2.ops.0_3.0": 0.0, "last.1": 1.0,
                     "head.2": 1.0}
    sops = {s.name: s.sops for s in report.synapses}
    # cell 1: 2 channels x 4x4 x 2 steps = 64 spikes, each reaching 2 output channels of a 1x1 conv
    assert sops["cell1.0->3"] == 64 * 2
    # reduction 3x3 conv, padding 1, on 4x4: a spike reaches 2, 3, 3, 2 rows (and columns), so one
    # all-spiking channel makes (2+3+3+2)^2 = 100 accumulates per output channel: 2 in x 4 out x 2 steps
    assert sops["reduction"] == 100 * 2 * 4 * 2
    assert sops["cell2.0->3"] == 0
    # last LIF: 4 channels x 2x2 x 2 steps = 32 spikes, pooled into the head; each drives 3 hidden
    assert sops["head"] == 32 * 3
    # head LIF: 3 neurons x 2 steps, each reaching 2 outputs
    assert sops["readout"] == 6 * 2
    assert report.sops == 128 + 1600 + 96 + 12
    # the stem runs once: 2 channels x 4x4 outputs, each 1 x 3x3 multiply-accumulates
    assert report.stem_macs == 2 * 16 * 9
    assert report.energy_pj == pytest.approx(1836 * 0.9 + 288 * 4.6)
    assert report.images == 3 and report.spike_rate == pytest.approx((64 + 64 + 32 + 6) / ((32 + 32 + 16 + 16 + 3) * 2))


def test_energy_settings_and_folding_do_not_change_counts():
    net = forced_network()
    cheap = measure(fold(net), [torch.randn(2, 1, 4, 4)], EnergyModel(e_ac=0.1, e_mac=1.0))
    assert cheap.sops == 1836 and cheap.energy_pj == pytest.approx(1836 * 0.1 + 288 * 1.0)
    assert cheap.to_dict()["energy_model"] == {"e_ac": 0.1, "e_mac": 1.0}
    with pytest.raises(ConfigError):
        EnergyModel(e_ac=-1)


def test_agrees_with_spikingjelly_synop_counter():
    """spikingjelly counts accumulates of layers whose input is binary; with no pool before the
    head (p = 1) that is every synapse, and the two counts must agree layer by layer."""
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, SynOpCounter

    torch.manual_seed(1)
    macro = MacroConfig(image_size=8, width=4, hidden=16, votes=2, second_pool=1, timesteps=3)
    net = build_model("0303 0030 2002 0200", macro).eval()
    images = torch.randn(4, 1, 8, 8)
    ours = measure(net, [images])
    counter = SynOpCounter()
    with torch.no_grad(), DispatchCounterMode([counter]):
        net(images)
    scopes = counter.get_counts()
    names = {m: n for n, m in net.named_modules()}
    assert ours.sops > 0
    for (name, module, _), layer in zip(synapses(net), ours.synapses):
        theirs = sum(scopes.get(f"SNN.{names[module]}", {}).values()) / len(images)
        assert layer.sops == pytest.approx(theirs), name
