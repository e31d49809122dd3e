"""BatchNorm that keeps SNASNet's per-timestep semantics while running all T steps at once.

Convolutions, pooling and dropout come from spikingjelly's multi-step layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TimestepBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over [T, B, C, H, W] with statistics per timestep, as T separate calls would give.

    SNASNet applies an ordinary BatchNorm once per timestep: in training each step is normalised
    by its own batch statistics and the running averages take T momentum updates. Flattening T
    into the batch would mix the steps' statistics, which changes both the score and training.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return super().forward(x)
        steps, batch, channels, height, width = x.shape
        if not self.training and self.track_running_stats:
            return super().forward(x.flatten(0, 1)).view_as(x)
        # Each (timestep, channel) becomes its own channel; weights are shared across steps.
        y = x.permute(1, 0, 2, 3, 4).reshape(batch, steps * channels, height, width)
        running_mean = running_var = None
        if self.training and self.track_running_stats:
            running_mean = self.running_mean.repeat(steps)
            running_var = self.running_var.repeat(steps)
        weight = self.weight.repeat(steps) if self.affine else None
        bias = self.bias.repeat(steps) if self.affine else None
        y = F.batch_norm(y, running_mean, running_var, weight, bias, True, self.momentum, self.eps)
        if running_mean is not None:
            self._fold_running_stats(running_mean.view(steps, channels), running_var.view(steps, channels))
        return y.view(batch, steps, channels, height, width).transpose(0, 1)

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
