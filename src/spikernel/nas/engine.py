"""Training-free architecture search inside a kernel-size set (the method's step 3), on Optuna.

Each candidate is an Optuna trial in a study. A study of N candidates has N *slots*; slot k is
filled by exactly one finished trial, whichever worker ran it. The default sampler gives slot k
the k-th cell of SNASNet's seeded random stream (``space.sample``), so a search of 1000 is the
first 1000 slots of a search of 5000 with the same seed.

How work is shared without loss or double counting, using only the storage's atomic operations:

- a worker that finds a slot with no trial creates a WAITING trial for it; a worker takes a
  WAITING trial by switching it to RUNNING, which the storage does for exactly one worker;
- if two workers created trials for one slot at the same moment, the lower trial number wins and
  the other is closed as ``superseded`` before anything is scored;
- a running trial sends heartbeats; one whose worker was killed goes stale, is failed, and its
  slot is empty again, so the next worker (or a rerun of the same command) redoes it.

A candidate is a cell and, when the search varies macro settings (``MacroSpace``), one
combination of them; slot k's combination comes from its own seeded draw, so the cells are those of
a search without dimensions. Footprints are analytic, so over-budget candidates are recorded and
never built; a (cell, combination) already scored in the study reuses that score.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import os
import platform
import random
import socket
import statistics
import threading
import time
import warnings
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import optuna
import sqlalchemy
import torch
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning, UpdateFinishedTrialError
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, Trial, TrialState

from spikernel import __version__
from spikernel.nas import SAMPLERS
from spikernel.errors import ConfigError, SpikernelError
from spikernel.nn.energy import E_MAC_PJ, EnergyBudget, OpsReport
from spikernel.nn.footprint import Budget, Footprint, StateBudget, footprint, min_footprint, stem_macs
from spikernel.nn.macro import MacroConfig, MacroSpace, choice_label
from spikernel.proxy import DEFAULT_PROXY, VOTES
from spikernel.proxy.combine import rank_vote
from spikernel.proxy.sahd import score_genotype, scoring_batches
from spikernel.proxy.zero_cost import compute_proxies, compute_proxy
from spikernel.space.genotype import CELL_TYPES, INPUT, NODES, OUTPUT, PAIRS, ZERO, Genotype, KernelSet, sample
from spikernel.files import _atomic, write_json

SCORED, OVER_BUDGET, DUPLICATE, SUPERSEDED = "scored", "over_budget", "duplicate", "superseded"
DIRECTIONS = ("forward", "backward")
SETTINGS_ATTR, SLOT_ATTR, RECORD_ATTR = "spikernel", "slot", "candidate"
CSV_FIELDS = ["trial", "genotype", "params", "footprint_bytes", "score", "seconds", "status"]
# What NSGA-II optimises (and selection.json's ``pareto`` is over), with each one's direction.
OBJECTIVES = {"score": "maximize", "footprint": "minimize", "energy": "minimize"}
MACRO_STREAM = 1  # the random sampler draws slot k's macro combination from SeedSequence([seed, 1, k])


class StorageError(SpikernelError):
    """A study storage URL that cannot be opened."""


class StudyClashError(SpikernelError):
    """A study name already used with different search settings."""


# --------------------------------------------------------------------------- candidates


@dataclass
class Candidate:
    trial: int  # the candidate's slot: its position in the seeded stream
    genotype: Genotype
    footprint: Footprint
    score: float | None = None
    seconds: float = 0.0
    status: str = SCORED
    energy: dict | None = None  # {"sops", "energy_uj"} estimated at initialisation (energy budget or objective)
    macro: MacroConfig | None = None  # the network's settings: the search's, at this candidate's combination
    choice: dict[str, int] = field(default_factory=dict)  # the searched macro settings' values ({} without any)
    proxies: dict[str, float] | None = None  # a vote's members' values; the vote (``score``) ranks the finished set

    @property
    def key(self) -> str:
        """What makes two candidates the same network: the pruned cell and the searched macro values."""
        return self.genotype.key + (f"|{choice_label(self.choice)}" if self.choice else "")

    @property
    def name(self) -> str:
        """The cell's text form, with the searched macro values in brackets when there are any."""
        return candidate_name(str(self.genotype), self.choice)

    @property
    def slug(self) -> str:
        return candidate_slug(str(self.genotype), self.choice)

    def row(self, bits: int = 32) -> dict:
        return {
            "trial": self.trial,
            "genotype": str(self.genotype),
            **self.choice,
            "params": self.footprint.params,
            "footprint_bytes": self.footprint.bytes(bits),
            "score": self.score,
            "seconds": round(self.seconds, 4),
            "status": self.status,
            **(self.energy or {}),
            **{f"proxy_{name}": value for name, value in (self.proxies or {}).items()},
        }


def candidate_name(genotype: str, choice: dict | None = None) -> str:
    """``0302 0030 3003 0000 [width=8,hidden=32]``; the genotype alone without searched macro values."""
    return genotype + (f" [{choice_label(choice)}]" if choice else "")


def candidate_slug(genotype: str, choice: dict | None = None) -> str:
    """A folder name for a candidate: ``0302-0030-3003-0000``, then ``-width8-hidden32`` per searched setting."""
    return genotype.replace(" ", "-") + "".join(f"-{name}{value}" for name, value in (choice or {}).items())


def candidate_summary(c: Candidate, bits: int = 32) -> dict:
    row = c.row(bits)
    if row["score"] is not None and not math.isfinite(row["score"]):
        row["score"] = None  # JSON has no -inf; the CSV keeps it
    return {**row, "cell": c.genotype.cell_type, "footprint": asdict(c.footprint),
            **({"macro": c.macro.to_dict()} if c.macro is not None else {})}


def _settings(macro: MacroConfig | MacroSpace) -> list[MacroConfig]:
    return macro.combinations() if isinstance(macro, MacroSpace) else [macro]


def _smallest(macro: MacroConfig | MacroSpace, size: Callable[[Footprint], int]) -> tuple[Footprint, str]:
    """The smallest network by ``size`` over every combination, and its combination (`` at width=8``)."""
    fp, m = min(((min_footprint(m), m) for m in _settings(macro)), key=lambda pair: size(pair[0]))
    return fp, _at(macro, m)


def _at(macro: MacroConfig | MacroSpace, combination: MacroConfig) -> str:
    """`` (at width=8)``: which combination of a space a message is about ('' without dimensions)."""
    label = choice_label(macro.choice_of(combination)) if isinstance(macro, MacroSpace) else ""
    return f" (at {label})" if label else ""


def check_state_budget_reachable(budget: StateBudget | None, macro: MacroConfig | MacroSpace) -> None:
    """Fail before any scoring when even the smallest possible network of any combination holds too
    much neuron state."""
    if budget is None:
        return
    smallest, at = _smallest(macro, lambda fp: fp.lif_neurons)
    if not budget.fits(smallest):
        raise ConfigError(f"no candidate can meet the state budget of {budget}: the smallest possible network{at} "
                          f"holds {smallest.state_bytes(budget.bits):,} bytes ({smallest.lif_neurons:,} neurons)")


def check_budget_reachable(budget: Budget | None, macro: MacroConfig | MacroSpace) -> None:
    """Fail before any scoring when even the smallest possible cell of any combination is over budget."""
    if budget is None:
        return
    smallest, at = _smallest(macro, budget.cost)
    if not budget.fits(smallest):
        have = f"{smallest.params:,} parameters" if budget.unit == "params" else f"{smallest.bytes(budget.bits):,} bytes"
        raise ConfigError(f"no candidate can meet the budget of {budget}: the smallest possible network{at} has {have}")


def check_energy_budget_reachable(budget: EnergyBudget | None, macro: MacroConfig | MacroSpace) -> None:
    """Fail before any scoring when an energy budget is below what the stem convolution alone costs
    in every combination (spikes only add to it; a SOP budget is always reachable by a silent network)."""
    if budget is None or budget.unit != "pJ":
        return
    settings = _settings(macro)
    least = min(settings, key=stem_macs)
    floor = stem_macs(least) * E_MAC_PJ
    if floor > budget.limit:
        raise ConfigError(f"no candidate can meet the energy budget of {budget}: the smallest possible network"
                          f"{_at(macro, least)} spends {floor / 1e6:g} uJ on its stem convolution "
                          f"alone ({stem_macs(least):,} multiply-accumulates)")


def best(candidates: Iterable[Candidate]) -> Candidate:
    """The highest-scoring candidate that was scored (over-budget ones never are)."""
    scored = [c for c in candidates if c.score is not None]
    if not scored:
        raise ConfigError("no candidate was scored: every sampled cell is over the budget")
    return max(scored, key=lambda c: (c.score, -c.trial))


def top_k(candidates: Iterable[Candidate], k: int) -> list[Candidate]:
    """The ``k`` best distinct networks (a repeated cell at the same macro values appears once, at its
    first slot)."""
    seen, top = set(), []
    for c in sorted((c for c in candidates if c.score is not None), key=lambda c: (-c.score, c.trial)):
        if c.key not in seen:
            seen.add(c.key)
            top.append(c)
    return top[:k]


def pareto_front(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Scored candidates not beaten by one that is both smaller (stored values) and higher-scoring:
    what a budget on stored values picks at each level."""
    return [c for _, c in budget_picks(candidates, lambda c: c.footprint.stored_values)]


def objective_values(c: Candidate, objectives: Sequence[str], bits: int = 32) -> list[float]:
    """A scored candidate's value of each objective: score, footprint (bytes at ``bits``), energy (uJ)."""
    values = {"score": c.score, "footprint": c.footprint.bytes(bits),
              "energy": (c.energy or {}).get("energy_uj", math.inf)}
    return [values[name] for name in objectives]


def pareto(candidates: Iterable[Candidate], objectives: Sequence[str], bits: int = 32) -> list[Candidate]:
    """Scored networks no other one dominates over ``objectives`` (at least as good in every one,
    better in one), each distinct network once at its first slot; by footprint, then score."""
    signs = [1 if OBJECTIVES[name] == "minimize" else -1 for name in objectives]
    lowest = lambda c: [s * v for s, v in zip(signs, objective_values(c, objectives, bits))]  # noqa: E731
    distinct = {}
    for c in sorted((c for c in candidates if c.score is not None), key=lambda c: c.trial):
        distinct.setdefault(c.key, c)
    # In lexicographic order no later candidate dominates an earlier one: each is compared with the front only.
    front: list[tuple[list[float], Candidate]] = []
    for c in sorted(distinct.values(), key=lambda c: (lowest(c), c.trial)):
        mine = lowest(c)
        if not any(all(a <= b for a, b in zip(theirs, mine)) for theirs, _ in front):
            front.append((mine, c))
    return sorted((c for _, c in front), key=lambda c: (c.footprint.stored_values, -c.score, c.trial))


def budget_picks(candidates: Iterable[Candidate], cost: Callable[[Candidate], float]) -> list[tuple[float, Candidate]]:
    """What a budget on ``cost`` picks at each level where the pick changes: (budget, highest-scoring
    candidate costing at most that), cheapest first."""
    picks, best_score = [], -math.inf
    for c in sorted((c for c in candidates if c.score is not None), key=lambda c: (cost(c), -c.score, c.trial)):
        if c.score > best_score:
            picks.append((cost(c), c))
            best_score = c.score
    return picks


# --------------------------------------------------------------------------- the cell as Optuna parameters
#
# SNASNet draws, per node pair, a direction (backward cells: 1/2 each) and then an operation
# uniformly; the direct edge 0 -> 3 must be a non-zero forward edge (it resamples otherwise). The
# parameters mirror that: ``op{i}{j}`` per pair and ``dir{i}{j}`` per pair of a backward cell, with
# 0 -> 3 restricted to forward non-zero operations. Any Optuna sampler can then search the space.


def _choices(kernel_set: KernelSet, pair: tuple[int, int]) -> tuple[int, ...]:
    codes = kernel_set.op_codes
    return tuple(c for c in codes if c != ZERO) if pair == (INPUT, OUTPUT) else codes


def _has_direction(cell: str, pair: tuple[int, int]) -> bool:
    return cell == "backward" and pair != (INPUT, OUTPUT)


def search_space(kernel_set: KernelSet, cell: str) -> dict[str, CategoricalDistribution]:
    space = {}
    for i, j in PAIRS:
        space[f"op{i}{j}"] = CategoricalDistribution(_choices(kernel_set, (i, j)))
        if _has_direction(cell, (i, j)):
            space[f"dir{i}{j}"] = CategoricalDistribution(DIRECTIONS)
    return space


def params_genotype(params: dict[str, Any]) -> Genotype:
    """The (pruned) cell a set of parameters describes."""
    rows = [[0] * NODES for _ in range(NODES)]
    for i, j in PAIRS:
        if params.get(f"dir{i}{j}") == "backward":
            rows[j][i] = params[f"op{i}{j}"]
        else:
            rows[i][j] = params[f"op{i}{j}"]
    return Genotype(tuple(map(tuple, rows))).pruned()


def genotype_params(genotype: Genotype, cell: str) -> dict[str, Any]:
    """The parameters ``params_genotype`` turns back into ``genotype`` (a pruned cell)."""
    m, params = genotype.matrix, {}
    for i, j in PAIRS:
        params[f"op{i}{j}"] = m[i][j] or m[j][i]
        if _has_direction(cell, (i, j)):
            params[f"dir{i}{j}"] = "backward" if m[j][i] else "forward"
    return params


def suggest_genotype(trial: optuna.Trial, kernel_set: KernelSet, cell: str) -> Genotype:
    """The cell a trial's sampler picks (or the one its parameters already name)."""
    space = search_space(kernel_set, cell)
    return params_genotype({name: trial.suggest_categorical(name, d.choices) for name, d in space.items()})


def suggest_choice(trial: optuna.Trial, space: MacroSpace) -> dict[str, int]:
    """The macro combination a trial's sampler picks: one categorical ``macro_<name>`` per dimension."""
    return {name: trial.suggest_categorical(f"macro_{name}", values) for name, values in space.dimensions}


class SnasnetSampler(optuna.samplers.BaseSampler):
    """SNASNet's random sampling as an Optuna sampler: slot k gets the k-th cell of ``space.sample``.

    The stream is seeded once, so it is the one ``spikernel sample --seed S`` prints, whatever
    order workers fill the slots in, and a retried slot gets back the same cell. Slot k's macro
    combination (when the search has macro dimensions) is drawn uniformly from a generator of its
    own, seeded with (seed, ``MACRO_STREAM``, k): the cells stay those of a search without
    dimensions, and slot k's combination does not depend on any other slot.
    """

    def __init__(self, kernel_set: KernelSet, cell: str, seed: int, macro: MacroSpace | None = None):
        self.kernel_set, self.cell, self.seed, self.macro = kernel_set, cell, seed, macro
        self._rng = np.random.default_rng(seed)
        self._stream: list[Genotype] = []

    def genotype(self, slot: int) -> Genotype:
        while len(self._stream) <= slot:
            self._stream.append(sample(self.kernel_set, self.cell, self._rng))
        return self._stream[slot]

    def choice(self, slot: int) -> dict[str, int]:
        if self.macro is None or not self.macro.dimensions:
            return {}
        index = int(np.random.default_rng([self.seed, MACRO_STREAM, slot]).integers(self.macro.size))
        return self.macro.choice_of(self.macro.combination(index))

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        slot = trial.user_attrs[SLOT_ATTR]
        if param_name.startswith("macro_"):
            return self.choice(slot)[param_name.removeprefix("macro_")]
        return genotype_params(self.genotype(slot), self.cell)[param_name]


def make_sampler(name: str, kernel_set: KernelSet, cell: str, seed: int,
                 macro: MacroSpace | None = None) -> optuna.samplers.BaseSampler:
    if name == "random":
        return SnasnetSampler(kernel_set, cell, seed, macro)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


# --------------------------------------------------------------------------- what a study is


@dataclass(frozen=True)
class SearchSpec:
    """Everything that decides which candidates a study draws and how they are scored.

    Two workers (or a rerun) may share a study only with equal specs; ``scoring`` names the data
    the scores come from, with a digest of the fixed scoring batches. ``macro`` is the base
    settings and ``dimensions`` the macro settings searched alongside the cell (``MacroSpace``'s);
    ``objectives`` what NSGA-II trades off and ``pareto`` is taken over (default: score and
    footprint, and energy under an energy budget).
    """

    kernel_set: KernelSet
    cell: str
    candidates: int
    macro: MacroConfig
    budget: Budget | None = None
    seed: int = 0
    sampler: str = "random"
    scoring: dict = field(default_factory=dict, hash=False)
    state_budget: StateBudget | None = None
    energy_budget: EnergyBudget | None = None
    dimensions: tuple[tuple[str, tuple[int, ...]], ...] = ()
    objectives: tuple[str, ...] = ()

    def __post_init__(self):
        if self.cell not in CELL_TYPES:
            raise ConfigError(f"cell must be one of {CELL_TYPES}, got {self.cell!r}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.candidates < 1:
            raise ConfigError(f"a search needs at least one candidate, got {self.candidates}")
        object.__setattr__(self, "dimensions", MacroSpace(self.macro, tuple(self.dimensions)).dimensions)
        object.__setattr__(self, "objectives", self._checked_objectives())

    def _checked_objectives(self) -> tuple[str, ...]:
        names = tuple(self.objectives) or self.default_objectives
        unknown = [n for n in names if n not in OBJECTIVES]
        if unknown:
            raise ConfigError(f"unknown objective {unknown[0]!r}; choose from {', '.join(OBJECTIVES)}")
        if "score" not in names or len(set(names)) != len(names):
            raise ConfigError(f"objectives must include score, each once, got {','.join(names)}")
        if self.sampler == "nsga2" and len(names) < 2:
            raise ConfigError("--sampler nsga2 trades the score against a second objective: give --objectives "
                              "score,footprint (or score,footprint,energy), or use --sampler tpe")
        return tuple(n for n in OBJECTIVES if n in names)  # one order, whatever order they were given in

    @property
    def default_objectives(self) -> tuple[str, ...]:
        return ("score", "footprint") + (("energy",) if self.energy_budget is not None else ())

    @property
    def space(self) -> MacroSpace:
        return MacroSpace(self.macro, self.dimensions)

    @property
    def needs_energy(self) -> bool:
        """Every candidate under the memory budgets gets an energy estimate (a budget or an objective needs it)."""
        return self.energy_budget is not None or "energy" in self.objectives

    @property
    def bits(self) -> int:
        return self.budget.bits if self.budget else 32

    @property
    def directions(self) -> list[str]:
        # NSGA-II trades the score against the other objectives; the others maximise the score alone.
        return [OBJECTIVES[n] for n in self.objectives] if self.sampler == "nsga2" else ["maximize"]

    def identity(self) -> dict:
        return {
            "kernels": self.kernel_set.name,
            "cell": self.cell,
            "candidates": self.candidates,
            "macro": self.macro.to_dict(),
            "budget": str(self.budget) if self.budget else None,
            "bits": self.bits,
            "seed": self.seed,
            "sampler": self.sampler,
            "scoring": dict(self.scoring),
            **({"state_budget": str(self.state_budget)} if self.state_budget else {}),  # absent: older studies match
            **({"energy_budget": str(self.energy_budget)} if self.energy_budget else {}),
            **({"macro_dimensions": self.space.identity()["dimensions"]} if self.dimensions else {}),
            **({"objectives": list(self.objectives)} if self._objectives_matter() else {}),
        }

    def _objectives_matter(self) -> bool:
        # Recorded when they change what is stored: energy estimated for an objective, or NSGA-II's
        # directions other than the (score, footprint) that studies had before objectives existed.
        return (self.objectives != self.default_objectives
                or (self.sampler == "nsga2" and self.objectives != ("score", "footprint")))


# A scorer takes a cell and, in a search with macro dimensions, the candidate's settings; it returns
# the score, or for a rank vote its members' values ({name: value}), which ``collect`` ranks.
Scorer = Callable[..., "float | dict[str, float]"]


def with_macro(function: Callable, candidate: Candidate):
    """``function(genotype)`` for a candidate at the search's base settings, ``function(genotype,
    macro)`` for one at a searched combination: a scorer written for one macro works unchanged in
    a search without dimensions."""
    if candidate.choice:
        return function(candidate.genotype, candidate.macro)
    return function(candidate.genotype)


def scoring_data(dataset, batch: int, repeats: int, seed: int) -> tuple[list[torch.Tensor], dict]:
    """The fixed, seeded scoring batches (normalised) and a description with their digest.

    Every candidate of a study, in every worker, is ranked on these same images.
    """
    try:
        raw = scoring_batches(dataset.train.images, batch, repeats, seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    digest = hashlib.sha256()
    for images in raw:
        digest.update(images.numpy().tobytes())
    about = {"dataset": dataset.name, "batch": batch, "repeats": repeats, "digest": digest.hexdigest()[:16]}
    return [dataset.normalize(images) for images in raw], about


def make_scorer(macro: MacroConfig, batches: Sequence[torch.Tensor], seed: int,
                adapt: Callable[[MacroConfig], MacroConfig] | None = None, proxy: str = DEFAULT_PROXY,
                labels: Sequence[torch.Tensor] | None = None) -> Scorer:
    """The one place a candidate is scored: ``proxy`` (SAHD by default) on a freshly, reproducibly
    initialised network, at ``macro`` or the settings given per call; ``adapt`` maps those settings
    first (a cheaper fidelity). Gradient proxies need the batches' ``labels``. For a rank vote
    (``proxy.VOTES``) it returns every member's value."""

    def score(genotype: Genotype, at: MacroConfig | None = None) -> float | dict[str, float]:
        settings = adapt(at or macro) if adapt else at or macro
        if proxy in VOTES:
            return compute_proxies(genotype, settings, batches, labels, VOTES[proxy], seed)
        if proxy == "sahd":
            return score_genotype(genotype, settings, batches, seed=seed)
        return compute_proxy(proxy, genotype, settings, batches, labels, seed)

    return score


# --------------------------------------------------------------------------- storage and study


def redact(url: str) -> str:
    """A storage URL safe to print or save: the password hidden."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of a SQLite file at ``path``, any character escaped (``?``, ``%``, ``#``)."""
    return sqlalchemy.engine.URL.create("sqlite", database=str(Path(path).resolve())).render_as_string(
        hide_password=False)


def open_storage(url: str | None, heartbeat: int | None = 10, attempts: int = 3) -> optuna.storages.BaseStorage:
    """An Optuna storage: in memory for ``None``, else any RDB URL (SQLite, PostgreSQL, MySQL)."""
    if url is None:
        return optuna.storages.InMemoryStorage()
    # SQLite shared by local workers: wait for the lock instead of failing at once.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat)
            if url.startswith("sqlite"):
                _write_ahead_log(storage.engine)
            return storage
        except sqlalchemy.exc.DBAPIError as exc:
            # Workers starting together on a new database race to create Optuna's tables; the
            # loser's error goes away on a second try. A refused connection stays refused.
            if attempt == attempts:
                raise StorageError(f"cannot open storage {storage_name(url)}: {_first_line(exc.orig or exc)}") from None
            time.sleep(0.5 * attempt)
        except Exception as exc:  # a malformed URL or a missing driver: no point retrying
            hint = " (PostgreSQL needs pip install 'spikernel[postgres]')" if isinstance(exc, ImportError) else ""
            raise StorageError(f"cannot open storage {storage_name(url)}: {_first_line(exc)}{hint}") from None


def storage_name(url: str) -> str:
    """A SQLite URL's file path as the user gave it; other URLs without their password."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:  # not a URL at all: say it as given, less any password
        return redact(url)
    return parsed.database if parsed.drivername.startswith("sqlite") and parsed.database else redact(url)


def storage_errors(search: Callable) -> Callable:
    """``search`` with its study storage failing mid-way (a full disk, a read-only database, a lost
    server) as one ``StorageError`` line naming the storage; what was committed before stays, and
    a rerun resumes from it. ``search`` takes ``out`` and ``storage`` as keywords."""

    @functools.wraps(search)
    def guarded(*args, **kwargs):
        try:
            return search(*args, **kwargs)
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as exc:
            url, out = kwargs.get("storage"), kwargs.get("out")
            where = storage_name(url) if url else Path(out) / "study.db" if out is not None else "the in-memory study"
            raise StorageError(f"cannot write {where}: {_first_line(_root_cause(exc))}") from None

    return guarded


def _root_cause(exc: BaseException) -> BaseException:
    """The driver's own error (sqlite3's 'database or disk is full') under Optuna's and SQLAlchemy's wrappers."""
    while True:
        inner = getattr(exc, "orig", None) or exc.__cause__
        if inner is None or inner is exc:
            return exc
        exc = inner


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _write_ahead_log(engine) -> None:
    """SQLite in WAL mode with normal sync: a commit costs no fsync, and what was committed
    survives a killed process (a power cut may lose the last few trials, which are then redone)."""

    def pragmas(connection, _record):
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(engine, "connect", pragmas)
    engine.dispose()  # connections opened while Optuna set up the schema reconnect with the pragmas


def open_study(spec: SearchSpec, storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    """Create the study, or load it and check it was made with the same spec (else touch nothing)."""
    sampler = make_sampler(spec.sampler, spec.kernel_set, spec.cell, spec.seed, spec.space)
    wanted = _jsonable(spec.identity())
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, directions=spec.directions)
        study.set_user_attr(SETTINGS_ATTR, wanted)
        return study
    except DuplicatedStudyError:
        pass
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    have = _await_settings(study)
    if have is None:  # an empty study nobody claimed (its creator died before saying what it is)
        study.set_user_attr(SETTINGS_ATTR, wanted)
        return study
    if {**have, "candidates": 0} == {**wanted, "candidates": 0}:
        # A search of N is the first N slots of a larger one: a rerun with more candidates grows the
        # study (slot k is the same cell either way), one with fewer reads its first slots.
        if wanted["candidates"] > have["candidates"]:
            study.set_user_attr(SETTINGS_ATTR, wanted)
        return study
    if have != wanted:
        key, theirs, ours = _first_difference(have, wanted)
        raise StudyClashError(
            f"study {name!r} already exists with {key}={_short(theirs)}, not {_short(ours)}: "
            "rerun with its settings, or pick another --study or --out"
        )
    return study


def _first_difference(have: dict, wanted: dict, prefix: str = "") -> tuple[str, object, object]:
    """The first setting (dotted path into nested settings) where two specs differ."""
    for key in [*wanted, *(k for k in have if k not in wanted)]:
        a, b = have.get(key, "(none)"), wanted.get(key, "(none)")
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                return _first_difference(a, b, f"{prefix}{key}.")
            return f"{prefix}{key}", a, b
    raise ValueError("the specs are equal")


def _await_settings(study: optuna.Study, wait: float = 5.0) -> dict | None:
    """The study's spec; a worker that lost the creation race waits for the winner to write it."""
    deadline = time.monotonic() + wait
    while True:
        have = study.user_attrs.get(SETTINGS_ATTR)
        if have is not None:
            return have
        if study.get_trials(deepcopy=False):
            raise StudyClashError(f"study {study.study_name!r} exists and was not made by spikernel search")
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def _jsonable(data):
    return json.loads(json.dumps(data))


def _short(value) -> str:
    text = str(value)
    return text if len(text) < 60 else text[:57] + "..."


# --------------------------------------------------------------------------- the slots of a study


@dataclass
class Slots:
    """A study's trials grouped by slot: each slot's owner is its lowest-numbered trial that is
    waiting, running or finished (failed and superseded trials own nothing)."""

    total: int
    owner: dict[int, FrozenTrial] = field(default_factory=dict)
    waiting: list[FrozenTrial] = field(default_factory=list)
    running: int = 0
    failed: int = 0
    superseded: int = 0
    workers: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, trials: Iterable[FrozenTrial], total: int) -> Slots:
        slots = cls(total)
        for t in sorted(trials, key=lambda t: t.number):
            slot = t.user_attrs.get(SLOT_ATTR)
            if slot is None:
                continue  # not one of ours
            if t.state == TrialState.FAIL:
                slots.failed += 1
                continue
            record = t.user_attrs.get(RECORD_ATTR, {})
            if "worker" in record:
                slots.workers.add(record["worker"])
            if record.get("status") == SUPERSEDED:
                slots.superseded += 1
                continue
            slots.owner.setdefault(slot, t)
            if t.state == TrialState.WAITING:
                slots.waiting.append(t)
            elif t.state == TrialState.RUNNING:
                slots.running += 1
        return slots

    def missing(self) -> list[int]:
        return [k for k in range(self.total) if k not in self.owner]

    def done(self) -> list[FrozenTrial]:
        return [t for k, t in sorted(self.owner.items()) if t.state.is_finished() and k < self.total]

    def scored(self) -> dict[str, dict]:
        """Genotype key -> record of every finished, scored candidate (to reuse, not recompute)."""
        records = {}
        for t in self.done():
            record = t.user_attrs.get(RECORD_ATTR, {})
            if record.get("status") in (SCORED, DUPLICATE):
                records.setdefault(record["key"], record)
        return records


@contextmanager
def heartbeat(storage, trial_id: int, interval: int | None):
    """Tell the storage this trial's worker is alive, every ``interval`` seconds, while it runs."""
    if interval is None or not hasattr(storage, "record_heartbeat"):
        yield
        return
    stop = threading.Event()

    def beat():
        while not stop.wait(interval):
            storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# --------------------------------------------------------------------------- the engine


class Search:
    """One worker on a study: fills empty slots until every slot has a finished candidate."""

    def __init__(self, study: optuna.Study, storage, spec: SearchSpec, score: Scorer,
                 on_candidate: Callable[[Candidate], None] | None = None, poll: float = 1.0,
                 estimate: Callable[[Genotype], OpsReport] | None = None):
        self.study, self.storage, self.spec, self.score = study, storage, spec, score
        self.estimate = estimate  # energy per inference at initialisation (needed under an energy budget)
        self.on_candidate = on_candidate
        self.interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        self.poll = poll  # how often a worker with nothing left to take looks at the others' slots
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._random = random.Random()  # seeded from the OS: differs between workers
        self.ran = 0  # candidates this worker finished
        self.slots = Slots(spec.candidates)
        self.study_id = storage.get_study_id_from_name(study.study_name)

    def view(self) -> Slots:
        self.slots = Slots.of(self.study.get_trials(deepcopy=False), self.spec.candidates)
        return self.slots

    def run(self) -> list[Candidate]:
        while True:
            slots = self.view()
            missing = slots.missing()
            waiting = ((self._trial_id(t), t.user_attrs[SLOT_ATTR]) for t in slots.waiting)
            claimed = next(((i, slot) for i, slot in waiting if self._claim(i)), None)
            if claimed is not None:
                self._run_trial(*claimed)  # then look again
            elif missing:
                slot = self._pick(missing, slots)
                created = self.storage.create_new_trial(
                    self.study_id, optuna.trial.create_trial(state=TrialState.WAITING, user_attrs={SLOT_ATTR: slot}))
                if self._claim(created):  # else another worker took it first: look again
                    self._run_trial(created, slot)
            elif slots.running:
                # Another worker is busy, or a killed one has not gone stale yet: wait, then check.
                time.sleep(self.poll)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ExperimentalWarning)
                    optuna.storages.fail_stale_trials(self.study)
            else:
                return collect(self.study.get_trials(deepcopy=False), self.spec)

    def _pick(self, missing: list[int], slots: Slots) -> int:
        """The next empty slot to fill: the lowest, or, once other workers are seen, one of the
        lowest few at random, so that two workers rarely pick the same one at the same moment."""
        others = max(slots.running, len(slots.workers - {self.worker}))
        return missing[0] if not others else self._random.choice(missing[: 8 * (others + 1)])

    def _trial_id(self, trial: FrozenTrial) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)

    def _claim(self, trial_id: int) -> bool:
        """Take a waiting trial; the storage lets exactly one worker switch it to RUNNING."""
        if self.interval is not None:
            # Beat first: if this worker dies right after the switch, the trial still goes stale.
            self.storage.record_heartbeat(trial_id)
        try:
            return self.storage.set_trial_state_values(trial_id, TrialState.RUNNING)
        except UpdateFinishedTrialError:
            return False

    def _run_trial(self, trial_id: int, slot: int) -> None:
        trial = Trial(self.study, trial_id)
        with heartbeat(self.storage, trial_id, self.interval):
            try:
                slots = self.view()
                if slots.owner.get(slot) is None or slots.owner[slot].number != trial.number:
                    # Another worker made a trial for this slot first; it keeps the slot.
                    trial.set_user_attr(RECORD_ATTR, {"status": SUPERSEDED, "worker": self.worker})
                    self.study.tell(trial, state=TrialState.PRUNED)
                    return
                candidate = self._evaluate(trial, slot, slots.scored())
                record = {**candidate.row(self.spec.bits), "key": candidate.key, "worker": self.worker}
                trial.set_user_attr(RECORD_ATTR, record)
                if candidate.status == OVER_BUDGET:
                    self.study.tell(trial, state=TrialState.PRUNED)
                else:
                    objectives = self.spec.objectives[: len(self.spec.directions)]
                    values = objective_values(candidate, objectives, self.spec.bits)
                    # A vote has no value of its own until the finished set is ranked (random sampler only).
                    self.study.tell(trial, [0.0 if v is None else v for v in values])
            except UpdateFinishedTrialError:
                return  # this worker was presumed dead and its trial failed; the slot is redone elsewhere
            except BaseException:
                with suppress(UpdateFinishedTrialError):
                    self.study.tell(trial, state=TrialState.FAIL)  # the slot is empty again for a rerun
                raise
        self.ran += 1
        if self.on_candidate is not None:
            self.on_candidate(candidate)

    def _draw(self, trial: Trial, slot: int) -> tuple[Genotype, dict[str, int]]:
        """SNASNet's sampler: the slot's cell of the seeded stream and its own macro draw (no
        parameters to store, which saves a write per parameter); other samplers: what they suggest."""
        if isinstance(self.study.sampler, SnasnetSampler):
            return self.study.sampler.genotype(slot), self.study.sampler.choice(slot)
        genotype = suggest_genotype(trial, self.spec.kernel_set, self.spec.cell)
        return genotype, suggest_choice(trial, self.spec.space)

    def _within_energy(self, candidate: Candidate) -> bool:
        ops = with_macro(self.estimate, candidate)
        candidate.energy = {"sops": round(ops.sops, 1), "energy_uj": round(ops.energy_pj / 1e6, 6)}
        return self.spec.energy_budget is None or self.spec.energy_budget.fits(ops)

    def _evaluate(self, trial: Trial, slot: int, scored: dict[str, dict]) -> Candidate:
        genotype, choice = self._draw(trial, slot)
        macro = self.spec.space.with_choice(choice) if choice else self.spec.macro
        candidate = Candidate(slot, genotype, footprint(genotype, macro), macro=macro, choice=choice)
        started = time.perf_counter()
        if any(b is not None and not b.fits(candidate.footprint) for b in (self.spec.budget, self.spec.state_budget)):
            candidate.status = OVER_BUDGET
        elif self.spec.needs_energy and not self._within_energy(candidate):
            candidate.status = OVER_BUDGET
        elif candidate.key in scored:
            known = scored[candidate.key]
            candidate.score, candidate.proxies, candidate.status = known["score"], proxies_of(known), DUPLICATE
        else:
            value = with_macro(self.score, candidate)
            if isinstance(value, dict):
                candidate.proxies = value
            else:
                candidate.score = -math.inf if math.isnan(value) else float(value)  # degenerate kernel: worst, not failed
        candidate.seconds = time.perf_counter() - started
        return candidate


def energy_estimator(macro: MacroConfig, images: torch.Tensor, seed: int) -> Callable[..., OpsReport]:
    """Operations per inference of each candidate, freshly initialised (the scorer's seeded weights),
    on the first scoring batch, at ``macro`` or the settings given per call."""
    from spikernel.nn.energy import estimate_at_init
    from spikernel.nn.model import build_model

    def estimate(genotype: Genotype, at: MacroConfig | None = None) -> OpsReport:
        torch.manual_seed(seed)
        return estimate_at_init(build_model(genotype, at or macro, device=images.device), images)

    return estimate


def collect(trials: Iterable[FrozenTrial], spec: SearchSpec) -> list[Candidate]:
    """The study's candidates in slot order: one per finished slot."""
    candidates, space = [], spec.space
    for t in Slots.of(trials, spec.candidates).done():
        record = t.user_attrs[RECORD_ATTR]
        genotype = Genotype.parse(record["genotype"])
        energy = {k: record[k] for k in ("sops", "energy_uj") if k in record} or None
        choice = {name: record[name] for name in space.names}
        macro = space.with_choice(choice) if choice else spec.macro
        candidates.append(Candidate(record["trial"], genotype, footprint(genotype, macro), record["score"],
                                    record["seconds"], record["status"], energy, macro, choice, proxies_of(record)))
    vote = VOTES.get(spec.scoring.get("proxy"))
    return rank_by_vote(candidates, vote) if vote else candidates


def proxies_of(record: dict) -> dict[str, float] | None:
    """A stored candidate's members' values (``proxy_<name>`` keys), None when it has none."""
    return {k.removeprefix("proxy_"): v for k, v in record.items() if k.startswith("proxy_")} or None


def rank_by_vote(candidates: list[Candidate], names: Sequence[str]) -> list[Candidate]:
    """Each candidate's score set to the rank vote over ``names`` among the distinct networks scored
    (a repeat shares its first slot's): ranks of this set, so a larger search may reorder its first N."""
    first: dict[str, Candidate] = {}
    for c in candidates:
        if c.proxies is not None:
            first.setdefault(c.key, c)
    votes = dict(zip(first, rank_vote([c.proxies for c in first.values()], names)))
    for c in candidates:
        if c.proxies is not None:
            c.score = float(votes[c.key])
    return candidates


def random_search(kernel_set: KernelSet, cell: str, candidates: int, macro: MacroConfig,
                  batches: list[torch.Tensor], budget: Budget | None = None, seed: int = 0,
                  on_candidate: Callable[[Candidate], None] | None = None) -> list[Candidate]:
    """SNASNet's random search in memory (no storage): ``candidates`` seeded cells, budget-filtered, deduped."""
    check_budget_reachable(budget, macro)
    spec = SearchSpec(KernelSet.parse(kernel_set), cell, candidates, macro, budget, seed)
    storage = open_storage(None)
    study = open_study(spec, storage, "random-search")
    return Search(study, storage, spec, make_scorer(macro, batches, seed), on_candidate).run()


# --------------------------------------------------------------------------- time and the 1000 vs 5000 question


def scoring_cost(candidates: Sequence[Candidate], scored_seconds: dict[str, float]) -> float:
    """Seconds a search of exactly these candidates spends, run alone in slot order.

    A network's first appearance costs its scoring time (wherever in the study it was scored);
    repeats and over-budget candidates cost what they cost (a lookup).
    """
    seen, total = set(), 0.0
    for c in sorted(candidates, key=lambda c: c.trial):
        if c.score is not None and c.key not in seen:
            seen.add(c.key)
            total += scored_seconds.get(c.key, c.seconds)
        else:
            total += c.seconds
    return total


def compare_prefix(candidates: Sequence[Candidate], at: int, bits: int = 32,
                   trials: Sequence[FrozenTrial] = ()) -> dict:
    """What a search of the first ``at`` slots (same seed stream) would have cost and picked.

    The first ``at`` slots of the stream *are* that smaller search, so one run answers both:
    ``seconds`` counts scoring time (independent of worker order), ``wall_seconds`` when the
    prefix was complete as it happened (a single worker fills slots in order).
    """
    scored_seconds = {c.key: c.seconds for c in candidates if c.status == SCORED}
    prefix = [c for c in candidates if c.trial < at]
    full_time, prefix_time = scoring_cost(candidates, scored_seconds), scoring_cost(prefix, scored_seconds)
    report = {"candidates": [at, len(candidates)], "seconds": [round(prefix_time, 3), round(full_time, 3)],
              "speedup": round(full_time / prefix_time, 3) if prefix_time > 0 else None}
    finished = [t for t in trials if t.state.is_finished() and t.datetime_start and t.datetime_complete
                and t.user_attrs.get(RECORD_ATTR, {}).get("status") not in (None, SUPERSEDED)]
    if finished:
        start = min(t.datetime_start for t in finished)
        until = lambda ts: round((max(t.datetime_complete for t in ts) - start).total_seconds(), 3)  # noqa: E731
        report["wall_seconds"] = [until([t for t in finished if t.user_attrs[SLOT_ATTR] < at]), until(finished)]
    if any(c.score is not None for c in prefix):
        pick, pick_full = best(prefix), best(candidates)
        ranking = [c.key for c in top_k(candidates, len(candidates))]
        report.update(pick=candidate_summary(pick, bits), pick_full=candidate_summary(pick_full, bits),
                      pick_changed=pick.key != pick_full.key, rank_of_pick_in_full=ranking.index(pick.key) + 1)
    return report


def time_report(trials: Sequence[FrozenTrial], candidates: Sequence[Candidate]) -> dict:
    """Per-candidate and total time, and the study's own wall time from its trials' timestamps."""
    scored = [c.seconds for c in candidates if c.status == SCORED]
    finished = [t for t in trials if t.datetime_start and t.datetime_complete]
    span = (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)).total_seconds() \
        if finished else 0.0
    return {
        "scoring_seconds_total": round(sum(scored), 3),
        "seconds_per_scored_candidate": {
            "mean": round(statistics.fmean(scored), 4), "median": round(statistics.median(scored), 4),
            "min": round(min(scored), 4), "max": round(max(scored), 4),
        } if scored else None,
        "study_wall_seconds": round(span, 3),
        "candidates_per_second": round(len(candidates) / span, 4) if span > 0 else None,
    }


# --------------------------------------------------------------------------- outputs


def counts(candidates: Sequence[Candidate]) -> dict:
    # other statuses (a multi-fidelity search's "screened_out") are listed only when present
    statuses = [SCORED, DUPLICATE, OVER_BUDGET] + sorted({c.status for c in candidates} - {SCORED, DUPLICATE, OVER_BUDGET})
    return {status: sum(c.status == status for c in candidates) for status in statuses}


def selection(candidates: Sequence[Candidate], spec: SearchSpec, top: int = 10) -> dict:
    """Best under budget (None when every sampled cell was over it), top-k, the score-vs-size front,
    the front over every objective, and what a budget on each cost would pick."""
    scored = any(c.score is not None for c in candidates)
    summary = lambda c: candidate_summary(c, spec.bits)  # noqa: E731
    return {
        "budget": str(spec.budget) if spec.budget else None,
        "bits": spec.bits,
        **({"state_budget": str(spec.state_budget)} if spec.state_budget else {}),
        **({"energy_budget": str(spec.energy_budget)} if spec.energy_budget else {}),
        **({"macro_dimensions": spec.space.identity()["dimensions"]} if spec.dimensions else {}),
        "selected_by": spec.scoring.get("proxy", "sahd"),  # the proxy that ranked them ("score")
        "best": summary(best(candidates)) if scored else None,
        "top": [summary(c) for c in top_k(candidates, top)],
        "pareto_front": [summary(c) for c in pareto_front(candidates)],
        "objectives": list(spec.objectives),
        "pareto": [summary(c) for c in pareto(candidates, spec.objectives, spec.bits)],
        "budget_picks": {name: [{"budget": limit, "pick": summary(c)} for limit, c in budget_picks(candidates, cost)]
                         for name, cost in _pick_costs(spec).items()},
    }


def _pick_costs(spec: SearchSpec) -> dict[str, Callable[[Candidate], float]]:
    """The costs a budget can be put on, as selection.json names them: weight bytes at the search's
    bits, and energy per inference (uJ) when it is estimated."""
    costs = {"footprint_bytes": lambda c: c.footprint.bytes(spec.bits)}
    if spec.needs_energy:
        costs["energy_uj"] = lambda c: (c.energy or {}).get("energy_uj", math.inf)
    return costs


def versions() -> dict:
    installed = {}
    for name in ("torch", "optuna", "numpy", "spikingjelly", "sqlalchemy", "click"):
        try:
            installed[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed[name] = None
    return {"spikernel": __version__, "python": platform.python_version(), **installed}


def csv_fields(dimensions: Sequence[str] = (), energy: bool = False, proxies: Sequence[str] = ()) -> list[str]:
    """candidates.csv's columns: one per searched macro setting after the genotype, energy, then a
    vote's members."""
    return (CSV_FIELDS[:2] + list(dimensions) + CSV_FIELDS[2:] + (["sops", "energy_uj"] if energy else [])
            + [f"proxy_{name}" for name in proxies])


def write_candidates_csv(path: Path, candidates: Sequence[Candidate], bits: int,
                         dimensions: Sequence[str] = ()) -> None:
    """One row per candidate slot, written atomically like every run-folder file."""
    buffer = io.StringIO()
    members = next((list(c.proxies) for c in candidates if c.proxies), [])
    fields = csv_fields(dimensions, any(c.energy for c in candidates), members)
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for c in candidates:
        writer.writerow({k: ("" if v is None else v) for k, v in c.row(bits).items()})
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(buffer.getvalue()))


def outputs(spec: SearchSpec, candidates: Sequence[Candidate], about: dict, top: int = 10) -> dict:
    """What ``selection.json`` and ``search.json`` hold."""
    report = {"spikernel": __version__, "settings": spec.identity(), "counts": counts(candidates), **about,
              "versions": versions()}
    return {"selection": selection(candidates, spec, top), "search": report}


def write_outputs(out: Path, spec: SearchSpec, candidates: Sequence[Candidate], about: dict, top: int = 10) -> dict:
    """``candidates.csv``, ``selection.json`` and, last (it marks a finished search), ``search.json``."""
    out = Path(out)
    result = outputs(spec, candidates, about, top)
    write_candidates_csv(out / "candidates.csv", candidates, spec.bits, spec.space.names)
    write_json(out / "selection.json", result["selection"])
    write_json(out / "search.json", result["search"])
    return result
