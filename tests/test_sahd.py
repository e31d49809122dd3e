import math

import numpy as np
import pytest
import torch

from spikernel.proxy import sahd as score
from spikernel.nn.footprint import footprint
from spikernel.nn.model import build_model, get_preset
from spikernel.nn.neuron import is_lif
from spikernel.proxy.sahd import EPS, int8_overlap, sahd_kernel, score_genotype, score_model, scoring_batches, spike_overlap


def direct_kernel(c: np.ndarray) -> np.ndarray:
    """SPEC 5 written out entry by entry, with the reference's two products."""
    b, n = c.shape
    k = np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            d = c[i] @ (1 - c[j]) + (1 - c[i]) @ c[j]
            s_i, s_j = c[i].sum() / n, c[j].sum() / n
            e = n * (s_i * (1 - s_j) + (1 - s_i) * s_j)
            k[i, j] = n - (0.5 / (e + EPS)) * d
    return k


@pytest.mark.parametrize("rate", [0.0, 0.02, 0.3, 0.9, 1.0])
def test_kernel_equals_spec_formula(rate):
    g = torch.Generator().manual_seed(int(rate * 100))
    spikes = (torch.rand(12, 257, generator=g) < rate).float()
    spikes[0] = 0  # a silent sample
    ours = sahd_kernel(spikes)
    assert ours.dtype == torch.float64 and ours.shape == (12, 12)
    np.testing.assert_allclose(ours.numpy(), direct_kernel(spikes.double().numpy()), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("int8", [False, True])
def test_products_count_exactly_in_float32_and_int8(int8, monkeypatch):
    """Both ways of multiplying spikes (int8 where the hardware has fast int8 products) give the
    exact integer counts, so the score does not depend on which one ran."""
    monkeypatch.setitem(score.INT8_PRODUCTS, "cpu", int8)
    spikes = (torch.rand(2, 3, 24, 64, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    counts = spike_overlap(spikes)
    assert counts.dtype == torch.float64 and counts.shape == (2, 3, 24, 24)
    assert torch.equal(counts, spikes.double() @ spikes.double().transpose(-1, -2))
    assert torch.equal(int8_overlap(spikes), counts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_scoring_counts_exactly_and_reproduces():
    spikes = (torch.rand(2, 64, 4096, device="cuda") < 0.1).float()
    assert torch.equal(spike_overlap(spikes), (spikes @ spikes.transpose(-1, -2)).double())  # int8 path
    macro = get_preset("fmnist-tiny")
    batches = [b.cuda() for b in scoring_batches(torch.rand(64, 1, 28, 28), 32, 2, 0)]
    first = score_genotype("0302 0030 3003 0000", macro, batches)
    assert math.isfinite(first) and score_genotype("0302 0030 3003 0000", macro, batches) == first


def test_kernel_batches_over_leading_dims():
    spikes = (torch.rand(3, 6, 40) < 0.2).float()
    batched = sahd_kernel(spikes)
    for t in range(3):
        torch.testing.assert_close(batched[t], sahd_kernel(spikes[t]))


def test_score_is_logdet_of_mean_kernel_over_layers_and_steps():
    macro = get_preset("fmnist-tiny", timesteps=3)
    torch.manual_seed(0)
    net = build_model("0302 0030 3003 0000", macro)
    images = torch.randn(10, 1, 28, 28)
    # collect every LIF layer's spikes for every timestep by hand
    outputs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append(o.clone())) for m in net.modules() if is_lif(m)]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    torch.manual_seed(5)  # same dropout mask in both passes
    with torch.no_grad():
        net(images)
    for h in hooks:
        h.remove()
    kernels = [direct_kernel(o[t].flatten(1).double().numpy()) for o in outputs for t in range(o.shape[0])]
    expected = np.linalg.slogdet(sum(kernels) / len(kernels))[1]
    net.load_state_dict(state)  # BatchNorm statistics moved during the manual pass
    torch.manual_seed(5)
    assert score_model(net, [images]) == pytest.approx(expected, rel=1e-9)
    assert len(kernels) == footprint(net.genotype, macro).lif_layers * macro.timesteps


def test_score_averages_repeats_and_is_reproducible():
    macro = get_preset("fmnist-tiny", timesteps=2, dropout=0.0)  # no mask RNG between batches
    images = torch.randn(40, 1, 28, 28)
    batches = scoring_batches(images, 8, 2, seed=1)
    assert len(batches) == 2 and batches[0].shape == (8, 1, 28, 28)
    assert not torch.equal(batches[0], batches[1])
    a = score_genotype("0302 0030 3003 0000", macro, batches, seed=3)
    b = score_genotype("0302 0030 3003 0000", macro, batches, seed=3)
    assert a == b and math.isfinite(a)
    one = [score_genotype("0302 0030 3003 0000", macro, [batch], seed=3) for batch in batches]
    assert a == pytest.approx(sum(one) / 2)
