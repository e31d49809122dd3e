"""Memory footprint of (genotype, macro) from the operations and widths alone (SPEC 6).

No network is built, so a search knows every candidate's cost before scoring it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from decimal import Decimal

from spikernel.errors import ConfigError
from spikernel.nn.macro import MacroConfig, warn_oversized_kernels
from spikernel.space.genotype import Genotype, kernel_of

BIT_WIDTHS = (32, 16, 8, 4)


@dataclass(frozen=True)
class Footprint:
    params: int  # trainable parameters (what torch counts)
    bn_buffers: int  # BatchNorm running mean + variance, stored beside the weights
    lif_neurons: int  # membrane potentials: one per LIF neuron
    lif_layers: int

    @property
    def stored_values(self) -> int:
        return self.params + self.bn_buffers

    def bytes(self, bits: int = 32) -> int:
        """Weight memory at ``bits`` per value (parameters + BatchNorm statistics)."""
        check_bits(bits)
        return (self.stored_values * bits + 7) // 8

    def state_bytes(self, bits: int = 32) -> int:
        """Neuron-state memory: one membrane potential per LIF neuron at ``bits``."""
        check_bits(bits)
        return (self.lif_neurons * bits + 7) // 8

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "footprint_bytes": {str(b): self.bytes(b) for b in BIT_WIDTHS},
        }


def check_bits(bits: int) -> int:
    if bits not in BIT_WIDTHS:
        raise ConfigError(f"unsupported bit width {bits}; choose one of {', '.join(map(str, BIT_WIDTHS))}")
    return bits


def _cell(genotype: Genotype, channels: int, size: int) -> tuple[int, int, int, int]:
    """(params, bn_buffers, lif_neurons, lif_layers) of one cell."""
    params = buffers = neurons = layers = 0
    for *_, code in genotype.pruned().all_edges:
        kernel = kernel_of(code)
        if kernel is None:
            continue
        params += channels * channels * kernel * kernel + 2 * channels  # conv + BN affine
        buffers += 2 * channels
        neurons += channels * size * size
        layers += 1
    return params, buffers, neurons, layers


def footprint(genotype: Genotype, macro: MacroConfig) -> Footprint:
    warn_oversized_kernels(genotype.kernels, macro)
    c, m = macro.width, macro
    s1, s2 = m.cell1_size, m.cell2_size
    cell1 = _cell(genotype, c, s1)
    cell2 = _cell(genotype, 2 * c, s2)
    bn_channels = c + c + 2 * c + 2 * c  # stem, reduction (pre and post conv), last
    params = (
        m.in_channels * c * 9  # stem conv
        + c * 2 * c * 9  # reduction conv
        + m.head_features * m.hidden  # head Linear, no bias
        + (m.hidden + 1) * m.num_classes * m.votes  # output Linear with bias
        + 2 * bn_channels
        + cell1[0]
        + cell2[0]
    )
    neurons = c * s1 * s1 + 2 * c * s2 * s2 + m.hidden + cell1[2] + cell2[2]
    return Footprint(
        params=params,
        bn_buffers=2 * c * stem_stat_steps(macro) + (2 * (bn_channels - c) + cell1[1] + cell2[1]) * stat_steps(macro),
        lif_neurons=neurons,
        lif_layers=3 + cell1[3] + cell2[3],
    )


def stat_steps(macro: MacroConfig) -> int:
    """Running averages per channel of a BatchNorm after the stem: one per timestep for spike-encoded
    input or ``step_averages`` (``nn.layers``), else one."""
    return macro.timesteps if macro.per_step_averages else 1


def stem_stat_steps(macro: MacroConfig) -> int:
    """The same for the stem's BatchNorm: per step only on input spikes (direct input gives every step
    the same stem output)."""
    return macro.timesteps if macro.spiking_input else 1


def min_footprint(macro: MacroConfig) -> Footprint:
    """The smallest footprint any cell can have: a lone skip edge 0 -> 3 (no convolutions)."""
    return footprint(Genotype(((0, 0, 0, 1), (0,) * 4, (0,) * 4, (0,) * 4)), macro)


def stem_macs(macro: MacroConfig) -> int:
    """Multiply-accumulates of the 3x3 stem convolution per image: with direct input it sees the
    real-valued image once per inference, whatever the cell, so it bounds energy from below. A
    spike encoding feeds it spikes: accumulates (SOPs, counted once spikes are seen), no MACs."""
    if macro.spiking_input:
        return 0
    return macro.in_channels * 9 * macro.width * macro.cell1_size**2


# --------------------------------------------------------------------------- budgets

_PARAM_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}
_BYTE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
# A plain decimal number, then a unit: no signs, exponents (1e3), inf or nan, so "1e3" cannot be misread.
_BUDGET = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)(?P<unit>[KMG]?|[KMG]I?B|B)")
BUDGET_FORMS = ("a parameter count (300000, 500K, 1.5M; K/M/G = 10^3/10^6/10^9) or bytes at the bit width "
                "(800KB, 8MB, 2MiB; KiB/MiB/GiB = 2^10/2^20/2^30)")


@dataclass(frozen=True)
class Budget:
    """A memory limit: a parameter count (``10M``) or bytes at a bit width (``8MB`` at 8 bits)."""

    limit: int
    unit: str  # "params" or "bytes"
    bits: int = 32

    @classmethod
    def parse(cls, text: str, bits: int = 32) -> Budget:
        """``BUDGET_FORMS``; anything else, or a limit below one, is a ``ConfigError``."""
        check_bits(bits)
        found = _BUDGET.fullmatch(str(text).strip().upper().replace(" ", ""))
        if found is None:
            raise ConfigError(f"malformed budget {text!r}: give {BUDGET_FORMS}")
        number, unit = Decimal(found["number"]), found["unit"]
        limit = int(number * (_PARAM_UNITS[unit] if unit in _PARAM_UNITS else _BYTE_UNITS[unit]))
        if limit < 1:
            raise ConfigError(f"malformed budget {text!r}: it is below one "
                              f"{'parameter' if unit in _PARAM_UNITS else 'byte'}")
        return cls(limit, "params" if unit in _PARAM_UNITS else "bytes", bits)

    def cost(self, fp: Footprint) -> int:
        return fp.params if self.unit == "params" else fp.bytes(self.bits)

    def fits(self, fp: Footprint) -> bool:
        return self.cost(fp) <= self.limit

    def __str__(self) -> str:
        if self.unit == "params":
            return f"{self.limit:,} parameters"
        return f"{self.limit:,} bytes at {self.bits} bits"


@dataclass(frozen=True)
class StateBudget:
    """A limit on neuron-state memory: bytes of membrane potentials at ``bits`` each (``50KB``)."""

    limit: int
    bits: int = 32

    @classmethod
    def parse(cls, text: str, bits: int = 32) -> StateBudget:
        budget = Budget.parse(text, bits)
        if budget.unit != "bytes":
            raise ConfigError(f"malformed state budget {text!r}: neuron state is counted in bytes (50KB, 1MB)")
        return cls(budget.limit, bits)

    def fits(self, fp: Footprint) -> bool:
        return fp.state_bytes(self.bits) <= self.limit

    def __str__(self) -> str:
        return f"{self.limit:,} bytes of neuron state at {self.bits} bits"
