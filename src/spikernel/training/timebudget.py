"""Training to a wall-clock budget: as many epochs as fit, with the schedule sized to them.

The number of epochs is decided once, before the first step, from a timed pilot of a few
training steps on a throw-away copy of the network (and one evaluation batch), and stored in
the run folder; a resumed run reads it back, so its learning-rate schedule, and its weights, are
those of a run that was never interrupted.
"""

from __future__ import annotations

import copy
import math
import re
import time

import torch

from spikernel.data.datasets import Split
from spikernel.errors import ConfigError
from spikernel.training.loop import (amp_enabled, autocast, evaluate, input_batch, make_optimizer,
                                     training_step_model)

_UNITS = {"s": 1, "m": 60, "h": 3600}
PILOT_STEPS = 4  # timed steps after one warm-up step


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``1h30m``, ``2h`` or plain seconds -> seconds."""
    raw = str(text).strip().lower().replace(" ", "")
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", raw)
    if not raw or parts is None or not any(parts.groups()):
        raise ConfigError(f"malformed time budget {text!r}: use e.g. 90s, 30m, 1h30m")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if not math.isfinite(total) or total <= 0:
        raise ConfigError(f"time budget must be positive, got {text!r}")
    return total


def epochs_within(budget_s: float, epoch_s: float, spent_s: float = 0.0) -> int:
    """Whole epochs of ``epoch_s`` that fit in what is left of the budget."""
    return int((budget_s - spent_s) // epoch_s)


def time_one_epoch(model, dataset, config, device, steps_per_epoch: int) -> float:
    """Seconds an epoch is expected to take: timed training steps on a copy, plus its evaluation.

    The model, its BatchNorm statistics and every random generator are left as they were.
    """
    rng = torch.get_rng_state()
    probe = copy.deepcopy(model).to(device)
    optimizer, _ = make_optimizer(probe, config, steps_per_epoch)
    index = torch.arange(min(config.batch_size, len(dataset.train)))
    images, labels = input_batch(dataset, dataset.train, index, device, None, False)
    try:
        with training_step_model(probe, config, device) as step:
            seconds = []
            for _ in range(PILOT_STEPS + 1):
                started = time.perf_counter()
                with autocast(device, amp_enabled(config, device)):
                    loss = torch.nn.functional.cross_entropy(step(images).float(), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        small = min(config.eval_batch, len(dataset.test))
        evaluate(probe, dataset, Split(dataset.test.images[:small], dataset.test.labels[:small]),
                 batch_size=small, device=device, spike_rates=False)
        eval_s = (time.perf_counter() - started) * len(dataset.test) / small
    finally:
        torch.set_rng_state(rng)
    step_s = sorted(seconds[1:])[len(seconds[1:]) // 2]  # the median, past the warm-up step
    return step_s * steps_per_epoch + eval_s
