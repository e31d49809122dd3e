"""Training-free score: sparsity-aware Hamming distance kernel (SPEC 5, SNASNet after NASWOT).

An untrained network that gives different inputs distinct spike patterns, beyond what their
firing rates alone would explain, tends to train well. For every LIF layer and timestep the
[B, B] kernel K measures that; the score is log|det| of K averaged over layers and steps.

The spikes are read through forward hooks on the model's LIFs. The fast path (the default) asks
the model for its inference kernels (``nn.layers.use_kernels(model, "inference")``: an in-place
LIF scan, per-step BatchNorm without running statistics, pooling on a cache-friendly schedule)
and runs ``SNN.fire``, one timestep at a time up to the last LIF; malloc keeps activations from
going back to the OS while a candidate is scored (``heap``). Every kernel keeps the arithmetic of
the operation it replaces, so the spikes, and the score, are the same bit for bit.
``benchmarks/score_speed.py`` measures it against a SNASNet-style scorer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from spikingjelly.activation_based import functional

from spikernel.heap import SCORING_KEPT_MIB, kept_freed_memory, release_freed_memory
from spikernel.nn.layers import use_kernels
from spikernel.nn.model import SNN, build_model
from spikernel.nn.neuron import spikes_seen

EPS = 1e-3


def sahd_kernel(spikes: torch.Tensor) -> torch.Tensor:
    """[..., B, N] binary spike maps -> [..., B, B] float64 kernel ``N - d / (2 (e + eps))``.

    ``d_ij = a_i + a_j - 2 c_i.c_j`` is the Hamming distance (one product instead of the two
    ``c_i.(1-c_j)`` and ``(1-c_i).c_j``), ``e_ij`` the distance expected at the two sparsities.
    """
    n = spikes.shape[-1]
    overlap = spike_overlap(spikes)
    counts = overlap.diagonal(dim1=-2, dim2=-1)  # c_i . c_i = a_i: no second pass over the spikes
    sparsity = counts / n
    hamming = counts.unsqueeze(-1) + counts.unsqueeze(-2) - 2 * overlap
    s_i, s_j = sparsity.unsqueeze(-1), sparsity.unsqueeze(-2)
    expected = n * (s_i * (1 - s_j) + (1 - s_i) * s_j)
    return n - (0.5 / (expected + EPS)) * hamming


def _cpu_has_int8_dot_products() -> bool:
    try:  # VNNI (and AMX) CPUs run int8 products several times faster than float32 ones
        return bool(torch.cpu._is_vnni_supported())
    except (AttributeError, RuntimeError):
        return False


INT8_PRODUCTS = {"cuda": True, "cpu": _cpu_has_int8_dot_products()}


def spike_overlap(spikes: torch.Tensor) -> torch.Tensor:
    """[..., B, N] 0/1 spikes -> [..., B, B] float64 counts of neurons both images fired.

    The counts are integers, so any exact integer product gives the same bits: int8 products with
    int32 sums where the hardware has them (CUDA tensor cores, VNNI/AMX CPUs: 3-5x float32 on this
    project's CPU at 65K-131K neurons, conversion included), else float32 below 2**24 neurons.
    """
    if _int8_products_fit(spikes):
        return int8_overlap(spikes)
    n = spikes.shape[-1]
    c = spikes.float()
    if n >= 2**24:
        c = c.double()
    return (c @ c.transpose(-1, -2)).double()


def _int8_products_fit(spikes: torch.Tensor) -> bool:
    b, n = spikes.shape[-2:]
    kind = spikes.device.type
    if not INT8_PRODUCTS.get(kind) or n >= 2**31:  # int32 sums
        return False
    return kind == "cpu" or (b > 16 and b % 8 == 0 and n % 8 == 0)  # the shapes CUDA's _int_mm takes


def int8_overlap(spikes: torch.Tensor) -> torch.Tensor:
    b = spikes.shape[-2]
    q = spikes.to(torch.int8).reshape(-1, b, spikes.shape[-1])
    return torch.stack([torch._int_mm(x, x.t()) for x in q]).view(*spikes.shape[:-1], b).double()


class KernelAccumulator:
    """Sums the SAHD kernel over every (LIF layer, timestep) the network fires during a forward."""

    def __init__(self):
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, spikes: torch.Tensor) -> None:
        """``spikes``: one LIF layer's output [T, B, ...]. K stays on the spikes' device."""
        kernel = sahd_kernel(spikes.flatten(2)).sum(0)
        self.total = kernel if self.total is None else self.total + kernel
        self.count += spikes.shape[0]

    def logdet(self) -> float:
        if self.total is None:
            raise ValueError("no LIF layer fired during the forward pass")
        return torch.linalg.slogdet(self.total / self.count).logabsdet.item()


@contextmanager
def recording(model: nn.Module, accumulator: KernelAccumulator):
    """Every LIF layer's spikes, through forward hooks, into ``accumulator``."""
    with spikes_seen(model, accumulator.add):
        yield accumulator


def _score_batch(model: nn.Module, images: torch.Tensor, fast: bool, chunk: int) -> float:
    accumulator = KernelAccumulator()
    functional.reset_net(model)  # every batch starts from rest (an SNN also does this itself)
    with recording(model, accumulator), use_kernels(model, "inference", enabled=fast):
        if fast and isinstance(model, SNN):
            model.fire(images, chunk)
        else:
            model(images)
    return accumulator.logdet()


def score_model(model: nn.Module, batches: Iterable[torch.Tensor], fast: bool = True, chunk: int = 1) -> float:
    """SNASNet's score: per batch, log|det K| of the mean kernel; averaged over batches.

    The network stays in training mode (batch statistics, dropout) as SNASNet scores it.
    ``fast=False`` runs the model's default kernels and full forward; the score is the same, but
    only that path updates the cells' BatchNorm running statistics (the score never reads them).
    ``chunk``: timesteps per pass of the fast path (``SNN.fire``; 1 holds the least memory, any
    value gives the same score).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    model.train()
    scores = []
    with torch.inference_mode(), kept_freed_memory(SCORING_KEPT_MIB) if fast else nullcontext():
        for images in batches:
            scores.append(_score_batch(model, images, fast, chunk))
    if fast:  # the membranes go with the activations; the next candidate starts on an unfragmented peak
        functional.reset_net(model)
        release_freed_memory()
    if not scores:
        raise ValueError("score_model needs at least one batch")
    return sum(scores) / len(scores)


def scoring_picks(count: int, batch_size: int, repeats: int, seed: int) -> list[torch.Tensor]:
    """The indices of ``repeats`` fixed batches of ``count`` images, drawn once (seeded)."""
    if batch_size > count:
        raise ValueError(f"scoring batch {batch_size} is larger than the dataset ({count} images)")
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(count, generator=generator)[:batch_size] for _ in range(repeats)]


def scoring_batches(images: torch.Tensor, batch_size: int, repeats: int, seed: int) -> list[torch.Tensor]:
    """``repeats`` fixed batches drawn once (seeded) so every candidate is ranked on the same data."""
    return [images[i] for i in scoring_picks(len(images), batch_size, repeats, seed)]


def score_genotype(genotype, macro, batches: Sequence[torch.Tensor], seed: int = 0) -> float:
    """Score a freshly initialised network (weights seeded, so the score is reproducible).

    The weights are drawn where the batches are: on the CPU the same network on every machine;
    on a GPU, whose generator draws other numbers, the same network on the same kind of GPU.
    """
    torch.manual_seed(seed)
    net = build_model(genotype, macro, device=batches[0].device if len(batches) else None)
    return score_model(net, batches)
