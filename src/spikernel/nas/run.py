"""One call for a whole search: ``search(kernels, macro, data, ...)`` -> ``SearchResult``.

It samples and scores the candidates into an Optuna study (in ``out/study.db`` by default, or a
shared ``storage`` URL, or in memory when there is no ``out``), re-scores a shortlist at full
fidelity when asked, and writes ``candidates.csv``, ``selection.json`` and ``search.json``. Calling it
again on the same folder resumes: finished candidates are never scored again.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import optuna

from spikernel.data.datasets import Dataset, load_dataset
from spikernel.errors import ConfigError
from spikernel.events import OnEvent, emit
from spikernel.heap import SCORING_KEPT_MIB, kept_freed_memory
from spikernel.files import make_dir, write_json
from spikernel.nas.engine import (Candidate, Search, SearchSpec, candidate_summary, check_budget_reachable,
                                  check_energy_budget_reachable, check_state_budget_reachable, compare_prefix,
                                  energy_estimator, make_scorer, open_storage, open_study, outputs, pareto,
                                  pareto_front, redact, scoring_data, sqlite_url, storage_errors, time_report, top_k,
                                  write_outputs)
from spikernel.nas.fidelity import Fidelity, two_stage
from spikernel.nas.refine import IMAGES as REFINE_IMAGES, refine as run_refine
from spikernel.nn.energy import EnergyBudget
from spikernel.nn.footprint import Budget, StateBudget
from spikernel.nn.model import MacroConfig, default_preset, get_preset
from spikernel.nn.macro import MacroSpace
from spikernel.proxy import DEFAULT_PROXY, VOTES, members
from spikernel.proxy.zero_cost import NEEDS_LABELS, check_names, labelled_batches
from spikernel.space.genotype import KernelSet
from spikernel.training.distributed import device_label, resolve_device


@dataclass
class SearchResult:
    """What a search found: every candidate in slot order and the files' contents."""

    spec: SearchSpec
    candidates: list[Candidate]
    selection: dict  # selection.json: best, top, pareto_front
    report: dict  # search.json: settings, counts, timing, versions
    out: Path | None = None

    @property
    def best(self) -> Candidate | None:
        """The pick: the refined one after refinement, else the highest-scoring candidate under the
        budget (None if every one was over it). ``best.genotype`` and ``best.macro`` are what to
        train: ``sk.train(found.best.genotype, data, macro=found.best.macro)``."""
        refined = self.selection.get("refined")
        if refined:
            return next(c for c in self.top if c.name == refined["pick"])
        top = self.top
        return top[0] if top else None

    @property
    def top(self) -> list[Candidate]:
        return top_k(self.candidates, len(self.candidates))

    @property
    def pareto(self) -> list[Candidate]:
        """Scored candidates that no smaller one outscores (score vs stored values)."""
        return pareto_front(self.candidates)

    @property
    def front(self) -> list[Candidate]:
        """Scored candidates no other one dominates over every objective of the search (``spec.objectives``)."""
        return pareto(self.candidates, self.spec.objectives, self.spec.bits)


def as_dataset(data: Dataset | str, data_dir=None) -> Dataset:
    return load_dataset(data, data_dir) if isinstance(data, str) else data


def as_macro(macro: MacroConfig | str | None, data: Dataset) -> MacroConfig:
    """A preset name (or the dataset's default preset for None) or settings, at the data's shape."""
    if macro is None:
        macro = default_preset(data.name)
    return (get_preset(macro) if isinstance(macro, str) else macro).for_data(data)


def as_space(macro: MacroSpace | MacroConfig | str | None, data: Dataset) -> MacroSpace:
    """What a search varies: a ``MacroSpace`` as it is, else ``as_macro``'s settings with no dimension;
    at the data's shape either way."""
    if isinstance(macro, MacroSpace):
        return macro.for_data(data)
    return MacroSpace(as_macro(macro, data))


def as_objectives(objectives: str | tuple | list | None) -> tuple[str, ...]:
    if isinstance(objectives, str):
        return tuple(name.strip() for name in objectives.split(",") if name.strip())
    return tuple(objectives or ())


def as_budget(budget: Budget | str | None, bits: int) -> Budget | None:
    if budget is None or isinstance(budget, Budget):
        return budget
    return None if budget.strip().lower() == "none" else Budget.parse(budget, bits)


@storage_errors
def search(kernels: KernelSet | str, macro: MacroSpace | MacroConfig | str | None, data: Dataset | str, *,
           candidates: int = 1000,
           budget: Budget | str | None = None, bits: int = 32, cell: str = "backward", batch: int = 256,
           repeats: int = 2, seed: int = 0, sampler: str = "random", out: str | Path | None = None,
           storage: str | None = None, study: str = "search", heartbeat: int = 10, top: int = 10,
           compare_at: int | None = None, fidelity: Fidelity | str | None = None, device: str = "cpu",
           refine: int = 0, refine_epochs: int = 2, validation: int = 1000, refine_images: int | None = REFINE_IMAGES,
           limit_train: int | None = None,
           state_budget: StateBudget | str | None = None, state_bits: int | None = None,
           energy_budget: EnergyBudget | str | None = None, objectives: str | tuple | list | None = None,
           proxy: str = DEFAULT_PROXY, on_event: OnEvent | None = None) -> SearchResult:
    """Score ``candidates`` sampled cells of a kernel set without training, under a memory budget.

    ``macro`` is a preset name, a ``MacroConfig`` or a ``MacroSpace`` (macro settings searched
    alongside the cell: ``MacroSpace.of(base, width=(8, 16))``), fitted to the data's shape;
    ``budget`` a parameter count (``"500K"``) or bytes at ``bits`` (``"800KB"``). ``objectives``
    (``"score,footprint,energy"``) are what ``sampler="nsga2"`` trades off and ``front`` is over
    (default: score and footprint, and energy under an energy budget). With ``out`` the study and
    its outputs live in that folder and a second call resumes it. ``refine=K`` then trains the best
    K for ``refine_epochs`` on ``refine_images`` training images (None: all), with successive halving
    (``nas.refine``), and picks by accuracy on a ``validation`` split held out of the training images
    (``limit_train``: on the first N training images only).
    """
    if refine and out is None:
        raise ConfigError("refinement trains networks into run folders: give out=")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress comes as events, not one log line per trial
    started = time.perf_counter()
    data = as_dataset(data)
    kernel_set = KernelSet.parse(kernels) if isinstance(kernels, str) else kernels
    space, budget = as_space(macro, data), as_budget(budget, bits)
    macro = space.base
    if compare_at is not None and compare_at >= candidates:
        raise ConfigError(f"compare_at {compare_at} must be below the {candidates} candidates")
    fidelity = Fidelity.parse(fidelity) if isinstance(fidelity, str) else fidelity
    spec = checked_spec(kernel_set, space, cell=cell, candidates=candidates, budget=budget, bits=bits, seed=seed,
                        sampler=sampler, state_budget=state_budget, state_bits=state_bits,
                        energy_budget=energy_budget, objectives=objectives, refine=refine, proxy=proxy,
                        fidelity=fidelity, compare_at=compare_at)
    device = resolve_device(device)
    batches, scoring = scoring_data(data, batch, repeats, seed)
    batches = [b.to(device) for b in batches]  # score_genotype builds each network where its batches are
    labels = None  # the gradient proxies' targets: the labels of the same draw as the batches
    if set(members(proxy)) & set(NEEDS_LABELS):
        labels = [y.to(device) for y in labelled_batches(data.train.images, data.train.labels, batch, repeats, seed)[1]]
    if proxy != "sahd":  # another proxy's scores are another study's; studies from before the key ranked by SAHD
        scoring = {**scoring, "proxy": proxy}
    if fidelity:  # the study holds cheap scores: never mix them with another setting's (top may change)
        scoring = {**scoring, "fidelity": fidelity.cheap}
    if device.type != "cpu":  # a GPU draws other weights than the CPU: its scores belong to their own study
        scoring = {**scoring, "device": device.type}
    spec = replace(spec, scoring=scoring)

    out = Path(out) if out is not None else None
    in_folder = storage is None and out is not None  # saved as a relative name: no machine path in search.json
    if in_folder:
        make_dir(out)
        storage = sqlite_url(out / "study.db")
    store = open_storage(storage, heartbeat)
    optuna_study = open_study(spec, store, study)

    score = (make_scorer(macro, fidelity.batches(batches), seed, adapt=fidelity.macro, proxy=proxy,
                         labels=labels and fidelity.batches(labels)) if fidelity
             else make_scorer(macro, batches, seed, proxy=proxy, labels=labels))
    estimate = energy_estimator(macro, batches[0], seed) if spec.needs_energy else None
    engine = Search(optuna_study, store, spec, score, estimate=estimate)
    first = engine.view()  # one read of the study for both: how far it is, and its best score so far
    so_far = max((r["score"] for r in first.scored().values() if r["score"] is not None), default=None)
    engine.on_candidate = _progress(engine, so_far, candidates, started, on_event)
    emit(on_event, "search", done=len(first.done()), total=candidates)
    with kept_freed_memory(SCORING_KEPT_MIB):  # one setting for the whole search, not one per candidate
        found = engine.run()
    emit(on_event, "search", done=len(found), total=candidates)
    second = None
    if fidelity:
        found, second = two_stage(found, fidelity, make_scorer(macro, batches, seed, proxy=proxy, labels=labels),
                                  on_done=lambda _: emit(on_event, "full re-score", info=str(fidelity)))

    wall = time.perf_counter() - started
    trials = optuna_study.get_trials(deepcopy=False)
    about = {
        "study": {"name": study, "storage": "sqlite:///study.db" if in_folder else redact(storage or "memory"),
                  "failed_attempts": engine.slots.failed, "superseded": engine.slots.superseded},
        "this_run": {"wall_seconds": round(wall, 3), "candidates": engine.ran,
                     "candidates_per_second": round(engine.ran / wall, 4), "worker": engine.worker,
                     "device": device_label(device)},
        "time": time_report(trials, found),
        "compare": compare_prefix(found, compare_at, spec.bits, trials) if compare_at else None,
        "fidelity": second,
    }
    written = write_outputs(out, spec, found, about, top) if out is not None else outputs(spec, found, about, top)
    if refine:
        written["selection"] = _refined(found, written["selection"], spec, data, out, refine, refine_epochs,
                                        validation, refine_images, seed, on_event, limit_train)
    return SearchResult(spec, found, written["selection"], written["search"], out)


def checked_spec(kernel_set: KernelSet, space: MacroSpace, *, cell: str, candidates: int, budget: Budget | None,
                 bits: int, seed: int, sampler: str, state_budget=None, state_bits: int | None = None,
                 energy_budget=None, objectives=None, refine: int = 0, proxy: str = DEFAULT_PROXY,
                 fidelity=None, compare_at: int | None = None) -> SearchSpec:
    """A search's settings, checked before data is drawn or any storage touched: the proxy is known
    (a vote with what can use it), refinement has enough candidates, the sampler and objectives
    agree, and every budget is one some combination of ``space`` meets."""
    check_names(members(proxy))
    if proxy in VOTES:
        _check_vote(proxy, sampler, fidelity, compare_at)
    if refine > candidates:
        raise ConfigError(f"refine {refine} is more than the {candidates} candidates searched")
    if isinstance(state_budget, str):
        state_budget = StateBudget.parse(state_budget, state_bits or bits)
    if isinstance(energy_budget, str):
        energy_budget = EnergyBudget.parse(energy_budget)
    spec = SearchSpec(kernel_set, cell, candidates, space.base, budget, seed, sampler, {}, state_budget,
                      energy_budget, space.dimensions, as_objectives(objectives))
    check_budget_reachable(budget, space)
    check_state_budget_reachable(state_budget, space)
    check_energy_budget_reachable(energy_budget, space)
    return spec


def _check_vote(proxy: str, sampler: str, fidelity, compare_at: int | None) -> None:
    """A vote ranks one finished set: nothing has a value of its own to learn from, re-score or compare."""
    if sampler != "random":
        raise ConfigError(f"--proxy {proxy} ranks the finished candidates against each other, so no candidate has a "
                          f"value of its own for --sampler {sampler} to learn from: use --sampler random")
    if fidelity or compare_at:
        raise ConfigError(f"--proxy {proxy} ranks one finished set of candidates: "
                          f"{'--fidelity' if fidelity else '--compare-at'} needs a proxy with a value per candidate")


def _refined(found, chosen: dict, spec: SearchSpec, data: Dataset, out: Path, k: int, epochs: int, validation: int,
             images: int | None, seed: int, on_event, limit_train: int | None = None) -> dict:
    """selection.json with the refinement's outcome; its ``best`` is the refined pick."""
    shortlist = top_k(found, k)
    if len(shortlist) < k:
        raise ConfigError(f"refine {k} is more than the {len(shortlist)} distinct candidates scored under the budget")
    started = time.perf_counter()
    rows = run_refine(shortlist, data, spec.macro, out / "refine", epochs=epochs, validation=validation,
                      images=images, seed=seed, limit_train=limit_train, on_event=on_event)
    pick = next(c for c in shortlist if c.name == rows[0].name)
    chosen = {**chosen, "best_by_score": chosen["best"], "best": candidate_summary(pick, spec.bits),
              "refined": {"candidates": k, "epochs": epochs, "images": images, "validation_images": validation,
                          "selection": "refine",
                          "seconds": round(time.perf_counter() - started, 2), "pick": rows[0].name,
                          "outcomes": [asdict(r) for r in rows]}}
    write_json(out / "selection.json", chosen)
    return chosen


def _progress(engine: Search, best_so_far: float | None, total: int, started: float, on_event: OnEvent | None):
    best = [best_so_far]

    def on_candidate(c: Candidate) -> None:
        if c.score is not None and (best[0] is None or c.score > best[0]):
            best[0] = c.score
        rate = engine.ran / max(time.perf_counter() - started, 1e-9)
        info = f"{rate:.2f} cand/s" + (f" · best {best[0]:.3f}" if best[0] is not None else "")
        emit(on_event, "search", done=len(engine.slots.done()) + 1, total=total, info=info)

    return on_candidate
