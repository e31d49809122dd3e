"""Post-training weight quantization of a folded network, and its deployed size.

Weights of every convolution and linear layer are stored at ``bits``: 16 is IEEE half precision,
8 and 4 are symmetric integers per output channel (``[-(2^(b-1)-1), 2^(b-1)-1]``, one float32
scale per channel, zero point 0), the common choice for weights of embedded accelerators. The
per-channel vectors left after folding (biases and the affines before a LIF) stay at 16 bits
for a 16-bit network and at 32 bits below that, where they are the accumulator-side values.
Quantized networks are simulated in float ("fake quantization"): each weight is replaced by
the value its integer code decodes to, so accuracy is what the integer network computes.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from spikingjelly.activation_based import functional
from torch import nn
from torch.ao.quantization.observer import PerChannelMinMaxObserver

from spikernel.deploy.fold import ChannelAffine, fold, is_folded
from spikernel.nn.footprint import BIT_WIDTHS, Footprint, check_bits, stat_steps, stem_stat_steps
from spikernel.nn.model import MacroConfig

SCALE_BITS = 32


def int_range(bits: int) -> tuple[int, int]:
    """Symmetric, restricted range: zero is exact and +w and -w get codes of equal magnitude."""
    top = 2 ** (bits - 1) - 1
    return -top, top


@torch.no_grad()
def quantize_weight(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the weight as its ``bits``-bit code decodes, per-output-channel scales or None)."""
    check_bits(bits)
    if bits == 32:
        return weight.clone(), None
    if bits == 16:
        return weight.half().to(weight.dtype), None
    low, high = int_range(bits)
    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                        quant_min=low, quant_max=high)
    observer(weight.detach().float())
    scale, zero_point = observer.calculate_qparams()
    decoded = torch.fake_quantize_per_channel_affine(weight.float(), scale.float(), zero_point.int(), 0, low, high)
    return decoded.to(weight.dtype), scale


def quantize_codes(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes (int8 tensor, values within ``int_range(bits)``) and float32 scales per channel."""
    if bits not in (8, 4):
        raise ValueError("integer codes exist for 8 and 4 bits")
    decoded, scale = quantize_weight(weight, bits)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return torch.round(decoded.float() / scale.view(shape)).to(torch.int8), scale.float()


def _weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _vectors(model: nn.Module) -> list[torch.Tensor]:
    """Per-channel vectors that survive folding: biases and ChannelAffine scale/shift."""
    found = [m.bias for m in _weight_layers(model) if m.bias is not None]
    for m in model.modules():
        if isinstance(m, ChannelAffine):
            found += [m.scale, m.shift]
    return found


@torch.no_grad()
def quantize(model: nn.Module, bits: int) -> nn.Module:
    """A folded (eval-mode) copy of ``model`` whose weights are stored at ``bits``."""
    check_bits(bits)
    if is_folded(model):
        functional.reset_net(model)
        model = copy.deepcopy(model).eval()
    else:
        model = fold(model)
    for layer in _weight_layers(model):
        layer.weight.copy_(quantize_weight(layer.weight, bits)[0])
    if bits == 16:
        for vector in _vectors(model):
            vector.copy_(vector.half().to(vector.dtype))
    return model


# --------------------------------------------------------------------------- deployed size


@dataclass(frozen=True)
class DeployedSize:
    """Bytes of a folded network stored at ``bits`` (see the module docstring for the layout)."""

    bits: int
    weights: int  # convolution and linear weights, stored at ``bits``
    vectors: int  # biases and per-channel affines
    scales: int  # per-output-channel scales (8 and 4 bits)

    @property
    def vector_bits(self) -> int:
        return 16 if self.bits == 16 else 32

    @property
    def bytes(self) -> int:
        bits = self.weights * self.bits + self.vectors * self.vector_bits + self.scales * SCALE_BITS
        return (bits + 7) // 8

    def to_dict(self) -> dict:
        return {**asdict(self), "bytes": self.bytes}


def _size(bits: int, weights: int, vectors: int, channels: int) -> DeployedSize:
    check_bits(bits)
    return DeployedSize(bits, weights, vectors, channels if bits < 16 else 0)


def deployed_size(fp: Footprint, macro: MacroConfig, bits: int) -> DeployedSize:
    """The deployed size from the analytic footprint alone (no network built), as a search needs.

    Every BatchNorm channel holds 4 values (gamma, beta, mean, var). After folding, one after a
    convolution leaves a bias (1 value); the 3C channels before a LIF (C in the reduction, 2C
    before the head) leave an affine (2 values); each weight tensor gets one scale per output
    channel: the convolutions (one per post-conv BatchNorm channel), ``hidden`` and the readout.
    """
    steps, stem_steps, stem = stat_steps(macro), stem_stat_steps(macro), macro.width
    bn_channels = stem + (fp.bn_buffers - 2 * stem * stem_steps) // (2 * steps)
    pre_lif = 3 * macro.width
    post_conv = bn_channels - pre_lif
    readout = macro.num_classes * macro.votes
    weights = fp.params - 2 * bn_channels - readout  # minus BatchNorm affine and readout bias
    # per-step averages leave a scale and shift per step and channel, none folded into a convolution
    rest = 2 * steps * (bn_channels - stem) if macro.per_step_averages else post_conv - stem + 2 * pre_lif
    vectors = (2 * stem_steps * stem if macro.spiking_input else stem) + rest + readout
    return _size(bits, weights, vectors, post_conv + macro.hidden + readout)


def measured_size(model: nn.Module, bits: int) -> DeployedSize:
    """The deployed size counted from a folded network's tensors."""
    if not is_folded(model):
        model = fold(model)
    layers = _weight_layers(model)
    return _size(bits, sum(m.weight.numel() for m in layers), sum(v.numel() for v in _vectors(model)),
                 sum(m.weight.shape[0] for m in layers))


def sizes(fp: Footprint, macro: MacroConfig) -> dict[str, dict]:
    """Footprint at every supported width: the budget accounting and the deployed network."""
    return {str(b): {"budget_bytes": fp.bytes(b), "deployed": deployed_size(fp, macro, b).to_dict()}
            for b in BIT_WIDTHS}


def footprint_at(genotype, macro: MacroConfig, bits: int) -> dict:
    """The footprint figures ``spikernel evaluate --bits`` reports for a network at ``bits``."""
    from spikernel.nn.footprint import footprint
    from spikernel.space.genotype import Genotype

    fp = footprint(Genotype.parse(str(genotype)), macro)
    return {"bits": bits, "params": fp.params, "budget_bytes": fp.bytes(bits),
            "deployed_bytes": deployed_size(fp, macro, bits).bytes}
