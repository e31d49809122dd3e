"""Training engine: fused LIF = spikingjelly's, batching, metrics, in-process resume, NaN handling."""

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional

from spikernel.training.checkpoint import CHECKPOINT_FILE, read_checkpoint
from spikernel.data.datasets import Dataset, Split, load_dataset
from spikernel.training.distributed import World
from spikernel.nn.layers import use_kernels
from spikernel.nn.model import build_model, get_preset
from spikernel.nn.neuron import is_lif, lif
from spikernel.training.loop import NonFiniteLoss, TrainConfig, batch_indices, evaluate, fit, steps_per_epoch

pytestmark = pytest.mark.usefixtures("one_thread")

GENOTYPE = "0303 0030 2002 0200"  # SNASNet's released CIFAR-10 cell (backward edges)



@pytest.fixture(scope="module")
def small():
    """256 training and 64 test images of the embedded Fashion-MNIST subset."""
    mini = load_dataset("fashion-mnist-mini")
    return Dataset("small", Split(mini.train.images[:256], mini.train.labels[:256]),
                   Split(mini.test.images[:64], mini.test.labels[:64]), mini.classes, mini.mean, mini.std,
                   crop_padding=2)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return build_model(GENOTYPE, get_preset("fmnist-tiny", timesteps=2))


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- fused LIF


@pytest.mark.parametrize("chunks", [1, 4])
def test_fused_lif_is_spikingjellys_lif_bit_for_bit(chunks):
    """Same spikes, same input and state gradients, whole sequences or step by step (backward cells)."""
    torch.manual_seed(0)
    x = (torch.randn(4, 8, 3, 5, 5) * 1.5 + 0.6).requires_grad_()
    grad = torch.randn(4, 8, 3, 5, 5)
    results = []
    fused = lif()
    fused.kernel = "fused"
    for node in (lif(), fused):
        functional.reset_net(node)
        xs = x.detach().clone().requires_grad_()
        out = torch.cat([node(part) for part in xs.chunk(chunks)])
        (out * grad).sum().backward()
        results.append((out, xs.grad))
    (s1, g1), (s2, g2) = results
    assert 0.05 < s1.mean() < 0.6  # a regime with both spikes and silence
    assert torch.equal(s1, s2) and torch.equal(g1, g2)


def test_fused_kernels_switch_on_and_back():
    model = tiny_model()
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    reference = model(x)
    with use_kernels(model, "fused"):
        assert all(m.kernel == "fused" for m in model.modules() if is_lif(m))
        assert torch.equal(model(x), reference)
    assert all(m.kernel == "spikingjelly" for m in model.modules() if hasattr(m, "kernel"))
    assert torch.equal(model(x), reference)


def test_fused_training_step_matches_spikingjelly():
    a, b = tiny_model(), tiny_model()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    torch.manual_seed(1)
    F.cross_entropy(a(x), y).backward()
    with use_kernels(b, "fused"):
        torch.manual_seed(1)
        F.cross_entropy(b(x), y).backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p.grad, q.grad), name


# --------------------------------------------------------------------------- batches


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_split_each_global_batch(world_size):
    count, batch = 50, 8
    shards = [list(batch_indices(count, batch, torch.Generator().manual_seed(5), World(r, world_size)))
              for r in range(world_size)]
    steps = steps_per_epoch(count, batch, World(0, world_size))
    assert all(len(s) == steps for s in shards)  # every rank runs the same number of steps
    whole = list(batch_indices(count, batch, torch.Generator().manual_seed(5)))
    for step in range(steps):
        parts = torch.cat([s[step] for s in shards])
        assert sorted(parts.tolist()) == sorted(whole[step].tolist())  # disjoint, and together the global batch
    assert steps == (6 if world_size == 3 else 7)  # 2 leftover images cannot feed 3 ranks: dropped


# --------------------------------------------------------------------------- fit, metrics, resume


def test_fit_writes_metrics_and_checkpoint(tmp_path, small):
    model = tiny_model()
    config = TrainConfig(epochs=2, batch_size=32, limit_train=64, lr=0.1)
    history = fit(model, small, config, run_dir=tmp_path)
    assert [row["epoch"] for row in history] == [1, 2]
    last = history[-1]
    assert 0 <= last["test_acc"] <= last["test_top5"] <= 1 and last["test_loss"] > 0
    rates = {k: v for k, v in last.items() if k.startswith("spike_rate/")}
    assert len(rates) == len([m for m in model.modules() if is_lif(m)]) and all(0 <= r <= 1 for r in rates.values())
    assert history[1]["lr"] < history[0]["lr"] == 0.1  # cosine schedule, stepped per batch
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and float(rows[1]["test_acc"]) == pytest.approx(last["test_acc"], rel=1e-5)
    state, tensors = read_checkpoint(tmp_path)
    assert state["epoch"] == 2 and state["weights"] == "checkpoints/epoch-0002.safetensors"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-0002.safetensors"]
    assert all(torch.equal(tensors[f"model.{k}"], v) for k, v in model.state_dict().items())
    assert any(k.startswith("optimizer.state.") for k in tensors)  # momentum buffers
    assert all(m.kernel == "spikingjelly" for m in model.modules() if is_lif(m))  # fused kernel switched back


def test_resume_continues_exactly(tmp_path, small):
    """Stop after epoch 1 (an exception out of fit), rerun into the same folder: same weights as straight through."""
    config = TrainConfig(epochs=3, batch_size=32, limit_train=64)
    straight = tiny_model()
    fit(straight, small, config, run_dir=tmp_path / "straight")

    class Stop(Exception):
        pass

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        fit(tiny_model(), small, config, run_dir=tmp_path / "resumed", on_epoch=stop_after_first)
    assert json.load(open(tmp_path / "resumed" / CHECKPOINT_FILE))["epoch"] == 1
    torch.manual_seed(123)  # whatever the global RNG holds, the resumed epochs draw the same numbers
    resumed = tiny_model(seed=99)  # its initial weights are replaced by the checkpoint's
    history = fit(resumed, small, config, run_dir=tmp_path / "resumed")
    assert [r["epoch"] for r in history] == [1, 2, 3]
    for key, value in weights(straight).items():
        assert torch.equal(value, resumed.state_dict()[key]), key


class NaNAt(torch.nn.Module):
    """Wraps a model; its forward returns NaN logits on one (epoch, batch) to imitate a divergence."""

    def __init__(self, model, epoch, batch, steps):
        super().__init__()
        self.model, self.bad, self.calls, self.steps = model, (epoch - 1) * steps + batch, 0, steps

    def forward(self, x):
        out = self.model(x)
        if self.training:
            self.calls += 1
            if self.calls == self.bad:
                return out * float("nan")
        return out


def test_nan_loss_stops_with_epoch_and_batch_and_keeps_last_checkpoint(tmp_path, small):
    config = TrainConfig(epochs=3, batch_size=32, limit_train=96)
    net = NaNAt(tiny_model(), epoch=2, batch=2, steps=3)
    with pytest.raises(NonFiniteLoss, match="at epoch 2, batch 2"):
        fit(net, small, config, run_dir=tmp_path)
    state, tensors = read_checkpoint(tmp_path)  # epoch 1's, intact and finite
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


def test_evaluate_counts_top1_top5_exactly(small):
    class Ranked(torch.nn.Module):
        """Puts the true class first on even images and fourth on odd ones."""

        def forward(self, images):
            n = len(images)
            labels, rank = self.labels[:n], torch.where(torch.arange(n) % 2 == 0, 0, 3)
            order = (labels.unsqueeze(1) - rank.unsqueeze(1) + torch.arange(10)) % 10  # classes, best first
            return torch.empty(n, 10).scatter_(1, order, torch.arange(10, 0, -1.0).expand(n, 10).contiguous())

    model = Ranked()
    model.labels = small.test.labels
    result = evaluate(model, small, batch_size=len(small.test), spike_rates=False)
    assert result["test_acc"] == 0.5 and result["test_top5"] == 1.0


def test_config_identity_ignores_how_the_step_runs():
    a = TrainConfig(epochs=5, compile=True, fused_lif=False, eval_batch=64).identity()
    assert a == TrainConfig(epochs=5).identity() and "compile" not in a
    assert TrainConfig(epochs=5, amp=True).identity() != a
    assert TrainConfig.from_dict(TrainConfig(lr=0.05).to_dict()) == TrainConfig(lr=0.05)
    with pytest.raises(Exception, match="learning rate"):
        TrainConfig(lr=float("nan"))


def test_bf16_autocast_trains_on_cpu(small):
    model = tiny_model()
    history = fit(model, small, TrainConfig(epochs=1, batch_size=32, limit_train=64, amp=True))
    assert math.isfinite(history[0]["train_loss"]) and 0 <= history[0]["test_acc"] <= 1
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
