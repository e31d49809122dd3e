"""The fast scoring path: the model's inference kernels bit-identical to its default ones, the
score equal to the plain path's, the model left as it was. (The SNASNet-style scorer of
``benchmarks/score_speed.py`` checks its own equality on every run.)"""

import numpy as np
import pytest
import torch
from spikingjelly.activation_based import layer

from spikernel.nn.layers import StepAvgPool2d, TimestepBatchNorm2d, avg_pool_steps, batch_norm_steps, use_kernels
from spikernel.nn.model import build_model, get_preset
from spikernel.nn.neuron import is_lif, lif, lif_scan
from spikernel.proxy.sahd import KernelAccumulator, recording, sahd_kernel, score_genotype, score_model
from spikernel.space.genotype import sample_many

TINY = get_preset("fmnist-tiny")


def spec_kernel(c: np.ndarray) -> np.ndarray:
    """SPEC 5 written out with SNASNet's two products, in float64."""
    n = c.shape[1]
    s = c.sum(1, keepdims=True) / n
    expected = n * (s @ (1 - s).T + (1 - s) @ s.T)
    hamming = c @ (1 - c).T + (1 - c) @ c.T
    return n - (0.5 / (expected + 1e-3)) * hamming


def test_kernel_matches_spec_formula():
    rng = np.random.default_rng(0)
    c = (rng.random((3, 12, 500)) < [[[0.05]], [[0.3]], [[0.9]]]).astype(np.float64)
    ours = sahd_kernel(torch.from_numpy(c).float()).numpy()
    for t in range(3):
        np.testing.assert_allclose(ours[t], spec_kernel(c[t]), rtol=0, atol=1e-9)


@pytest.mark.parametrize("chunk", [None, 7])  # 7: CPU chunks, the last one short (300 neurons)
@pytest.mark.parametrize("steps", [1, 4])
def test_lif_scan_fires_exactly_like_spikingjelly(steps, chunk, monkeypatch):
    if chunk:
        monkeypatch.setattr("spikernel.nn.neuron.LIF_CHUNK", chunk)
    torch.manual_seed(0)
    x = torch.randn(2 * steps, 3, 4, 5, 5) * 1.5
    neuron = lif()
    with torch.no_grad():
        expected = neuron(x)
    v = torch.zeros_like(x[0])
    # in two calls, carrying the state, as a backward cell or a chunked pass does
    got = torch.cat([lif_scan(x[:steps], v, neuron.tau, neuron.v_threshold),
                     lif_scan(x[steps:], v, neuron.tau, neuron.v_threshold)])
    assert torch.equal(got, expected)
    assert torch.equal(v, neuron.v)


def test_batch_norm_steps_is_per_timestep_batch_norm():
    torch.manual_seed(0)
    bn = TimestepBatchNorm2d(6)
    torch.nn.init.uniform_(bn.weight, 0.5, 1.5)
    torch.nn.init.uniform_(bn.bias, -0.5, 0.5)
    x = torch.randn(4, 8, 6, 5, 5) * 2 + 1
    before = bn.running_mean.clone()
    got = batch_norm_steps(bn, x)
    assert torch.equal(bn.running_mean, before)  # the score never reads them: left alone
    with torch.no_grad():
        expected = torch.stack([torch.nn.functional.batch_norm(x_t, None, None, bn.weight, bn.bias, True)
                                for x_t in x])
        assert torch.equal(got, expected)
        assert torch.equal(got, bn(x))  # the module's own training-mode forward
        assert torch.equal(batch_norm_steps(bn, x[:1]), bn(x[:1]))
        with use_kernels(bn, "inference"):
            before = bn.running_mean.clone()
            assert torch.equal(bn(x), got) and torch.equal(bn.running_mean, before)


POOLS = [StepAvgPool2d(3, 1, 1), StepAvgPool2d(2, 2), StepAvgPool2d(7, 7)]


@pytest.mark.parametrize("pool", POOLS, ids=["3x3", "2x2", "7x7"])
def test_pooling_schedule_gives_pytorchs_values(pool):
    torch.manual_seed(0)
    x = (torch.rand(3, 4, 8, 14, 14) > 0.7).float() * torch.randn(3, 4, 8, 14, 14)
    got = avg_pool_steps(pool, x)
    assert torch.equal(got, pool(x))
    assert got.is_contiguous()  # the convolutions after it must see NCHW
    with torch.no_grad(), use_kernels(pool, "inference"):
        assert torch.equal(pool(x), got)


@pytest.mark.parametrize("genotype", [str(g) for g in sample_many("1x1_3x3_5x5", "backward", 2, seed=2)]
                         + [str(g) for g in sample_many("1x1_3x3", "forward", 1, seed=2)])
def test_fast_score_equals_plain_score(genotype):
    torch.manual_seed(1)
    batches = [torch.randn(8, 1, 28, 28) for _ in range(2)]
    net = build_model(genotype, TINY)
    scores = []
    for options in ({"fast": False}, {}, {"chunk": 3}, {"chunk": TINY.timesteps}):
        torch.manual_seed(7)  # the same dropout mask each time
        scores.append(score_model(net, batches, **options))
    np.testing.assert_allclose(scores, scores[0], rtol=1e-9)


def test_fast_scoring_restores_the_model():
    net = build_model("0302 0030 3003 0000", TINY)
    state = {k: v.clone() for k, v in net.state_dict().items()}  # running statistics included
    score_model(net, [torch.randn(8, 1, 28, 28)])
    assert not any("forward" in vars(m) for m in net.modules())  # no module's forward was replaced
    assert {m.kernel for m in net.modules() if hasattr(m, "kernel")} == {"spikingjelly"}  # switched back
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key
    net.train()
    out = net(torch.randn(8, 1, 28, 28))  # and it still trains as before
    out.sum().backward()
    assert net.stem[0].weight.grad is not None


def test_the_last_steps_unread_convolutions_are_skipped():
    """A backward edge's output at the last timestep feeds nothing: its LIF fires, its conv is skipped."""
    net = build_model("0300 0030 3003 0000", TINY)  # a chain 0->1->2->3 and a backward conv edge 2->0
    calls = {}
    for key in ("2_0", "0_1"):
        for module in net.cell1.ops[key]:
            name = (key, type(module).__name__)
            module.register_forward_hook(lambda *_, k=name: calls.update({k: calls.get(k, 0) + 1}))
    torch.manual_seed(0)
    fast = score_model(net, [torch.randn(8, 1, 28, 28)])
    steps = TINY.timesteps
    assert calls[("0_1", "Conv2d")] == steps
    assert calls[("2_0", "Conv2d")] == calls[("2_0", "TimestepBatchNorm2d")] == steps - 1
    assert calls[("2_0", "LIF")] == steps  # its spikes count in the score
    torch.manual_seed(0)
    assert fast == pytest.approx(score_model(net, [torch.randn(8, 1, 28, 28)], fast=False), rel=1e-9)


def test_the_accumulator_counts_every_layer_and_step():
    net = build_model("0303 0000 0000 0000", TINY)  # node 0 feeds two conv edges in each cell
    accumulator = KernelAccumulator()
    with torch.inference_mode(), recording(net, accumulator), use_kernels(net, "inference"):
        net.train()
        net.fire(torch.randn(8, 1, 28, 28), steps_per_pass=1)
    lifs = sum(1 for m in net.modules() if is_lif(m))
    assert accumulator.count == lifs * TINY.timesteps


def test_inference_kernels_step_aside_where_autograd_records():
    torch.manual_seed(0)
    net = build_model("0302 0030 3003 0000", TINY)
    x = torch.randn(8, 1, 28, 28)
    torch.manual_seed(3)
    reference = net(x)
    with use_kernels(net, "inference"):
        torch.manual_seed(3)
        out = net(x)  # grad enabled: the default kernels run
    assert torch.equal(out, reference)
    out.sum().backward()
    assert net.stem[0].weight.grad is not None


def test_other_neurons_take_the_plain_path():
    from spikingjelly.activation_based import neuron

    torch.manual_seed(0)
    soft_reset = neuron.LIFNode(tau=2.0, v_reset=None, step_mode="m")  # not what lif_scan computes
    net = torch.nn.Sequential(layer.Conv2d(1, 4, 3, padding=1, step_mode="m"), soft_reset)
    batches = [torch.randn(3, 6, 1, 5, 5) * 3]
    assert score_model(net, batches) == score_model(net, batches, fast=False)


def test_malloc_settings_are_scoped(monkeypatch):
    import platform

    import spikernel.heap as heap

    monkeypatch.setattr(heap, "_chosen", False)
    glibc = platform.libc_ver()[0] == "glibc"
    calls = []
    real = heap._set
    monkeypatch.setattr(heap, "_set", lambda mmap, trim: calls.append((mmap, trim)) or real(mmap, trim))
    with heap.kept_freed_memory(512) as changed:
        with heap.kept_freed_memory(64) as inner:  # nested: the outer setting stays
            pass
    assert changed == glibc and not inner
    assert calls[0] == (512 << 20, 2**31 - 1) and calls[-1] == (128 << 10, 128 << 10)  # glibc's start values after
    assert heap.release_freed_memory() == glibc


def test_an_earlier_malloc_choice_is_left_alone(monkeypatch):
    import spikernel.heap as heap

    calls = []
    monkeypatch.setattr(heap, "_set", lambda mmap, trim: calls.append(mmap) or True)
    monkeypatch.setattr(heap, "_chosen", False)
    with heap.kept_freed_memory(512):
        pass
    assert calls == [512 << 20, 128 << 10]
    heap.keep_glibc_defaults()  # e.g. a benchmark measuring glibc's own behaviour
    with heap.kept_freed_memory(512) as changed:
        pass
    assert calls == [512 << 20, 128 << 10] and not changed


def test_fast_scoring_lets_membranes_go_and_hands_free_memory_back(monkeypatch):
    import spikernel.proxy.sahd

    released = []
    monkeypatch.setattr(spikernel.proxy.sahd, "release_freed_memory", lambda: released.append(True))
    torch.manual_seed(0)
    net = build_model("0302 0030 3003 0000", TINY)
    score_model(net, [torch.randn(8, 1, 28, 28)])
    assert released == [True]
    assert not any(isinstance(m.v, torch.Tensor) for m in net.modules() if is_lif(m))


def test_score_genotype_is_reproducible():
    batches = [torch.randn(8, 1, 28, 28)]
    assert score_genotype("0302 0030 3003 0000", TINY, batches, seed=3) == \
        score_genotype("0302 0030 3003 0000", TINY, batches, seed=3)
