import csv
import json
import math

import numpy as np
import pytest

from spikernel.errors import DatasetError
from spikernel.proxy import quality
from spikernel.proxy.quality import (agreement, agreement_markdown, evaluate, ground_truth, kendall, markdown,
                                     json_ready, noise_floor, partial_kendall, plot_quality, read_ground_truth)

SIZES = (1000, 2000, 3000)  # three footprint levels, 20 cells each


def synthetic_records(seeds=(0, 1), spread=0.5):
    """60 cells: accuracy rises with size and, within a size, with a per-cell quality q.

    Proxies: ``oracle`` = the mean accuracy itself; ``noise`` = unrelated; ``contrarian`` follows
    size but orders cells of one size backwards (a proxy that only knows size, and badly).
    Each cell's seeds sit at mean +- spread (sd between two seeds = spread * sqrt 2).
    """
    rng = np.random.default_rng(3)
    records = []
    for c in range(60):
        size, q = SIZES[c // 20], (c % 20) / 20
        mean = 60 + 10 * (c // 20) + 5 * q
        noise = rng.normal()
        for k, seed in enumerate(seeds):
            records.append({"genotype": f"cell{c}", "cell": "forward", "params": size, "footprint_bytes": 4 * size,
                            "proxy_oracle": mean, "proxy_noise": noise, "proxy_contrarian": size - q,
                            "val_acc": (mean + spread * (1 if k % 2 else -1)) / 100, "test_acc": 0.5, "seed": seed})
    return records


@pytest.fixture(scope="module")
def report():
    truth = ground_truth(synthetic_records())
    return evaluate(truth, bins=3, searches=60, search_size=30, resamples=40, selection_resamples=10,
                    resample_searches=10, seed=0)


def test_oracle_proxy_ranks_and_picks_perfectly(report):
    oracle = report["rules"]["oracle"]
    for figure in ("kendall_tau", "spearman_rho", "kendall_tau_within_size", "spearman_rho_within_size"):
        assert oracle[figure]["value"] == pytest.approx(1.0)
        assert oracle[figure]["ci95"] == pytest.approx([1.0, 1.0])
    assert oracle["top1_regret"]["mean"] == 0 and oracle["per_size_regret"]["mean"] == 0
    assert oracle["top1_regret"]["ci95"] == [0, 0]
    # a draw of 30 of the 60 cells usually, not always, holds the very best of each size
    assert 90 < oracle["top1_percentile_in_size"]["mean"] < 100 and oracle["per_size_percentile"]["mean"] > 90


def test_search_over_every_cell_picks_the_best():
    truth = ground_truth(synthetic_records())
    figures = quality.simulate_searches(quality.selection_rules(truth.proxies), truth,
                                        quality.size_bins(truth.column("footprint_bytes"), 3), searches=3, search_size=100)
    assert figures["oracle"]["top1_percentile"] == {"mean": 100.0, "range95": [100.0, 100.0]}
    assert figures["oracle"]["top5_regret"]["mean"] == 0
    assert figures["contrarian"]["per_size_percentile"]["mean"] == 5.0  # the worst of each 20-cell size


def test_random_and_unrelated_proxies_are_near_zero(report):
    for rule in ("noise", "random"):
        assert abs(report["rules"][rule]["kendall_tau_within_size"]["value"]) < 0.3
        low, high = report["rules"][rule]["kendall_tau_within_size"]["ci95"]
        assert low < 0 < high
    random = report["rules"]["random"]["per_size_percentile"]
    assert 35 < random["mean"] < 65 and random["ci95"][0] < 55 and random["ci95"][1] > 45
    assert random["range95"][0] < random["ci95"][0] <= random["ci95"][1] < random["range95"][1]  # one search varies more


def test_within_size_tau_exposes_a_proxy_that_only_knows_size(report):
    contrarian = report["rules"]["contrarian"]
    # overall it looks useful: 3 x 400 pairs of different sizes agree, 3 x 190 pairs of equals disagree ...
    assert contrarian["kendall_tau"]["value"] == pytest.approx((1200 - 570) / 1770)
    assert contrarian["kendall_tau_within_size"]["value"] == pytest.approx(-1.0)  # ... but orders equals backwards
    assert contrarian["per_size_percentile"]["mean"] < report["rules"]["random"]["per_size_percentile"]["mean"] - 30
    params = report["rules"]["params"]
    assert math.isnan(params["kendall_tau_within_size"]["value"])  # params is constant within a size
    assert math.isnan(params["kendall_tau_partial_params"]["value"])


def test_partial_tau_follows_the_formula():
    rng = np.random.default_rng(0)
    z = rng.normal(size=50)
    x, y = z + rng.normal(size=50), z + rng.normal(size=50)
    t_xy, t_xz, t_yz = kendall(x, y), kendall(x, z), kendall(y, z)
    expected = (t_xy - t_xz * t_yz) / math.sqrt((1 - t_xz**2) * (1 - t_yz**2))
    assert partial_kendall(x, y, z) == pytest.approx(expected)
    assert abs(partial_kendall(x, y, z)) < abs(t_xy)  # the shared factor z explained most of it


def test_noise_floor_and_retest_tau():
    floor = noise_floor(ground_truth(synthetic_records(spread=0.5)))
    assert floor["cells"] == 60 and floor["rows"] == 120
    assert floor["pooled_sd"] == pytest.approx(0.5 * math.sqrt(2))
    assert floor["retest_kendall_tau"] > 0.9  # seeds move every cell by the same amount
    single = noise_floor(ground_truth(synthetic_records(seeds=(0,))))
    assert single["cells"] == 0 and math.isnan(single["pooled_sd"])


def test_noise_ceiling_falls_from_100_with_the_seed_noise():
    truth = ground_truth(synthetic_records(seeds=(0,)))
    groups = quality.size_bins(truth.column("footprint_bytes"), 3)
    ceiling = {sd: quality.noise_ceiling(truth, groups, sd, searches=200, search_size=30) for sd in (0.0, 1.0, 100.0)}
    # without noise the oracle picks each bin's best measured cell of the draw, as the oracle proxy does
    oracle = quality.simulate_searches({"oracle": quality.selection_rules(truth.proxies)["oracle"]}, truth, groups,
                                       searches=200, search_size=30)["oracle"]["per_size_percentile"]["mean"]
    assert ceiling[0.0] == pytest.approx(oracle, abs=1.0)
    assert ceiling[0.0] > ceiling[1.0] > ceiling[100.0]
    assert 40 < ceiling[100.0] < 70  # noise that swamps every difference: about a random pick


def test_projected_ceiling_rises_with_seeds_per_cell():
    truth = ground_truth(synthetic_records(seeds=(0,)))
    groups = quality.size_bins(truth.column("footprint_bytes"), 3)
    # noise of the same size as the spread within a bin: each bin's cells range over 5 points (sd ~1.5)
    projected = {n: quality.projected_ceiling(truth, groups, 1.0, n, searches=200, search_size=30) for n in (1, 4, 64)}
    assert projected[1] < projected[4] < projected[64]
    noiseless = quality.projected_ceiling(truth, groups, 0.0, 1, searches=200, search_size=30)
    assert projected[64] == pytest.approx(noiseless, abs=2.0)  # many seeds average the noise away
    assert 40 < quality.projected_ceiling(truth, groups, 100.0, 1, searches=200, search_size=30) < 70


def test_report_states_the_noise_ceiling(report):
    floor = report["noise_floor"]
    # every cell's two seeds differ by 1 point: the median difference, read as a normal's
    assert floor["robust_sd"] == pytest.approx(1.0 / (math.sqrt(2) * 0.6745))
    ceiling = floor["oracle_per_size_percentile"]
    assert 50 < ceiling["pooled_sd"] <= 100
    assert f"reach the {ceiling['robust_sd']:.1f}th per-size percentile" in markdown(json_ready(report))
    projected = floor["oracle_per_size_percentile_at_seeds"]
    assert list(projected) == list(quality.PROJECTED_SEEDS)
    assert f"1 -> {projected[1]:.1f}" in markdown(json_ready(report))


def test_size_conditioned_rule_picks_in_the_largest_bin(report):
    # accuracy rises with size here, so the oracle's best among a draw's largest cells is the draw's best
    sized, oracle = report["rules"]["sized:oracle"], report["rules"]["oracle"]
    assert sized["top1_regret"]["mean"] == 0
    assert sized["top1_percentile"] == oracle["top1_percentile"]
    noise = report["rules"]["sized:noise"]  # an unrelated proxy still lands in the largest bin
    assert noise["top1_percentile"]["mean"] > report["rules"]["noise"]["top1_percentile"]["mean"]


def test_csv_round_trip_report_and_plot(tmp_path, report):
    path = tmp_path / "truth.csv"
    records = synthetic_records()
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    truth = read_ground_truth(path)
    assert len(truth) == 60 and truth.proxies == ["params", "oracle", "noise", "contrarian"]
    assert truth.accuracy[0] == pytest.approx(60.0)  # fractions scaled to points, seeds averaged
    ready = json_ready(report)
    json.dumps(ready, allow_nan=False)  # NaN became null
    table = markdown(ready)
    assert table.split("\n\n")[0].count("\n| ") == len(report["rules"])  # one row per rule, then the notes
    assert "| oracle | 1.00 [1.00, 1.00] | 1.00 | 1.00 [1.00, 1.00] | 1.00 | 1.00 | 0.00 |" in table
    plot_quality(ready, truth, tmp_path / "quality.png")
    assert (tmp_path / "quality.png").read_bytes()[:4] == b"\x89PNG"


def test_a_resample_takes_percentiles_among_distinct_cells():
    truth = ground_truth(synthetic_records())
    resample = truth.subset([5, 5, 7, 5]).subset([1, 2, 2])  # copies of copies still know their origin
    assert resample.copy_of == [5, 7, 7] and resample.distinct.tolist() == [0, 1]
    assert truth.distinct.tolist() == list(range(60))


def test_missing_columns_are_a_dataset_error():
    records = [{k: v for k, v in r.items() if k != "seed"} for r in synthetic_records()]
    with pytest.raises(DatasetError, match="seed"):
        ground_truth(records)


def optuna_prunes(rung1: list[float], rung2: list[float]) -> list[bool]:
    """Which of these candidates, trained one after the other, nas.refine's pruner stops after epoch 1."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2))
    pruned = []
    for first, second in zip(rung1, rung2):
        trial = study.ask()
        trial.report(first, 1)
        pruned.append(trial.should_prune())
        if pruned[-1]:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            trial.report(second, 2)
            study.tell(trial, second)
    return pruned


def test_refinement_order_stops_the_candidates_optuna_stops():
    rng = np.random.default_rng(0)
    for _ in range(20):
        rows = [{"rung1": float(a), "rung2": float(b)} for a, b in rng.integers(0, 100, (9, 2))]
        screen = -np.arange(9.0)  # screened best first: rows in their order
        scores = quality.refinement_order(rows, screen, ["rung1", "rung2"], 8, rng)
        pruned = optuna_prunes([r["rung1"] for r in rows[:8]], [r["rung2"] for r in rows[:8]])
        finished = [i for i in range(8) if not pruned[i]]
        ranked = list(np.argsort(-scores))
        assert ranked[:len(finished)] == sorted(finished, key=lambda i: -rows[i]["rung2"])  # ties: none likely
        assert ranked[-1] == 8  # the ninth was never refined: below every finalist


def test_refinement_order_by_hand():
    rows = [{"rung1": a, "rung2": b} for a, b in ((50, 70), (60, 65), (55, 99), (40, 99), (99, 99))]
    # a and b finish (each best so far after epoch 1); c is not the best of three, d not in the top
    # half of four; e, screened last, is not among the four refined
    scores = quality.refinement_order(rows, np.array([5.0, 4, 3, 2, 1]), ["rung1", "rung2"], 4, np.random.default_rng(0))
    assert list(np.argsort(-scores)) == [0, 1, 2, 3, 4]


def test_rungs_join_from_another_csv_and_make_refinement_rules(tmp_path):
    records = synthetic_records()
    for name, rows in (("truth", records), ("rungs", [{"genotype": f"cell{c}", "proxy_rung1": c, "proxy_rung2": c, "seconds": 1}
                                                       for c in range(59)])):
        with open(tmp_path / f"{name}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    truth = read_ground_truth(tmp_path / "truth.csv", extra=[tmp_path / "rungs.csv"])
    assert truth.proxies[-2:] == ["rung1", "rung2"] and truth.rows[3]["rung2"] == 3 and math.isnan(truth.rows[59]["rung1"])
    rules = quality.selection_rules(truth.proxies)
    assert {"refine4:params", "refine8:params", "rung1"} <= set(rules) and "sized:rung1" not in rules
    vote = rules["vote"](truth.rows, np.random.default_rng(0))
    assert np.allclose(vote, quality.rank_vote(truth.rows, ["oracle", "noise", "contrarian"]))  # no rung votes


def test_per_size_gain_is_paired_and_tabled(report):
    oracle = report["rules"]["oracle"]["per_size_gain"]
    assert set(oracle) == {"params"}  # no SAHD column in the synthetic ground truth
    assert oracle["params"]["mean"] > 0 and oracle["params"]["ci95"][0] > 0  # the oracle beats size, and surely
    assert "per_size_gain" not in report["rules"]["params"] or "params" not in report["rules"]["params"]["per_size_gain"]
    table = markdown(json_ready(report))
    assert "| oracle | " + _with_ci_text(oracle["params"]) + " |" in table


def _with_ci_text(figure):
    lo, hi = figure["ci95"]
    return f"{figure['mean']:.1f} [{lo:.1f}, {hi:.1f}]"


def test_a_rule_figures_do_not_move_when_rules_are_added():
    truth = ground_truth(synthetic_records())
    groups = quality.size_bins(truth.column("footprint_bytes"), 3)
    rules = quality.selection_rules(truth.proxies)
    few = quality.simulate_searches({k: rules[k] for k in ("noise", "params")}, truth, groups, searches=20, search_size=30)
    more = quality.simulate_searches(rules, truth, groups, searches=20, search_size=30)
    assert few["noise"] == more["noise"] and few["params"] == more["params"]  # params breaks its ties at random


def test_agreement_of_two_ground_truths_of_the_same_cells():
    truth = ground_truth(synthetic_records())
    same = agreement(truth, truth, bins=3, resamples=20)
    assert same["cells"] == 60 and same["kendall_tau"]["value"] == pytest.approx(1.0)
    assert same["kendall_tau_within_size"]["value"] == pytest.approx(1.0) and same["mean_difference"]["value"] == 0
    # another recipe: every cell 5 points higher, the cells of a size in reverse order, half of them trained
    records = [{**r, "val_acc": r["val_acc"] + 0.05 - 0.1 * (int(r["genotype"][4:]) % 20) / 20}
               for r in synthetic_records() if int(r["genotype"][4:]) % 2 == 0]
    other = agreement(truth, ground_truth(records), bins=3, resamples=20)
    assert other["cells"] == 30 and other["kendall_tau_within_size"]["value"] == pytest.approx(-1.0)
    assert other["kendall_tau"]["value"] == pytest.approx((300 - 135) / 435)  # pairs across sizes agree, within not
    first, second = other["spread"]
    assert first["seed_sd"] == pytest.approx(0.5 * math.sqrt(2)) == second["seed_sd"]
    assert first["sd_within_size"] == pytest.approx(np.std(5 * np.arange(0, 20, 2) / 20, ddof=1))
    assert first["within_size_to_seed_sd"] == pytest.approx(first["sd_within_size"] / first["seed_sd"])
    assert other["mean_difference"]["value"] == pytest.approx(5 - 10 * np.mean(np.arange(0, 20, 2) / 20))
    text = agreement_markdown(other, ["a.csv", "b.csv"])
    assert "| a.csv | 30 |" in text and "| b.csv | 30 |" in text and "b.csv - a.csv" in text
    with pytest.raises(DatasetError, match="no cell in common"):
        agreement(truth, ground_truth([{**r, "genotype": "x" + r["genotype"]} for r in synthetic_records()]))
