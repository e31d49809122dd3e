"""Multi-fidelity screening: parsing, the cheap setting, the shortlist and the second stage."""

import math

import pytest
import torch

from spikernel.errors import ConfigError
from spikernel.nas.fidelity import RECIPES, SCREENED, Fidelity, shortlist, two_stage
from spikernel.nn.footprint import footprint
from spikernel.nn.model import get_preset
from spikernel.proxy.sahd import score_genotype
from spikernel.nas.engine import Candidate
from spikernel.space.genotype import Genotype, sample_many

TINY = get_preset("fmnist-tiny")


def test_parse_round_trips_and_recipes():
    f = Fidelity.parse("width=0.25, batch=32,timesteps=2,top=0.05")
    assert (f.width, f.batch, f.timesteps, f.repeats, f.top) == (0.25, 32, 2, None, 0.05)
    assert Fidelity.parse(str(f)) == f
    assert f.cheap == "width=0.25,batch=32,timesteps=2"  # what the first-stage scores depend on
    assert Fidelity.parse("fast") == Fidelity.parse(RECIPES["fast"])
    assert Fidelity.parse("top=20").keep(500) == 20


@pytest.mark.parametrize("text, message", [
    ("width=2", "fraction"), ("batch=1", "at least 2"), ("batch=3.5", "whole number"),
    ("speed=3", "key=value"), ("width", "key=value"), ("top=0", "top"), ("top=2.5", "top"),
    ("timesteps=x", "needs a number"), ("", "empty"),
])
def test_bad_fidelity_is_one_clear_error(text, message):
    with pytest.raises(ConfigError, match=message):
        Fidelity.parse(text)


def test_cheap_macro_and_batches():
    f = Fidelity.parse("width=0.25,batch=3,repeats=1,timesteps=2")
    macro = get_preset("fmnist-small")
    cheap = f.macro(macro)
    assert (cheap.width, cheap.timesteps, cheap.hidden) == (4, 2, macro.hidden)
    assert Fidelity(width=0.01).macro(macro).width == 1
    full = [torch.arange(8.0).view(8, 1, 1, 1) + 10 * r for r in range(2)]
    got = f.batches(full)
    assert len(got) == 1 and torch.equal(got[0], full[0][:3])  # a subset of the same images
    assert all(a is b or torch.equal(a, b) for a, b in zip(Fidelity().batches(full), full, strict=True))


def test_keep_and_shortlist():
    f = Fidelity(top=0.05)
    assert [f.keep(n) for n in (1, 19, 20, 21, 200)] == [1, 1, 1, 2, 10]
    scores = {"a": 1.0, "b": 3.0, "c": float("nan"), "d": 3.0, "e": -math.inf}
    assert shortlist(scores, 3) == ["b", "d", "a"]  # ties by key; NaN and -inf last


def _candidates(n):
    out = []
    for i, g in enumerate(sample_many("1x1_3x3", "backward", n, seed=1)):
        out.append(Candidate(i, g, footprint(g, TINY), score=None, seconds=0.01))
    return out


def test_two_stage_rescores_the_shortlist_and_screens_the_rest():
    candidates = _candidates(30)
    # a cheap score that ranks by a simple property, a "full" score that is its noisy cousin
    cheap = lambda g: float(sum(map(sum, g.matrix)))  # noqa: E731
    full = lambda g: cheap(g) + 0.1 * (hash(g.key) % 7)  # noqa: E731
    for c in candidates[:-1]:
        c.score = cheap(c.genotype)
    candidates[-1].status = "over_budget"  # never scored
    called = []
    final, report = two_stage(candidates, Fidelity(top=5), lambda g: called.append(g) or full(g))
    distinct = {c.genotype.key for c in candidates[:-1]}
    assert report["screened"] == len(distinct) and report["rescored"] == len(called) == 5
    rescored = [c for c in final if c.score is not None]
    assert {c.genotype.key for c in rescored} == {g.key for g in called}
    assert all(c.score == full(c.genotype) for c in rescored)
    assert all(c.status == SCREENED for c in final if c.score is None and c.status != "over_budget")
    assert final[-1].status == "over_budget"
    best_cheap = sorted(distinct, key=lambda k: -cheap(Genotype.parse(k)))[:5]
    assert sorted(g.key for g in called) == sorted(best_cheap)
    assert report["rescored_candidates"][0]["full_score"] == max(c.score for c in rescored)


def test_two_stage_with_real_scores_picks_from_the_shortlist():
    batches = [torch.randn(8, 1, 28, 28)]
    f = Fidelity.parse("width=0.5,batch=4,top=2")
    candidates = _candidates(4)
    for c in candidates:
        c.score = score_genotype(c.genotype, f.macro(TINY), f.batches(batches), seed=0)
    final, report = two_stage(candidates, f, lambda g: score_genotype(g, TINY, batches, seed=0))
    assert report["rescored"] == 2
    for row in report["rescored_candidates"]:
        assert row["full_score"] == pytest.approx(score_genotype(row["genotype"], TINY, batches, seed=0))


# --------------------------------------------------------------------------- spikernel search --fidelity


def search_cli(*args):
    from click.testing import CliRunner

    from spikernel.cli import main

    result = CliRunner().invoke(main, ["search", "-p", "fmnist-tiny", "--batch", "8", "--repeats", "1", *args])
    return result.exit_code, result.stderr


def test_search_with_fidelity_picks_among_full_scores(tmp_path):
    import csv
    import json

    out = tmp_path / "run"
    code, err = search_cli("-k", "1x1_3x3", "-n", "6", "--fidelity", "width=0.5,batch=4,top=2", "--out", str(out))
    assert code == 0, err
    report = json.loads((out / "search.json").read_text())
    second = report["fidelity"]
    assert report["settings"]["scoring"]["fidelity"] == "width=0.5,batch=4"
    assert second["rescored"] == 2 and second["screened"] >= 2
    assert report["counts"]["screened_out"] + report["counts"]["scored"] + report["counts"]["duplicate"] == 6
    with open(out / "candidates.csv") as f:
        rows = list(csv.DictReader(f))
    with_scores = {r["genotype"] for r in rows if r["score"]}
    assert with_scores == {r["genotype"] for r in second["rescored_candidates"]}
    assert all(r["status"] == SCREENED for r in rows if not r["score"])
    best = json.loads((out / "selection.json").read_text())["best"]
    assert best["genotype"] == second["rescored_candidates"][0]["genotype"]
    from spikernel.data.datasets import load_dataset
    from spikernel.nas.engine import scoring_data

    batches, _ = scoring_data(load_dataset("fashion-mnist-mini"), 8, 1, 0)
    assert best["score"] == pytest.approx(score_genotype(best["genotype"], TINY, batches, seed=0), rel=1e-9)


def test_search_rejects_a_bad_fidelity_in_one_line(tmp_path):
    code, err = search_cli("-n", "2", "--fidelity", "width=3", "--out", str(tmp_path / "run"))
    assert code == 2 and err.count("\n") == 1 and "width" in err
    assert not (tmp_path / "run").exists()  # nothing written
