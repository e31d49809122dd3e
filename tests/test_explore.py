import json
import shutil

import pytest
from click.testing import CliRunner

from spikernel.cli import main
from spikernel.errors import ConfigError, KernelSetError
from spikernel.selection.explore import ExploreSettings, StudyMismatch, explore, load_study, select

TINY = ExploreSettings(kernel_sets=("1x1_3x3", "1x1_5x5"), preset="fmnist-tiny", candidates=5, top_k=2, epochs=1,
                       limit_train=64, score_batch=8, budget="40K", timesteps=2)


def cli(*args):
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("explore") / "study"
    explore(TINY, out)
    return out


def test_explore_stores_searches_and_trainings(study_dir):
    study = load_study(study_dir)
    assert not study.missing
    for result in study.results:
        assert len(result.candidates) == 5 and result.search_seconds is not None
        assert 1 <= len(result.trained) <= 2
        assert all(0 <= t["test_acc"] <= 1 and t["params"] <= 40_000 for t in result.trained)
        for t in result.trained:  # each training counted its operations; energy follows the 45 nm defaults
            energy = json.loads((study_dir / result.kernel_set / "train" / t["genotype"].replace(" ", "-")
                                 / "result.json").read_text())["energy"]
            assert t["sops"] == energy["sops"] > 0 and energy["images"] == 1000
            assert t["energy_uj"] * 1e6 == pytest.approx(energy["sops"] * 0.9 + energy["stem_macs"] * 4.6)
    chosen = select(study)
    assert chosen is not None and chosen.row["test_acc"] == max(
        t["test_acc"] for r in study.results for t in r.trained)


def test_rerun_resumes_without_redoing(study_dir):
    stamps = {p: p.stat().st_mtime_ns for p in study_dir.rglob("result.json")}
    events = []
    explore(TINY, study_dir, on_event=events.append)
    assert stamps == {p: p.stat().st_mtime_ns for p in study_dir.rglob("result.json")}
    searches = [e for e in events if e.stage == "search"]
    assert searches and all(e.done == e.total == TINY.candidates for e in searches)  # nothing left to score
    trains = [e for e in events if e.stage == "train"]  # finished trainings are returned as they are
    assert trains and all("already finished" in e.message for e in trains)


def test_different_settings_are_refused(study_dir):
    other = ExploreSettings(**{**TINY.to_dict(), "kernel_sets": TINY.kernel_sets, "ablation": TINY.ablation,
                               "epochs": 2})
    before = (study_dir / "explore.json").read_text()
    with pytest.raises(StudyMismatch, match="epochs: 1 -> 2"):
        explore(other, study_dir)
    assert (study_dir / "explore.json").read_text() == before


def test_report_from_stored_results_alone(study_dir, tmp_path):
    # keep only the stored result files: no study database, checkpoints or weights
    copy = tmp_path / "copy"
    for path in study_dir.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".csv"):
            target = copy / path.relative_to(study_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    code, out, err = cli("report", str(copy))
    assert code == 0, err
    for name in ("accuracy_vs_memory", "accuracy_vs_energy", "score_vs_accuracy", "search_score_vs_params",
                 "ablation_search_time"):
        for fmt in ("png", "svg"):
            assert (copy / "report" / f"{name}.{fmt}").stat().st_size > 1000
    text = (copy / "report" / "report.md").read_text()
    assert "energy / image (uJ)" in text and "SOPs / image (M)" in text
    assert "1x1_3x3" in text and "1x1_5x5" in text and "Training-free score vs trained accuracy" in text
    assert "## Missing" not in text
    assert "best network per kernel set" in out


def test_report_on_half_finished_folder(study_dir, tmp_path):
    half = tmp_path / "half"
    shutil.copytree(study_dir, half, ignore=shutil.ignore_patterns("report"))
    shutil.rmtree(half / "1x1_5x5")
    code, out, err = cli("report", str(half))
    assert code == 0
    assert "missing: 1x1_5x5: search not finished" in err
    assert "1x1_5x5: search not finished" in (half / "report" / "report.md").read_text()


def test_report_on_empty_or_foreign_folder(tmp_path):
    code, _, err = cli("report", str(tmp_path))
    assert code == 2 and err.startswith("error:") and "not an exploration folder" in err


@pytest.mark.parametrize("kernel_sets,error", [
    (("1x1_3x3", "1x1_3x3"), ConfigError), (("1x1_3x3", "3x3_1x1"), ConfigError), (("1x1_4x4",), KernelSetError),
    (("1x1_3x3", "banana"), KernelSetError)])
def test_bad_kernel_set_lists(kernel_sets, error):
    with pytest.raises(error):
        ExploreSettings(kernel_sets=kernel_sets)


def test_explore_cli_bad_input_is_one_line(tmp_path):
    code, _, err = cli("explore", "--kernel-sets", "1x1_3x3,1x1_3x3", "--out", str(tmp_path / "x"))
    assert code == 2 and err.count("\n") == 1 and "listed twice" in err
    assert not (tmp_path / "x").exists()
    code, _, err = cli("explore", "--budget", "1K", "-p", "fmnist-tiny", "--out", str(tmp_path / "y"))
    assert code == 2 and "no candidate can meet the budget" in err and not (tmp_path / "y").exists()


def test_settings_round_trip():
    data = json.loads(json.dumps(TINY.to_dict()))
    assert ExploreSettings(**{**data, "kernel_sets": tuple(data["kernel_sets"]),
                              "ablation": tuple(data["ablation"])}) == TINY


def test_seeds_give_each_set_an_interval_and_a_test(tmp_path):
    from spikernel.selection.report import investigation_table, markdown

    settings = ExploreSettings(**{**TINY.to_dict(), "kernel_sets": TINY.kernel_sets, "ablation": TINY.ablation,
                                  "seeds": 2, "top_k": 1})
    study = explore(settings, tmp_path / "seeds")
    assert not study.missing and all(len(r.trained) == 2 for r in study.results)
    assert {t["seed"] for r in study.results for t in r.trained} == {0, 1}
    assert (tmp_path / "seeds" / "1x1_3x3" / "train").is_dir()
    rows = investigation_table(study)
    assert [r["trainings"] for r in rows] == [2, 2]
    other = rows[1]
    assert 0 < other["permutation p"] <= 1 and other["diff 95% CI"].startswith("[")
    table = markdown(rows)  # the report shows the test, though the first set's row has no such column
    assert "permutation p" in table.splitlines()[0] and table.splitlines()[2].endswith("| - | - | - |")
    first = study.results[0].trained
    assert rows[0]["mean (%)"] == pytest.approx(50 * (first[0]["test_acc"] + first[1]["test_acc"]))
    chosen = select(study)
    assert chosen.row["seeds"] == 2  # picked by the mean over its seeds


def test_explore_searches_with_nsga2_and_trains_the_refined_pick(tmp_path):
    settings = ExploreSettings(**{**TINY.to_dict(), "kernel_sets": ("1x1_3x3",), "ablation": (), "top_k": 1,
                                  "candidates": 6, "sampler": "nsga2", "objectives": "score,footprint",
                                  "refine": 2, "refine_epochs": 1, "validation": 32})
    out = tmp_path / "refined"
    study = explore(settings, out)
    chosen = json.loads((out / "1x1_3x3" / "search" / "selection.json").read_text())
    assert chosen["objectives"] == ["score", "footprint"] and chosen["refined"]["candidates"] == 2
    assert json.loads((out / "1x1_3x3" / "search" / "search.json").read_text())["settings"]["sampler"] == "nsga2"
    [trained] = study.results[0].trained
    assert trained["genotype"] == chosen["best"]["genotype"]  # the refined pick, not the top score's
    assert json.loads((out / "explore.json").read_text())["refine"] == 2
    assert "sampler" not in TINY.to_dict()  # defaults stay out of explore.json: older folders still resume
    assert not load_study(out).missing


@pytest.mark.parametrize("args,error", [
    (("--sampler", "nsga2", "--objectives", "score"), "objective"),
    (("--state-budget", "10B"), "state"),
    (("--refine", "9", "-n", "5"), "refine 9 is more than the 5 candidates"),
])
def test_explore_selection_options_bad_input_is_one_line(tmp_path, args, error):
    code, _, err = cli("explore", "-p", "fmnist-tiny", *args, "--out", str(tmp_path / "x"))
    assert code == 2 and err.count("\n") == 1 and error in err, err
    assert not (tmp_path / "x").exists()


def _trained(kernel_set, encoding, accuracies):
    return [{"genotype": "0002 0000 0000 0000", "params": 100, "footprint_bytes": 400, "score": 1.0, "seed": seed,
             "choice": {"encoding": encoding}, "candidate": f"{kernel_set} [encoding={encoding}]", "test_acc": acc}
            for seed, acc in enumerate(accuracies)]


def test_the_report_answers_whether_the_best_kernel_set_changes_with_the_encoding(tmp_path):
    from spikernel.selection.report import (KernelSetResult, Study, encoding_answer, encoding_table,
                                            investigation_table, write_report)

    small = _trained("1x1_3x3", "direct", [0.90, 0.91, 0.92]) + _trained("1x1_3x3", "poisson", [0.80, 0.81, 0.79])
    large = _trained("1x1_7x7", "direct", [0.85, 0.86, 0.84]) + _trained("1x1_7x7", "poisson", [0.80, 0.82, 0.81])
    study = Study({"budget": "100K", "top_k": 1, "seeds": 3},
                  [KernelSetResult("1x1_3x3", trained=small), KernelSetResult("1x1_7x7", trained=large)])
    direct, poisson = encoding_table(study)
    assert direct["encoding"] == "direct" and direct["best kernel set"] == "1x1_3x3"
    assert direct["difference (points)"] == pytest.approx(6.0) and direct["beyond noise"] == "yes"
    assert direct["its mean (%)"] == pytest.approx(91.0) and direct["trainings"] == 3
    assert poisson["best kernel set"] == "1x1_7x7" and poisson["beyond noise"] == "no"  # 1 point apart, each set's sd 1
    assert poisson["permutation p"] >= 0.1  # the exact floor of 3 vs 3
    assert direct["Welch p"] < 0.05
    # measured: a narrow bootstrap interval of a wide spread (three seeds a side) is not beyond the noise
    spread = Study(study.settings, [KernelSetResult("1x1_3x3", trained=_trained("1x1_3x3", "direct", [0.5395, 0.501, 0.7955])),
                                    KernelSetResult("1x1_7x7", trained=_trained("1x1_7x7", "direct", [0.8035, 0.7925, 0.7945]))])
    poisson_only = [[t for t in r.trained if t["choice"]["encoding"] == "poisson"] for r in study.results]
    [row] = [r for r in encoding_table(Study(study.settings, [KernelSetResult(r.kernel_set, trained=r.trained + other)
                                                               for r, other in zip(spread.results, poisson_only)]))
             if r["encoding"] == "direct"]
    assert row["diff 95% CI"].startswith("[+") and row["Welch p"] > 0.05 and row["beyond noise"] == "no"
    answer = encoding_answer([direct, poisson])
    assert answer.startswith("The best kernel set changes with the encoding (direct: 1x1_3x3, poisson: 1x1_7x7)")
    assert "beyond the seed noise for direct." in answer
    assert encoding_answer([{**direct, "beyond noise": "no"}, {**poisson, "best kernel set": "1x1_3x3"}]).startswith(
        "The best kernel set is the same for every encoding")
    # with one encoding there is nothing to compare, and the pooled investigation is unchanged by the split
    one = Study(study.settings, [KernelSetResult(r.kernel_set, trained=[t for t in r.trained
                                                                        if t["choice"]["encoding"] == "direct"])
                                 for r in study.results])
    assert encoding_table(one) == [] and len(investigation_table(study)) == 2
    result = write_report(study, tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert result["encodings"] == [direct, poisson] and "### poisson input" in text and answer.strip() in text
