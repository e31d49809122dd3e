"""The LIF neuron every spiking layer uses (SPEC 4): spikingjelly's multi-step LIFNode with a
choice of kernels for the same neuron (``LIF.kernel``, switched for a whole model by
``nn.layers.use_kernels``).

- ``"spikingjelly"``: spikingjelly's own (the default; any setting).
- ``"fused"``: ``nn.fused.LIFSequence``, written for training speed, the same spikes and gradients.
- ``"inference"``: ``lif_scan``, in place and without autograd, the same spikes; used only where
  no gradient is recorded (scoring), else the module falls back to spikingjelly's.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from spikingjelly.activation_based import neuron, surrogate

from spikernel.nn.fused import LIFSequence
from spikernel.nn.macro import SURROGATE_ALPHA, TAU, THRESHOLD

LIF_CHUNK = 1 << 16  # elements per CPU pass of lif_scan: x, v and the spikes of a chunk stay in L2 together


class LIF(neuron.LIFNode):
    """Hard reset to 0 (detached from the graph), ATan surrogate; input shaped [T, B, ...]."""

    KERNELS = ("spikingjelly", "fused", "inference")

    def __init__(self, tau: float = TAU, threshold: float = THRESHOLD, surrogate_alpha: float = SURROGATE_ALPHA):
        super().__init__(tau=tau, decay_input=True, v_threshold=threshold, v_reset=0.0,
                         surrogate_function=surrogate.ATan(alpha=surrogate_alpha), detach_reset=True,
                         step_mode="m")
        self.kernel = "spikingjelly"

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if self.kernel == "spikingjelly" or (self.kernel == "inference" and torch.is_grad_enabled()):
            return super().multi_step_forward(x_seq)
        (v,) = self.materialize_states((x_seq,), tuple(self._memories.values()), "m")
        if self.kernel == "fused":
            spikes, v = LIFSequence.apply(x_seq, v, float(self.tau), float(self.v_threshold),
                                          float(self.surrogate_function.alpha))
        else:
            spikes = lif_scan(x_seq, v, self.tau, self.v_threshold)
        self._memories["v"] = v
        return spikes


def lif(macro=None) -> LIF:
    """The LIF neuron of a ``MacroConfig``'s neuron settings (the defaults without one)."""
    return LIF() if macro is None else LIF(macro.tau, macro.threshold, macro.surrogate_alpha)


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


def lif_scan(x_seq: torch.Tensor, v: torch.Tensor, tau: float, threshold: float,
             chunk: int | None = None) -> torch.Tensor:
    """Inference-only LIF over [T, ...] with hard reset to 0; updates ``v`` in place.

    Spike for spike the same as spikingjelly's LIFNode (the same operations in the same order,
    so the same rounding), but five in-place passes per step into one preallocated output
    instead of fresh temporaries per step and a final stack. On CPU the passes run over
    ``chunk`` (default ``LIF_CHUNK``) elements at a time (element-wise, so the same bits): at CIFAR
    widths with batch 256 a step is 128 MiB, and chunks make the five passes one trip through memory.
    """
    chunk = chunk or LIF_CHUNK
    spikes = torch.empty(x_seq.shape, dtype=x_seq.dtype, device=x_seq.device)
    if v.device.type != "cpu" or not v.is_contiguous() or v.numel() <= chunk:
        for x, out in zip(x_seq, spikes):
            _lif_step(x, v, out, tau, threshold)
        return spikes
    flat_v = v.view(-1)
    for x, out in zip(x_seq, spikes):  # flattened alike: element i of each is the same neuron
        flat_x, flat_out = x.reshape(-1), out.view(-1)
        for first in range(0, v.numel(), chunk):
            part = slice(first, first + chunk)
            _lif_step(flat_x[part], flat_v[part], flat_out[part], tau, threshold)
    return spikes


def _lif_step(x: torch.Tensor, v: torch.Tensor, out: torch.Tensor, tau: float, threshold: float) -> None:
    torch.sub(x, v, out=out)
    v.add_(out.div_(tau))  # h = v + (x - v) / tau
    torch.ge(v, threshold, out=out)
    v.addcmul_(v, out, value=-1.0)  # v - v * spike: exactly h, or 0 where it fired
