"""Training-free score: sparsity-aware Hamming distance kernel (SPEC 5, SNASNet after NASWOT).

An untrained network that gives different inputs distinct spike patterns, beyond what their
firing rates alone would explain, tends to train well. For every LIF layer and timestep the
[B, B] kernel K measures that; the score is log|det| of K averaged over layers and steps.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .model import build_model
from .neuron import is_lif

EPS = 1e-3


def sahd_kernel(spikes: torch.Tensor) -> torch.Tensor:
    """[..., B, N] binary spike maps -> [..., B, B] float64 kernel ``N - d / (2 (e + eps))``.

    ``d_ij = a_i + a_j - 2 c_i.c_j`` is the Hamming distance (one product instead of the two
    ``c_i.(1-c_j)`` and ``(1-c_i).c_j``), ``e_ij`` the distance expected at the two sparsities.
    """
    n = spikes.shape[-1]
    c = spikes.float()
    # 0/1 products are integers; float32 holds them exactly below 2**24 neurons per layer.
    overlap = (c @ c.transpose(-1, -2) if n < 2**24 else c.double() @ c.double().transpose(-1, -2)).double()
    counts = c.sum(-1, dtype=torch.float64)
    sparsity = counts / n
    hamming = counts.unsqueeze(-1) + counts.unsqueeze(-2) - 2 * overlap
    s_i, s_j = sparsity.unsqueeze(-1), sparsity.unsqueeze(-2)
    expected = n * (s_i * (1 - s_j) + (1 - s_i) * s_j)
    return n - (0.5 / (expected + EPS)) * hamming


class KernelAccumulator:
    """Sums the SAHD kernel over every (LIF layer, timestep) the network fires during a forward."""

    def __init__(self):
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, spikes: torch.Tensor) -> None:
        """``spikes``: one LIF layer's output [T, B, ...]."""
        kernel = sahd_kernel(spikes.flatten(2)).sum(0)
        self.total = kernel if self.total is None else self.total + kernel
        self.count += spikes.shape[0]

    def logdet(self) -> float:
        if self.total is None:
            raise ValueError("no LIF layer fired during the forward pass")
        return torch.linalg.slogdet(self.total / self.count).logabsdet.item()


@contextmanager
def recording(model: nn.Module, accumulator: KernelAccumulator):
    handles = [
        m.register_forward_hook(lambda _m, _in, out: accumulator.add(out)) for m in model.modules() if is_lif(m)
    ]
    try:
        yield accumulator
    finally:
        for handle in handles:
            handle.remove()


def score_model(model: nn.Module, batches: Iterable[torch.Tensor]) -> float:
    """SNASNet's score: per batch, log|det K| of the mean kernel; averaged over batches.

    The network stays in training mode (batch statistics, dropout) as SNASNet scores it.
    """
    model.train()
    scores = []
    with torch.no_grad():
        for images in batches:
            accumulator = KernelAccumulator()
            with recording(model, accumulator):
                model(images)
            scores.append(accumulator.logdet())
    if not scores:
        raise ValueError("score_model needs at least one batch")
    return sum(scores) / len(scores)


def scoring_batches(images: torch.Tensor, batch_size: int, repeats: int, seed: int) -> list[torch.Tensor]:
    """``repeats`` fixed batches drawn once (seeded) so every candidate is ranked on the same data."""
    generator = torch.Generator().manual_seed(seed)
    if batch_size > len(images):
        raise ValueError(f"scoring batch {batch_size} is larger than the dataset ({len(images)} images)")
    return [images[torch.randperm(len(images), generator=generator)[:batch_size]] for _ in range(repeats)]


def score_genotype(genotype, macro, batches: Sequence[torch.Tensor], seed: int = 0) -> float:
    """Score a freshly initialised network (weights seeded, so the score is reproducible)."""
    torch.manual_seed(seed)
    return score_model(build_model(genotype, macro), batches)
