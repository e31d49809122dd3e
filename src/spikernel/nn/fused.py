"""A multi-step LIF written for training speed: the same neuron, spikes and gradients as spikingjelly's.

spikingjelly 2.0 runs its CPU LIF as a registered custom operator, which ``torch.compile`` must
treat as opaque: the ~10 element-wise passes per timestep stay separate memory sweeps. Here the
neuron is an ``autograd.Function`` of plain tensor ops (forward and the hand-written BPTT
backward), so the compiler can fuse each direction into one loop, and eager mode saves only the
charged potential ``h`` for backward. The arithmetic follows spikingjelly's CPU kernels term for
term (``v + (x - v) / tau``, ATan ``(alpha/2) / (1 + (pi/2 alpha u)^2)``, detached hard reset),
so spikes and gradients agree bit for bit (tests/test_train.py checks it).

``fused_neurons(model)`` swaps every LIFNode of a model for this subclass while training and puts
the originals back afterwards; weights are untouched (LIF has no parameters).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from spikingjelly.activation_based import functional, neuron, surrogate
from torch import nn


class _LIFSequence(torch.autograd.Function):
    """x [T, ...], v [...] -> spikes [T, ...], final v. Hard reset to 0, reset detached from the graph."""

    @staticmethod
    def forward(ctx, x, v, tau: float, threshold: float, alpha: float):
        dtype = x.dtype
        x = x.float()  # the membrane integrates in fp32 even under bf16 autocast
        spikes = torch.empty_like(x)
        charged = torch.empty_like(x)
        for t in range(x.shape[0]):
            h = v + (x[t] - v) / tau
            fired = h >= threshold
            charged[t] = h
            spikes[t] = fired
            v = h.masked_fill(fired, 0.0)
        ctx.save_for_backward(charged)
        ctx.constants = tau, threshold, alpha
        ctx.input_dtype = dtype
        return spikes.to(dtype), v

    @staticmethod
    def backward(ctx, grad_spikes, grad_v):
        (charged,) = ctx.saved_tensors
        tau, threshold, alpha = ctx.constants
        u = charged - threshold
        z = u * (math.pi / 2 * alpha)
        into_h = grad_spikes.float() * ((alpha / 2) / (1 + z * z))  # ATan surrogate, all steps at once
        reset = u >= 0  # where the neuron fired, v (and its gradient) was reset to 0
        grad_x = torch.empty_like(charged)
        carry = grad_v.float() if grad_v is not None else torch.zeros_like(charged[0])
        for t in range(charged.shape[0] - 1, -1, -1):
            grad_h = into_h[t] + carry.masked_fill(reset[t], 0.0)
            grad_x[t] = grad_h / tau
            carry = grad_h - grad_h / tau
        return grad_x.to(ctx.input_dtype), carry, None, None, None


class FusedLIFNode(neuron.LIFNode):
    """spikingjelly's LIFNode (decay_input, hard reset to 0, detached reset, ATan) on ``_LIFSequence``."""

    @classmethod
    def from_lif(cls, node: neuron.LIFNode) -> FusedLIFNode:
        if not supports(node):
            raise ValueError(f"FusedLIFNode covers decay_input, hard reset to 0, detach_reset, ATan; got {node}")
        return cls(tau=node.tau, decay_input=True, v_threshold=node.v_threshold, v_reset=0.0,
                   surrogate_function=node.surrogate_function, detach_reset=True, step_mode=node.step_mode)

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        (v,) = self.materialize_states((x_seq,), tuple(self._memories.values()), "m")
        spikes, v = _LIFSequence.apply(x_seq, v, float(self.tau), float(self.v_threshold),
                                       float(self.surrogate_function.alpha))
        self._memories["v"] = v
        return spikes


def supports(node: nn.Module) -> bool:
    return (type(node) is neuron.LIFNode and node.decay_input and node.v_reset == 0.0 and node.detach_reset
            and isinstance(node.surrogate_function, surrogate.ATan) and node.step_mode == "m")


@contextmanager
def fused_neurons(model: nn.Module, enabled: bool = True):
    """Within the block every supported LIFNode of ``model`` is a FusedLIFNode; restored on exit."""
    swapped = []
    if enabled:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if supports(child):
                    setattr(parent, name, FusedLIFNode.from_lif(child))
                    swapped.append((parent, name, child))
        _invalidate_reset_cache(model)
    try:
        yield model
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
        _invalidate_reset_cache(model)


def _invalidate_reset_cache(model: nn.Module) -> None:
    # reset_net caches the list of stateful modules per network; a swap must drop that list.
    invalidate = getattr(functional, "invalidate_reset_cache", None)
    if invalidate is not None:
        invalidate(model)
