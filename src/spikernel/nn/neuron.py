"""The LIF neuron every spiking layer uses (SPEC 4), built on spikingjelly's multi-step LIFNode."""

from __future__ import annotations

from contextlib import contextmanager

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


@contextmanager
def spikes_seen(model, on_spikes):
    """Within the block, ``on_spikes(spikes)`` sees every LIF layer's output of every forward."""
    def hook(_module, _inputs, spikes):
        on_spikes(spikes)  # and return None: the hook must not replace the output

    handles = [m.register_forward_hook(hook) for m in model.modules() if is_lif(m)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
