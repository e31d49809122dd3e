"""The LIF neuron every spiking layer uses (SPEC 4), built on spikingjelly's multi-step LIFNode."""

from __future__ import annotations

from spikingjelly.activation_based import neuron, surrogate

from spikernel.nn.macro import TAU, THRESHOLD

SURROGATE_ALPHA = 2.0


def lif(tau: float = TAU, threshold: float = THRESHOLD) -> neuron.LIFNode:
    """Hard reset to 0 (detached from the graph), ATan surrogate; input shaped [T, B, ...]."""
    return neuron.LIFNode(
        tau=tau,
        decay_input=True,
        v_threshold=threshold,
        v_reset=0.0,
        surrogate_function=surrogate.ATan(alpha=SURROGATE_ALPHA),
        detach_reset=True,
        step_mode="m",
    )


def is_lif(module) -> bool:
    return isinstance(module, neuron.LIFNode)
