"""Recipes, time budgets (plan kept, resume bit-identical), health warnings and the thread setting."""

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

from spikernel.data.datasets import load_dataset
from spikernel.errors import ConfigError
from spikernel.nn.model import build_model, get_preset
from spikernel.training import loop, run as run_module
from spikernel.training.health import HealthWarning, chance_finding, rate_findings
from spikernel.training.recipe import recipe
from spikernel.training.timebudget import epochs_within, parse_duration
from spikernel.threads import available_cores, choose_threads

from helpers import cli

CELL = "0302 0030 3003 0000"


@pytest.fixture(scope="module")
def data():
    return load_dataset("fashion-mnist-mini")


def tiny(**overrides):
    return get_preset("fmnist-tiny", timesteps=2, **overrides)


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("30m", 1800), ("1h30m", 5400), ("2h", 7200), ("45", 45),
                                          ("1.5m", 90)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "0s", "-5m", "5x", "m"])
def test_bad_durations(text):
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_epochs_that_fit():
    assert epochs_within(100, 30) == 3 and epochs_within(100, 120) == 0 and epochs_within(100, 30, spent_s=50) == 1


def test_recipes():
    assert recipe("snasnet").optimizer == "sgd" and recipe("snasnet").lr == 0.1
    fast = recipe("fast", epochs=2, lr=None)
    assert fast.optimizer == "adamw" and fast.schedule == "onecycle" and fast.epochs == 2
    with pytest.raises(ConfigError, match="unknown recipe"):
        recipe("turbo")


def test_fast_augments_long_trainings_only_and_the_setting_wins(data, monkeypatch):
    assert not recipe("fast", epochs=2).augments and not recipe("fast", epochs=10).augments  # measured
    assert recipe("fast", epochs=loop.AUGMENT_FROM_EPOCHS).augments
    assert not recipe("fast", epochs=loop.AUGMENT_FROM_EPOCHS - 1).augments
    assert recipe("snasnet", epochs=2).augments and recipe("fast", epochs=2, augment=True).augments
    assert not recipe("fast", epochs=8, augment=False).augments
    calls = []
    monkeypatch.setattr(type(data), "augment", lambda self, images, generator: calls.append(1) or images)
    model = build_model(CELL, tiny().for_data(data))
    for config, expected in ((recipe("fast", epochs=2, limit_train=64, batch_size=32), 0),
                             (recipe("fast", epochs=2, limit_train=64, batch_size=32, augment=True), 2)):
        calls.clear()
        optimizer, scheduler = loop.make_optimizer(model, config, 2)
        loop.train_epoch(model, data, optimizer, scheduler, config, 1)
        assert len(calls) == expected  # one crop + flip per batch, or none


@pytest.mark.parametrize("flag, value, section, setting, bad", [
    ("--dropout", "0", "macro", "dropout", "1"),  # the head's dropout (a macro setting)
    ("--precise-bn", "32", "train", "precise_bn", "-1"),  # BatchNorm averages recomputed (a training setting)
])
def test_train_takes_the_setting_from_the_command_line(tmp_path, flag, value, section, setting, bad):
    code, _, err = cli("train", "-g", CELL, "-p", "fmnist-tiny", "-T", "2", "--epochs", "1", "--limit-train", "64",
                       flag, value, "--threads", "1", "--out", tmp_path / "t")
    assert code == 0, err
    assert json.loads((tmp_path / "t" / "run.json").read_text())[section][setting] == float(value)
    code, _, err = cli("train", "-g", CELL, "--epochs", "1", flag, bad, "--out", tmp_path / "bad")
    assert code == 2 and err.count("\n") == 1 and flag in err and not (tmp_path / "bad").exists()


def train_until(data, out, config, stop_after=None):
    """Train 128 images an epoch into ``out``; with ``stop_after``, stop (as an interrupt would) after that epoch."""
    def on_event(event):
        if stop_after is not None and event.info.startswith("test") and event.done == stop_after * 128:
            raise KeyboardInterrupt
    try:
        run_module.train(CELL, data, out=out, macro=tiny(), config=config, device="cpu", on_event=on_event)
    except KeyboardInterrupt:
        pass


def budget_run(data, out, monkeypatch, stop_after=None):
    """Train under a 100 s budget with epochs measured as 40 s each (so 2 epochs); optionally stop."""
    calls = []
    monkeypatch.setattr(run_module, "time_one_epoch", lambda *a, **k: calls.append(1) or 40.0)
    train_until(data, out, recipe("fast", time_budget=100, limit_train=128, batch_size=32, epochs=1), stop_after)
    return calls


def test_time_budget_plans_once_and_resumes_bit_identical(data, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    assert budget_run(data, whole, monkeypatch) == [1]
    assert json.loads((whole / "run.json").read_text())["plan"]["epochs"] == 2
    assert json.loads((whole / "result.json").read_text())["epochs"] == 2
    cut = tmp_path / "cut"
    budget_run(data, cut, monkeypatch, stop_after=1)
    assert not (cut / "result.json").exists() and (cut / "checkpoint.json").exists()
    assert budget_run(data, cut, monkeypatch) == []  # the stored plan, not a new measurement
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_unset_augmentation_is_decided_once_and_a_resume_keeps_it(data, tmp_path, monkeypatch):
    """The rule (crop and flip from AUGMENT_FROM_EPOCHS) may change between a run's start and its resume."""
    config = recipe("fast", epochs=2, limit_train=128, batch_size=32)
    assert config.augment is None and not config.augments

    train_until(data, tmp_path / "whole", config)
    train_until(data, tmp_path / "cut", config, stop_after=1)
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["augment"] is False
    monkeypatch.setattr(loop, "AUGMENT_FROM_EPOCHS", 1)  # the rule now says augment
    train_until(data, tmp_path / "cut", config)
    a, b = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("whole", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_time_budget_too_short_is_one_line(tmp_path):
    code, _, err = cli("train", "-g", CELL, "-p", "fmnist-tiny", "--time-budget", "1s", "--out", str(tmp_path / "r"))
    assert code == 2 and "too short for one epoch" in err and err.count("\n") == 1
    code, _, err = cli("train", "-g", CELL, "--time-budget", "soon", "--out", str(tmp_path / "r2"))
    assert code == 2 and "malformed time budget" in err and err.count("\n") == 1
    code, _, err = cli("train", "-g", CELL, "--recipe", "turbo", "--out", str(tmp_path / "r3"))
    assert code == 2 and "turbo" in err and err.count("\n") == 1


def train_warnings(data, macro) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_module.train(CELL, data, macro=macro, config=recipe("fast", epochs=1, limit_train=128, batch_size=32),
                         device="cpu")
    return [str(w.message) for w in caught if issubclass(w.category, HealthWarning)]


def test_a_silent_network_is_named_and_a_healthy_one_is_not(data):
    silent = train_warnings(data, tiny(threshold=1e6))
    assert any("is silent" in w and "cell1" in w for w in silent)
    assert any("at chance" in w for w in silent)
    healthy = train_warnings(data, tiny())
    assert not [w for w in healthy if "silent" in w or "saturated" in w]


def test_findings_by_hand():
    rates = {"spike_rate": 0.3, "spike_rate/a": 0.0001, "spike_rate/b": 0.2, "spike_rate/c": 0.95}
    found = rate_findings(rates)
    assert len(found) == 2 and "a is silent" in found[0] and "c is saturated" in found[1]
    assert chance_finding(0.1, 10, 1) and chance_finding(0.5, 10, 1) is None
    from dataclasses import replace

    from spikernel.nn.macro import get_preset
    from spikernel.training.health import averages_finding

    shared = get_preset("fmnist-tiny", timesteps=2)
    assert "--step-averages" in averages_finding(0.69, 0.31, shared)  # the seed-noise study's backward cell
    assert averages_finding(0.63, 0.70, shared) is None  # healthy: the epoch's mean runs below the end
    assert averages_finding(0.69, 0.31, replace(shared, step_averages=True)) is None
    assert averages_finding(0.69, 0.31, replace(shared, timesteps=1)) is None  # one step: one average fits it
    # a silent layer's fix names the setting that silenced it, where one did
    head = {"spike_rate/head.2": 0.0}
    assert "head_init_std unset" in rate_findings(head, replace(shared, head_init_std=0.01))[0]
    assert "lower the firing threshold" in rate_findings({"spike_rate/cell1.x": 0.0}, replace(shared, threshold=4.0))[0]
    assert "--recipe fast" in rate_findings(head, shared)[0]


def test_thread_counts():
    assert 1 <= choose_threads() <= available_cores()
    assert choose_threads(1) == 1
    for bad in (0, available_cores() + 1):
        with pytest.raises(ConfigError, match="--threads"):
            choose_threads(bad)


def test_omp_num_threads_pins_the_default_thread_count(monkeypatch):
    import spikernel.threads as threads

    monkeypatch.setattr(threads, "idle_cores", lambda: 2)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    for value, expected in (("1", 1), ("8", 2), ("", 2), ("many", 2), ("0", 2)):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert choose_threads() == expected
    assert choose_threads(2) == 2  # --threads still wins
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert choose_threads() == 2


def test_idle_cores_follow_the_tasks_running_now_not_the_minute_average(monkeypatch):
    import builtins
    import io

    import spikernel.threads as threads

    snapshots = iter(["3.90 3.10 2.00 1/120 99\n", "3.90 3.10 2.00 2/120 99\n", "3.90 3.10 2.00 1/120 99\n"] * 3)
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: io.StringIO(next(snapshots)) if path == "/proc/loadavg"
                        else real_open(path, *a, **k))
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    # the others just stopped: the one-minute average (3.9) still says busy; only this process runs
    assert threads.busy_elsewhere(reads=3) == 0 and threads.idle_cores() == 2
    snapshots = iter(["0.10 0.10 0.10 3/120 99\n"] * 10)  # two busy processes just started
    assert threads.busy_elsewhere() == 2 and threads.idle_cores() == 1


def test_threads_reach_torch_for_the_command_only(tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(available_cores())
        code, _, err = cli("train", "-g", CELL, "-p", "fmnist-tiny", "-T", "2", "--epochs", "1", "--limit-train", "32",
                           "--threads", "1", "--out", str(tmp_path / "t"))
        assert code == 0, err
        assert json.loads((tmp_path / "t" / "result.json").read_text())["machine"]["threads"] == 1
        assert torch.get_num_threads() == available_cores()  # an in-process caller gets its own count back
        code, _, err = cli("search", "-n", "1", "--threads", "0", "--out", str(tmp_path / "s2"))
        assert code == 2 and "--threads" in err and not (tmp_path / "s2").exists()
    finally:
        torch.set_num_threads(before)


def test_step_loss_is_the_mean_of_each_timesteps_cross_entropy():
    from torch.nn.functional import cross_entropy

    from spikernel.training.loop import training_loss

    output, labels = torch.randn(3, 5, 10), torch.randint(10, (5,))
    by_hand = torch.stack([cross_entropy(step, labels) for step in output]).mean()
    assert torch.allclose(training_loss(output, labels, recipe("fast", label_smoothing=0.0, step_loss=True)), by_hand)
    assert torch.allclose(training_loss(output.mean(0), labels, recipe("fast", label_smoothing=0.0)),
                          cross_entropy(output.mean(0), labels))


def one_epoch_weights(data, timesteps: int, step_loss: bool) -> dict:
    torch.manual_seed(0)
    model = build_model(CELL, get_preset("fmnist-tiny", timesteps=timesteps).for_data(data))
    config = recipe("fast", epochs=1, limit_train=64, batch_size=32, step_loss=step_loss)
    with loop.training_step_model(model, config, torch.device("cpu")) as step_model:
        optimizer, scheduler = loop.make_optimizer(model, config, 2)
        loop.train_epoch(step_model, data, optimizer, scheduler, config, 1)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_step_loss_trains_on_each_step_and_is_the_mean_loss_at_one_step(data):
    same = [one_epoch_weights(data, 1, flag) for flag in (False, True)]
    assert all(torch.equal(same[0][k], same[1][k]) for k in same[0])  # one step: the same loss, bit for bit
    apart = [one_epoch_weights(data, 2, flag) for flag in (False, True)]
    assert any(not torch.equal(apart[0][k], apart[1][k]) for k in apart[0])
    assert "step_loss" not in recipe("fast").identity() and recipe("fast", step_loss=True).identity()["step_loss"]
