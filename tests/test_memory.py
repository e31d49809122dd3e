import types

import pytest
import torch
from spikingjelly.activation_based.model.snas_net import SNASNet

from spikernel.errors import ConfigError
from spikernel.nn.footprint import BIT_WIDTHS, Budget, footprint, min_footprint
from spikernel.nn.model import build_model, get_preset
from spikernel.nn.neuron import is_lif
from spikernel.space.genotype import KERNEL_SETS, Genotype, KernelSet, sample_many
from helpers import built_counts, lif_neurons


@pytest.mark.parametrize("kernel_set", list(KERNEL_SETS.values()) + [KernelSet.parse("1,9,11")], ids=str)
def test_analytic_equals_built(kernel_set):
    macros = [get_preset("fmnist-tiny"), get_preset("fmnist-small", second_pool=4),
              get_preset("snasnet-cifar100", width=6, hidden=20, stem_stride=2)]
    for i, genotype in enumerate(sample_many(kernel_set, "backward", 24, seed=5)):
        macro = macros[i % len(macros)]
        net = build_model(genotype, macro)
        fp = footprint(genotype, macro)
        assert (fp.params, fp.bn_buffers) == built_counts(net)
        if i < 8:
            sizes = lif_neurons(net, macro)
            assert fp.lif_layers == len(sizes) == sum(1 for m in net.modules() if is_lif(m))
            assert fp.lif_neurons == sum(sizes.values())


@pytest.mark.parametrize("preset,genotype,pool,expected_dataset", [
    ("snasnet-cifar10", "0303 0030 2002 0200", 4, "cifar10"),
    ("snasnet-cifar100", "0302 0030 3003 0000", 2, "cifar100"),
])
def test_snasnet_released_cells_have_snasnets_parameter_count(preset, genotype, pool, expected_dataset):
    g = Genotype.parse(genotype)
    args = types.SimpleNamespace(timestep=5, second_avgpooling=pool, dataset=expected_dataset, threshold=1.0,
                                 tau=4 / 3, celltype="backward")
    theirs = sum(p.numel() for p in SNASNet(args, torch.tensor(g.matrix)).parameters())
    assert footprint(g, get_preset(preset, second_pool=pool)).params == theirs


def test_footprint_bytes_per_bit_width():
    fp = footprint(Genotype.parse("0302 0030 3003 0000"), get_preset("fmnist"))
    values = fp.params + fp.bn_buffers
    assert [fp.bytes(b) for b in BIT_WIDTHS] == [values * 4, values * 2, values, (values * 4 + 7) // 8]
    assert set(fp.to_dict()["footprint_bytes"]) == {"32", "16", "8", "4"}
    with pytest.raises(ConfigError, match="unsupported bit width"):
        fp.bytes(3)


def test_min_footprint_is_a_lower_bound():
    macro = get_preset("fmnist-small")
    smallest = min_footprint(macro).params
    assert all(footprint(g, macro).params >= smallest for g in sample_many("1x1_3x3_5x5_7x7", "backward", 300))


@pytest.mark.parametrize("text,limit,unit", [
    ("10M", 10_000_000, "params"), ("500K", 500_000, "params"), ("1.5M", 1_500_000, "params"),
    ("1234", 1234, "params"), ("8MB", 8_000_000, "bytes"), ("800kb", 800_000, "bytes"), ("1MiB", 2**20, "bytes"),
])
def test_budget_parsing(text, limit, unit):
    budget = Budget.parse(text, bits=8)
    assert (budget.limit, budget.unit) == (limit, unit)


@pytest.mark.parametrize("text", ["ten", "10X", "-5M", "0", "M", ""])
def test_malformed_budgets(text):
    with pytest.raises(ConfigError, match="malformed budget"):
        Budget.parse(text)


def test_budget_in_bytes_uses_bits():
    fp = footprint(Genotype.parse("0302 0030 3003 0000"), get_preset("fmnist"))
    assert Budget.parse("2MB", bits=8).fits(fp) and not Budget.parse("2MB", bits=32).fits(fp)
