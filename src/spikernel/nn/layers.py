"""The model's own layers: BatchNorm with SNASNet's per-timestep semantics over all T steps at
once, multi-step average pooling, and the one switch that picks their kernels.

Each layer here (and ``nn.neuron.LIF``) has a ``kernel``: ``"spikingjelly"`` (the default) or a
faster one computing the same values. ``use_kernels(model, name)`` switches every layer that has
``name`` for the length of a block: ``"fused"`` for training (the LIF), ``"inference"`` for
scoring (the LIF, BatchNorm and pooling; each falls back to its default where autograd records).
Convolutions and dropout are spikingjelly's multi-step layers.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import layer
from torch import nn


@contextmanager
def use_kernels(model: nn.Module, name: str, enabled: bool = True):
    """Within the block every layer of ``model`` that has kernel ``name`` runs on it."""
    chosen = [m for m in model.modules() if name in getattr(m, "KERNELS", ())] if enabled else []
    before = [m.kernel for m in chosen]
    for m in chosen:
        m.kernel = name
    try:
        yield model
    finally:
        for m, kernel in zip(chosen, before):
            m.kernel = kernel


def _inference(module: nn.Module) -> bool:
    return module.kernel == "inference" and not torch.is_grad_enabled()


class StepCursor:
    """Which timesteps a call holds, for layers with values per step (BatchNorm averages, their folded
    affines): calls take the steps in order from ``cursor``, and ``SNN.rest`` rewinds every one."""

    steps: int | None = None
    cursor: int = 0

    def rewind(self) -> None:
        self.cursor = 0

    def take(self, count: int) -> slice:
        first = self.cursor
        if first + count > self.steps:
            raise ValueError(f"steps {first}..{first + count - 1} of a layer with {self.steps} steps: rewind first")
        self.cursor = (first + count) % self.steps
        return slice(first, first + count)


class TimestepBatchNorm2d(nn.BatchNorm2d, StepCursor):
    """BatchNorm over [T, B, C, H, W] with statistics per timestep, as T separate calls would give
    (over [B, C, H, W], an ordinary BatchNorm).

    SNASNet applies an ordinary BatchNorm once per timestep: in training each step is normalised
    by its own batch statistics and the running averages take T momentum updates. Flattening T
    into the batch would mix the steps' statistics, which changes both the score and training.

    With ``track_steps(T)`` (``SNN`` calls it for spike-encoded input) the running averages are
    per timestep too, [T, C] (BNTT's, Kim & Panda 2021), so evaluation normalises each step as
    training did; calls take the steps in order (``StepCursor``). A spike
    encoding's steps differ (latency coding fires the brightest pixels first), and one running
    average for all of them is none of them: a latency-coded network trained with shared averages
    tested at 26.6%, and at 78.8% with its cells' BatchNorms on batch statistics instead.
    """

    KERNELS = ("spikingjelly", "inference")

    def __init__(self, num_features: int):
        super().__init__(num_features)
        self.kernel = "spikingjelly"
        self.steps: int | None = None  # running averages per timestep: see track_steps

    def track_steps(self, steps: int) -> None:
        self.steps = steps
        self.register_buffer("running_mean", torch.zeros(steps, self.num_features))
        self.register_buffer("running_var", torch.ones(steps, self.num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.steps is not None:
            return self._forward_steps(x)
        if self.training and _inference(self):
            return batch_norm_steps(self, x)
        if x.dim() == 4:
            return super().forward(x)
        steps, channels = x.shape[0], x.shape[2]
        if not self.training and self.track_running_stats:
            return super().forward(x.flatten(0, 1)).view_as(x)
        running_mean = running_var = None
        if self.track_running_stats:
            running_mean, running_var = self.running_mean.repeat(steps), self.running_var.repeat(steps)
        y = self._steps_as_channels(x, running_mean, running_var, training=True)
        if running_mean is not None:
            self._fold_running_stats(running_mean.view(steps, channels), running_var.view(steps, channels))
        return y

    def _forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        """[t, B, C, H, W], steps ``cursor`` ... ``cursor + t - 1``, each with its own statistics."""
        steps = self.take(x.shape[0])
        if self.training and _inference(self):  # the score: batch statistics, as without track_steps
            return batch_norm_steps(self, x)
        # views of the rows of these steps: a training call updates them in place
        y = self._steps_as_channels(x, self.running_mean[steps].view(-1), self.running_var[steps].view(-1),
                                    training=self.training)
        if self.training and steps.start == 0:
            self.num_batches_tracked += 1
        return y

    def _steps_as_channels(self, x: torch.Tensor, mean, var, training: bool) -> torch.Tensor:
        """Each (timestep, channel) of [t, B, C, H, W] normalised as a channel of its own, with the
        affine shared across steps and ``mean``/``var`` [t * C] as the running averages."""
        count, batch, channels, height, width = x.shape
        y = x.permute(1, 0, 2, 3, 4).reshape(batch, count * channels, height, width)
        weight = self.weight.repeat(count) if self.affine else None
        bias = self.bias.repeat(count) if self.affine else None
        y = F.batch_norm(y, mean, var, weight, bias, training, self.momentum, self.eps)
        return y.view(batch, count, channels, height, width).transpose(0, 1)

    @torch.no_grad()
    def _fold_running_stats(self, means: torch.Tensor, variances: torch.Tensor) -> None:
        # Each copy got one update r_t = (1-m) r + m s_t from the same r; replay them in order.
        m = self.momentum
        mean, var = self.running_mean.clone(), self.running_var.clone()
        for t in range(means.shape[0]):
            mean = (1 - m) * mean + (means[t] - (1 - m) * self.running_mean)
            var = (1 - m) * var + (variances[t] - (1 - m) * self.running_var)
        self.running_mean.copy_(mean)
        self.running_var.copy_(var)
        self.num_batches_tracked += means.shape[0]


class StepAvgPool2d(layer.AvgPool2d):
    """spikingjelly's multi-step average pooling, with PyTorch's values on a faster CPU schedule
    as its inference kernel (``avg_pool_steps``)."""

    KERNELS = ("spikingjelly", "inference")

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__(kernel_size, stride, padding, step_mode="m")
        self.kernel = "spikingjelly"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool_steps(self, x) if _inference(self) else super().forward(x)


def batch_norm_steps(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """Training-mode BatchNorm of [B, C, H, W] or [T, B, C, H, W] with statistics per timestep.

    Each step goes through the same kernel as SNASNet's per-step BatchNorm, so the output is
    bit-identical; the running statistics, which the score never reads, are left alone.
    """
    def norm(t: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(t, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)

    if x.dim() == 4:
        return norm(x)
    if x.shape[0] == 1:
        return norm(x[0]).unsqueeze(0)
    out = torch.empty_like(x)
    for t in range(x.shape[0]):
        out[t] = norm(x[t])
    return out


def avg_pool_steps(pool: nn.AvgPool2d, x: torch.Tensor) -> torch.Tensor:
    """Average pooling of [..., C, H, W] with PyTorch's values, channels-last on CPU.

    PyTorch's CPU kernels add each window's inputs in row-major order from zero and divide by the
    window size, so the channels-last kernel gives the NCHW kernel's values (its copies included)
    several times faster. The result is NCHW because convolutions round differently
    channels-last, and one flipped spike moves the score.
    """
    args = (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode, pool.count_include_pad,
            pool.divisor_override)
    flat = x.flatten(0, x.dim() - 4)
    if x.device.type != "cpu":
        y = F.avg_pool2d(flat, *args)
    else:
        y = F.avg_pool2d(flat.contiguous(memory_format=torch.channels_last), *args).contiguous()
    return y.view(*x.shape[:-3], *y.shape[1:])
