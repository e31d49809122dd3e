"""Weight quantization: per-channel codes, deployed sizes, and accuracy on real Fashion-MNIST images."""

import pytest
import torch
from torch import nn

from spikernel.data.datasets import Split, load_dataset
from spikernel.errors import ConfigError
from spikernel.nn.footprint import footprint
from spikernel.nn.model import MacroConfig, build_model
from spikernel.deploy.quantize import deployed_size, int_range, measured_size, quantize, quantize_codes, quantize_weight
from spikernel.space.genotype import Genotype
from spikernel.training.loop import TrainConfig, evaluate


@pytest.mark.parametrize("bits", [8, 4])
def test_codes_are_per_channel_symmetric_integers(bits):
    torch.manual_seed(0)
    weight = torch.randn(6, 3, 3, 3) * torch.tensor([0.01, 0.1, 1, 10, 100, 0.5]).view(-1, 1, 1, 1)
    decoded, scale = quantize_weight(weight, bits)
    codes, scale2 = quantize_codes(weight, bits)
    low, high = int_range(bits)
    assert scale.shape == (6,) and torch.equal(scale, scale2)
    assert codes.min() >= low and codes.max() <= high
    # each channel's largest weight maps to the top code, and rounding errs by at most half a step
    assert torch.equal(codes.flatten(1).abs().amax(1), torch.full((6,), high, dtype=torch.int8))
    assert torch.all((decoded - weight).abs() <= scale.view(-1, 1, 1, 1) / 2 + 1e-6 * weight.abs())
    torch.testing.assert_close(codes.float() * scale.view(-1, 1, 1, 1), decoded)
    assert len(decoded[0].unique()) <= 2 * high + 1


def test_16_and_32_bits():
    weight = torch.randn(4, 4)
    assert torch.equal(quantize_weight(weight, 32)[0], weight)
    assert torch.equal(quantize_weight(weight, 16)[0], weight.half().float())
    with pytest.raises(ConfigError, match="unsupported bit width 3"):
        quantize_weight(weight, 3)
    with pytest.raises(ConfigError):
        quantize(build_model("0001 0000 0000 0000", "fmnist-tiny"), 2)


@pytest.mark.parametrize("genotype", ["0303 0030 2002 0200", "0142 0005 0000 0000", "0001 0000 0000 0000"])
@pytest.mark.parametrize("preset", ["fmnist-tiny", "fmnist-small"])
def test_deployed_size_from_the_footprint_matches_the_tensors(genotype, preset):
    net = build_model(genotype, preset)
    fp = footprint(Genotype.parse(genotype), net.macro)
    for bits in (32, 16, 8, 4):
        assert deployed_size(fp, net.macro, bits) == measured_size(net, bits)
    # folding removes values: deployed float32 is below the budget accounting (BatchNorm unfolded)
    assert deployed_size(fp, net.macro, 32).bytes < fp.bytes(32)


def test_quantized_network_is_folded_and_decodes_to_few_levels():
    net = build_model("0303 0030 2002 0200", "fmnist-tiny")
    q = quantize(net, 4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())
    conv = q.cell1.ops["0_1"][1]
    assert conv.weight[0].unique().numel() <= 15
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # the original is untouched


@pytest.fixture(scope="module")
def trained():
    """A small network trained for two passes over 2000 real Fashion-MNIST images, pooled to
    14x14: ~67% test accuracy within seconds on a CPU, enough to see what quantization costs."""
    from spikernel.data.datasets import Dataset
    from spikernel.training.loop import train_epoch

    full = load_dataset("fashion-mnist-mini")

    def pooled(split, n):
        images = torch.nn.functional.avg_pool2d(split.images[:n].float(), 2).round().to(torch.uint8)
        return Split(images, split.labels[:n])

    dataset = Dataset("fashion-mnist-mini-14", pooled(full.train, 2000), pooled(full.test, 1000), full.classes)
    torch.manual_seed(0)
    model = build_model("0001 0000 0000 0000",
                        MacroConfig(image_size=14, width=4, hidden=32, votes=2, timesteps=2, dropout=0.0))
    config = TrainConfig(epochs=2, batch_size=50, augment=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    generator = torch.Generator().manual_seed(0)
    for epoch in range(config.epochs):
        train_epoch(model, dataset, optimizer, constant, config, epoch + 1, generator, torch.device("cpu"))
    return model.eval(), dataset


def test_quantized_accuracy_on_real_images(trained):
    model, dataset = trained
    acc = {bits: evaluate(quantize(model, bits), dataset)["test_acc"] for bits in (32, 16, 8, 4)}
    assert acc[32] > 0.55  # it learned (10 classes)
    assert abs(acc[16] - acc[32]) <= 0.01
    assert abs(acc[8] - acc[32]) <= 0.03
    assert 0.3 < acc[4] <= acc[32] + 0.03  # measured; 4 bits costs more
