import math

import pytest

from spikernel.selection.report import (KernelSetResult, Study, ablation_table, budget_table, correlation_table, pareto,
                              rank_agreement, write_report)


def _study():
    a = KernelSetResult("1x1_3x3", candidates=[
        {"genotype": f"g{i}", "params": 100 + 10 * i, "footprint_bytes": 400 + 40 * i, "score": float(i),
         "seconds": 1.0, "status": "scored"} for i in range(6)], search_seconds=6.0)
    a.trained = [{"genotype": f"g{i}", "params": 100 + 10 * i, "footprint_bytes": 400 + 40 * i, "score": float(i),
                  "test_acc": 0.5 + 0.05 * i, "sops": 1e6 * i, "energy_uj": 0.9 * i} for i in (3, 4, 5)]
    b = KernelSetResult("1x1_5x5", candidates=[
        {"genotype": f"h{i}", "params": 300 + i, "footprint_bytes": 1200, "score": -float(i), "seconds": 2.0,
         "status": "scored"} for i in range(4)], search_seconds=8.0)
    b.trained = [{"genotype": f"h{i}", "params": 300 + i, "footprint_bytes": 1200, "score": -float(i),
                  "test_acc": 0.9 - 0.1 * i} for i in (0, 1, 2)]
    settings = {"dataset": "x", "budget_limit": 160, "budget_unit": "params", "bits": 32, "ablation": [2, 4, 6]}
    return Study(settings, [a, b])


def test_pareto_front():
    rows = [{"c": 1, "v": 0.5}, {"c": 2, "v": 0.4}, {"c": 3, "v": 0.9}, {"c": 3, "v": 0.7}, {"c": 5, "v": 0.95}]
    assert [(r["c"], r["v"]) for r in pareto(rows, "c", "v")] == [(1, 0.5), (3, 0.9), (5, 0.95)]


def test_rank_agreement():
    tau, rho, n = rank_agreement([{"score": s, "test_acc": s / 10} for s in range(5)])
    assert (tau, rho, n) == (pytest.approx(1.0), pytest.approx(1.0), 5)
    assert math.isnan(rank_agreement([{"score": 1, "test_acc": 0.2}])[0])


def test_tables():
    study = _study()
    table = budget_table(study, [130, 160, 400])
    assert [r["genotype"] for r in table] == ["g3", "g5", "h0"]
    corr = {r["kernel set"]: r for r in correlation_table(study)}
    assert corr["1x1_3x3"]["kendall tau"] == pytest.approx(1.0)
    assert corr["1x1_5x5"]["kendall tau"] == pytest.approx(1.0)
    ablation = ablation_table(study, [2, 4, 6])
    three = [r for r in ablation if r["kernel set"] == "1x1_3x3"]
    assert [(r["candidates"], r["pick"], r["search time (s)"]) for r in three] == [(2, "g1", 2.0), (4, "g3", 4.0),
                                                                                     (6, "g5", 6.0)]
    assert three[1]["pick accuracy"] == pytest.approx(0.65)
    assert len([r for r in ablation if r["kernel set"] == "1x1_5x5"]) == 2  # only 4 candidates stored


def test_write_report_makes_every_figure(tmp_path):
    result = write_report(_study(), tmp_path)
    for name in ("accuracy_vs_memory", "score_vs_accuracy", "search_score_vs_params", "ablation_search_time"):
        for fmt in ("png", "svg"):
            assert (tmp_path / f"{name}.{fmt}").stat().st_size > 1000
    text = (tmp_path / "report.md").read_text()
    assert "| 1x1_3x3 | g5 |" in text and "Budget analysis" in text
    assert result["table"][0]["best genotype"] == "g5"  # best under the 160-parameter budget
    assert result["table"][0]["SOPs / image (M)"] == pytest.approx(5.0)
    assert result["table"][0]["energy / image (uJ)"] == pytest.approx(4.5)
    assert result["table"][1]["energy / image (uJ)"] is None  # nothing of 1x1_5x5 fits the budget
    assert (tmp_path / "accuracy_vs_energy.png").stat().st_size > 1000


def test_half_finished_study_reports_what_exists(tmp_path):
    study = _study()
    study.results[1].trained = []
    study.missing = ["1x1_5x5: training not finished"]
    write_report(study, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "1x1_5x5: training not finished" in text and "| 1x1_5x5 | - |" in text


def test_permutation_p_is_exact_for_small_arms():
    import numpy as np

    from spikernel.selection.report import permutation_p

    rng = np.random.default_rng(0)
    a, b = np.array([87.52, 87.78, 87.36]), np.array([85.74, 85.65, 86.48])
    assert permutation_p(a, b, 10_000, rng) == pytest.approx(0.1)  # 2 of the 20 splits are as extreme
    assert permutation_p(a, a.copy(), 10_000, rng) == 1.0
    big = permutation_p(np.arange(12.0), np.arange(12.0) + 30, 500, rng)  # C(24, 12) splits: sampled
    assert big == pytest.approx(1 / 501)
