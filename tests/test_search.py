"""The search engine in one process: SNASNet's sampling, budgets, dedupe, outputs, bad input."""

import csv
import itertools
import json
from collections import Counter

import optuna
import pytest
import torch
from click.testing import CliRunner

from spikernel.cli import main
from spikernel.data.datasets import load_dataset
from spikernel.errors import ConfigError
from spikernel.nn.footprint import Budget, footprint, min_footprint
from spikernel.nn.model import get_preset
from spikernel.nas.engine import (
    DUPLICATE, OVER_BUDGET, SCORED, Search, SearchSpec, SnasnetSampler, best, compare_prefix, genotype_params,
    make_scorer, open_storage, open_study, params_genotype, pareto_front, random_search, scoring_data, search_space,
)
from spikernel.space.genotype import INPUT, NODES, OUTPUT, PAIRS, Genotype, KernelSet, sample_many

TINY = ["-p", "fmnist-tiny", "--batch", "8", "--repeats", "1"]


@pytest.fixture(scope="module")
def tiny():
    """fmnist-tiny and two scoring batches of 8 real images: a candidate scores in well under a second."""
    torch.set_num_threads(1)
    dataset = load_dataset("fashion-mnist-mini")
    macro = get_preset("fmnist-tiny")
    batches, about = scoring_data(dataset, 8, 1, 0)
    return macro, batches, about


class Counting:
    """The real scorer, counting which genotypes it was asked to score."""

    def __init__(self, macro, batches):
        self.score, self.calls = make_scorer(macro, batches, 0), []

    def __call__(self, genotype):
        self.calls.append(genotype.key)
        return self.score(genotype)


def search(spec, scorer, url=None, name="s"):
    storage = open_storage(url, heartbeat=None)
    study = open_study(spec, storage, name)
    return Search(study, storage, spec, scorer).run(), study


# --------------------------------------------------------------------------- SNASNet's sampling


@pytest.mark.parametrize("kernels,cell,seed", [("1x1_3x3", "backward", 0), ("1x1_5x5_7x7", "forward", 7)])
def test_random_sampler_is_snasnets_seeded_stream(tiny, kernels, cell, seed):
    """Slot k of a random-sampler search is the k-th cell ``space.sample_many`` draws with that seed."""
    macro, batches, _ = tiny
    spec = SearchSpec(KernelSet.parse(kernels), cell, 10, macro, seed=seed)
    found, _ = search(spec, make_scorer(macro, batches, 0))
    assert [c.trial for c in found] == list(range(10))
    assert [str(c.genotype) for c in found] == [str(g) for g in sample_many(kernels, cell, 10, seed)]


def test_sampler_stream_and_parameters_round_trip():
    kernel_set = KernelSet.parse("1x1_3x3_5x5_7x7")
    sampler = SnasnetSampler(kernel_set, "backward", 3)
    expected = list(sample_many(kernel_set, "backward", 300, 3))
    assert [str(sampler.genotype(k)) for k in (299, 0, 150)] == [str(expected[k]) for k in (299, 0, 150)]
    space = search_space(kernel_set, "backward")
    for genotype in expected:
        params = genotype_params(genotype, "backward")
        assert set(params) == set(space) and all(params[n] in space[n].choices for n in params)
        assert str(params_genotype(params)) == str(genotype)


def _snasnet_distribution(kernel_set):
    """SNASNet's forward-cell distribution, enumerated: uniform ops per pair, resampled until 0->3 != 0."""
    counts = Counter()
    for codes in itertools.product(kernel_set.op_codes, repeat=len(PAIRS)):
        rows = [[0] * NODES for _ in range(NODES)]
        for (i, j), code in zip(PAIRS, codes):
            rows[i][j] = code
        if rows[INPUT][OUTPUT]:
            counts[Genotype(tuple(map(tuple, rows))).key] += 1
    return counts


def _parameter_distribution(kernel_set):
    """What an uninformed Optuna sampler draws: every parameter uniform over its choices."""
    space = search_space(kernel_set, "forward")
    counts = Counter()
    for values in itertools.product(*(d.choices for d in space.values())):
        counts[params_genotype(dict(zip(space, values))).key] += 1
    return counts


def test_parameter_space_carries_snasnets_distribution():
    """The Optuna parameters (used by TPE/NSGA-II) encode exactly SNASNet's space and weights."""
    kernel_set = KernelSet.parse("1x1_3x3")
    snas, params = _snasnet_distribution(kernel_set), _parameter_distribution(kernel_set)
    assert set(snas) == set(params)
    total_s, total_p = sum(snas.values()), sum(params.values())
    assert all(snas[k] * total_p == params[k] * total_s for k in snas)  # equal probabilities, exactly


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_other_samplers_stay_in_the_kernel_set(tiny, sampler):
    macro, batches, _ = tiny
    spec = SearchSpec(KernelSet.parse("1x1_7x7"), "backward", 5, macro, sampler=sampler, seed=1)
    found, study = search(spec, make_scorer(macro, batches, 0))
    assert len(found) == 5 and all(set(c.genotype.kernels) <= {1, 7} for c in found)
    assert all(c.genotype.matrix[INPUT][OUTPUT] for c in found)
    assert len(study.directions) == (2 if sampler == "nsga2" else 1)


# --------------------------------------------------------------------------- budget, dedupe, selection


def test_over_budget_candidates_are_recorded_not_scored(tiny):
    macro, batches, _ = tiny
    budget = Budget.parse("15K")
    scorer = Counting(macro, batches)
    found, _ = search(SearchSpec(KernelSet.parse("1x1_3x3"), "backward", 12, macro, budget), scorer)
    over = [c for c in found if c.status == OVER_BUDGET]
    assert over and len(over) < len(found)
    assert all(c.score is None and c.footprint.params > budget.limit for c in over)
    assert all(c.footprint.params <= budget.limit for c in found if c.status != OVER_BUDGET)
    assert not {c.genotype.key for c in over} & set(scorer.calls)  # never built nor scored
    assert best(found).footprint.params <= budget.limit


def test_byte_budget_at_bits(tiny):
    macro, batches, _ = tiny
    budget = Budget.parse("16KB", bits=4)  # 16,000 bytes at 4 bits = 32,000 stored values
    found, _ = search(SearchSpec(KernelSet.parse("1x1_3x3"), "forward", 6, macro, budget), make_scorer(macro, batches, 0))
    for c in found:
        assert (c.status == OVER_BUDGET) == (c.footprint.bytes(4) > 16_000)


def test_repeated_genotypes_reuse_the_score(tiny):
    """A 1x1-only forward space is small: repeats are certain, each architecture is scored once."""
    macro, batches, _ = tiny
    scorer = Counting(macro, batches)
    found, _ = search(SearchSpec(KernelSet.parse("1"), "forward", 30, macro, seed=2), scorer)
    keys = [c.genotype.key for c in found]
    assert len(set(keys)) < len(keys)
    assert sorted(scorer.calls) == sorted(set(keys))  # one scoring per distinct architecture
    first = {}
    for c in found:
        if c.status == SCORED:
            first[c.genotype.key] = c.score
    for c in found:
        assert c.status in (SCORED, DUPLICATE) and c.score == first[c.genotype.key]
    assert Counter(c.status for c in found)[DUPLICATE] == len(keys) - len(set(keys))


def test_interrupted_candidate_is_failed_and_redone(tiny, tmp_path):
    """Ctrl-C (or any error) mid-score fails that trial; the same search again fills its slot once."""
    macro, batches, _ = tiny
    spec = SearchSpec(KernelSet.parse("1x1_3x3"), "backward", 6, macro)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    real = make_scorer(macro, batches, 0)

    def interrupted(genotype, calls=[]):
        calls.append(genotype)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(genotype)

    with pytest.raises(KeyboardInterrupt):
        search(spec, interrupted, url)
    scorer = Counting(macro, batches)
    found, study = search(spec, scorer, url)
    states = Counter(t.state.name for t in study.get_trials())
    assert states == {"COMPLETE": 6, "FAIL": 1}
    assert [c.trial for c in found] == list(range(6))
    redo = {c.genotype.key for c in found[2:]} - {c.genotype.key for c in found[:2]}
    assert sorted(scorer.calls) == sorted(redo)  # only the unfinished slots, each architecture once
    assert [str(c.genotype) for c in found] == [str(g) for g in sample_many("1x1_3x3", "backward", 6, 0)]


def test_random_search_entry_point_for_the_pipeline(tiny):
    macro, batches, _ = tiny
    seen = []
    found = random_search(KernelSet.parse("1x1_3x3"), "backward", 4, macro, batches, seed=5, on_candidate=seen.append)
    assert len(found) == 4 and len(seen) == 4
    with pytest.raises(ConfigError, match="smallest possible network"):
        random_search(KernelSet.parse("1x1_3x3"), "backward", 4, macro, batches, Budget.parse("1K"))


def test_pareto_front_and_prefix_comparison(tiny):
    macro, batches, _ = tiny
    found, _ = search(SearchSpec(KernelSet.parse("1x1_3x3_5x5"), "backward", 12, macro, seed=4),
                      make_scorer(macro, batches, 0))
    front = pareto_front(found)
    assert front and all(not any(o.footprint.stored_values <= c.footprint.stored_values and o.score > c.score for o in found)
               for c in front)
    report = compare_prefix(found, 6)
    assert report["candidates"] == [6, 12]
    assert report["pick"]["genotype"] == str(best(found[:6]).genotype)
    assert report["pick_changed"] == (best(found[:6]).genotype.key != best(found).genotype.key)
    assert 0 < report["seconds"][0] <= report["seconds"][1]


# --------------------------------------------------------------------------- the command


def cli(*args):
    result = CliRunner().invoke(main, ["search", *args])
    return result.exit_code, result.stdout, result.stderr


def test_search_command_outputs_and_resume(tmp_path):
    out = tmp_path / "run"
    code, _, err = cli(*TINY, "-k", "1x1_3x3", "-n", "8", "--budget", "20K", "--compare-at", "4", "--out", str(out))
    assert code == 0, err
    with open(out / "candidates.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["trial", "genotype", "params", "footprint_bytes", "score", "seconds", "status"]
    assert [int(r["trial"]) for r in rows] == list(range(8))
    assert [r["genotype"] for r in rows] == [str(g) for g in sample_many("1x1_3x3", "backward", 8, 0)]
    macro = get_preset("fmnist-tiny")
    for r in rows:
        fp = footprint(Genotype.parse(r["genotype"]), macro)
        assert int(r["params"]) == fp.params and int(r["footprint_bytes"]) == fp.bytes(32)
    selection = json.loads((out / "selection.json").read_text())
    scored = [r for r in rows if r["score"]]
    assert selection["best"]["score"] == max(float(r["score"]) for r in scored)
    assert selection["budget"] == "20,000 parameters" and selection["pareto_front"] and selection["top"]
    report = json.loads((out / "search.json").read_text())
    assert report["settings"]["candidates"] == 8 and report["settings"]["seed"] == 0
    assert report["this_run"]["candidates"] == 8 and report["this_run"]["candidates_per_second"] > 0
    assert report["time"]["scoring_seconds_total"] > 0 and report["versions"]["optuna"] == optuna.__version__
    assert report["compare"]["candidates"] == [4, 8]
    assert report["study"]["storage"] == "sqlite:///study.db"  # relative: no machine path in the results
    assert report["this_run"]["device"].startswith("cuda" if torch.cuda.is_available() else "cpu")

    # The same command again: nothing left to do, nothing redone, same files.
    trials = optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'study.db'}").get_trials()
    code, _, err = cli(*TINY, "-k", "1x1_3x3", "-n", "8", "--budget", "20K", "--out", str(out))
    assert code == 0, err
    again = optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'study.db'}").get_trials()
    assert [(t.number, t.state, t.user_attrs) for t in again] == [(t.number, t.state, t.user_attrs) for t in trials]
    assert json.loads((out / "search.json").read_text())["this_run"]["candidates"] == 0
    with open(out / "candidates.csv") as f:
        assert list(csv.DictReader(f)) == rows


def test_study_clash_leaves_the_study_untouched(tmp_path):
    out = tmp_path / "run"
    assert cli(*TINY, "-n", "2", "--out", str(out))[0] == 0
    db = out / "study.db"
    before = optuna.load_study(study_name="search", storage=f"sqlite:///{db}").get_trials()
    code, _, err = cli(*TINY, "-n", "2", "-k", "1x1_5x5", "--out", str(out))
    assert code == 2 and err.count("\n") == 1
    assert "already exists with kernels=1x1_3x3, not 1x1_5x5" in err
    after = optuna.load_study(study_name="search", storage=f"sqlite:///{db}").get_trials()
    assert [(t.number, t.user_attrs) for t in after] == [(t.number, t.user_attrs) for t in before]
    code, _, err = cli(*TINY, "-n", "2", "--batch", "16", "--out", str(out))  # a nested setting names itself
    assert code == 2 and "already exists with scoring.batch=8, not 16" in err


@pytest.mark.parametrize("args,message", [
    (["-k", "1x1_4x4"], "positive odd integer"),
    (["-k", "huge"], "unknown kernel set"),
    (["--budget", "lots"], "malformed budget"),
    (["--budget", "10MBX"], "malformed budget"),
    (["--budget", "5K"], f"smallest possible network has {min_footprint(get_preset('fmnist-tiny')).params:,} parameters"),
    (["--budget", "10KB", "--bits", "8"], "smallest possible network has"),
    (["--storage", "nosuchdb://x"], "cannot open storage nosuchdb://x"),
    (["--storage", "postgresql://me:secret@127.0.0.1:1/x"], "cannot open storage postgresql://me:***@127.0.0.1:1/x"),
    (["--sampler", "grid"], "'grid' is not one of"),
    (["-n", "4", "--compare-at", "4"], "must be below the"),
    (["--batch", "20000"], "larger than the dataset"),
    (["--device", "tpu0"], "unknown device 'tpu0'"),
    pytest.param(["--device", "cuda"], "no CUDA GPU is available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
])
def test_bad_input_is_one_line_and_writes_nothing(args, message, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = cli(*TINY, "-n", "3", *args, "--out", str(out))
    assert code == 2 and message in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err + stdout
    assert not out.exists() or not any(out.iterdir())


def test_growing_a_search_reuses_its_first_candidates(tmp_path):
    out = tmp_path / "grow"
    assert cli(*TINY, "-n", "3", "--out", str(out))[0] == 0
    first = (out / "candidates.csv").read_text().splitlines()
    db = f"sqlite:///{out / 'study.db'}"
    scored = len(optuna.load_study(study_name="search", storage=db).get_trials())
    code, _, err = cli(*TINY, "-n", "5", "--out", str(out))
    assert code == 0, err
    grown = (out / "candidates.csv").read_text().splitlines()
    assert len(grown) == 6 and grown[:4] == first  # the same three slots, as they were
    assert len(optuna.load_study(study_name="search", storage=db).get_trials()) == scored + 2  # only two new
    code, _, err = cli(*TINY, "-n", "2", "--out", str(out))  # fewer: the first two slots of the study
    assert code == 0, err
    assert (out / "candidates.csv").read_text().splitlines() == first[:3]


def test_a_neuron_state_budget_filters_before_scoring(tmp_path):
    from spikernel.nn.footprint import StateBudget, footprint
    from spikernel.nn.model import get_preset
    from spikernel.space.genotype import Genotype

    out = tmp_path / "state"
    code, _, err = cli(*TINY, "-n", "8", "--state-budget", "30KB", "--state-bits", "8", "--out", str(out))
    assert code == 0, err
    macro = get_preset("fmnist-tiny")
    budget = StateBudget.parse("30KB", 8)
    rows = (out / "candidates.csv").read_text().splitlines()[1:]
    statuses = {row.split(",")[1]: row.split(",")[-1] for row in rows}
    for genotype, status in statuses.items():
        state = footprint(Genotype.parse(genotype), macro).state_bytes(8)
        assert (status == "over_budget") == (state > budget.limit), (genotype, state, status)
    assert "over_budget" in statuses.values() and "scored" in statuses.values()
    code, _, err = cli(*TINY, "-n", "2", "--state-budget", "100B", "--out", str(tmp_path / "none"))
    assert code == 2 and "no candidate can meet the state budget" in err and not (tmp_path / "none").exists()
    code, _, err = cli(*TINY, "-n", "2", "--state-budget", "10K", "--out", str(tmp_path / "bad"))
    assert code == 2 and "counted in bytes" in err and err.count("\n") == 1


def test_an_energy_budget_filters_on_the_estimate_at_initialisation(tmp_path):
    import csv

    from spikernel.nn.energy import EnergyBudget

    out = tmp_path / "energy"
    code, _, err = cli(*TINY, "-n", "6", "--energy-budget", "0.8uJ", "--out", str(out))
    assert code == 0, err
    with open(out / "candidates.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["energy_uj"] for r in rows)
    for r in rows:
        assert (r["status"] == "over_budget") == (float(r["energy_uj"]) > 0.8), r
    assert {"over_budget", "scored"} <= {r["status"] for r in rows}
    assert EnergyBudget.parse("2MSOP").limit == 2e6 and EnergyBudget.parse("800nJ").limit == 800e3
    code, _, err = cli(*TINY, "-n", "2", "--energy-budget", "lots", "--out", str(tmp_path / "bad"))
    assert code == 2 and "malformed energy budget" in err and not (tmp_path / "bad").exists()


def test_a_search_ranks_by_the_proxy_asked_for_with_the_scores_sk_score_gives(tmp_path):
    import spikernel as sk

    data = load_dataset("fashion-mnist-mini")
    macro = get_preset("fmnist-tiny", timesteps=2)
    found = sk.search("1x1_3x3", macro, data, candidates=4, batch=8, repeats=1, proxy="grad_norm", out=tmp_path / "g")
    scored = [c for c in found.candidates if c.score is not None]
    direct = {str(s.genotype): s.score for s in sk.score([c.genotype for c in scored], macro, data, proxy="grad_norm",
                                                         batch=8, repeats=1)}
    assert {str(c.genotype): c.score for c in scored} == pytest.approx(direct)
    chosen = json.loads((tmp_path / "g" / "selection.json").read_text())
    assert chosen["selected_by"] == "grad_norm" and chosen["best"]["score"] == max(direct.values())
    code, _, err = cli("-k", "1x1_3x3", "-n", "4", "-T", "2", *TINY, "-o", tmp_path / "g")
    assert code == 2 and "scoring.proxy=grad_norm" in err  # a SAHD search is another study
    code, _, err = cli("-k", "1x1_3x3", "-n", "4", *TINY, "--proxy", "banana", "-o", tmp_path / "b")
    assert code == 2 and err.count("\n") == 1 and "banana" in err and not (tmp_path / "b").exists()


def test_a_vote_ranks_the_finished_candidates_by_the_mean_rank_of_its_proxies(tmp_path):
    import spikernel as sk

    data = load_dataset("fashion-mnist-mini")
    macro = get_preset("fmnist-tiny", timesteps=2)
    settings = dict(candidates=6, batch=8, repeats=1, proxy="vote+params", out=tmp_path / "v")
    found = sk.search("1x1_3x3", macro, data, **settings)
    scored = [c for c in found.candidates if c.status == "scored"]
    direct = sk.score([c.genotype for c in scored], macro, data, proxy="vote+params", batch=8, repeats=1)
    for c, s in zip(scored, direct):  # each member as sk.score computes it; the vote as it ranks the same cells
        assert c.proxies == pytest.approx(s.proxies) and c.score == pytest.approx(s.score)
    assert sorted(c.score for c in scored) != [scored[0].score] * len(scored)  # a ranking, not a tie
    chosen = json.loads((tmp_path / "v" / "selection.json").read_text())
    assert chosen["selected_by"] == "vote+params" and chosen["best"]["score"] == max(s.score for s in direct)
    with open(tmp_path / "v" / "candidates.csv") as f:
        assert {"proxy_sahd", "proxy_params", "proxy_zico"} <= set(next(csv.DictReader(f)))
    again = sk.search("1x1_3x3", macro, data, **settings)  # read back from the study: the same ranking
    assert [(c.trial, c.score) for c in again.candidates] == [(c.trial, c.score) for c in found.candidates]
    from spikernel.selection.explore import load_study
    from spikernel.selection.report import ablation_table

    picks = {row["candidates"]: row["pick"] for row in ablation_table(load_study(tmp_path / "v"), [3, 6])}
    first = [c for c in found.candidates if c.trial < 3 and c.status == "scored"]
    votes = sk.score([c.genotype for c in first], macro, data, proxy="vote+params", batch=8, repeats=1)
    assert picks == {6: found.best.name, 3: first[max(range(len(first)), key=lambda i: votes[i].score)].name}
    code, _, err = cli("-k", "1x1_3x3", "-n", "4", *TINY, "--proxy", "vote", "--sampler", "tpe", "-o", tmp_path / "t")
    assert code == 2 and err.count("\n") == 1 and "--sampler random" in err and not (tmp_path / "t").exists()
    for option, value in (("--fidelity", "fast"), ("--compare-at", "2")):
        code, _, err = cli("-n", "4", *TINY, "--proxy", "vote", option, value, "-o", tmp_path / "t")
        assert code == 2 and err.count("\n") == 1 and option in err and not (tmp_path / "t").exists()
