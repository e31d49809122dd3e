"""Spike rates, synaptic operations and an energy estimate per inference (T timesteps).

The usual SNN accounting (e.g. SNASNet, SpikingJelly's op counters): a layer fed by spikes does
one accumulate (AC) per spike per outgoing synapse, a synaptic operation (SOP); the first layer
sees the real-valued image and does multiply-accumulates (MACs). Energy = SOPs x E_AC + MACs x
E_MAC, with the 45 nm figures SNN papers quote (Horowitz, ISSCC 2014) as defaults.

What is counted, per image:
- every LIF layer: neurons, spikes, rate = spikes / (neurons x T);
- every convolution or linear layer after a LIF: SOPs = sum over input spikes of the synapses
  they reach (at a zero-padded border a spike reaches fewer outputs). The average pool between
  the last LIF and the head is linear, so it folds into the head's weights: each spike it
  pools still drives ``hidden`` accumulates;
- the stem convolution: with direct input, MACs on the image, once per inference (the same image
  every step, so its output is reused for all T steps); with a spike encoding (``nn.encoding``)
  its input is spikes, so it is one more spike-driven layer (``stem``): SOPs, and no MACs.
Not counted: neuron updates, node sums, average pools and the per-channel affine before a LIF
(elementwise work, small next to the synapses), and memory traffic.
"""

from __future__ import annotations

import re

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from spikernel.errors import ConfigError
from spikernel.nn.neuron import is_lif

E_AC_PJ = 0.9  # pJ per 32-bit float accumulate, 45 nm
E_MAC_PJ = 4.6  # pJ per 32-bit float multiply-accumulate, 45 nm


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation in picojoules (settings; defaults are the 45 nm figures)."""

    e_ac: float = E_AC_PJ
    e_mac: float = E_MAC_PJ

    def __post_init__(self):
        if not (self.e_ac >= 0 and self.e_mac >= 0):
            raise ConfigError(f"energy per operation must be >= 0 pJ, got AC {self.e_ac}, MAC {self.e_mac}")


@dataclass
class LayerSpikes:
    name: str
    neurons: int
    spikes: float  # per image, all T steps
    rate: float  # spikes / (neurons x T)


@dataclass
class LayerSops:
    name: str
    kind: str
    input_spikes: float  # per image
    sops: float  # per image


@dataclass
class OpsReport:
    """Per-inference figures averaged over ``images`` images."""

    images: int
    timesteps: int
    lif: list[LayerSpikes]
    synapses: list[LayerSops]
    stem_macs: int
    energy_model: EnergyModel = field(default_factory=EnergyModel)
    encoding: str = "direct"

    @property
    def sops(self) -> float:
        return sum(s.sops for s in self.synapses)

    @property
    def spikes(self) -> float:
        return sum(s.spikes for s in self.lif)

    @property
    def neurons(self) -> int:
        return sum(s.neurons for s in self.lif)

    @property
    def spike_rate(self) -> float:
        """Spikes / (neurons x T) over all LIF layers."""
        return self.spikes / (self.neurons * self.timesteps) if self.neurons else 0.0

    @property
    def energy_pj(self) -> float:
        return self.sops * self.energy_model.e_ac + self.stem_macs * self.energy_model.e_mac

    def rows(self) -> list[tuple[str, str]]:
        """Label / value pairs for a report table."""
        e = self.energy_model
        return [
            ("synaptic ops / image", f"{self.sops:,.0f} accumulates ({self.timesteps} steps)"),
            ("stem MACs / image", f"{self.stem_macs:,} (runs once)" if self.encoding == "direct"
             else f"0 ({self.encoding} input spikes: the stem accumulates, in the SOPs)"),
            ("energy / image", f"{self.energy_pj / 1e6:.3f} uJ (AC {e.e_ac} pJ, MAC {e.e_mac} pJ)"),
        ] + [(f"  SOPs {s.name}", f"{s.sops:,.0f}") for s in self.synapses]

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "timesteps": self.timesteps,
            "spike_rate": self.spike_rate,
            "spikes": self.spikes,
            "sops": self.sops,
            "stem_macs": self.stem_macs,
            "energy_pj": self.energy_pj,
            "energy_model": asdict(self.energy_model),
            "lif": [asdict(s) for s in self.lif],
            "synapses": [asdict(s) for s in self.synapses],
            **({"encoding": self.encoding} if self.encoding != "direct" else {}),
        }


def conv_sops(spikes: torch.Tensor, conv: nn.Conv2d) -> float:
    """Accumulates a convolution does for binary input [..., C, H, W]: each spike reaches
    ``out_channels`` x (the kernel positions that land inside the output)."""
    if conv.groups != 1:
        raise ConfigError("grouped convolutions are not counted")
    per_position = spikes.reshape(-1, *spikes.shape[-3:]).sum(1, keepdim=True)
    ones = torch.ones(1, 1, *conv.kernel_size, dtype=per_position.dtype, device=per_position.device)
    reach = F.conv2d(per_position, ones, stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
    return float(reach.sum(dtype=torch.float64)) * conv.out_channels


def _synapse_after_lif(seq: nn.Module) -> nn.Module | None:
    """The convolution or linear layer a LIF feeds inside a Sequential (SNASNet's LIF -> Conv)."""
    if not isinstance(seq, nn.Sequential):
        return None
    modules = list(seq)
    for i, module in enumerate(modules[:-1]):
        if is_lif(module) and isinstance(modules[i + 1], (nn.Conv2d, nn.Linear)):
            return modules[i + 1]
    return None


def stem_conv(model) -> nn.Conv2d:
    return next(m for m in model.stem if isinstance(m, nn.Conv2d))


def synapses(model) -> list[tuple[str, nn.Module, int]]:
    """(name, layer, pooled area) for every spike-driven layer of an ``SNN`` (folded or not): the
    stem too when the input is spikes."""
    found = [("stem", stem_conv(model), 1)] if model.macro.spiking_input else []
    for cell_name in ("cell1", "cell2"):
        for key, op in getattr(model, cell_name).ops.items():
            if (conv := _synapse_after_lif(op)) is not None:
                found.append((f"{cell_name}.{key.replace('_', '->')}", conv, 1))
    found.append(("reduction", _synapse_after_lif(model.reduction), 1))
    linears = [m for m in model.head if isinstance(m, nn.Linear)]
    found.append(("head", linears[0], model.macro.second_pool**2))
    found.append(("readout", linears[1], 1))
    return found


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return f"conv{module.kernel_size[0]}x{module.kernel_size[1]}"
    return "linear"


class OpCounter:
    """Counts spikes and operations of an ``SNN`` while it runs (a context manager).

    Hooks only observe, so the counts can ride along another pass over the data, such as the
    accuracy evaluation: ``with OpCounter(model) as ops: evaluate(model, ...)``, then ``ops.report()``.
    """

    def __init__(self, model, energy_model: EnergyModel | None = None):
        self.model, self.energy_model = model, energy_model or EnergyModel()
        self.lif_names = {m: n for n, m in model.named_modules() if is_lif(m)}
        self.synapses = synapses(model)
        self.spikes = {n: 0.0 for n in self.lif_names.values()}
        self.neurons: dict[str, int] = {}
        self.syn_spikes = {name: 0.0 for name, *_ in self.synapses}
        self.sops = {name: 0.0 for name, *_ in self.synapses}
        self.images = self.stem_macs = 0
        self.handles = []

    def __enter__(self) -> OpCounter:
        self.handles = [m.register_forward_hook(self._on_lif) for m in self.lif_names]
        self.handles += [m.register_forward_hook(self._on_synapse(name, area)) for name, m, area in self.synapses]
        self.handles.append(stem_conv(self.model).register_forward_hook(self._on_stem))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    @torch.no_grad()
    def _on_lif(self, module, _inputs, output):
        name = self.lif_names[module]
        self.spikes[name] += float(output.sum(dtype=torch.float64))
        self.neurons[name] = output[0, 0].numel()

    def _on_synapse(self, name, area):
        @torch.no_grad()
        def hook(module, inputs, _output):
            x = inputs[0]
            count = float(x.sum(dtype=torch.float64)) * area  # pooled spikes x pooled area = spikes
            self.syn_spikes[name] += count
            self.sops[name] += conv_sops(x, module) * area if isinstance(module, nn.Conv2d) else count * module.out_features
        return hook

    def _on_stem(self, module, _inputs, output):
        if self.model.macro.spiking_input:  # [T, B, ...] on input spikes: its SOPs are counted as a synapse's
            self.images += output.shape[1]
            return
        self.images += output.shape[0]
        self.stem_macs += output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]

    def report(self) -> OpsReport:
        if not self.images:
            raise ConfigError("no images to measure spikes on")
        n, steps = self.images, self.model.macro.timesteps
        return OpsReport(
            images=n,
            timesteps=steps,
            lif=[LayerSpikes(name, self.neurons.get(name, 0), self.spikes[name] / n,
                             self.spikes[name] / n / (self.neurons[name] * steps) if self.neurons.get(name) else 0.0)
                 for name in self.lif_names.values()],
            synapses=[LayerSops(name, _kind(m), self.syn_spikes[name] / n, self.sops[name] / n)
                      for name, m, _ in self.synapses],
            stem_macs=self.stem_macs // n,
            energy_model=self.energy_model,
            encoding=self.model.macro.encoding,
        )


@torch.no_grad()
def measure(model, batches, energy_model: EnergyModel | None = None) -> OpsReport:
    """Run ``model`` (eval mode) on normalised image batches and count spikes and operations."""
    model.eval()
    with OpCounter(model, energy_model) as counter:
        for batch in batches:
            model(batch)
    return counter.report()


def measure_dataset(model, dataset, limit: int | None = None, batch_size: int = 256,
                    energy_model: EnergyModel | None = None, device="cpu") -> OpsReport:
    """``measure`` on the first ``limit`` test images (all by default)."""
    split = dataset.test
    count = len(split) if limit is None else min(limit, len(split))
    batches = (dataset.normalize(split.images[i : min(i + batch_size, count)].to(device))
               for i in range(0, count, batch_size))
    return measure(model, batches, energy_model)


@torch.no_grad()
def estimate_at_init(model, images: torch.Tensor, energy_model: EnergyModel | None = None) -> OpsReport:
    """Operations and energy per image of a freshly initialised network on one batch, before any
    training: BatchNorm on the batch's statistics, as when it is scored (training mode), dropout off."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout) or type(m).__name__ == "Dropout":
            m.eval()
    with OpCounter(model, energy_model) as counter:
        model(images)
    return counter.report()


_ENERGY = re.compile(r"(?P<number>\d+(\.\d+)?)(?P<unit>PJ|NJ|UJ|MJ|SOPS?|KSOPS?|MSOPS?|GSOPS?)")
_JOULES = {"PJ": 1.0, "NJ": 1e3, "UJ": 1e6, "MJ": 1e9}  # in pJ
_SOPS = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}


@dataclass(frozen=True)
class EnergyBudget:
    """A limit per inference: energy (``5uJ``, ``800nJ``) or synaptic operations (``2MSOP``)."""

    limit: float
    unit: str  # "pJ" or "SOPs"

    @classmethod
    def parse(cls, text: str) -> EnergyBudget:
        found = _ENERGY.fullmatch(str(text).strip().upper().replace(" ", ""))
        if found is None or float(found["number"]) <= 0:
            raise ConfigError(f"malformed energy budget {text!r}: give energy per inference (5uJ, 800nJ) "
                              "or synaptic operations (2MSOP, 500KSOPs)")
        number, unit = float(found["number"]), found["unit"]
        if unit in _JOULES:
            return cls(number * _JOULES[unit], "pJ")
        return cls(number * _SOPS[unit.split("SOP")[0]], "SOPs")

    def cost(self, ops: OpsReport) -> float:
        return ops.energy_pj if self.unit == "pJ" else ops.sops

    def fits(self, ops: OpsReport) -> bool:
        return self.cost(ops) <= self.limit

    def __str__(self) -> str:
        return f"{self.limit / 1e6:g} uJ per inference" if self.unit == "pJ" else f"{self.limit:,.0f} SOPs per inference"
