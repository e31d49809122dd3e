"""Multi-fidelity search: screen every candidate with a cheap score, re-score the best at full.

The SAHD score of a narrower network, on fewer images or fewer timesteps, costs a fraction of the
full one and ranks candidates much the same way. A search can therefore score all N candidates
cheaply, keep the best fraction, and score only those at full fidelity; the pick is the best
full score among them. ``benchmarks/fidelity_study.py`` measures, over hundreds of candidates,
how well cheap scores rank and whether this finds the exhaustive search's pick.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Sequence

import torch

from spikernel.errors import ConfigError
from spikernel.nas.engine import with_macro
from spikernel.nn.model import MacroConfig
from spikernel.space.genotype import Genotype

SCREENED = "screened_out"  # scored cheaply only; its cheap score did not make the cut

# Recipes measured in docs/BENCHMARKS.md (benchmarks/fidelity_study.py: 210 cells, full batch 128 x 2):
# each found the exhaustive pick in every one of 1000 resampled searches.
RECIPES = {
    "fast": "batch=16,repeats=1,top=0.02",  # Kendall tau 0.80 with full scores; 10x less compute
    "faster": "batch=8,repeats=1,top=0.02",  # tau 0.63; 14x less compute
}


@dataclass(frozen=True)
class Fidelity:
    """A cheap scoring setting and how many candidates go on to the full score.

    ``width`` scales the cell width C; ``batch``, ``repeats`` and ``timesteps`` cap the images per
    scoring batch, the number of batches and T (``None`` keeps the full value). ``top`` is the
    fraction (< 1) or number (>= 1) of distinct scored candidates re-scored at full fidelity.
    """

    width: float = 1.0
    batch: int | None = None
    repeats: int | None = None
    timesteps: int | None = None
    top: float = 0.05

    def __post_init__(self):
        if not 0 < self.width <= 1:
            raise ConfigError(f"fidelity width is a fraction of the full width in (0, 1], got {self.width}")
        for name in ("batch", "repeats", "timesteps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"fidelity {name} must be a positive integer, got {value!r}")
        if self.batch is not None and self.batch < 2:
            raise ConfigError("fidelity batch must be at least 2 images (the kernel compares pairs)")
        if not (0 < self.top < 1 or (self.top >= 1 and float(self.top).is_integer())):
            raise ConfigError(f"fidelity top is a fraction in (0, 1) or a whole number of candidates, got {self.top}")

    @classmethod
    def parse(cls, text: str) -> Fidelity:
        """``width=0.25,batch=32,timesteps=2,repeats=1,top=0.05`` or a recipe name (``fast``, ``faster``)."""
        spec = RECIPES.get(text.strip(), text)
        known = {f.name: f.type for f in fields(cls)}
        values = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in known:
                raise ConfigError(
                    f"bad fidelity {text!r}: use key=value pairs from {', '.join(known)} "
                    f"(e.g. width=0.25,batch=32,top=0.05) or a recipe ({', '.join(RECIPES)})"
                )
            try:
                number = float(value)
            except ValueError:
                raise ConfigError(f"bad fidelity {text!r}: {key} needs a number, got {value.strip()!r}") from None
            values[key] = number if key in ("width", "top") else _whole(number, key, text)
        if not values:
            raise ConfigError(f"bad fidelity {text!r}: empty")
        return cls(**values)

    def __str__(self) -> str:
        return f"{self.cheap},top={self.top:g}"

    @property
    def cheap(self) -> str:
        """The cheap setting alone: what the first-stage scores depend on (``top`` is not part of it)."""
        return ",".join([f"width={self.width:g}"] + [f"{k}={getattr(self, k)}" for k in ("batch", "repeats", "timesteps")
                                                      if getattr(self, k) is not None])

    def macro(self, full: MacroConfig) -> MacroConfig:
        """The cheap network's settings: narrower and/or fewer timesteps."""
        return replace(full, width=max(1, round(full.width * self.width)),
                       timesteps=min(self.timesteps or full.timesteps, full.timesteps))

    def batches(self, full: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The cheap scoring data: the first images of the first batches of the full data."""
        return [b[: self.batch] for b in full[: self.repeats or len(full)]]

    def keep(self, scored: int) -> int:
        """How many of ``scored`` distinct candidates are re-scored at full fidelity (at least 1)."""
        wanted = self.top if self.top >= 1 else math.ceil(self.top * scored)
        return max(1, min(scored, int(wanted)))


def _whole(number: float, key: str, text: str) -> int:
    if not number.is_integer():
        raise ConfigError(f"bad fidelity {text!r}: {key} must be a whole number, got {number:g}")
    return int(number)


def shortlist(scores: dict[str, float], keep: int) -> list[str]:
    """The ``keep`` best keys by cheap score (ties by key, so the list is reproducible)."""
    return sorted(scores, key=lambda k: (-_finite(scores[k]), k))[:keep]


def _json(score: float) -> float | None:
    return score if math.isfinite(score) else None  # JSON has no -inf


def _finite(score: float) -> float:
    return -math.inf if score is None or math.isnan(score) else score


@dataclass
class Rescored:
    key: str
    genotype: Genotype
    cheap: float
    full: float
    seconds: float
    choice: dict = field(default_factory=dict)  # the searched macro values, in a search with dimensions


def rescore(shortlisted: Sequence[tuple[Any, float]], score: Callable[..., float],
            on_done: Callable[[Rescored], None] | None = None) -> list[Rescored]:
    """Full-fidelity scores for the shortlisted (candidate, cheap score) pairs, best full first.

    ``score`` takes the candidate's cell, and its settings when it has searched macro values
    (``engine.with_macro``)."""
    done = []
    for candidate, cheap in shortlisted:
        started = time.perf_counter()
        full = float(with_macro(score, candidate))
        done.append(Rescored(candidate.key, candidate.genotype, cheap, -math.inf if math.isnan(full) else full,
                             time.perf_counter() - started, dict(candidate.choice)))
        if on_done is not None:
            on_done(done[-1])
    return sorted(done, key=lambda r: (-r.full, r.key))


def two_stage(candidates: Sequence, fidelity: Fidelity, full_score: Callable[..., float],
              on_done: Callable[[Rescored], None] | None = None) -> tuple[list, dict]:
    """Second stage of a search whose candidates were scored at ``fidelity``.

    ``candidates`` are search candidates (``.genotype``, ``.score``, ``.status``, ``.seconds``)
    holding cheap scores. The shortlisted ones get their full score; every other scored
    candidate loses its score (status ``screened_out``), so that best, top and Pareto front are
    taken over full scores only. Returns the new candidate list and a report with both scores.
    """
    cheap = {}
    for c in candidates:
        if c.score is not None:
            cheap.setdefault(c.key, (c, c.score))
    keep = fidelity.keep(len(cheap)) if cheap else 0
    chosen = shortlist({k: s for k, (_, s) in cheap.items()}, keep)
    results = {r.key: r for r in rescore([cheap[k] for k in chosen], full_score, on_done)}
    final = []
    for c in candidates:
        if c.score is None:
            final.append(c)
        elif c.key in results:
            final.append(replace(c, score=results[c.key].full))
        else:
            final.append(replace(c, score=None, status=SCREENED))
    cheap_seconds = sum(c.seconds for c in candidates if c.score is not None)  # repeats cost a lookup
    full_seconds = sum(r.seconds for r in results.values())
    report = {
        "fidelity": str(fidelity),
        "screened": len(cheap),
        "rescored": len(results),
        "cheap_seconds": round(cheap_seconds, 3),
        "full_seconds": round(full_seconds, 3),
        "rescored_candidates": [
            {"genotype": str(r.genotype), **r.choice, "cheap_score": _json(r.cheap), "full_score": _json(r.full),
             "cheap_rank": chosen.index(r.key) + 1, "seconds": round(r.seconds, 4)}
            for r in sorted(results.values(), key=lambda r: (-r.full, r.key))
        ],
    }
    return final, report
