"""Training-free architecture search inside a kernel-size set (the method's step 3).

Candidates come from SNASNet's random sampler; each one's footprint is known before it is built,
so over-budget candidates are recorded and never scored; repeated architectures reuse a score.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from .errors import ConfigError
from .memory import Budget, Footprint, footprint, min_footprint
from .model import MacroConfig
from .score import score_genotype
from .space import Genotype, KernelSet, sample

SCORED, OVER_BUDGET, DUPLICATE = "scored", "over_budget", "duplicate"


@dataclass
class Candidate:
    trial: int
    genotype: Genotype
    footprint: Footprint
    score: float | None = None
    seconds: float = 0.0
    status: str = SCORED

    def row(self, bits: int = 32) -> dict:
        return {
            "trial": self.trial,
            "genotype": str(self.genotype),
            "params": self.footprint.params,
            "footprint_bytes": self.footprint.bytes(bits),
            "score": self.score,
            "seconds": round(self.seconds, 4),
            "status": self.status,
        }


def check_budget_reachable(budget: Budget | None, macro: MacroConfig) -> None:
    """Fail before any scoring when even the smallest possible cell is over budget."""
    if budget is None:
        return
    smallest = min_footprint(macro)
    if not budget.fits(smallest):
        have = f"{smallest.params:,} parameters" if budget.unit == "params" else f"{smallest.bytes(budget.bits):,} bytes"
        raise ConfigError(f"no candidate can meet the budget of {budget}: the smallest possible network has {have}")


def random_search(kernel_set: KernelSet, cell: str, candidates: int, macro: MacroConfig,
                  batches: list[torch.Tensor], budget: Budget | None = None, seed: int = 0,
                  on_candidate: Callable[[Candidate], None] | None = None) -> list[Candidate]:
    """Sample ``candidates`` cells (seeded), score those under budget, dedupe by canonical key."""
    check_budget_reachable(budget, macro)
    rng = np.random.default_rng(seed)
    scored: dict[str, float] = {}
    results = []
    for trial in range(candidates):
        genotype = sample(kernel_set, cell, rng)
        candidate = Candidate(trial, genotype, footprint(genotype, macro))
        started = time.perf_counter()
        if budget is not None and not budget.fits(candidate.footprint):
            candidate.status = OVER_BUDGET
        elif genotype.key in scored:
            candidate.score, candidate.status = scored[genotype.key], DUPLICATE
        else:
            candidate.score = scored[genotype.key] = score_genotype(genotype, macro, batches, seed=seed)
        candidate.seconds = time.perf_counter() - started
        results.append(candidate)
        if on_candidate is not None:
            on_candidate(candidate)
    return results


def best(candidates: Iterable[Candidate]) -> Candidate:
    """The highest-scoring candidate that was scored (over-budget ones never are)."""
    scored = [c for c in candidates if c.score is not None]
    if not scored:
        raise ConfigError("no candidate was scored: every sampled cell is over the budget")
    return max(scored, key=lambda c: c.score)


def pareto_front(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Scored candidates not beaten by one that is both smaller and higher-scoring."""
    front, best_score = [], -float("inf")
    for c in sorted((c for c in candidates if c.score is not None), key=lambda c: (c.footprint.params, -c.score)):
        if c.score > best_score:
            front.append(c)
            best_score = c.score
    return front


def candidate_summary(c: Candidate) -> dict:
    return {**c.row(), "footprint": asdict(c.footprint)}
