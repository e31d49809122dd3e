"""Macro settings searched beside the cell (``MacroSpace``) and the multi-objective sampler.

Tiny settings throughout: fmnist-tiny, the embedded fashion-mnist-mini, scoring batches of 16 images,
one repeat, a handful of candidates; a candidate scores in a few milliseconds.
"""

import csv
import json
import random
from dataclasses import replace

import optuna
import pytest
import torch

from spikernel.data.datasets import load_dataset
from spikernel.errors import ConfigError
from spikernel.nas.engine import (DUPLICATE, OVER_BUDGET, SCORED, Candidate, Search, SearchSpec, SnasnetSampler,
                                  check_budget_reachable, check_energy_budget_reachable,
                                  check_state_budget_reachable, energy_estimator, make_scorer, open_storage,
                                  open_study, pareto, scoring_data, StudyClashError)
from spikernel.nas.run import search
from spikernel.nn.energy import EnergyBudget, estimate_at_init
from spikernel.nn.footprint import Budget, StateBudget, footprint, min_footprint, stem_macs
from spikernel.nn.macro import SEARCHABLE, MacroSpace, get_preset, parse_values
from spikernel.nn.model import build_model
from spikernel.space.genotype import Genotype, KernelSet
from helpers import built_counts, cli, lif_neurons

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = get_preset("fmnist-tiny")
CLI_TINY = ["search", "-p", "fmnist-tiny", "--batch", 16, "--repeats", 1]
# Every searchable integer setting at two values that fmnist-tiny's 28x28 images allow in any combination.
EVERY = MacroSpace.of(TINY, width=(4, 8), hidden=(16, 32), votes=(2, 5), second_pool=(2, 7), stem_stride=(1, 2),
                      timesteps=(1, 2))


@pytest.fixture(scope="module")
def batches():
    torch.set_num_threads(1)
    batches, _ = scoring_data(load_dataset("fashion-mnist-mini"), 16, 1, 0)
    return batches


class Counting:
    """The real scorer (at each candidate's own settings), recording what it was asked to score."""

    def __init__(self, batches):
        self.score, self.calls = make_scorer(TINY, batches, 0), []

    def __call__(self, genotype, macro=None):
        self.calls.append((genotype.key, macro))
        return self.score(genotype, macro)


def run(spec, scorer, estimate=None, url=None):
    storage = open_storage(url, heartbeat=None)
    study = open_study(spec, storage, "s")
    return Search(study, storage, spec, scorer, estimate=estimate).run(), study


def spec_of(space: MacroSpace, candidates: int, **settings) -> SearchSpec:
    return SearchSpec(KernelSet.parse(settings.pop("kernels", "1x1_3x3")), settings.pop("cell", "backward"), candidates,
                      space.base, dimensions=space.dimensions, **settings)


# --------------------------------------------------------------------------- the space


def test_a_space_is_the_product_of_its_dimensions_in_one_spelling():
    space = MacroSpace.of(TINY, timesteps=[3, 2], width=(16, 8), hidden=(32,))
    assert space.base.hidden == 32  # one value: an override, not a dimension
    assert space.names == ("width", "timesteps") and space.size == 4
    assert [(m.width, m.timesteps) for m in space.combinations()] == [(8, 2), (8, 3), (16, 2), (16, 3)]
    assert space.identity() == MacroSpace.of(get_preset("fmnist-tiny", hidden=32), width=(8, 16),
                                             timesteps=(2, 3)).identity()
    for macro in space.combinations():
        assert space.with_choice(space.choice_of(macro)) == macro
    assert MacroSpace.of(TINY, width=(8,)).dimensions == () and MacroSpace.of(TINY).combinations() == [TINY]
    assert EVERY.names + ("encoding",) == SEARCHABLE and EVERY.size == 64  # the encoding: tests/test_encoding.py


@pytest.mark.parametrize("values, message", [
    ({"width": (8, 0)}, "width values must be positive integers, got 0"),
    ({"hidden": (32, "abc")}, "hidden values must be positive integers, got 'abc'"),
    ({"width": ()}, "the product of the dimensions is empty"),
    ({"width": (8, 8)}, "lists a value twice"),
    ({"depth": (1, 2)}, "unknown macro dimension 'depth'"),
    ({"second_pool": (2, 20)}, "macro combination second_pool=20 is invalid"),
    ({"stem_stride": (1, 4), "second_pool": (2, 7)}, "second_pool=7,stem_stride=4 is invalid"),
])
def test_a_bad_space_is_one_config_error(values, message):
    with pytest.raises(ConfigError, match=message):
        MacroSpace.of(TINY, values)


@pytest.mark.parametrize("text, message", [("8,0", "got 0"), ("32,abc", "got 'abc' in '32,abc'"),
                                           ("", "empty"), (",", "empty"), ("8,", "got ''")])
def test_option_values_are_parsed_or_refused(text, message):
    assert parse_values("width", "8,16,32") == (8, 16, 32) and parse_values("width", " 8 ") == (8,)
    with pytest.raises(ConfigError, match=message):
        parse_values("width", text)


# --------------------------------------------------------------------------- footprints before anything is built


def test_analytic_footprint_equals_the_built_network_over_sampled_combinations():
    sampler = SnasnetSampler(KernelSet.parse("1x1_3x3_5x5"), "backward", 11, EVERY)
    seen = set()
    for slot in range(16):
        genotype, choice = sampler.genotype(slot), sampler.choice(slot)
        macro = EVERY.with_choice(choice)
        seen.add(tuple(choice.values()))
        net = build_model(genotype, macro)
        fp = footprint(genotype, macro)
        assert (fp.params, fp.bn_buffers) == built_counts(net), (genotype, choice)
        sizes = lif_neurons(net, macro)
        assert (fp.lif_layers, fp.lif_neurons) == (len(sizes), sum(sizes.values())), (genotype, choice)
        if slot < 4:  # the analytic stem MACs, the energy floor, are what the operation counter counts
            torch.manual_seed(0)
            assert estimate_at_init(net, torch.zeros(2, 1, 28, 28)).stem_macs == stem_macs(macro)
    assert len(seen) >= 10  # the draws cover the space, not one corner of it


def test_a_budget_no_combination_meets_names_the_smallest():
    space = MacroSpace.of(TINY, width=(4, 8), hidden=(16, 32))
    smallest = min_footprint(space.with_choice({"width": 4, "hidden": 16}))
    check_budget_reachable(Budget(smallest.params, "params"), space)  # the smallest combination just fits
    with pytest.raises(ConfigError, match=f"network \\(at width=4,hidden=16\\) has {smallest.params:,} parameters"):
        check_budget_reachable(Budget(smallest.params - 1, "params"), space)
    state = smallest.state_bytes(32)
    check_state_budget_reachable(StateBudget(state), space)
    with pytest.raises(ConfigError, match=f"\\(at width=4,hidden=16\\) holds {state:,} bytes"):
        check_state_budget_reachable(StateBudget(state - 1), space)
    with pytest.raises(ConfigError, match="at width=4.* on its stem convolution alone"):
        check_energy_budget_reachable(EnergyBudget.parse("10nJ"), space)
    check_energy_budget_reachable(EnergyBudget.parse("1SOP"), space)  # a silent network spends no SOPs


# --------------------------------------------------------------------------- a search with dimensions

SPACE = MacroSpace.of(TINY, width=(4, 8), hidden=(16, 64), timesteps=(1, 2))


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def test_weight_budgets_filter_each_candidate_at_its_own_settings(batches):
    drawn, _ = run(spec_of(SPACE, 12), make_scorer(TINY, batches, 0))
    limit = median(c.footprint.params for c in drawn)
    scorer = Counting(batches)
    found, _ = run(spec_of(SPACE, 12, budget=Budget(limit, "params")), scorer)
    assert [c.name for c in found] == [c.name for c in drawn]  # the same candidates, now filtered
    for c in found:
        assert c.macro == SPACE.with_choice(c.choice) and c.footprint == footprint(c.genotype, c.macro)
        assert (c.status == OVER_BUDGET) == (c.footprint.params > limit), c.name
    assert {OVER_BUDGET, SCORED} <= {c.status for c in found}
    over = {(c.genotype.key, c.macro) for c in found if c.status == OVER_BUDGET}
    assert not over & set(scorer.calls)  # never built nor scored
    assert {(c.genotype.key, c.macro) for c in found if c.status == SCORED} == set(scorer.calls)  # at its settings


def test_state_budgets_filter_each_candidate_at_its_own_settings(batches):
    drawn, _ = run(spec_of(SPACE, 12), make_scorer(TINY, batches, 0))
    limit = median(c.footprint.state_bytes(8) for c in drawn)
    found, _ = run(spec_of(SPACE, 12, state_budget=StateBudget(limit, 8)), make_scorer(TINY, batches, 0))
    for c in found:
        assert (c.status == OVER_BUDGET) == (c.footprint.state_bytes(8) > limit), c.name
    assert {OVER_BUDGET, SCORED} <= {c.status for c in found}


def test_energy_budgets_filter_on_each_candidates_own_estimate(batches):
    estimate = energy_estimator(TINY, batches[0], 0)
    drawn, _ = run(spec_of(SPACE, 10, objectives=("score", "footprint", "energy")), make_scorer(TINY, batches, 0),
                   estimate)
    for c in drawn[:3]:  # the recorded estimate is the candidate's network at its settings
        torch.manual_seed(0)
        ops = estimate_at_init(build_model(c.genotype, c.macro), batches[0])
        assert c.energy["energy_uj"] == pytest.approx(ops.energy_pj / 1e6, abs=1e-6)
    limit = median(c.energy["energy_uj"] for c in drawn)
    # Recorded estimates are rounded to the pJ; half a pJ above the median splits the candidates there.
    found, _ = run(spec_of(SPACE, 10, energy_budget=EnergyBudget(limit * 1e6 + 0.5, "pJ")),
                   make_scorer(TINY, batches, 0), estimate)
    assert [c.energy for c in found] == [c.energy for c in drawn]
    for c in found:
        assert (c.status == OVER_BUDGET) == (c.energy["energy_uj"] > limit), c.name
    assert {OVER_BUDGET, SCORED} <= {c.status for c in found}


def test_a_repeat_reuses_a_score_only_at_the_same_settings(batches):
    scorer = Counting(batches)
    found, _ = run(spec_of(MacroSpace.of(TINY, width=(4, 8)), 24, kernels="1", cell="forward", seed=2), scorer)
    first = {}
    for c in found:
        if c.key in first:
            assert c.status == DUPLICATE and c.score == first[c.key]
        else:
            assert c.status == SCORED
            first[c.key] = c.score
    assert len(scorer.calls) == len(first)  # each (cell, width) scored once
    cells = {c.genotype.key for c in found}
    assert len(first) > len(cells)  # some cell was scored at both widths: the width is part of the key


def test_candidates_csv_has_a_column_per_dimension_and_selection_records_each_macro(tmp_path):
    out = tmp_path / "s"
    code, _, err = cli(*CLI_TINY, "-n", 6, "--width", "8,4", "--hidden", "16,32", "-T", 2, "-o", out)
    assert code == 0, err
    with open(out / "candidates.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["trial", "genotype", "width", "hidden", "params", "footprint_bytes", "score", "seconds",
                             "status"]
    base = get_preset("fmnist-tiny", timesteps=2)
    for r in rows:
        macro = replace(base, width=int(r["width"]), hidden=int(r["hidden"]))
        assert int(r["params"]) == footprint(Genotype.parse(r["genotype"]), macro).params
    selection = json.loads((out / "selection.json").read_text())
    assert selection["macro_dimensions"] == {"width": [4, 8], "hidden": [16, 32]}
    for entry in [selection["best"], *selection["top"], *selection["pareto"], *selection["pareto_front"]]:
        assert (entry["macro"]["width"], entry["macro"]["hidden"]) == (entry["width"], entry["hidden"])
        assert entry["macro"]["timesteps"] == 2
    picks = selection["budget_picks"]["footprint_bytes"]
    assert [p["budget"] for p in picks] == sorted(p["budget"] for p in picks)
    assert picks[-1]["pick"]["trial"] == selection["best"]["trial"]  # the largest budget picks the best
    settings = json.loads((out / "search.json").read_text())["settings"]
    assert settings["macro_dimensions"] == {"width": [4, 8], "hidden": [16, 32]}

    from spikernel.cli.train import resolve_macro
    from spikernel.training.run import read_search

    genotype, macro, dataset = read_search(out)  # `train --from-search` trains the pick at its settings
    picked = resolve_macro(load_dataset(dataset), macro, None, None, None)
    assert str(genotype) == selection["best"]["genotype"]
    assert (picked.width, picked.hidden, picked.timesteps) == (selection["best"]["width"],
                                                                selection["best"]["hidden"], 2)


# Slots 0-5 of `search("1x1_3x3", "fmnist-tiny", "fashion-mnist-mini", candidates=6, batch=16, repeats=1, seed=3)`
# as the engine gave them before macro dimensions existed (commit d1f537c): a search without dimensions
# must still draw, size and score exactly these.
BEFORE_DIMENSIONS = [
    ("0404 0003 1100 0020", 15212, -3.3367807452753904), ("0003 0000 4000 0030", 17772, -2.2153250580425836),
    ("0402 0004 0000 0000", 12284, -3.536928556650119), ("0024 2004 0300 0030", 18508, -2.7591715641385424),
    ("0304 0003 0000 0000", 17772, -2.2912148159943486), ("0022 4000 0101 0000", 12652, -2.7880105968149955),
]


@pytest.mark.parametrize("macro", ["fmnist-tiny", MacroSpace.of(TINY), MacroSpace.of(TINY, width=(8,), votes=10)],
                         ids=["preset", "empty-space", "single-values"])
def test_a_search_without_dimensions_gives_the_candidates_it_gave_before(macro):
    found = search("1x1_3x3", macro, "fashion-mnist-mini", candidates=6, batch=16, repeats=1, seed=3, device="cpu")
    assert [(str(c.genotype), c.footprint.params) for c in found.candidates] == [b[:2] for b in BEFORE_DIMENSIONS]
    assert [c.score for c in found.candidates] == pytest.approx([b[2] for b in BEFORE_DIMENSIONS], rel=1e-9)
    assert all(c.choice == {} and c.macro == TINY for c in found.candidates)
    assert "macro_dimensions" not in found.report["settings"] and "objectives" not in found.report["settings"]


def test_growing_a_search_with_dimensions_keeps_its_first_candidates(tmp_path):
    out = tmp_path / "grow"
    args = [*CLI_TINY, "--width", "4,8", "--votes", "2,5", "-T", 2, "-o", out]
    assert cli(*args, "-n", 3)[0] == 0
    first = (out / "candidates.csv").read_text().splitlines()
    db = f"sqlite:///{out / 'study.db'}"
    trials = len(optuna.load_study(study_name="search", storage=db).get_trials())
    code, _, err = cli(*args, "-n", 6)
    assert code == 0, err
    grown = (out / "candidates.csv").read_text().splitlines()
    assert grown[:4] == first and len(grown) == 7
    assert len(optuna.load_study(study_name="search", storage=db).get_trials()) == trials + 3
    # Slot k's combination is its own seeded draw: the sampler alone names every row's values.
    sampler = SnasnetSampler(KernelSet.parse("1x1_3x3"), "backward", 0,
                             MacroSpace.of(get_preset("fmnist-tiny", timesteps=2), width=(4, 8), votes=(2, 5)))
    with open(out / "candidates.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["genotype"], int(r["width"]), int(r["votes"])) for r in rows] == [
        (str(sampler.genotype(k)), sampler.choice(k)["width"], sampler.choice(k)["votes"]) for k in range(6)]
    code, _, err = cli(*CLI_TINY, "--width", "4,16", "--votes", "2,5", "-T", 2, "-o", out, "-n", 6)
    assert code == 2 and "macro_dimensions.width=[4, 8], not [4, 16]" in err


# --------------------------------------------------------------------------- objectives and NSGA-II


def test_tpe_searches_each_dimension_as_a_categorical(batches):
    spec = spec_of(SPACE, 8, sampler="tpe", seed=1)
    found, study = run(spec, make_scorer(TINY, batches, 0))
    for c, t in zip(found, sorted(study.trials, key=lambda t: t.user_attrs["slot"])):
        assert {name: t.params[f"macro_{name}"] for name in SPACE.names} == c.choice
        assert t.distributions["macro_width"].choices == (4, 8)


def test_nsga2_trades_score_footprint_and_energy_and_resumes(tmp_path):
    out = tmp_path / "nsga"
    settings = dict(candidates=8, batch=16, repeats=1, seed=2, sampler="nsga2", device="cpu", out=out,
                    objectives="score,footprint,energy")
    first = search("1x1_3x3", SPACE, "fashion-mnist-mini", **settings)
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'study.db'}")
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE,
                                optuna.study.StudyDirection.MINIMIZE]
    scored = [c for c in first.candidates if c.score is not None]
    told = {t.user_attrs["slot"]: t.values for t in study.trials if t.values}
    for c in scored:
        assert told[c.trial] == [c.score, c.footprint.bytes(32), c.energy["energy_uj"]]
    front = first.front
    assert front and {c.key for c in front} <= {c.key for c in scored}
    selection = json.loads((out / "selection.json").read_text())
    assert selection["objectives"] == ["score", "footprint", "energy"]
    assert [e["trial"] for e in selection["pareto"]] == [c.trial for c in front]
    assert set(selection["budget_picks"]) == {"footprint_bytes", "energy_uj"}
    again = search("1x1_3x3", SPACE, "fashion-mnist-mini", **settings)  # resumes: nothing scored again
    assert again.report["this_run"]["candidates"] == 0
    assert [(c.name, c.score) for c in again.candidates] == [(c.name, c.score) for c in first.candidates]
    with pytest.raises(StudyClashError, match="already exists with objectives"):
        search("1x1_3x3", SPACE, "fashion-mnist-mini", **{**settings, "objectives": "score,footprint"})


def test_nsga2_uses_energy_by_default_under_an_energy_budget():
    spec = spec_of(SPACE, 4, sampler="nsga2", energy_budget=EnergyBudget.parse("5uJ"))
    assert spec.objectives == ("score", "footprint", "energy") and len(spec.directions) == 3
    assert spec_of(SPACE, 4, sampler="nsga2").directions == ["maximize", "minimize"]  # as before objectives
    assert spec_of(SPACE, 4).directions == ["maximize"] and not spec_of(SPACE, 4).needs_energy
    with pytest.raises(ConfigError, match="second objective"):
        spec_of(SPACE, 4, sampler="nsga2", objectives=("score",))
    with pytest.raises(ConfigError, match="unknown objective 'speed'"):
        spec_of(SPACE, 4, objectives=("score", "speed"))


def test_pareto_is_the_set_no_candidate_dominates():
    rng = random.Random(0)
    g = Genotype.parse("0003 0000 0000 0000")
    fp = footprint(g, TINY)
    candidates = []
    for i in range(60):
        c = Candidate(i, g, fp, score=rng.choice([-3.0, -2.5, -2.0, -1.5]), choice={"width": i})
        c.footprint = type(fp)(rng.choice([100, 200, 300]), 0, 10, 1)
        c.energy = {"energy_uj": rng.choice([1.0, 2.0, 3.0])}
        candidates.append(c)
    objectives = ("score", "footprint", "energy")
    vector = lambda c: (-c.score, c.footprint.params, c.energy["energy_uj"])  # noqa: E731

    def dominated(c):
        return any(all(a <= b for a, b in zip(vector(o), vector(c))) and vector(o) != vector(c) for o in candidates)

    front = pareto(candidates, objectives)
    expected = {vector(c) for c in candidates if not dominated(c)}
    assert {vector(c) for c in front} == expected and len(front) == len(expected)  # one per distinct point
    assert all(min(o.trial for o in candidates if vector(o) == vector(c)) == c.trial for c in front)


# --------------------------------------------------------------------------- the report


def test_the_report_of_a_search_plots_each_dimension_and_the_fronts(tmp_path):
    out = tmp_path / "s"
    code, _, err = cli(*CLI_TINY, "-n", 6, "--width", "4,8", "--hidden", "16,32", "-T", 2,
                       "--objectives", "score,footprint,energy", "-o", out)
    assert code == 0, err
    code, stdout, err = cli("report", out)
    assert code == 0, err
    report = (out / "report" / "report.md").read_text()
    for figure in ("search_front", "search_score_by_macro", "search_score_vs_params"):
        assert (out / "report" / f"{figure}.png").stat().st_size > 0 and f"{figure}.png" in report
    assert "macro dimensions: width [4, 8]; hidden [16, 32]" in report

    from spikernel.selection.explore import load_study
    from spikernel.selection.report import macro_dimensions_figure, search_front_figure

    study = load_study(out)
    assert study.results[0].dimensions == ("width", "hidden")
    assert all(isinstance(c["width"], int) and isinstance(c["energy_uj"], float) for c in study.results[0].scored)
    assert [p.suffix for p in search_front_figure(study, tmp_path)] == [".png", ".svg"]
    assert [p.suffix for p in macro_dimensions_figure(study, tmp_path)] == [".png", ".svg"]


# --------------------------------------------------------------------------- fidelity and exploration


def test_a_two_stage_search_rescores_each_candidate_at_its_own_settings():
    data = load_dataset("fashion-mnist-mini")
    found = search("1x1_3x3", SPACE, data, candidates=6, batch=16, repeats=1, seed=4, device="cpu",
                   fidelity="width=0.5,batch=8,repeats=1,top=2")
    rescored = found.report["fidelity"]["rescored_candidates"]
    assert len(rescored) == 2 and all(set(SPACE.names) <= set(row) for row in rescored)
    full = make_scorer(TINY, scoring_data(data, 16, 1, 4)[0], 4)
    by_name = {c.name: c for c in found.candidates if c.score is not None}
    for row in rescored:
        c = by_name[f"{row['genotype']} [" + ",".join(f"{n}={row[n]}" for n in SPACE.names) + "]"]
        assert row["full_score"] == pytest.approx(full(c.genotype, c.macro)) == c.score


def test_exploration_trains_each_pick_at_its_own_settings(tmp_path):
    from spikernel.selection.explore import explore
    from spikernel.selection.settings import ExploreSettings

    settings = ExploreSettings(kernel_sets=("1x1_3x3",), preset="fmnist-tiny", timesteps=1, candidates=3, top_k=2,
                               epochs=1, limit_train=16, score_batch=16, repeats=1, macro_values={"width": (4, 8)})
    study = explore(settings, tmp_path / "e", device="cpu")
    top = json.loads((tmp_path / "e" / "1x1_3x3" / "search" / "selection.json").read_text())["top"][:2]
    assert {r["candidate"] for r in study.results[0].trained} == {f"{r['genotype']} [width={r['width']}]" for r in top}
    for row in top:
        run_dir = tmp_path / "e" / "1x1_3x3" / "train" / f"{row['genotype'].replace(' ', '-')}-width{row['width']}"
        assert json.loads((run_dir / "result.json").read_text())["macro"] == row["macro"]
    assert json.loads((tmp_path / "e" / "explore.json").read_text())["macro_values"] == {"width": [4, 8]}
    from spikernel.selection.report import write_report

    written = write_report(study, tmp_path / "report")
    assert str(tmp_path / "report" / "accuracy_by_macro.png") in written["figures"]
    assert "accuracy_by_macro.png" in (tmp_path / "report" / "report.md").read_text()
