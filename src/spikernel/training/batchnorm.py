"""Precise BatchNorm statistics: running averages recomputed for the weights a training ended with.

A BatchNorm's running averages follow the last few hundred training batches with momentum 0.1, so
they describe weights that have since moved; where a channel's variance is tiny (a node that only a
backward edge feeds fires rarely) evaluation amplifies the lag. Recomputing them with the final
weights over some training images ("precise BN", Wu & Johnson, *Rethinking "Batch" in BatchNorm*,
2021) evaluates the network as it is. Training never reads the running averages, so this changes
evaluation and the saved statistics only, never the trajectory.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack

import torch
from torch import nn

from spikernel.nn.layers import StepCursor


@torch.no_grad()
def recalibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Set every BatchNorm's running mean and variance to the average of its batch statistics over
    ``batches`` (model inputs), the layers before it normalising by batch statistics as in training.

    Dropout stays off and no random number of the caller's is drawn (a spike encoding's draws come
    from a forked generator); the model's train/eval modes are restored."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    sums = {m: [torch.zeros_like(m.running_mean), torch.zeros_like(m.running_var), 0] for m in norms}
    modes = {m: m.training for m in model.modules()}
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=devices))
        for m in norms:
            stack.callback(m.register_forward_pre_hook(_accumulate(sums[m])).remove)
        model.eval()
        for m in norms:
            m.train()
        try:
            for images in batches:
                model(images)
        finally:
            for m, training in modes.items():
                m.train(training)
    for m, (mean, var, count) in sums.items():
        if count:
            m.running_mean.copy_(mean / count)
            m.running_var.copy_(var / count)


def _accumulate(total: list):
    """A pre-hook adding one call's batch statistics to ``total`` = [mean sum, variance sum, calls],
    shaped as the layer's running averages: [C], or [T, C] for averages per timestep."""

    def hook(module: nn.Module, inputs) -> None:
        x = inputs[0].float()
        if x.dim() == 4:  # [B, C, H, W]: one step
            x = x.unsqueeze(0)
        steps = x.shape[0]
        mean = x.mean(dim=(1, 3, 4))  # [t, C]
        var = x.var(dim=(1, 3, 4), unbiased=True)
        if isinstance(module, StepCursor) and module.steps is not None:
            rows = torch.arange(module.cursor, module.cursor + steps)  # the steps this call holds
            total[0][rows] += mean
            total[1][rows] += var
            total[2] += steps / module.steps  # a whole pass over T steps counts once
        else:  # one average for every step, as the momentum updates mix them
            total[0] += mean.sum(0)
            total[1] += var.sum(0)
            total[2] += steps

    return hook
