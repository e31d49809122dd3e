"""Kernel-size exploration (the method's steps 1, 2 and 4): per kernel set, search, then train the
top-K cells under the budget; everything lands in one study folder that re-running resumes.

The folder::

    DIR/explore.json                    settings (a rerun must match them)
    DIR/<kernel set>/search/            a `spikernel search` folder (candidates.csv, selection.json, ...)
    DIR/<kernel set>/train/<genotype>/  a `spikernel train` folder per trained candidate (result.json, ...);
                                        with macro dimensions <genotype>-width8-hidden32 (its values)
    DIR/report/                         `spikernel report DIR`: report.md and figures

Searches and trainings are ``nas.run.search`` and ``training.run.train``, the functions behind the
``search`` and ``train`` commands, so each one resumes the way those do: finished work is never redone.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from spikernel.data.datasets import load_dataset
from spikernel.errors import ConfigError, FileFormatError, SpikernelError
from spikernel.events import OnEvent, emit
from spikernel.nas.engine import candidate_name, candidate_slug
from spikernel.nas.run import checked_spec, search
from spikernel.nn.footprint import Budget
from spikernel.nn.macro import NAMED, MacroConfig, MacroSpace, parse_value
from spikernel.space.genotype import KernelSet
from spikernel.training.loop import TrainConfig
from spikernel.training.recipe import recipe
from spikernel.training.run import train
from spikernel.selection.report import KernelSetResult, Study, mean_over_seeds
from spikernel.selection.settings import RUN_DEFAULTS, ExploreSettings  # noqa: F401  (re-exported)
from spikernel.files import make_dir, read_json, write_json

SETTINGS_FILE = "explore.json"


class StudyMismatch(SpikernelError):
    pass


def slug(genotype: str, choice: dict | None = None) -> str:
    return candidate_slug(genotype, choice)


def open_study(out: Path, settings: ExploreSettings) -> None:
    """Create the study folder, or check that an existing one was made with the same settings."""
    path = out / SETTINGS_FILE
    if path.exists():
        stored = read_json(path)
        mine = settings.to_dict()
        keys = [*mine, *(k for k in stored if k not in mine)]  # a setting dropped on the rerun counts too
        diff = [f"{k}: {stored.get(k)!r} -> {mine.get(k)!r}" for k in keys
                if k != "data_dir" and stored.get(k) != mine.get(k)]
        if diff:
            raise StudyMismatch(f"{out} was created with different settings ({'; '.join(diff)}); use another --out")
        return
    write_json(path, settings.to_dict())


def load_settings(out: Path) -> ExploreSettings:
    path = out / SETTINGS_FILE
    if not path.exists():
        raise ConfigError(f"{out} is not an exploration folder (no {SETTINGS_FILE})")
    data = read_json(path)
    data["kernel_sets"], data["ablation"] = tuple(data["kernel_sets"]), tuple(data.get("ablation", ()))
    data["macro_values"] = data.get("macro_values", {})
    return ExploreSettings(**data)


# --------------------------------------------------------------------------- running


def macro_of(settings: ExploreSettings, data) -> MacroSpace:
    """The preset, overrides and searched macro settings, at the data's shape."""
    return settings.macro_space().for_data(data)


def choice_of(row: dict, names) -> dict[str, int | str]:
    """A search row's values of the searched macro settings (``names``)."""
    return {name: parse_value(name, row[name]) for name in names}


def trained_macro(row: dict, space: MacroSpace) -> MacroConfig:
    """What a top row was picked at: its own settings (selection.json's ``macro``), else the space's."""
    return MacroConfig.from_dict(row["macro"]) if row.get("macro") else space.with_choice(choice_of(row, space.names))


def train_config(settings: ExploreSettings, offset: int = 0) -> TrainConfig:
    return recipe(settings.recipe, epochs=settings.epochs, batch_size=settings.train_batch,
                  seed=settings.seed + offset, limit_train=settings.limit_train)


def train_dir(out: Path, kernel_set: str, genotype: str, offset: int, choice: dict | None = None) -> Path:
    """One run folder per (cell, searched macro values, seed); the first seed keeps the plain name."""
    return out / kernel_set / "train" / (slug(genotype, choice) + (f"-seed{offset}" if offset else ""))


def preflight(settings: ExploreSettings, data_dir: str | None):
    """Fail before the folder exists: unreadable dataset, or a budget no cell of the preset meets."""
    if settings.fidelity:
        from spikernel.nas.fidelity import Fidelity

        Fidelity.parse(settings.fidelity)
    data = load_dataset(settings.dataset, data_dir)
    space = macro_of(settings, data)
    s = settings
    for kernel_set in s.kernel_sets:
        checked_spec(KernelSet.parse(kernel_set), space, cell=s.cell, candidates=s.candidates, budget=s.budget_limit,
                     bits=s.bits, seed=s.seed, sampler=s.sampler, state_budget=s.state_budget, state_bits=s.state_bits,
                     energy_budget=s.energy_budget, objectives=s.objectives, refine=s.refine, proxy=s.proxy,
                     fidelity=s.fidelity)
    return data


def explore(settings: ExploreSettings, out: Path, data_dir: str | None = None,
            on_event: OnEvent | None = None, device: str = "auto") -> Study:
    """Search every kernel set, then train each one's top-K under the budget; resumable."""
    data = preflight(settings, data_dir)
    macro = macro_of(settings, data)
    out = Path(out)
    make_dir(out)
    open_study(out, settings)
    for kernel_set in settings.kernel_sets:
        emit(on_event, "explore", message=f"search {kernel_set}")
        search_dir = out / kernel_set / "search"
        search(kernel_set, macro, data, out=search_dir, device=device, on_event=on_event, **settings.search_options())
        for row in rows_to_train(search_dir, settings.top_k, macro.names):  # from its files, as a report reads them
            choice = choice_of(row, macro.names)
            for offset in range(settings.seeds):
                emit(on_event, "explore", message=f"train {kernel_set} {candidate_name(row['genotype'], choice)} "
                                                  f"(seed {settings.seed + offset})")
                train(row["genotype"], data, out=train_dir(out, kernel_set, row["genotype"], offset, choice),
                      macro=trained_macro(row, macro), config=train_config(settings, offset), device=device,
                      on_event=on_event)
    return load_study(out)


# Searched settings whose values are compared rather than chosen between: the top-K is per value.
# A score of spikes from another encoding is not comparable (a Poisson input's patterns differ by
# chance), and the report compares kernel sets within each encoding.
COMPARED = ("encoding",)


def picked_rows(selection: dict, k: int, candidates: list[dict] = (), dimensions=()) -> list[dict]:
    """The cells of a search to train: its K best, the refined ones first in refinement's order; when a
    ``COMPARED`` setting is searched, the K best of each of its values (from the ``candidates`` rows)."""
    compared = [d for d in dimensions if d in COMPARED]
    if not compared:
        return _refined_first(selection, selection["top"], dimensions)[:k]
    scored = sorted((c for c in candidates if c.get("status") == "scored" and c.get("score") is not None),
                    key=lambda c: -c["score"])  # stable: ties keep trial order
    taken: dict[tuple, int] = {}
    picks = []
    for row in _refined_first(selection, scored, dimensions):
        value = tuple(row[d] for d in compared)
        if taken.get(value, 0) < k:
            picks.append(row)
            taken[value] = taken.get(value, 0) + 1
    return picks


def _refined_first(selection: dict, rows: list[dict], dimensions) -> list[dict]:
    refined = selection.get("refined")
    if not refined:
        return list(rows)
    order = {outcome["name"]: i for i, outcome in enumerate(refined["outcomes"])}
    name = lambda row: candidate_name(row["genotype"], choice_of(row, dimensions))  # noqa: E731
    return sorted(rows, key=lambda row: order.get(name(row), len(order)))  # stable: the rest keep score order


def rows_to_train(search_dir: Path, k: int, dimensions=()) -> list[dict]:
    """``picked_rows`` of a finished search folder."""
    selection = read_json(search_dir / "selection.json")
    dims = tuple(selection.get("macro_dimensions") or dimensions)
    compared = any(d in COMPARED for d in dims)
    rows = read_candidates(search_dir / "candidates.csv", dims) if compared else ()
    return picked_rows(selection, k, rows, dims)


# --------------------------------------------------------------------------- reading back


def _number(text: str) -> float | int | None:
    if text in ("", None):
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value


def read_candidates(path: Path, dimensions=()) -> list[dict]:
    """candidates.csv's rows with numbers as numbers (also the searched macro settings' columns)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        optional = ("sops", "energy_uj", *(d for d in dimensions if d not in NAMED))  # columns only some searches write
        for row in rows:
            proxies = [k for k in row if k.startswith("proxy_")]  # a vote's members
            for key in ("trial", "params", "footprint_bytes", "score", "seconds", *(k for k in optional if k in row),
                        *proxies):
                row[key] = _number(row.get(key, ""))
            if row["score"] is not None and not math.isfinite(row["score"]):
                row["score"] = None
        return sorted(rows, key=lambda r: r["trial"])
    except (ValueError, TypeError, csv.Error) as exc:  # edited by hand, or not spikernel's
        raise FileFormatError(f"{path} is not a candidates table spikernel wrote ({exc})") from None


def load_search(out: Path) -> Study:
    """A ``spikernel search`` folder as a study of one kernel set with nothing trained (its report
    shows the search's trade-offs)."""
    report, chosen = read_json(out / "search.json"), read_json(out / "selection.json")
    settings = report.get("settings", {})
    names = tuple(settings.get("macro_dimensions") or {})
    found = re.match(r"([\d,]+) (parameters|bytes)", chosen.get("budget") or "")
    info = {**settings, "kind": "search", "dataset": settings.get("scoring", {}).get("dataset"),
            "objectives": chosen.get("objectives", ["score"]),
            "budget_limit": int(found[1].replace(",", "")) if found else None,
            "budget_unit": ("params" if found[2] == "parameters" else "bytes") if found else None}
    result = KernelSetResult(settings.get("kernels", "search"), read_candidates(out / "candidates.csv", names),
                             search_seconds=report.get("time", {}).get("scoring_seconds_total"), dimensions=names)
    return Study(info, [result])


def load_study(out: Path) -> Study:
    """What the folder holds, and a list of what is missing (nothing is run). A search folder (no
    exploration settings, a finished search) reads as ``load_search``."""
    out = Path(out)
    if not (out / SETTINGS_FILE).exists() and (out / "search.json").exists():
        return load_search(out)
    settings = load_settings(out)
    budget = settings.budget_limit
    info = {**settings.to_dict(), "budget_limit": budget.limit if budget else None,
            "budget_unit": budget.unit if budget else None}
    names = settings.macro_space().names
    results, missing = [], []
    for kernel_set in settings.kernel_sets:
        result = KernelSetResult(kernel_set, dimensions=names)
        search_dir = out / kernel_set / "search"
        if (search_dir / "search.json").exists():
            result.candidates = read_candidates(search_dir / "candidates.csv", names)
            report = read_json(search_dir / "search.json")
            result.search_seconds = report.get("time", {}).get("scoring_seconds_total")
            for row in rows_to_train(search_dir, settings.top_k, names):
                choice = choice_of(row, names)
                name = candidate_name(row["genotype"], choice)
                for offset in range(settings.seeds):
                    run = train_dir(out, kernel_set, row["genotype"], offset, choice) / "result.json"
                    if run.exists():
                        trained = read_json(run)
                        result.trained.append({**{k: row[k] for k in ("genotype", "params", "footprint_bytes", "score")},
                                               "choice": choice, "candidate": name, "test_acc": _test_accuracy(trained),
                                               "seed": settings.seed + offset, **_energy(trained)})
                    else:
                        missing.append(f"{kernel_set}: training of {name} (seed {settings.seed + offset}) not finished")
        else:
            missing.append(f"{kernel_set}: search not finished")
        results.append(result)
    return Study(info, results, missing)


def _test_accuracy(result: dict) -> float:
    try:
        return float(result["test"]["test_acc"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError("a training result.json has no test accuracy") from None


def _energy(result: dict) -> dict:
    """SOPs and energy per image (None for runs trained before they were counted)."""
    energy = result.get("energy") or {}
    return {"sops": energy.get("sops"), "energy_uj": energy["energy_pj"] / 1e6 if "energy_pj" in energy else None}


@dataclass
class Selection:
    kernel_set: str
    row: dict = field(default_factory=dict)


def select(study: Study, budget: str | None = None) -> Selection | None:
    """The most accurate trained network under a budget (default: the study's own), across kernel
    sets (step 4). A byte budget compares footprints at the study's bits."""
    if budget is None:
        limit, key = study.settings.get("budget_limit"), study.cost_key
    else:
        parsed = Budget.parse(budget, study.settings.get("bits", 32))
        limit, key = parsed.limit, "footprint_bytes" if parsed.unit == "bytes" else "params"
    picks = [Selection(r.kernel_set, row) for r in study.results for row in mean_over_seeds(r.trained)
             if limit is None or row[key] <= limit]
    return max(picks, key=lambda s: s.row["test_acc"], default=None)
