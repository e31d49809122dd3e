import math

import numpy as np
import pytest
import torch

from spikernel.data.datasets import load_dataset
from spikernel.errors import ConfigError
from spikernel.nn.footprint import footprint
from spikernel.nn.model import build_model, get_preset
from spikernel.nn.neuron import is_lif
from spikernel.proxy import zero_cost
from spikernel.proxy.combine import rank_vote, rank_within_size, ranks, size_bins, size_first
from spikernel.proxy.sahd import score_genotype, scoring_batches
from spikernel.proxy.zero_cost import (PROXIES, compute_proxies, compute_proxy, labelled_batches, naswot_proxy,
                                       proxy_rows, zico_batches)
from spikernel.space.genotype import Genotype

BACKWARD = "0302 0030 3003 0000"  # a backward edge 2 -> 0
FORWARD = "0302 0030 0003 0000"
MACRO = get_preset("fmnist-tiny")


@pytest.fixture(scope="module")
def data():
    dataset = load_dataset("fashion-mnist-mini")
    images, labels = labelled_batches(dataset.train.images, dataset.train.labels, 12, 2, seed=0)
    return [dataset.normalize(i) for i in images], labels


@pytest.fixture(scope="module")
def values(data):
    return {g: compute_proxies(g, MACRO, *data, names=list(PROXIES), seed=0) for g in (FORWARD, BACKWARD)}


def dead_stem_model(genotype: str):
    """The same network with its stem zeroed: every image reaches the cells as the same zeros."""
    torch.manual_seed(0)
    model = build_model(genotype, MACRO)
    with torch.no_grad():
        model.stem[0].weight.zero_()
    return model


def test_every_proxy_is_finite_and_deterministic(data, values):
    for genotype, scores in values.items():
        assert list(scores) == list(PROXIES)
        assert all(math.isfinite(v) for v in scores.values()), scores
    # names in another order: each proxy has its own fresh network, so nothing leaks between them
    again = compute_proxies(BACKWARD, MACRO, *data, names=list(PROXIES)[::-1], seed=0)
    assert again == values[BACKWARD]
    assert compute_proxy("snip", BACKWARD, MACRO, *data, seed=1) != values[BACKWARD]["snip"]  # other weights


def test_the_saliencies_computed_together_equal_each_alone(data, values):
    # compute_proxies shares one set of loss gradients between snip, grad_norm and zico
    for genotype, scores in values.items():
        assert scores == {name: compute_proxy(name, genotype, MACRO, *data, seed=0) for name in PROXIES}
    assert compute_proxies(BACKWARD, MACRO, *data, names=["zico", "snip"]) == {
        "zico": values[BACKWARD]["zico"], "snip": values[BACKWARD]["snip"]}


def test_params_and_sahd_are_the_existing_measures(data, values):
    assert values[BACKWARD]["params"] == footprint(Genotype.parse(BACKWARD), MACRO).params
    torch.manual_seed(0)
    assert zero_cost.params_proxy(build_model(BACKWARD, MACRO)) == values[BACKWARD]["params"]
    assert values[BACKWARD]["sahd"] == score_genotype(BACKWARD, MACRO, data[0], seed=0)


def test_labelled_batches_are_the_scoring_batches():
    images, labels = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1), torch.arange(40)
    ours, their_labels = labelled_batches(images, labels, 8, 3, seed=5)
    for mine, theirs, lab in zip(ours, scoring_batches(images, 8, 3, seed=5), their_labels):
        assert torch.equal(mine, theirs) and torch.equal(mine.flatten().long(), lab)


@pytest.mark.parametrize("name", ["sahd", "naswot", "synflow", "snip", "grad_norm", "jacob_cov", "zico"])
def test_a_network_that_ignores_its_input_scores_lower(name, data, values):
    dead = PROXIES[name](dead_stem_model(BACKWARD), *data)
    assert dead < values[BACKWARD][name]


def test_grad_norm_guards_against_a_dead_stem(data, values):
    """As published grad_norm rewards it: BatchNorm of a constant input divides its gradient by
    sqrt(eps), so a network whose signals are all constant has huge gradients. The guard sees that
    every image got the same logits and scores it -inf."""
    model = zero_cost.prepare_for_gradients(dead_stem_model(BACKWARD))
    images, labels = data
    logits = []
    raw = sum(g.norm().item() for g in zero_cost.loss_gradients(model, images[0], labels[0], logits))
    assert zero_cost.ignores_input(logits)
    assert not math.isfinite(raw) or raw > values[BACKWARD]["grad_norm"]  # unguarded, it would rank first
    assert zero_cost.grad_norm_proxy(dead_stem_model(BACKWARD), *data) == -math.inf
    assert math.isfinite(values[BACKWARD]["grad_norm"])


def test_naswot_counts_agreeing_spikes_over_every_lif_and_step(data):
    torch.manual_seed(0)
    model = build_model(FORWARD, MACRO)
    codes = []
    handles = [m.register_forward_hook(lambda _m, _i, out: codes.append(out.detach().flatten(2)))
               for m in model.modules() if is_lif(m)]
    model.train()
    with torch.no_grad():
        model(data[0][0])
    for h in handles:
        h.remove()
    c = torch.cat([step for layer in codes for step in layer], dim=1).double()  # [B, all neurons x steps]
    agreements = c @ c.T + (1 - c) @ (1 - c).T
    expected = torch.linalg.slogdet(agreements).logabsdet.item()
    torch.manual_seed(0)
    assert naswot_proxy(build_model(FORWARD, MACRO), data[0][:1]) == pytest.approx(expected, rel=1e-12)


def test_zico_splits_a_single_batch_and_labels_are_required(data):
    images, labels = data
    halves = zico_batches(images[:1], labels[:1])
    assert [len(x) for x, _ in halves] == [6, 6] and torch.equal(torch.cat([y for _, y in halves]), labels[0])
    assert math.isfinite(compute_proxy("zico", FORWARD, MACRO, images[:1], labels[:1]))
    for name in zero_cost.NEEDS_LABELS:
        with pytest.raises(ConfigError, match=f"proxy '{name}' needs one label tensor per batch"):
            compute_proxy(name, FORWARD, MACRO, images, None)


def test_unknown_proxy_names_the_known_ones(data):
    with pytest.raises(ConfigError, match="unknown proxy 'fisher'; known: params, sahd, naswot"):
        compute_proxies(FORWARD, MACRO, *data, names=["sahd", "fisher"])


def test_proxy_rows_for_the_ground_truth(data):
    rows = proxy_rows([FORWARD, Genotype.parse(BACKWARD)], "fmnist-tiny", *data, names=["params", "synflow"], bits=8)
    assert [r["genotype"] for r in rows] == [FORWARD, BACKWARD] and rows[1]["cell"] == "backward"
    assert rows[0]["footprint_bytes"] == footprint(Genotype.parse(FORWARD), MACRO).bytes(8)
    assert rows[0]["proxy_params"] == rows[0]["params"] and rows[1]["seconds_synflow"] > 0


# --------------------------------------------------------------------------- over a set of candidates


def test_rank_vote_is_the_mean_rank():
    rows = [{"p": 3, "q": 1}, {"p": 2, "q": 3}, {"p": 1, "q": 2}, {"p": math.nan, "q": 0}]
    # p ranks a, b, c as 4, 3, 2 and the unscored d last; q ranks them 2, 4, 3, 1
    assert rank_vote(rows, ["p", "q"]) == [3.0, 3.5, 2.5, 1.0]
    assert list(ranks([2, 5, 5, -math.inf])) == [2.0, 3.5, 3.5, 1.0]
    with pytest.raises(ConfigError, match="no value for 'r'"):
        rank_vote(rows, ["p", "r"])


def test_size_bins_are_quantiles_that_keep_equal_sizes_together():
    assert size_bins([5, 1, 2, 4, 3, 1, 2, 3, 4, 5], bins=5).tolist() == [4, 0, 1, 3, 2, 0, 1, 2, 3, 4]
    assert size_bins([1, 1, 1, 2], bins=2).tolist() == [0, 0, 0, 1]  # the run of 1s straddles the median
    assert size_bins([30, 10, 30, 20], bins=None).tolist() == [2, 0, 2, 1]


def test_rank_within_size_and_size_first():
    rows = [{"s": 10, "p": 1}, {"s": 10, "p": 3}, {"s": 10, "p": 2}, {"s": 20, "p": 5}, {"s": 20, "p": 4},
            {"s": 30, "p": 0}]
    assert rank_within_size(rows, "p", size="s", bins=None) == [0.0, 1.0, 0.5, 1.0, 0.0, 0.5]
    order = np.argsort(size_first(rows, "p", size="s", bins=None))[::-1].tolist()
    assert order == [5, 3, 4, 1, 2, 0]  # biggest size first, the proxy's order inside each size


def test_the_cheap_vote_ranks_by_synflow_and_size_alone():
    import spikernel as sk
    from spikernel.data.datasets import load_dataset
    from spikernel.nn.model import get_preset

    data = load_dataset("fashion-mnist-mini")
    cells = ["0302 0030 3003 0000", "0001 0000 0000 0000", "0003 3000 0000 0000"]
    scored = sk.score(cells, get_preset("fmnist-tiny", timesteps=2), data, proxy="synflow+params", batch=8, repeats=1)
    assert all(set(s.proxies) == {"synflow", "params"} for s in scored)  # nothing else is computed
    assert [s.score for s in scored] == rank_vote([s.proxies for s in scored], ["synflow", "params"])
    assert scored[1].score == 1.0  # the one-edge cell is last by both
