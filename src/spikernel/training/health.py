"""Early warnings that a training will not learn: silent or saturated LIF layers, accuracy at chance.

A LIF layer that almost never fires passes (almost) no gradient through its surrogate to what
feeds it, and one that fires nearly always carries no information; both show in the first batches.
An epoch that ends at chance accuracy is the other sign, and a last epoch that tests far below its
training accuracy with one BatchNorm average for all timesteps is the sign of averages that fit no
step. Each finding is one ``HealthWarning`` (a ``SpikernelWarning``: the library warns, the CLI
prints it as one line) naming the layer and a fix.
"""

from __future__ import annotations

import warnings

from spikernel.errors import SpikernelWarning
from spikernel.nn.macro import THRESHOLD

SILENT = 0.001  # spikes per neuron-step below this: the layer is silent
SATURATED = 0.9  # and above this it fires nearly every step
WATCHED_BATCHES = 3
# Test this far below the epoch's training accuracy (which, averaged over the epoch, runs below the
# network's final accuracy in a healthy short training) points at the running averages, not at overfitting.
AVERAGES_GAP = 0.10


class HealthWarning(SpikernelWarning):
    """A training that will probably not learn; printed by the CLI as one ``warning:`` line."""


def rate_findings(rates: dict[str, float], macro=None) -> list[str]:
    """Per-layer spike rates (``spike_rate/<layer>`` keys, as ``SpikeCounter.rates`` gives) -> findings;
    with the network's ``MacroConfig``, a silent layer's fix names the setting that likely silenced it."""
    findings = []
    for key, rate in rates.items():
        if not key.startswith("spike_rate/"):
            continue
        layer = key.removeprefix("spike_rate/")
        if rate < SILENT:
            findings.append(f"LIF layer {layer} is silent ({rate:.2%} spikes) in the first batches: "
                            f"{silent_fix(layer, macro)}")
        elif rate > SATURATED:
            findings.append(f"LIF layer {layer} is saturated ({rate:.1%} spikes) in the first batches: "
                            "lower the learning rate, or check the data's normalisation")
    return findings


def silent_fix(layer: str, macro=None) -> str:
    if macro is not None and layer.startswith("head.") and macro.head_init_std is not None:
        return (f"the head's Linear starts too small for its {macro.head_features} inputs (head_init_std "
                f"{macro.head_init_std:g}); leave head_init_std unset to scale it by fan-in")
    if macro is not None and macro.threshold > THRESHOLD:
        return f"lower the firing threshold (now {macro.threshold:g}, SNASNet's is {THRESHOLD:g})"
    return "raise the learning rate or use --recipe fast (AdamW), or a wider --width"


def chance_finding(accuracy: float, classes: int, epoch: int) -> str | None:
    """Accuracy within 1.5x of chance after an epoch: the network has not started to learn."""
    if accuracy < 1.5 / classes:
        return (f"test accuracy {accuracy:.1%} after epoch {epoch} is at chance ({1 / classes:.0%}): "
                "train longer (more epochs or images), try a higher --lr or more timesteps")
    return None


def averages_finding(train_acc: float, test_acc: float, macro) -> str | None:
    """A direct-input network with one BatchNorm running average for its T > 1 steps that tests far
    below its training accuracy: a backward cell whose steps' statistics differ fails this way
    (docs/EVIDENCE.md: 69% in training, 31% at test; per-step averages restore it)."""
    if macro is None or macro.timesteps < 2 or macro.per_step_averages or train_acc - test_acc < AVERAGES_GAP:
        return None
    return (f"test accuracy {test_acc:.1%} is {100 * (train_acc - test_acc):.0f} points below the training "
            f"accuracy {train_acc:.1%}: one BatchNorm running average for all {macro.timesteps} timesteps may fit "
            "none of them; train with --step-averages")


def warn(findings: list[str]) -> None:
    for finding in findings:
        warnings.warn(finding, HealthWarning, stacklevel=3)
