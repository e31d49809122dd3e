"""Precise BatchNorm statistics (``training.batchnorm.recalibrate``, ``TrainConfig.precise_bn``)."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from spikernel.data.datasets import Dataset, Split, load_dataset
from spikernel.nn.model import build_model, get_preset
from spikernel.training.batchnorm import recalibrate
from spikernel.training.loop import TrainConfig, fit

pytestmark = pytest.mark.usefixtures("one_thread")

GENOTYPE = "0303 0030 2002 0200"  # backward edges: steps differ


def model_and_images(step_averages: bool, seed: int = 0):
    data = load_dataset("fashion-mnist-mini")
    torch.manual_seed(seed)
    macro = replace(get_preset("fmnist-tiny", timesteps=2), step_averages=step_averages).for_data(data)
    return build_model(GENOTYPE, macro), data.normalize(data.train.images[:48])


def norms(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_one_batch_gives_the_statistics_pytorch_itself_computes_on_it():
    model, images = model_and_images(step_averages=True)
    reference, _ = model_and_images(step_averages=True)
    reference.eval()
    for m in norms(reference):  # a running average that forgets everything but this batch: its statistics
        m.train()
        m.momentum = 1.0
    with torch.no_grad():
        reference(images)
    for m in norms(model):
        m.running_mean.fill_(7.0)  # stale averages
    recalibrate(model, [images])
    for ours, theirs in zip(norms(model), norms(reference)):
        assert torch.allclose(ours.running_mean, theirs.running_mean, atol=1e-5)
        assert torch.allclose(ours.running_var, theirs.running_var, rtol=1e-4, atol=1e-6)


def test_one_average_for_every_step_is_the_mean_of_the_per_step_ones():
    shared, images = model_and_images(step_averages=False)
    per_step, _ = model_and_images(step_averages=True)  # the same weights: training normalises alike
    recalibrate(shared, [images[:24], images[24:]])
    recalibrate(per_step, [images[:24], images[24:]])
    for one, each in zip(norms(shared), norms(per_step)):
        steps = each.running_mean.view(-1, one.num_features)
        assert torch.allclose(one.running_mean, steps.mean(0), atol=1e-5)
        assert torch.allclose(one.running_var, each.running_var.view(-1, one.num_features).mean(0), atol=1e-5)


def test_it_draws_no_random_number_and_restores_the_modes():
    model, images = model_and_images(step_averages=True)
    model.train()
    model.head.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    state = torch.get_rng_state()
    recalibrate(model, [images])
    assert torch.equal(state, torch.get_rng_state())
    assert {name: m.training for name, m in model.named_modules()} == modes
    first = [m.running_mean.clone() for m in norms(model)]
    recalibrate(model, [images])  # dropout stayed off: the same statistics again
    assert all(torch.equal(a, m.running_mean) for a, m in zip(first, norms(model)))


def test_a_training_with_precise_statistics_moves_the_weights_alike():
    mini = load_dataset("fashion-mnist-mini")
    data = Dataset("small", Split(mini.train.images[:128], mini.train.labels[:128]),
                   Split(mini.test.images[:32], mini.test.labels[:32]), mini.classes, mini.mean, mini.std)
    runs = {}
    for images in (0, 64):
        model, _ = model_and_images(step_averages=True)
        config = TrainConfig(epochs=2, batch_size=32, lr=5e-3, optimizer="adamw", precise_bn=images)
        fit(model, data, config)
        runs[images] = model
    plain, precise = runs[0], runs[64]
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), precise.parameters()))  # same trajectory
    assert not all(torch.equal(a.running_mean, b.running_mean) for a, b in zip(norms(plain), norms(precise)))
    assert "precise_bn" not in TrainConfig().identity()  # runs from before the setting resume
    assert TrainConfig(precise_bn=64).identity()["precise_bn"] == 64
