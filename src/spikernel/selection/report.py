"""Tables and figures of an exploration, from what is stored alone (the method's steps 1 and 4).

Input is a ``Study``: per kernel set, the search's candidate rows and the trained candidates'
rows. Nothing here trains or scores; a half-finished study reports what exists and lists what is
missing.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure  # figures without pyplot: no backend to choose, no global state
from scipy.stats import kendalltau, spearmanr  # noqa: E402

from spikernel.files import _atomic, make_dir, write_text  # noqa: E402
from spikernel.proxy import VOTES  # noqa: E402
from spikernel.proxy.combine import rank_vote  # noqa: E402

FIGURE_FORMATS = ("png", "svg")
ENERGY_NOTE = ("Operations and energy are per image of T timesteps, counted on the first test images after training "
               "(SOPs: accumulates driven by spikes; energy at the 45 nm figures, 0.9 pJ per accumulate and 4.6 pJ "
               "per multiply-accumulate of the stem).\n\n")


@dataclass
class KernelSetResult:
    kernel_set: str
    candidates: list[dict] = field(default_factory=list)  # search rows: genotype, params, footprint_bytes, score, status
    trained: list[dict] = field(default_factory=list)  # genotype, params, footprint_bytes, score, test_acc
    search_seconds: float | None = None
    dimensions: tuple[str, ...] = ()  # the macro settings the search varied (columns of its rows)

    @property
    def scored(self) -> list[dict]:
        return [c for c in self.candidates if _finite(c.get("score"))]

    def name_of(self, row: dict) -> str:
        """A search row's network: its genotype, with the searched macro values when there are any."""
        values = ",".join(f"{d}={row[d]}" for d in self.dimensions)
        return row["genotype"] + (f" [{values}]" if values else "")

    def best_trained(self, limit: float | None = None, cost_key: str = "params") -> dict | None:
        """The cell with the best mean accuracy over its seeds, under the limit."""
        rows = [r for r in mean_over_seeds(self.trained) if limit is None or r[cost_key] <= limit]
        return max(rows, key=lambda r: r["test_acc"], default=None)


def mean_over_seeds(trained: list[dict]) -> list[dict]:
    """One row per cell, its test accuracy the mean over the seeds it was trained with (and n)."""
    cells: dict[str, list[dict]] = {}
    for row in trained:  # one network: the cell at its searched macro values
        cells.setdefault(row.get("candidate", row["genotype"]), []).append(row)
    return [{**rows[0], "test_acc": sum(r["test_acc"] for r in rows) / len(rows), "seeds": len(rows)}
            for rows in cells.values()]


@dataclass
class Study:
    settings: dict
    results: list[KernelSetResult]
    missing: list[str] = field(default_factory=list)

    @property
    def cost_key(self) -> str:
        """Budgets in bytes compare footprints at the study's bits; parameter budgets compare params."""
        return "footprint_bytes" if self.settings.get("budget_unit") == "bytes" else "params"

    @property
    def cost_label(self) -> str:
        if self.cost_key == "params":
            return "parameters"
        return f"footprint at {self.settings.get('bits', 32)} bits (bytes)"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _scaled(x, unit: float) -> float | None:
    return x / unit if _finite(x) else None


def pareto(rows: list[dict], cost: str, value: str) -> list[dict]:
    """Rows not beaten by one that costs no more and scores higher; sorted by cost."""
    front, best = [], -math.inf
    for row in sorted(rows, key=lambda r: (r[cost], -r[value])):
        if row[value] > best:
            front.append(row)
            best = row[value]
    return front


def rank_agreement(rows: list[dict]) -> tuple[float, float, int]:
    """Kendall tau and Spearman rho of training-free score vs trained accuracy (nan below 3 rows)."""
    rows = [r for r in rows if _finite(r.get("score")) and _finite(r.get("test_acc"))]
    if len(rows) < 3:
        return math.nan, math.nan, len(rows)
    scores, accs = [r["score"] for r in rows], [r["test_acc"] for r in rows]
    if len(set(scores)) < 2 or len(set(accs)) < 2:  # a constant side has no ranking to agree with
        return math.nan, math.nan, len(rows)
    return float(kendalltau(scores, accs).statistic), float(spearmanr(scores, accs).statistic), len(rows)


# --------------------------------------------------------------------------- tables


def main_table(study: Study) -> list[dict]:
    rows = []
    for r in study.results:
        best = r.best_trained(study.settings.get("budget_limit"), study.cost_key)
        rows.append({
            "kernel set": r.kernel_set,
            "best genotype": best.get("candidate", best["genotype"]) if best else "-",
            "parameters": best["params"] if best else None,
            f"footprint {study.settings.get('bits', 32)}-bit (KB)": round(best["footprint_bytes"] / 1e3, 1) if best else None,
            "test accuracy": best["test_acc"] if best else None,
            "score": best["score"] if best else None,
            "SOPs / image (M)": _scaled(best.get("sops"), 1e6) if best else None,
            "energy / image (uJ)": best.get("energy_uj") if best else None,
            "search time (s)": round(r.search_seconds, 1) if r.search_seconds is not None else None,
            "candidates scored": len(r.scored),
        })
    return rows


def budget_table(study: Study, limits: list[float]) -> list[dict]:
    """The best trained network at each budget, across kernel sets."""
    rows = []
    for limit in limits:
        picks = [(r.kernel_set, r.best_trained(limit, study.cost_key)) for r in study.results]
        picks = [(name, row) for name, row in picks if row is not None]
        name, row = max(picks, key=lambda p: p[1]["test_acc"], default=(None, None))
        rows.append({
            "budget": limit,
            "kernel set": name or "none fits",
            "genotype": row.get("candidate", row["genotype"]) if row else "-",
            "cost": row[study.cost_key] if row else None,
            "test accuracy": row["test_acc"] if row else None,
        })
    return rows


def default_budgets(study: Study) -> list[float]:
    """Three budgets spanning the trained networks' costs, plus the study's own budget."""
    costs = sorted(r[study.cost_key] for res in study.results for r in res.trained)
    if not costs:
        return []
    picks = {costs[0], costs[len(costs) // 2], costs[-1]}
    if study.settings.get("budget_limit"):
        picks.add(study.settings["budget_limit"])
    return sorted(picks)


def correlation_table(study: Study) -> list[dict]:
    rows = []
    for r in study.results:
        tau, rho, n = rank_agreement(r.trained)
        rows.append({"kernel set": r.kernel_set, "trained": n, "kendall tau": tau, "spearman rho": rho})
    everything = [row for r in study.results for row in r.trained]
    tau, rho, n = rank_agreement(everything)
    rows.append({"kernel set": "all", "trained": n, "kendall tau": tau, "spearman rho": rho})
    return rows


def ablation_table(study: Study, sizes: list[int]) -> list[dict]:
    """Searching only the first n candidates of the same seeded stream: time and pick per set."""
    rows = []
    vote = VOTES.get(study.settings.get("proxy") or study.settings.get("scoring", {}).get("proxy"))
    for r in study.results:
        trained = {t.get("candidate", t["genotype"]): t for t in r.trained}
        for n in sizes:
            prefix = r.candidates[:n]
            if len(prefix) < n:
                continue
            pick = _prefix_pick(prefix, vote)
            acc = trained.get(r.name_of(pick), {}).get("test_acc") if pick else None
            rows.append({
                "kernel set": r.kernel_set, "candidates": n,
                "search time (s)": round(sum(c.get("seconds") or 0.0 for c in prefix), 1),
                "pick": r.name_of(pick) if pick else "-",
                "pick accuracy": acc,
            })
    return rows


def _prefix_pick(prefix: list[dict], vote: tuple[str, ...] | None) -> dict | None:
    """What a search of these candidates alone picks: the best score, or a rank vote's best among
    them (the vote ranks its own set, so it is taken again over the prefix's distinct networks)."""
    if vote:
        distinct = [c for c in prefix if c.get("status") == "scored"]
        votes = rank_vote(distinct, [f"proxy_{name}" for name in vote])
        return max(zip(votes, distinct), key=lambda pair: pair[0], default=(None, None))[1]
    return max((c for c in prefix if _finite(c.get("score"))), key=lambda c: c["score"], default=None)


def investigation_table(study: Study, permutations: int = 10_000) -> list[dict]:
    """Step 1 with its noise: per kernel set every trained accuracy (all top-K cells, all seeds),
    mean, sd and a 95% t-interval; against the first set, the difference of means, a bootstrap 95%
    interval of it, a two-sided permutation p-value (``permutation_p``) and Welch's t-test p-value."""
    from scipy import stats

    samples = accuracies(study)
    if not samples or max(len(v) for v in samples.values()) < 2:
        return []
    base_name, base = next(iter(samples.items()))
    rng = np.random.default_rng(0)
    rows = []
    for name, a in samples.items():
        half = stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else float("nan")
        row = {"kernel set": name, "trainings": len(a), "mean (%)": a.mean(), "sd (points)": a.std(ddof=1) if len(a) > 1 else None,
               "95% CI (%)": f"[{a.mean() - half:.2f}, {a.mean() + half:.2f}]" if len(a) > 1 else "-"}
        if name != base_name:
            test = _difference(a, base, permutations, rng)
            row.update({f"vs {base_name} (points)": test["diff (points)"],
                        "diff 95% CI": f"[{test['lower']:+.2f}, {test['upper']:+.2f}]",
                        "permutation p": test["permutation p"], "Welch p": test["Welch p"]})
        rows.append(row)
    return rows


def accuracies(study: Study, at_least: int = 1) -> dict[str, np.ndarray]:
    """Per kernel set with at least ``at_least`` trainings: every test accuracy (%), all cells and seeds."""
    return {r.kernel_set: np.array([100 * t["test_acc"] for t in r.trained]) for r in study.results
            if len(r.trained) >= at_least}


def encoding_of(row: dict) -> str:
    return row.get("choice", {}).get("encoding", "direct")


def by_encoding(study: Study) -> dict[str, Study]:
    """The study's trainings split by their input encoding: one study per encoding trained (the
    search's encoding dimension), each with every kernel set."""
    encodings = sorted({encoding_of(t) for r in study.results for t in r.trained})
    return {enc: Study(study.settings, [KernelSetResult(r.kernel_set, trained=[t for t in r.trained if encoding_of(t) == enc])
                                        for r in study.results]) for enc in encodings}


def encoding_table(study: Study, permutations: int = 10_000) -> list[dict]:
    """Does the best kernel set change with the encoding? Per encoding trained: the set with the best
    mean accuracy (over every training of its top-K cells) against the runner-up, the difference with
    a bootstrap 95% interval and the tests of ``investigation_table``; "beyond noise" when the interval
    excludes 0 and Welch's p < 0.05 (three seeds a side make a narrow bootstrap interval of a wide
    spread: 18 points [+0.4, +29.5] with p = 0.18 was measured)."""
    return _encoding_rows(by_encoding(study), permutations)


def _encoding_rows(split: dict[str, Study], permutations: int = 10_000) -> list[dict]:
    rows = []
    for enc, part in split.items() if len(split) > 1 else ():
        samples = accuracies(part, at_least=2)
        if len(samples) < 2:
            continue
        (best, a), (second, b) = sorted(samples.items(), key=lambda item: -item[1].mean())[:2]
        test = _difference(a, b, permutations, np.random.default_rng(0))
        rows.append({"encoding": enc, "best kernel set": best, "its mean (%)": a.mean(), "trainings": len(a),
                     "runner-up": second, "runner-up mean (%)": b.mean(), "difference (points)": test["diff (points)"],
                     "diff 95% CI": f"[{test['lower']:+.2f}, {test['upper']:+.2f}]",
                     "permutation p": test["permutation p"], "Welch p": test["Welch p"],
                     "beyond noise": "yes" if test["lower"] > 0 and (test["Welch p"] or 1) < 0.05 else "no"})
    return rows


def encoding_answer(rows: list[dict]) -> str:
    """One sentence from ``encoding_table``'s rows."""
    best = {r["encoding"]: r["best kernel set"] for r in rows}
    if len(best) < 2:
        return ""
    sure = [r["encoding"] for r in rows if r["beyond noise"] == "yes"]
    verdict = ("The best kernel set is the same for every encoding" if len(set(best.values())) == 1
               else "The best kernel set changes with the encoding")
    noise = (f"; beyond the seed noise for {', '.join(sure)}" if sure else "; for no encoding beyond the seed noise")
    return f"{verdict} ({', '.join(f'{e}: {k}' for e, k in best.items())}){noise}.\n"


def _difference(a: np.ndarray, b: np.ndarray, permutations: int, rng: np.random.Generator) -> dict:
    """mean(a) - mean(b) with a bootstrap 95% interval, the permutation and Welch p-values."""
    from scipy import stats

    boot = [rng.choice(a, len(a)).mean() - rng.choice(b, len(b)).mean() for _ in range(2000)]
    return {"diff (points)": a.mean() - b.mean(), "lower": float(np.percentile(boot, 2.5)),
            "upper": float(np.percentile(boot, 97.5)), "permutation p": permutation_p(a, b, permutations, rng),
            "Welch p": float(stats.ttest_ind(a, b, equal_var=False).pvalue) if min(len(a), len(b)) > 1 else None}


def permutation_p(a: np.ndarray, b: np.ndarray, draws: int, rng: np.random.Generator) -> float:
    """Two-sided permutation p-value of mean(a) - mean(b): exact over every split when there are at
    most ``draws`` of them (3 vs 3 has 20, so p >= 0.1), else from ``draws`` random splits."""
    pooled, n = np.concatenate([a, b]), len(a)
    observed = abs(a.mean() - b.mean()) - 1e-9  # the observed split itself, summed in another order, must count
    if math.comb(len(pooled), n) <= draws:
        splits = [list(c) for c in itertools.combinations(range(len(pooled)), n)]
        diffs = np.array([pooled[s].mean() - np.delete(pooled, s).mean() for s in splits])
        return float(np.mean(np.abs(diffs) >= observed))
    diffs = np.array([p[:n].mean() - p[n:].mean() for p in (rng.permutation(pooled) for _ in range(draws))])
    return float((np.sum(np.abs(diffs) >= observed) + 1) / (draws + 1))


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "_nothing stored yet_\n"
    header = list(dict.fromkeys(h for row in rows for h in row))  # a column only some rows have (a test against the first set) too
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(h), "accuracy" in h) for h in header) + " |")
    return "\n".join(lines) + "\n"


def _cell(value, percent: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if percent:
            return f"{value:.2%}"
        if abs(value) >= 100:
            return f"{value:,.1f}"
        return f"{value:.3f}".rstrip("0").rstrip(".")  # 14.8, not 14.800
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# --------------------------------------------------------------------------- figures


def _colours(study: Study) -> dict[str, tuple]:
    cmap = matplotlib.colormaps["tab10"]
    return {r.kernel_set: cmap(i % 10) for i, r in enumerate(study.results)}


def _finish(fig, ax, out: Path, name: str, xlabel: str, ylabel: str, title: str) -> list[Path]:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, name)


def _save(fig, out: Path, name: str) -> list[Path]:
    paths = []
    for fmt in FIGURE_FORMATS:
        path = out / f"{name}.{fmt}"
        _atomic(path, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight"))
        paths.append(path)
    return paths


def accuracy_memory_figure(study: Study, out: Path) -> list[Path]:
    colours, cost = _colours(study), study.cost_key
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    for r in study.results:
        if r.trained:
            ax.scatter([t[cost] for t in r.trained], [100 * t["test_acc"] for t in r.trained],
                       color=colours[r.kernel_set], label=r.kernel_set, alpha=0.85, edgecolor="k", linewidth=0.4)
    front = pareto([t for r in study.results for t in r.trained], cost, "test_acc")
    if front:
        ax.step([f[cost] for f in front], [100 * f["test_acc"] for f in front], where="post", color="0.3",
                linestyle="--", linewidth=1, label="Pareto front")
    if study.settings.get("budget_limit"):
        ax.axvline(study.settings["budget_limit"], color="crimson", linewidth=1, label="budget")
    return _finish(fig, ax, out, "accuracy_vs_memory", study.cost_label, "test accuracy (%)", "Accuracy vs memory")


def energy_accuracy_figure(study: Study, out: Path) -> list[Path]:
    """Accuracy vs energy per inference of every trained network that has its operations counted."""
    colours = _colours(study)
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    for r in study.results:
        rows = [t for t in r.trained if _finite(t.get("energy_uj"))]
        if rows:
            ax.scatter([t["energy_uj"] for t in rows], [100 * t["test_acc"] for t in rows], color=colours[r.kernel_set],
                       label=r.kernel_set, edgecolor="k", linewidth=0.4)
    return _finish(fig, ax, out, "accuracy_vs_energy", "energy per image (uJ, SOPs x E_AC + stem MACs x E_MAC)",
                   "test accuracy (%)", "Accuracy vs energy")


def score_accuracy_figure(study: Study, out: Path) -> list[Path]:
    colours = _colours(study)
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    for r in study.results:
        tau, rho, n = rank_agreement(r.trained)
        rows = [t for t in r.trained if _finite(t.get("score"))]
        if rows:
            label = f"{r.kernel_set} (tau {tau:.2f}, rho {rho:.2f})" if n >= 3 else r.kernel_set
            ax.scatter([t["score"] for t in rows], [100 * t["test_acc"] for t in rows], color=colours[r.kernel_set],
                       label=label, edgecolor="k", linewidth=0.4)
    return _finish(fig, ax, out, "score_vs_accuracy", "training-free score (log|det K|)", "test accuracy (%)", "Does the score rank architectures?")


def search_space_figure(study: Study, out: Path) -> list[Path]:
    """Every scored candidate: score vs parameters, per kernel set (no training needed)."""
    colours = _colours(study)
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    for r in study.results:
        rows = r.scored
        if rows:
            ax.scatter([c["params"] for c in rows], [c["score"] for c in rows], s=10, alpha=0.6,
                       color=colours[r.kernel_set], label=f"{r.kernel_set} ({len(rows)})")
    return _finish(fig, ax, out, "search_score_vs_params", "parameters", "training-free score", "Search: score vs size of every candidate")


def _panels(fig, count: int) -> list:
    return list(np.atleast_1d(fig.subplots(1, count, sharey=True, squeeze=False)[0]))


def search_front_figure(study: Study, out: Path) -> list[Path]:
    """The search's trade-off: every scored candidate and the front (no smaller one scores higher)
    against memory, and against the energy estimate in a second panel when candidates have one."""
    colours = _colours(study)
    has_energy = any(_finite(c.get("energy_uj")) for r in study.results for c in r.scored)
    axes_of = [(study.cost_key, study.cost_label)]
    if has_energy:
        axes_of.append(("energy_uj", "energy per inference at initialisation (uJ)"))
    fig = Figure(figsize=(5.6 * len(axes_of), 4.2))
    panels = _panels(fig, len(axes_of))
    for ax, (key, label) in zip(panels, axes_of):
        for r in study.results:
            rows = [c for c in r.scored if _finite(c.get(key))]
            if not rows:
                continue
            ax.scatter([c[key] for c in rows], [c["score"] for c in rows], s=8, alpha=0.35, color=colours[r.kernel_set])
            front = pareto(rows, key, "score")
            ax.step([f[key] for f in front], [f["score"] for f in front], where="post", color=colours[r.kernel_set],
                    linewidth=1.2, marker="o", markersize=3, label=f"{r.kernel_set}: front of {len(front)}")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    panels[0].set_ylabel("training-free score")
    fig.suptitle("Search: the score against what it costs")
    return _save(fig, out, "search_front")


def macro_dimensions_figure(study: Study, out: Path) -> list[Path]:
    """Score against memory per searched macro setting: one panel per setting, every scored
    candidate coloured by its value of it (markers tell kernel sets apart)."""
    return _by_macro_figure(study, out, lambda r: r.scored, "score", "training-free score", "search_score_by_macro",
                            "Search: score vs memory per macro setting")


def macro_accuracy_figure(study: Study, out: Path) -> list[Path]:
    """The same panels for the trained networks: test accuracy against memory per macro setting."""
    return _by_macro_figure(study, out, lambda r: [{**t, **t.get("choice", {})} for t in r.trained], "test_acc",
                            "test accuracy", "accuracy_by_macro", "Trained: accuracy vs memory per macro setting")


def _by_macro_figure(study: Study, out: Path, rows_of, y: str, ylabel: str, name: str, title: str) -> list[Path]:
    dims = list(dict.fromkeys(d for r in study.results for d in r.dimensions))
    cost, markers = study.cost_key, "osD^v<>ph*"
    fig = Figure(figsize=(4.4 * len(dims), 4.0))
    panels = _panels(fig, len(dims))
    for ax, dim in zip(panels, dims):
        values = sorted({c[dim] for r in study.results for c in rows_of(r) if c.get(dim) is not None})
        shade = {v: matplotlib.colormaps["viridis"](i / max(len(values) - 1, 1)) for i, v in enumerate(values)}
        for k, r in enumerate(study.results):
            for v in values:
                rows = [c for c in rows_of(r) if c.get(dim) == v]
                if rows:
                    ax.scatter([c[cost] for c in rows], [c[y] for c in rows], s=12, alpha=0.7, color=shade[v],
                               marker=markers[k % len(markers)], label=f"{v}" + (f" ({r.kernel_set})" if k else ""))
        ax.set_title(dim)
        ax.set_xlabel(study.cost_label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title=dim, title_fontsize=7)
    panels[0].set_ylabel(ylabel)
    fig.suptitle(title + (" (markers: kernel sets)" if len(study.results) > 1 else ""))
    return _save(fig, out, name)


def ablation_figure(rows: list[dict], out: Path) -> list[Path]:
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for name in dict.fromkeys(r["kernel set"] for r in rows):
        mine = [r for r in rows if r["kernel set"] == name]
        ax.plot([r["candidates"] for r in mine], [r["search time (s)"] for r in mine], marker="o", label=name)
    return _finish(fig, ax, out, "ablation_search_time", "candidates searched", "search time (s)", "Search iterations: time (picks in report.md)")


def write_report(study: Study, out: Path, ablation_sizes: list[int] | None = None) -> dict:
    """Write report.md and the figures into ``out``; return the main table and what was written."""
    make_dir(out)
    figures = []
    if any(r.trained for r in study.results):
        figures += accuracy_memory_figure(study, out)
        figures += score_accuracy_figure(study, out)
    has_energy = any(_finite(t.get("energy_uj")) for r in study.results for t in r.trained)
    if has_energy:
        figures += energy_accuracy_figure(study, out)
    searched = any(r.scored for r in study.results)
    dimensions = searched and any(r.dimensions for r in study.results)
    if searched:
        figures += search_space_figure(study, out)
        figures += search_front_figure(study, out)
    trained_dimensions = dimensions and any(r.trained for r in study.results)
    if dimensions:
        figures += macro_dimensions_figure(study, out)
    if trained_dimensions:
        figures += macro_accuracy_figure(study, out)
    if study.settings.get("kind") == "search":
        return _search_report(study, out, figures)
    sizes = ablation_sizes or study.settings.get("ablation") or []
    ablation = ablation_table(study, sizes)
    if ablation:
        figures += ablation_figure(ablation, out)
    table = main_table(study)
    investigation = investigation_table(study)
    split = by_encoding(study)
    encodings = _encoding_rows(split)
    s = study.settings
    parts = [
        "# spikernel exploration report\n",
        f"Dataset `{s.get('dataset')}`, preset `{s.get('preset')}`, {s.get('cell')} cells, "
        f"{s.get('candidates')} candidates per kernel set, top-{s.get('top_k')} trained for "
        f"{s.get('epochs')} epochs; budget: {s.get('budget') or 'none'}.\n",
        "## Best network per kernel set\n", markdown(table),
        "![accuracy vs memory](accuracy_vs_memory.png)\n" if any(r.trained for r in study.results) else "",
        ENERGY_NOTE + "![accuracy vs energy](accuracy_vs_energy.png)\n" if has_energy else "",
        *(["## Do larger kernels help? (kernel-size investigation)\n",
            f"Every trained accuracy of each set's top-{s.get('top_k')} cells under {s.get('seeds', 1)} seed(s), "
            f"budget {s.get('budget') or 'none'}, the same training per arm"
            + (" (every encoding pooled: per encoding below)" if encodings else "") + ".\n\n", markdown(investigation)]
          if investigation else []),
        *_encoding_section(split, encodings),
        "## Budget analysis\n", markdown(budget_table(study, default_budgets(study))),
        "## Training-free score vs trained accuracy\n", markdown(correlation_table(study)),
        "![score vs accuracy](score_vs_accuracy.png)\n" if any(r.trained for r in study.results) else "",
        "## Search-iteration ablation\n",
        "Each row searches only the first n candidates of the same seeded stream.\n\n", markdown(ablation),
        "## Search space\n", "![score vs params](search_score_vs_params.png)\n" if searched else "",
        *_search_sections(searched, dimensions),
        "One panel per searched macro setting for the trained networks too.\n\n"
        "![accuracy by macro setting](accuracy_by_macro.png)\n" if trained_dimensions else "",
    ]
    if study.missing:
        parts += ["## Missing\n", "".join(f"- {m}\n" for m in study.missing)]
    write_text(out / "report.md", "\n".join(parts))
    return {"table": table, "investigation": investigation, "encodings": encodings,
            "figures": [str(p) for p in figures], "missing": study.missing}


def _encoding_section(split: dict[str, Study], rows: list[dict]) -> list[str]:
    """The investigation per input encoding, when the search compared encodings (the tables above
    pool them)."""
    if not rows:
        return []
    parts = ["## Does the best kernel set change with the input encoding?\n", encoding_answer(rows), markdown(rows)]
    for enc, part in split.items():
        parts += [f"### {enc} input\n", markdown(investigation_table(part))]
    return parts


def _search_sections(searched: bool, dimensions: bool) -> list[str]:
    parts = []
    if searched:
        parts += ["## Search trade-offs\n", "Each line is the front: the candidates no cheaper one outscores "
                  "(against energy when the search estimated it).\n", "![search front](search_front.png)\n"]
    if dimensions:
        parts += ["## Macro dimensions\n", "One panel per macro setting the search varied, each candidate coloured "
                  "by its value.\n", "![score by macro setting](search_score_by_macro.png)\n"]
    return parts


def _search_report(study: Study, out: Path, figures: list[Path]) -> dict:
    """report.md of a plain search folder: what it searched and its trade-offs (nothing is trained)."""
    s, result = study.settings, study.results[0]
    dims = s.get("macro_dimensions") or {}
    parts = [
        "# spikernel search report\n",
        f"Dataset `{s.get('dataset')}`, kernel set `{result.kernel_set}`, {s.get('cell')} cells, "
        f"{s.get('candidates')} candidates, sampler `{s.get('sampler')}` over {', '.join(s.get('objectives', ['score']))}; "
        f"budget: {s.get('budget') or 'none'}"
        + (f"; macro dimensions: {'; '.join(f'{k} {v}' for k, v in dims.items())}" if dims else "") + ".\n",
        f"{len(result.scored)} candidates scored.\n",
        "## Search space\n", "![score vs params](search_score_vs_params.png)\n" if result.scored else "",
        *_search_sections(bool(result.scored), bool(dims) and bool(result.scored)),
    ]
    write_text(out / "report.md", "\n".join(parts))
    return {"table": search_table(study), "investigation": [], "encodings": [], "figures": [str(p) for p in figures],
            "missing": []}


def search_table(study: Study) -> list[dict]:
    """Per kernel set of a search-only study: the highest-scoring candidate."""
    rows = []
    for r in study.results:
        top = max(r.scored, key=lambda c: c["score"], default=None)
        rows.append({"kernel set": r.kernel_set, "best candidate": r.name_of(top) if top else "-",
                     "parameters": top["params"] if top else None,
                     f"footprint {study.settings.get('bits', 32)}-bit (KB)": round(top["footprint_bytes"] / 1e3, 1)
                     if top else None, "score": top["score"] if top else None, "candidates scored": len(r.scored)})
    return rows
