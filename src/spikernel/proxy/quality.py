"""How well training-free proxies predict trained accuracy, and how well they select a cell.

The input is a ground truth: trained cells, one row per (genotype, training seed), with the
proxies' values in ``proxy_<name>`` columns. Per selection rule (a proxy's ranking, a vote, a
size-conditioned ranking, a random or a params pick) ``evaluate`` measures:

- Kendall tau and Spearman rho against the cells' mean accuracy over all cells, and within
  equal-footprint bins (``combine.size_bins``; weighted by bin size), since size alone already
  predicts accuracy; Kendall tau partialled on params;
- 95% bootstrap intervals of those, resampling genotypes;
- simulated searches: many draws of ``search_size`` distinct cells, each picking by the rule;
  the regret (the draw's best accuracy minus the pick's) and the pick's percentile among all
  cells and among those of its own footprint bin, for the top-1 pick and for the best of the
  top 5 (training five finalists); and per footprint bin (a search under that budget);
- the noise floor: how much accuracy moves between training seeds of the same cell, and the
  ceiling it sets: the per-size percentile an oracle of noise-free accuracy would reach.

Accuracies are in points; a CSV holding fractions (all values <= 1) is scaled by 100.
"""

from __future__ import annotations

import csv
import math
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

from spikernel.errors import DatasetError
from spikernel.files import _atomic
from spikernel.proxy import VOTES
from spikernel.proxy.combine import DEFAULT_SIZE_BINS, rank_vote, ranks, size_bins, size_first

PROXY_PREFIX = "proxy_"
REQUIRED = ("genotype", "params", "footprint_bytes", "seed")
SIZE = "footprint_bytes"
MIN_BIN = 3  # fewer cells than this in a bin say nothing about order within it

Rule = Callable[[Sequence[dict], np.random.Generator], np.ndarray]


# --------------------------------------------------------------------------- ground truth


@dataclass
class GroundTruth:
    """One entry per genotype: proxies and sizes averaged over its rows, accuracy per seed."""

    rows: list[dict]  # {proxy name: value, "params": .., "footprint_bytes": .., "genotype": ..}
    proxies: list[str]
    seed_accuracy: list[dict[int, float]]  # per genotype: training seed -> accuracy (points)
    target: str
    copy_of: list[int] | None = None  # a resample's rows: which original genotype each one repeats

    @cached_property
    def distinct(self) -> np.ndarray:
        """One row per genotype: the cells a percentile is taken among (copies would tie with themselves)."""
        if self.copy_of is None:
            return np.arange(len(self.rows))
        return np.sort(np.unique(self.copy_of, return_index=True)[1])

    @cached_property
    def accuracy(self) -> np.ndarray:
        """Mean over each genotype's seeds."""
        return np.array([np.mean(list(s.values())) for s in self.seed_accuracy])

    def column(self, name: str) -> np.ndarray:
        return np.array([row[name] for row in self.rows], dtype=float)

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, index: Sequence[int]) -> GroundTruth:
        """The cells at ``index`` (repeats allowed: a bootstrap resample)."""
        origin = [self.copy_of[i] if self.copy_of is not None else int(i) for i in index]
        return GroundTruth([self.rows[i] for i in index], self.proxies, [self.seed_accuracy[i] for i in index],
                           self.target, origin)


def read_ground_truth(path: str | os.PathLike, target: str = "val_acc",
                      extra: Sequence[str | os.PathLike] = ()) -> GroundTruth:
    """The CSV at ``path``; see ``ground_truth`` for the columns. Each ``extra`` CSV adds its
    ``proxy_<name>`` columns to the rows of its genotypes (a cell it lacks gets NaN)."""
    records = _read_csv(path)
    for table in map(_read_csv, extra):
        by_genotype = {r["genotype"]: {k: v for k, v in r.items() if k.startswith(PROXY_PREFIX)} for r in table}
        columns = dict.fromkeys(k for r in by_genotype.values() for k in r)
        records = [{**r, **dict.fromkeys(columns, "nan"), **by_genotype.get(r["genotype"], {})} for r in records]
    return ground_truth(records, target)


def _read_csv(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def ground_truth(records: Sequence[dict], target: str = "val_acc") -> GroundTruth:
    """Group CSV records by genotype. Columns: genotype, params, footprint_bytes, seed, ``target``
    and ``proxy_<name>``; ``params`` is always a proxy (the size baseline)."""
    if not records:
        raise DatasetError("the ground truth has no rows")
    missing = [c for c in (*REQUIRED, target) if c not in records[0]]
    if missing:
        raise DatasetError(f"the ground truth lacks column(s) {', '.join(missing)}")
    proxies = ["params"] + [c[len(PROXY_PREFIX):] for c in records[0]
                            if c.startswith(PROXY_PREFIX) and c != PROXY_PREFIX + "params"]
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record["genotype"], []).append(record)
    rows, seeds = [], []
    for genotype, members in groups.items():
        rows.append({"genotype": genotype, **{p: _mean_value(members, _source(p)) for p in proxies},
                     SIZE: _mean_value(members, SIZE)})
        seeds.append({int(_number(m, "seed")): _number(m, target) for m in members})
    scale = 100.0 if max(a for s in seeds for a in s.values()) <= 1.0 else 1.0
    seeds = [{k: a * scale for k, a in s.items()} for s in seeds]
    return GroundTruth(rows, proxies, seeds, target)


def _source(proxy: str) -> str:
    return "params" if proxy == "params" else PROXY_PREFIX + proxy


def _number(record: dict, column: str) -> float:
    try:
        return float(record[column])
    except (TypeError, ValueError):
        raise DatasetError(f"ground truth: {column}={record[column]!r} for {record['genotype']} is not a number") from None


def _mean_value(records: Sequence[dict], column: str) -> float:
    """Mean over a genotype's rows (proxies may be computed per seed); NaN when any is NaN."""
    return float(np.mean([_number(r, column) for r in records]))


# --------------------------------------------------------------------------- correlations


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall tau-b on ranks (-inf and NaN proxy values rank last); NaN if either is constant."""
    return _tau(ranks(x), ranks(y))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rho: Pearson's r of the ranks; NaN if either is constant."""
    return _rho(ranks(x), ranks(y))


def _tau(rx: np.ndarray, ry: np.ndarray) -> float:
    """Kendall tau-b of values already ranked (any order-keeping relabelling gives the same tau)."""
    if len(rx) < 2 or np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return math.nan
    return float(kendalltau(rx, ry).statistic)


def _rho(rx: np.ndarray, ry: np.ndarray) -> float:
    if len(rx) < 2 or np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def partial_kendall(x: Sequence[float], y: Sequence[float], z: Sequence[float]) -> float:
    """Kendall's partial tau of x and y given z: ``(t_xy - t_xz t_yz) / sqrt((1 - t_xz^2)(1 - t_yz^2))``."""
    return _partial(kendall(x, y), kendall(x, z), kendall(y, z))


def _partial(t_xy: float, t_xz: float, t_yz: float) -> float:
    product = (1 - t_xz**2) * (1 - t_yz**2)
    if math.isnan(product) or product < 1e-12:  # x or y is z's order itself: nothing is left to correlate
        return math.nan
    return (t_xy - t_xz * t_yz) / math.sqrt(product)


def within_bins(correlation: Callable, x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    """``correlation`` inside each bin of at least ``MIN_BIN`` cells, averaged with the bins' sizes
    as weights; bins where it is undefined (e.g. x constant there) are left out."""
    values, weights = [], []
    for group in np.unique(groups):
        members = groups == group
        if members.sum() >= MIN_BIN:
            value = correlation(x[members], y[members])
            if not math.isnan(value):
                values.append(value)
                weights.append(members.sum())
    return float(np.average(values, weights=weights)) if values else math.nan


def correlations(scores: np.ndarray, accuracy: np.ndarray, params: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Tau and rho overall and within the size bins ``groups``; tau partialled on params."""
    rs, ra, rp = ranks(scores), ranks(accuracy), ranks(params)
    tau = _tau(rs, ra)
    return {
        "kendall_tau": tau,
        "spearman_rho": _rho(rs, ra),
        "kendall_tau_within_size": within_bins(_tau, rs, ra, groups),
        "spearman_rho_within_size": within_bins(spearman, rs, ra, groups),  # re-ranked inside each bin
        "kendall_tau_partial_params": _partial(tau, _tau(rs, rp), _tau(ra, rp)),
    }


# --------------------------------------------------------------------------- selection rules


def selection_rules(proxies: Sequence[str], vote: Sequence[str] | None = None,
                    bins: int | None = DEFAULT_SIZE_BINS) -> dict[str, Rule]:
    """Rules that order a set of candidate rows, higher = picked first.

    Each proxy by itself (``params`` is the params pick), ``vote`` (mean rank of ``vote``,
    default every zero-cost proxy but params) and ``vote+params``, the library's other votes
    (``proxy.VOTES``, such as ``synflow+params``) whose members are all measured, ``sized:<proxy>``
    (``combine.size_first``: the proxy's pick among the largest bin of the set), and ``random``.
    With short trainings' rungs among the proxies (``rung1``, ``rung2``: validation accuracy after
    each), ``refine<K>:<screen>``: refinement of the screen's best K (``refinement_order``).
    """
    rungs = sorted((p for p in proxies if p.startswith(RUNG)), key=lambda p: int(p[len(RUNG):]))
    others = [p for p in proxies if p != "params" and p not in rungs]
    vote = list(vote) if vote is not None else others
    rules: dict[str, Rule] = {p: (lambda rows, rng, p=p: np.array([r[p] for r in rows], dtype=float)) for p in proxies}
    if vote:
        rules["vote"] = lambda rows, rng: np.asarray(rank_vote(rows, vote))
        rules["vote+params"] = lambda rows, rng: np.asarray(rank_vote(rows, [*vote, "params"]))
    for name, names in VOTES.items():
        if name not in rules and set(names) <= set(proxies):
            rules[name] = lambda rows, rng, names=names: np.asarray(rank_vote(rows, names))
    for p in others:
        rules[f"sized:{p}"] = lambda rows, rng, p=p: np.asarray(size_first(rows, p, SIZE, bins))
    rules["random"] = lambda rows, rng: rng.random(len(rows))
    if rungs:
        for k in REFINE_K:
            for screen in REFINE_SCREENS:
                if screen in rules:
                    rules[f"refine{k}:{screen}"] = (lambda rows, rng, k=k, s=screen:
                                                    refinement_order(rows, rules[s](rows, rng), rungs, k, rng))
    return rules


RUNG = "rung"  # proxy_rung<E>: validation accuracy after epoch E of a short training (a trained proxy)
REFINE_K = (4, 8)
REFINE_SCREENS = ("sahd", "params", "vote+params", "synflow+params")  # what refinement rules screen by


def refinement_order(rows: Sequence[dict], screen: np.ndarray, rungs: Sequence[str], k: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Scores for ``nas.refine``'s choice among the screen's best ``k``, the rest below them.

    The k train one after the other, best screened first; after each rung but the last a
    candidate stops unless its value is among the best 1/2 of those reached that rung so far
    (at least the best one), as Optuna's ``SuccessiveHalvingPruner(min_resource=1,
    reduction_factor=2)`` decides. Finished candidates rank first by their last rung, stopped
    ones after them by the rung they stopped at.
    """
    screened = order(screen, rng)
    finalists = screened[:k]
    values = np.array([[float(rows[i][r]) for r in rungs] for i in finalists])
    reached: list[list[float]] = [[] for _ in rungs]
    keys = []
    for value in values:
        stop = len(rungs) - 1
        for rung in range(len(rungs) - 1):
            reached[rung].append(value[rung])
            best = sorted(reached[rung], reverse=True)
            if value[rung] < best[max(len(best) // 2 - 1, 0)]:
                stop = rung
                break
        keys.append((stop, value[stop]))
    out = np.empty(len(rows))
    out[screened] = -np.arange(len(rows), dtype=float)  # the others keep the screen's order, below
    for place, i in enumerate(sorted(range(len(finalists)), key=lambda j: keys[j], reverse=True)):
        out[finalists[i]] = len(finalists) - place
    return out


def order(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions from best to worst; ties in random order (a params pick among equal sizes)."""
    return np.lexsort((rng.random(len(scores)), np.nan_to_num(scores, nan=-np.inf)))[::-1]


def percentile_of(value: float, reference: np.ndarray) -> float:
    """Share of ``reference`` at or below ``value``, in percent (the best cell is at 100)."""
    return 100.0 * float(np.mean(reference <= value))


# --------------------------------------------------------------------------- simulated searches


GAIN_BASELINES = ("params", "sahd")  # the picks a selection rule must beat (per size, beyond the noise)
SEARCH_FIGURES = ("top1_regret", "top1_percentile", "top1_percentile_in_size", "top5_regret",
                  "top5_percentile", "top5_percentile_in_size", "per_size_regret", "per_size_percentile")


def one_search(rule: Rule, truth: GroundTruth, accuracy: np.ndarray, groups: np.ndarray,
               picked: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """The figures of one search over the cells ``picked`` (indices into ``truth``)."""
    scores = rule([truth.rows[i] for i in picked], rng)
    ranked = picked[order(scores, rng)]
    best = accuracy[picked].max()
    reference, reference_groups = accuracy[truth.distinct], groups[truth.distinct]
    out = {}
    for k in (1, 5):
        choice = ranked[np.argmax(accuracy[ranked[:k]])]  # of k finalists, the one that trains best
        out[f"top{k}_regret"] = best - accuracy[choice]
        out[f"top{k}_percentile"] = percentile_of(accuracy[choice], reference)
        out[f"top{k}_percentile_in_size"] = percentile_of(accuracy[choice], reference[reference_groups == groups[choice]])
    regrets, percentiles = [], []
    for group in np.unique(groups[picked]):  # a search limited to one footprint bin: the rule ranks its members
        members = picked[groups[picked] == group]
        members = members[order(rule([truth.rows[i] for i in members], rng), rng)]
        regrets.append(accuracy[members].max() - accuracy[members[0]])
        percentiles.append(percentile_of(accuracy[members[0]], reference[reference_groups == group]))
    out["per_size_regret"], out["per_size_percentile"] = float(np.mean(regrets)), float(np.mean(percentiles))
    return out


def simulate_searches(rules: dict[str, Rule], truth: GroundTruth, groups: np.ndarray, searches: int = 1000,
                      search_size: int = 100, seed: int = 0) -> dict[str, dict[str, dict]]:
    """Per rule and figure: the mean over ``searches`` draws and the middle 95% of draws.

    Each draw takes ``search_size`` distinct genotypes (all when there are fewer); every rule
    sees the same draws. The range is what one search can expect, not an interval of the mean.
    """
    rng = np.random.default_rng(seed)
    # each rule breaks ties from a stream of its own: its figures do not move when rules are added
    streams = {name: np.random.default_rng([seed, zlib.crc32(name.encode())]) for name in rules}
    accuracy = truth.accuracy
    size = min(search_size, len(truth))
    results: dict[str, list[dict]] = {name: [] for name in rules}
    for _ in range(searches):
        picked = rng.choice(len(truth), size=size, replace=False)
        for name, rule in rules.items():
            results[name].append(one_search(rule, truth, accuracy, groups, picked, streams[name]))
    return {name: {figure: _summary([r[figure] for r in draws]) for figure in SEARCH_FIGURES}
            for name, draws in results.items()}


def bootstrap_selection(rules: dict[str, Rule], truth: GroundTruth, bins: int | None, resamples: int,
                        searches: int, search_size: int, seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """Each search figure's mean per genotype resample, per rule: the searches rerun on resamples.

    Which cells were trained is itself a sample; each resample draws as many genotypes with
    replacement, re-bins them and runs ``searches`` searches on them (fewer than the main run's,
    since only their mean is kept). Every rule sees the same resamples and draws, so two rules'
    lists pair up: their differences give the interval of one rule's gain over another.
    """
    rng = np.random.default_rng(seed + 1)
    means: dict[str, dict[str, list[float]]] = {name: {f: [] for f in SEARCH_FIGURES} for name in rules}
    for _ in range(resamples):
        sample = truth.subset(rng.integers(len(truth), size=len(truth)))
        groups = size_bins(sample.column(SIZE), bins)
        figures = simulate_searches(rules, sample, groups, searches, search_size, int(rng.integers(2**31)))
        for name, per_figure in figures.items():
            for figure, summary in per_figure.items():
                means[name][figure].append(summary["mean"])
    return means


def _interval(values: Sequence[float]) -> list[float]:
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if len(v) else [math.nan, math.nan]


def _summary(values: Sequence[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "range95": [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]}


# --------------------------------------------------------------------------- bootstrap and noise


def rule_correlations(rule: Rule, truth: GroundTruth, index: np.ndarray, bins: int | None,
                      rng: np.random.Generator) -> dict[str, float]:
    """The rule's correlations over the cells ``index`` (bins recomputed on that set)."""
    rows = [truth.rows[i] for i in index]
    scores = rule(rows, rng)
    sizes = np.array([r[SIZE] for r in rows])
    params = np.array([r["params"] for r in rows])
    return correlations(scores, truth.accuracy[index], params, size_bins(sizes, bins))


def bootstrap_correlations(rule: Rule, truth: GroundTruth, bins: int | None, resamples: int,
                           seed: int = 0) -> dict[str, dict]:
    """Point values over all cells and 95% percentile intervals over genotype resamples."""
    rng = np.random.default_rng(seed)
    point = rule_correlations(rule, truth, np.arange(len(truth)), bins, rng)
    draws = [rule_correlations(rule, truth, rng.integers(len(truth), size=len(truth)), bins, rng)
             for _ in range(resamples)]
    out = {}
    for name, value in point.items():
        out[name] = {"value": value, "ci95": _interval([d[name] for d in draws])}
    return out


def noise_floor(truth: GroundTruth) -> dict:
    """Seed-to-seed spread of the same cell: pooled and median sd, and the retest tau.

    The retest tau is Kendall's tau between two training seeds of the same cells (the two lowest
    seeds of each): no proxy can rank one seed's accuracies better than another seed does.
    """
    repeated = [s for s in truth.seed_accuracy if len(s) >= 2]
    if not repeated:
        return {"cells": 0, "rows": 0, "pooled_sd": math.nan, "median_sd": math.nan, "robust_sd": math.nan,
                "retest_kendall_tau": math.nan}
    sds = np.array([np.std(list(s.values()), ddof=1) for s in repeated])
    first = [s[sorted(s)[0]] for s in repeated]
    second = [s[sorted(s)[1]] for s in repeated]
    # Seed differences are heavy-tailed (a few cells fail at evaluation): the median difference gives
    # the sd of the usual cell, |x1 - x2| = sd * sqrt(2) * |Z| and the median of |Z| is 0.6745.
    robust = float(np.median(np.abs(np.subtract(first, second)))) / (math.sqrt(2) * 0.6745)
    return {"cells": len(repeated), "rows": sum(len(s) for s in repeated),
            "pooled_sd": float(np.sqrt(np.mean(sds**2))), "median_sd": float(np.median(sds)),
            "robust_sd": robust, "retest_kendall_tau": kendall(first, second)}


def agreement(first: GroundTruth, second: GroundTruth, bins: int | None = DEFAULT_SIZE_BINS,
              resamples: int = 1000, seed: int = 0) -> dict:
    """How far two ground truths of the same cells (another recipe, other trainings) agree.

    ``second``'s accuracy is scored as a rule on the cells both hold (its correlations with
    ``first``'s, with bootstrap intervals, as for a proxy). Beside it, for each: the spread of cell
    accuracies within a size bin and the seed noise, whose ratio bounds how well any rule can pick.
    """
    in_second = {row["genotype"]: i for i, row in enumerate(second.rows)}
    shared = first.subset([i for i, row in enumerate(first.rows) if row["genotype"] in in_second])
    if len(shared) == 0:
        raise DatasetError("the two ground truths hold no cell in common")
    theirs = second.subset([in_second[row["genotype"]] for row in shared.rows])

    def accuracy_in_second(rows, rng):
        return np.array([second.accuracy[in_second[row["genotype"]]] for row in rows])

    rng = np.random.default_rng(seed)
    differences = theirs.accuracy - shared.accuracy
    resampled = [differences[rng.integers(len(differences), size=len(differences))].mean() for _ in range(resamples)]
    return {"cells": len(shared), **bootstrap_correlations(accuracy_in_second, shared, bins, resamples, seed),
            "mean_difference": {"value": float(differences.mean()), "ci95": _interval(resampled)},
            "spread": [_spread(truth, bins) for truth in (shared, theirs)]}


def _spread(truth: GroundTruth, bins: int | None) -> dict:
    """Mean and sd of the cells' accuracy, overall and pooled within size bins, and the seed noise."""
    groups = size_bins(truth.column(SIZE), bins)
    deviations = np.concatenate([truth.accuracy[groups == g] - truth.accuracy[groups == g].mean()
                                 for g in np.unique(groups)])
    within = float(np.sqrt(np.sum(deviations**2) / (len(deviations) - len(np.unique(groups)))))
    noise = noise_floor(truth)["pooled_sd"]
    return {"mean": float(truth.accuracy.mean()), "sd": float(truth.accuracy.std(ddof=1)),
            "sd_within_size": within, "seed_sd": noise, "within_size_to_seed_sd": within / noise}


def noise_ceiling(truth: GroundTruth, groups: np.ndarray, sd: float, searches: int = 1000,
                  search_size: int = 100, seed: int = 0) -> float:
    """The per-size percentile an oracle of each cell's noise-free accuracy would reach on ``truth``.

    The ground truth measures each cell once or twice, with seed noise of sd ``sd``, so even a rule
    that knew every cell's true accuracy would pick below the 100th percentile of the measured one.
    Under a normal model per footprint bin (true accuracy ~ N(bin mean, bin variance - sd^2), a
    cell's mean of n seeds = truth + N(0, sd^2 / n)), the oracle draws each cell's true accuracy from
    its posterior given the measurement and picks the best of each bin of a search, as ``one_search``
    does for a rule: how far a rule can be expected to get against this ground truth if the noise is
    normal. Heavy tails (a few cells failing, as one BatchNorm average does) make the pooled sd
    overstate it.
    """
    return _oracle(truth, groups, sd, None, searches, search_size, seed)


def projected_ceiling(truth: GroundTruth, groups: np.ndarray, sd: float, seeds: int, searches: int = 1000,
                      search_size: int = 100, seed: int = 0) -> float:
    """``noise_ceiling`` on a rerun of the same cells with ``seeds`` trainings each.

    What more seeds per cell would allow: each search draws the cells' true accuracies from their
    posterior, as ``noise_ceiling`` does, measures them again with noise sd / sqrt(seeds), and scores
    the oracle's pick by the percentile of its new measurement among its bin's new measurements.
    """
    return _oracle(truth, groups, sd, seeds, searches, search_size, seed)


def _oracle(truth: GroundTruth, groups: np.ndarray, sd: float, seeds: int | None, searches: int,
            search_size: int, seed: int) -> float:
    """The oracle's mean per-size percentile, against the measured accuracies (``seeds`` None) or
    against a simulated remeasurement with ``seeds`` trainings per cell."""
    rng = np.random.default_rng(seed)
    measured, noise = truth.accuracy, sd**2 / np.array([len(s) for s in truth.seed_accuracy])
    centre, shrink, spread = (np.zeros(len(truth)) for _ in range(3))
    for group in np.unique(groups):
        inside, own = groups == group, measured[truth.distinct][groups[truth.distinct] == group]
        signal = max(float(np.var(own, ddof=1)) - sd**2, 0.0) if len(own) > 1 else 0.0
        centre[inside] = own.mean()
        shrink[inside] = signal / (signal + noise[inside])
        spread[inside] = np.sqrt(signal * noise[inside] / (signal + noise[inside]))
    posterior = centre + shrink * (measured - centre)
    size, means = min(search_size, len(truth)), []
    for _ in range(searches):
        if seeds is None:
            picked = rng.choice(len(truth), size=size, replace=False)
            true, scored = np.full(len(truth), -np.inf), measured
            true[picked] = posterior[picked] + spread[picked] * rng.standard_normal(size)
        else:
            true = posterior + spread * rng.standard_normal(len(truth))
            scored = true + sd / math.sqrt(seeds) * rng.standard_normal(len(truth))
            picked = rng.choice(len(truth), size=size, replace=False)
        reference, reference_groups = scored[truth.distinct], groups[truth.distinct]
        percentiles = []
        for group in np.unique(groups[picked]):
            inside = picked[groups[picked] == group]
            pick = inside[np.argmax(true[inside])]
            percentiles.append(percentile_of(scored[pick], reference[reference_groups == group]))
        means.append(np.mean(percentiles))
    return float(np.mean(means))


PROJECTED_SEEDS = (1, 2, 4, 8)  # seeds per cell of a hypothetical rerun, for the report


# --------------------------------------------------------------------------- the whole evaluation


def evaluate(truth: GroundTruth, bins: int | None = DEFAULT_SIZE_BINS, searches: int = 1000, search_size: int = 100,
             resamples: int = 1000, selection_resamples: int = 100, resample_searches: int = 50,
             vote: Sequence[str] | None = None, seed: int = 0) -> dict:
    """Every figure, per rule (see the module docstring), as a dict (``json_ready`` it for JSON).

    Correlations carry ``value`` and ``ci95`` (``resamples`` genotype resamples); search figures
    ``mean`` and ``range95`` over ``searches`` searches, and ``ci95`` of the mean from
    ``selection_resamples`` resamples of ``resample_searches`` searches each.
    """
    rules = selection_rules(truth.proxies, vote, bins)
    groups = size_bins(truth.column(SIZE), bins)
    picks = simulate_searches(rules, truth, groups, searches, search_size, seed)
    means = bootstrap_selection(rules, truth, bins, selection_resamples, resample_searches, search_size, seed)
    for name, per_figure in picks.items():
        for figure, summary in per_figure.items():
            summary["ci95"] = _interval(means[name][figure])
        picks[name]["per_size_gain"] = {  # paired over the resamples: the gain over the baselines' picks
            base: {"mean": per_figure["per_size_percentile"]["mean"] - picks[base]["per_size_percentile"]["mean"],
                   "ci95": _interval(np.subtract(means[name]["per_size_percentile"], means[base]["per_size_percentile"]))}
            for base in GAIN_BASELINES if base in picks and base != name}
    per_rule = {name: {**bootstrap_correlations(rule, truth, bins, resamples, seed), **picks[name]}
                for name, rule in rules.items()}
    floor = noise_floor(truth)
    if math.isfinite(floor["pooled_sd"]):
        floor["oracle_per_size_percentile"] = {
            kind: noise_ceiling(truth, groups, floor[kind], searches, search_size, seed) for kind in ("pooled_sd", "robust_sd")}
        floor["oracle_per_size_percentile_at_seeds"] = {
            n: projected_ceiling(truth, groups, floor["pooled_sd"], n, searches, search_size, seed) for n in PROJECTED_SEEDS}
    return {
        "target": truth.target, "units": "accuracy points", "genotypes": len(truth),
        "rows": sum(len(s) for s in truth.seed_accuracy), "size_bins": bins, "bin_sizes": np.bincount(groups).tolist(),
        "searches": searches, "search_size": min(search_size, len(truth)), "resamples": resamples,
        "selection_resamples": selection_resamples, "resample_searches": resample_searches, "seed": seed,
        "noise_floor": floor, "rules": per_rule,
    }


def json_ready(value):
    """NaN and infinities become None (JSON has neither)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _with_ci(figure: dict, key: str = "value", digits: int = 2) -> str:
    lo, hi = figure["ci95"]
    return f"{_fmt(figure[key], digits)} [{_fmt(lo, digits)}, {_fmt(hi, digits)}]"


def markdown(report: dict) -> str:
    """The report's main figures as a markdown table, with the noise floor under it."""
    head = ("| rule | tau [95% CI] | rho | tau within size [95% CI] | rho within size | tau partial params "
            "| top-1 regret | top-1 pct [95% CI] | top-1 pct in size [95% CI] | top-5 regret | top-5 pct "
            "| per-size pct [95% CI] |")
    lines = [head, "|" + "---|" * 12]
    for name, r in report["rules"].items():
        cells = [name, _with_ci(r["kendall_tau"]), _fmt(r["spearman_rho"]["value"]),
                 _with_ci(r["kendall_tau_within_size"]), _fmt(r["spearman_rho_within_size"]["value"]),
                 _fmt(r["kendall_tau_partial_params"]["value"]), _fmt(r["top1_regret"]["mean"]),
                 *(_with_ci(r[f], "mean", 1) for f in ("top1_percentile", "top1_percentile_in_size")),
                 _fmt(r["top5_regret"]["mean"]), _fmt(r["top5_percentile"]["mean"], 1),
                 _with_ci(r["per_size_percentile"], "mean", 1)]
        lines.append("| " + " | ".join(cells) + " |")
    noise = report["noise_floor"]
    lines += ["", f"{report['genotypes']} genotypes, {report['rows']} trainings, target {report['target']} "
              f"(points); {report['size_bins'] or 'exact'} size bins of {report['bin_sizes']} cells; "
              f"{report['searches']} searches of {report['search_size']} cells; {report['resamples']} bootstrap "
              f"resamples (searches: {report['selection_resamples']} of {report['resample_searches']} searches).",
              "Regret: the search's best accuracy minus the pick's (top-5: the best of the rule's five); "
              "pct: the pick's percentile among all cells / among its footprint bin; per-size: picking within "
              "each footprint bin of a search.",
              f"Noise floor: sd between seeds {_fmt(noise['pooled_sd'])} points pooled (median {_fmt(noise['median_sd'])}) "
              f"over {noise['cells']} cells ({noise['rows']} trainings); retest tau {_fmt(noise['retest_kendall_tau'])}."]
    if "oracle_per_size_percentile" in noise:
        ceiling = noise["oracle_per_size_percentile"]
        lines.append(f"Noise ceiling (`noise_ceiling`, a normal model): a pick by each cell's noise-free accuracy would "
                     f"reach the {_fmt(ceiling['robust_sd'], 1)}th per-size percentile of this ground truth at the usual "
                     f"cell's seed sd ({_fmt(noise['robust_sd'])}, from the median seed difference), the "
                     f"{_fmt(ceiling['pooled_sd'], 1)}th at the pooled sd; a rule above the latter shows the noise is "
                     "heavier-tailed than normal.")
    if "oracle_per_size_percentile_at_seeds" in noise:
        projected = ", ".join(f"{n} -> {_fmt(v, 1)}" for n, v in noise["oracle_per_size_percentile_at_seeds"].items())
        lines.append(f"The same oracle on a rerun of these cells with n seeds each (`projected_ceiling`, pooled sd): "
                     f"{projected}.")
    return "\n".join(lines + ["", *gain_table(report)]) + "\n"


def agreement_markdown(report: dict, names: Sequence[str]) -> str:
    """``agreement``'s figures: one row per ground truth, then how they rank the cells alike."""
    lines = ["| ground truth | cells | mean acc | sd | sd within size | seed sd | within size / seed |",
             "|" + "---|" * 7]
    for name, spread in zip(names, report["spread"]):
        lines.append(f"| {name} | {report['cells']} | " + " | ".join(_fmt(spread[k]) for k in (
            "mean", "sd", "sd_within_size", "seed_sd", "within_size_to_seed_sd")) + " |")
    return "\n".join(lines + ["", f"Kendall tau between them over the {report['cells']} cells: "
                              f"{_with_ci(report['kendall_tau'])} overall, {_with_ci(report['kendall_tau_within_size'])} "
                              f"within size; mean difference ({names[1]} - {names[0]}): "
                              f"{_with_ci(report['mean_difference'])} points."]) + "\n"


def gain_table(report: dict) -> list[str]:
    """Per rule: its per-size pick's percentile less the params and SAHD picks', paired 95% intervals."""
    bases = [b for b in GAIN_BASELINES if b in report["rules"]]
    lines = ["| rule | " + " | ".join(f"per-size pct - {b}'s [95% CI]" for b in bases) + " |",
             "|" + "---|" * (len(bases) + 1)]
    for name, r in report["rules"].items():
        gains = r.get("per_size_gain", {})
        lines.append(f"| {name} | " + " | ".join(_with_ci(gains[b], "mean", 1) if b in gains else "—" for b in bases) + " |")
    return lines + ["", "Gain: percentile points of the per-size pick over the baseline's, paired over the same "
                    "genotype resamples and searches; an interval above 0 beats it beyond the resampling noise."]


def write_text(path: str | os.PathLike, text: str) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def plot_quality(report: dict, truth: GroundTruth, path: str | os.PathLike) -> None:
    """Left: Kendall tau per rule, overall and within size bins, with 95% intervals. Right: each
    proxy's rank against accuracy, coloured by parameter count."""
    from matplotlib.figure import Figure  # no pyplot: no backend to choose, no global state

    fig = Figure(figsize=(12, 4.5))
    bars, scatter = fig.subplots(1, 2)
    _tau_bars(bars, report)
    _rank_scatter(scatter, truth, fig)
    fig.tight_layout()
    _atomic(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=130))


def _tau_bars(ax, report: dict) -> None:
    names = list(report["rules"])
    x = np.arange(len(names))
    for offset, key, label in ((-0.2, "kendall_tau", "overall"), (0.2, "kendall_tau_within_size", "within size bins")):
        figures = [report["rules"][n][key] for n in names]
        values = np.array([np.nan if f["value"] is None else f["value"] for f in figures], dtype=float)
        lo = np.array([np.nan if f["ci95"][0] is None else f["ci95"][0] for f in figures], dtype=float)
        hi = np.array([np.nan if f["ci95"][1] is None else f["ci95"][1] for f in figures], dtype=float)
        errors = np.nan_to_num(np.vstack([values - lo, hi - values]).clip(min=0))
        ax.bar(x + offset, np.nan_to_num(values), 0.4, yerr=errors, capsize=2, label=label)
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.axhline(0, color="k", lw=0.6)
    ax.set(ylabel=f"Kendall tau vs {report['target']}", title="rank correlation (95% bootstrap CI)")
    ax.legend(fontsize=8)


def _rank_scatter(ax, truth: GroundTruth, fig) -> None:
    accuracy, n = truth.accuracy, len(truth)
    params = truth.column("params")
    for i, proxy in enumerate(truth.proxies):
        points = ax.scatter(ranks(truth.column(proxy)) / n + i, accuracy, c=np.log10(params), s=6, cmap="viridis")
    for edge in range(1, len(truth.proxies)):
        ax.axvline(edge, color="0.8", lw=0.6)
    ax.set_xticks(np.arange(len(truth.proxies)) + 0.5, truth.proxies, rotation=60, ha="right", fontsize=8)
    ax.set(ylabel=f"{truth.target} (points)", title="proxy rank (within each column) vs accuracy")
    fig.colorbar(points, ax=ax, label="log10 params")
