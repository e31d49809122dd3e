"""A multi-step LIF written for training speed: the same neuron, spikes and gradients as spikingjelly's.

spikingjelly 2.0 runs its CPU LIF as a registered custom operator, which ``torch.compile`` must
treat as opaque: the ~10 element-wise passes per timestep stay separate memory sweeps. Here the
neuron is an ``autograd.Function`` of plain tensor ops (forward and the hand-written BPTT
backward), so the compiler can fuse each direction into one loop, and eager mode saves only the
charged potential ``h`` for backward. The arithmetic follows spikingjelly's CPU kernels term for
term (``v + (x - v) / tau``, ATan ``(alpha/2) / (1 + (pi/2 alpha u)^2)``, detached hard reset),
so spikes and gradients agree bit for bit (tests/test_train.py checks it).

``nn.neuron.LIF`` runs on it with ``kernel = "fused"`` (the training loop's default, through
``nn.layers.use_kernels``).
"""

from __future__ import annotations

import math

import torch


class LIFSequence(torch.autograd.Function):
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
