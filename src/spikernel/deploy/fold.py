"""BatchNorm folding for inference: the deployed network keeps no BatchNorm.

In eval mode a BatchNorm is a per-channel affine map ``y = a x + b`` with
``a = gamma / sqrt(var + eps)`` and ``b = beta - a mean``. Two places need different treatment:

- after a convolution (stem, every cell conv, reduction conv): ``a`` scales the convolution's
  output channels and ``b`` becomes its bias, so the BatchNorm costs nothing;
- before a LIF (reduction and last stage): its input is a node sum (skip edges, pools and
  convolutions) that the cell's backward edges also read, so there is no single convolution to
  absorb it. It becomes a ``ChannelAffine`` (2 values per channel) that feeds the neuron.

``fold`` returns a new ``SNN`` that runs through the same ``forward`` and equals the original
in eval mode; the original is left untouched.
"""

from __future__ import annotations

import copy

import torch
from spikingjelly.activation_based import functional, layer
from torch import nn

from spikernel.nn.layers import StepCursor, TimestepBatchNorm2d
from spikernel.nn.model import SNN


class ChannelAffine(nn.Module):
    """``y = x * scale[c] + shift[c]`` on [..., C, H, W]: a BatchNorm with its statistics folded in."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.scale = nn.Parameter(scale.detach().clone())
        self.shift = nn.Parameter(shift.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(-1, 1, 1) + self.shift.view(-1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.scale.numel()}"


class StepAffine(ChannelAffine, StepCursor):
    """``y[t] = x[t] * scale[t, c] + shift[t, c]``: a BatchNorm with running averages per timestep
    folded; it takes the steps in order, as that BatchNorm did."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__(scale, shift)
        self.steps = scale.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps, shape = self.take(x.shape[0]), (x.shape[0], 1, -1, 1, 1)
        return x * self.scale[steps].view(shape) + self.shift[steps].view(shape)

    def extra_repr(self) -> str:
        return f"{self.steps} x {self.scale.shape[1]}"


@torch.no_grad()
def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode BatchNorm as (scale, shift) per channel ([T, C] with averages per step)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.affine:
        shift = shift + bn.bias
    return scale, shift


@torch.no_grad()
def fold_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution with bias equal to ``bn(conv(x))`` in eval mode (same class and step mode)."""
    scale, shift = bn_affine(bn)
    kwargs = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                  bias=True, padding_mode=conv.padding_mode)
    if isinstance(conv, layer.Conv2d):
        kwargs["step_mode"] = conv.step_mode
    folded = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, **kwargs)
    folded = folded.to(conv.weight.device, conv.weight.dtype)
    folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias * scale + shift if conv.bias is not None else shift
    folded.bias.copy_(bias)
    return folded


def _fold_sequential(seq: nn.Sequential) -> nn.Sequential:
    """Conv -> BN pairs become one biased conv; a BN anywhere else becomes a ChannelAffine."""
    modules = list(seq)
    out = []
    for i, module in enumerate(modules):
        if isinstance(module, TimestepBatchNorm2d) and module.steps:  # per-step averages: no conv absorbs them
            out.append(StepAffine(*bn_affine(module)))
        elif isinstance(module, nn.BatchNorm2d):
            if out and isinstance(out[-1], nn.Conv2d) and out[-1] is modules[i - 1]:
                out[-1] = fold_conv(out[-1], module)
            else:
                out.append(ChannelAffine(*bn_affine(module)))
        else:
            out.append(module)
    return nn.Sequential(*out)


def fold(model: SNN) -> SNN:
    """An eval-mode copy of ``model`` with every BatchNorm folded away (see the module docstring)."""
    functional.reset_net(model)  # neuron state left by a training step is not copyable (it has a graph)
    folded = copy.deepcopy(model).eval()
    folded.stem = _fold_sequential(folded.stem)
    for cell in (folded.cell1, folded.cell2):
        for key, op in cell.ops.items():
            if isinstance(op, nn.Sequential):
                cell.ops[key] = _fold_sequential(op)
    folded.reduction = _fold_sequential(folded.reduction)
    folded.last = _fold_sequential(folded.last)
    return folded


def is_folded(model: nn.Module) -> bool:
    return not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
