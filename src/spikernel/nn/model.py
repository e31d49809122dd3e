"""SNASNet's macro-architecture around a searched cell (SPEC 4), with a preset registry.

Every tensor between the stem and the vote is multi-step, shaped [T, B, ...]. A forward cell runs
all T steps at once; a backward cell steps through time because its backward edges feed node j
at t-1 into node i at t.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
import torch
from spikingjelly.activation_based import functional, layer
from torch import nn

from spikernel.errors import ConfigError, SpikernelWarning
from spikernel.nn.layers import TimestepBatchNorm2d
from spikernel.nn.neuron import TAU, THRESHOLD, is_lif, lif
from spikernel.space.genotype import AVGPOOL, INPUT, NODES, OUTPUT, SKIP, Genotype, kernel_of


@dataclass(frozen=True)
class MacroConfig:
    """Everything but the cell: data shape, widths, head, pooling and neuron settings."""

    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    width: int = 32  # C: cell 1 width; cell 2 runs at 2C
    hidden: int = 256  # H: first head Linear
    votes: int = 10  # V: output neurons per class (population coding)
    second_pool: int = 2  # p: pooling before the head
    stem_stride: int = 1
    timesteps: int = 5
    dropout: float = 0.5
    # Head Linear init: SNASNet's normal(0, 0.01) suits its ~30K-wide head; small heads stay
    # silent with it, so None scales by fan-in assuming ~10% input spike rate (std 1/sqrt(0.1 n)).
    head_init_std: float | None = None
    tau: float = TAU
    threshold: float = THRESHOLD

    def __post_init__(self):
        for name in ("in_channels", "image_size", "num_classes", "width", "hidden", "votes",
                     "second_pool", "stem_stride", "timesteps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.head_size < 1:
            raise ConfigError(
                f"image size {self.image_size} is too small for stem stride {self.stem_stride}, "
                f"a 2x2 pool and second pool {self.second_pool}"
            )

    # Spatial sizes follow the layers: 3x3 stem (padding 1, stride s), 2x2 pool, p x p pool.
    @property
    def cell1_size(self) -> int:
        return (self.image_size - 1) // self.stem_stride + 1

    @property
    def cell2_size(self) -> int:
        return self.cell1_size // 2

    @property
    def head_size(self) -> int:
        return self.cell2_size // self.second_pool

    @property
    def head_features(self) -> int:
        return 2 * self.width * self.head_size**2

    def for_data(self, data) -> MacroConfig:
        """These settings at a dataset's image shape and class count (anything with ``in_channels``,
        ``image_size`` and ``num_classes``, e.g. a ``Dataset``)."""
        return replace(self, in_channels=data.in_channels, image_size=data.image_size, num_classes=data.num_classes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MacroConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"macro settings must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown macro settings: {sorted(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:  # a setting of the wrong type (a string where a number belongs)
            raise ConfigError(f"malformed macro settings: {exc}") from None


# --------------------------------------------------------------------------- presets

PRESETS: dict[str, MacroConfig] = {}


def register_preset(name: str, config: MacroConfig, about: str) -> None:
    PRESETS[name] = config
    PRESET_NOTES[name] = about


PRESET_NOTES: dict[str, str] = {}

_CIFAR = dict(in_channels=3, image_size=32, head_init_std=0.01)
register_preset("snasnet-cifar10", MacroConfig(**_CIFAR, num_classes=10, width=256, hidden=1024, votes=10),
                "SNASNet's CIFAR-10 widths (its released model used second_pool=4)")
register_preset("snasnet-cifar100", MacroConfig(**_CIFAR, num_classes=100, width=128, hidden=1024, votes=5),
                "SNASNet's CIFAR-100 widths")
register_preset("snasnet-tinyimagenet",
                MacroConfig(in_channels=3, image_size=64, num_classes=200, width=128, hidden=4096, votes=5,
                            stem_stride=2, head_init_std=0.01), "SNASNet's Tiny-ImageNet widths (64x64, stem stride 2)")
register_preset("fmnist", MacroConfig(width=32, hidden=256, votes=10),
                "28x28 grayscale, ~1M parameters: accuracy runs on Fashion-MNIST")
register_preset("fmnist-small", MacroConfig(width=16, hidden=128, votes=10, second_pool=2),
                "28x28 grayscale, ~0.2M parameters: CPU-sized searches and training")
register_preset("fmnist-tiny", MacroConfig(width=8, hidden=64, votes=10, second_pool=7, timesteps=4),
                "28x28 grayscale, a few thousand parameters: tests and smoke runs")


# The macro preset each dataset uses unless told otherwise (search, train, score, explore alike).
DATASET_PRESETS = {"fashion-mnist": "fmnist", "fashion-mnist-mini": "fmnist-small", "cifar10": "snasnet-cifar10",
                   "cifar100": "snasnet-cifar100", "tiny-imagenet": "snasnet-tinyimagenet"}


def default_preset(dataset_name: str) -> str:
    return DATASET_PRESETS.get(dataset_name, "fmnist")


def get_preset(name: str, **overrides) -> MacroConfig:
    """A registered macro config, with any fields overridden (``None`` values are ignored)."""
    try:
        config = PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


# --------------------------------------------------------------------------- kernels vs feature maps


def oversized_kernels(kernels, macro: MacroConfig) -> list[int]:
    """Kernel sizes larger than cell 2's feature map (the smaller of the two cells' maps)."""
    return sorted(k for k in set(kernels) if k > macro.cell2_size)


def warn_oversized_kernels(kernels, macro: MacroConfig) -> None:
    """A ``SpikernelWarning`` per kernel size larger than a feature map it is applied to (legal:
    a letter code like ``a`` = 15x15 may be meant, or be a slip)."""
    for k in oversized_kernels(kernels, macro):
        s1, s2 = macro.cell1_size, macro.cell2_size
        where = f"both cells' feature maps ({s1}x{s1}, {s2}x{s2})" if k > s1 else f"cell 2's {s2}x{s2} feature map"
        warnings.warn(SpikernelWarning(f"{k}x{k} kernels are larger than {where}: every window reaches into the "
                                       "zero padding, so their extra parameters buy little"), stacklevel=3)


# --------------------------------------------------------------------------- cell


def make_op(code: int, channels: int, macro: MacroConfig) -> nn.Module:
    """One edge: skip, 3x3 average pool, or LIF -> Conv kxk (no bias) -> BatchNorm."""
    if code == SKIP:
        return nn.Identity()
    if code == AVGPOOL:
        return layer.AvgPool2d(3, stride=1, padding=1, step_mode="m")
    kernel = kernel_of(code)
    return nn.Sequential(
        lif(macro.tau, macro.threshold),
        layer.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False, step_mode="m"),
        TimestepBatchNorm2d(channels),
    )


class Cell(nn.Module):
    """A searched cell at a fixed width; zero edges and pruned nodes build nothing."""

    def __init__(self, genotype: Genotype, channels: int, macro: MacroConfig):
        super().__init__()
        self.genotype = genotype = genotype.pruned()  # connected: every Genotype is (see Genotype)
        self.forward_edges = [(i, j) for i, j, _ in genotype.forward_edges]
        self.backward_edges = [(j, i) for j, i, _ in genotype.backward_edges]
        # Per node, in edge order: the nodes feeding it forward, and the nodes it carries into.
        self.sources = [[i for i, jj in self.forward_edges if jj == j] for j in range(NODES)]
        self.carried_into = [[i for jj, i in self.backward_edges if jj == j] for j in range(NODES)]
        self.fan_out = [sum(j in sources for sources in self.sources) for j in range(NODES)]
        self.ops = nn.ModuleDict(
            {_edge_key(a, b): make_op(code, channels, macro) for a, b, code in genotype.all_edges}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.backward_edges:
            return self._step(x, [None] * NODES)[0]
        carry: list[torch.Tensor | None] = [None] * NODES
        outputs = []
        for t in range(x.shape[0]):  # the LIFs keep their state between these 1-step calls
            out, carry = self._step(x[t : t + 1], carry)
            outputs.append(out)
        return torch.cat(outputs)

    def _step(self, x_in, carry, carry_out: bool = True):
        """Nodes in order; node i's outgoing ops see its value plus what backward edges carried in.

        ``carry`` is consumed: each entry, and each node's value, is let go after its last use
        (at CIFAR widths with batch 256 each one is 128 MiB). A node's backward edges run as soon
        as its value exists. ``carry_out=False`` (the scorer's last timestep, whose carry nothing
        reads) fires those edges' LIFs, whose spikes the score counts, and skips their convolutions.
        """
        values: list[torch.Tensor | None] = [None] * NODES
        uses = list(self.fan_out)
        new_carry: list[torch.Tensor | None] = [None] * NODES
        for j in range(NODES):
            node = x_in if j == INPUT else None
            for i in self.sources[j]:
                node = _add(node, self.ops[_edge_key(i, j)](values[i]))
                uses[i] -= 1
                if not uses[i]:
                    values[i] = None
            if j != OUTPUT:
                node, carry[j] = _add(node, carry[j]), None
            # A node fed only by backward edges is at rest (zero) on the first step.
            values[j] = node if node is not None else torch.zeros_like(x_in)
            for i in self.carried_into[j]:
                op = self.ops[_edge_key(j, i)]
                if carry_out:
                    new_carry[i] = _add(new_carry[i], op(values[j]))
                elif isinstance(op, nn.Sequential):
                    op[0](values[j])
            if not uses[j] and j != OUTPUT:
                values[j] = None
        return values[OUTPUT], new_carry


def _edge_key(a: int, b: int) -> str:
    return f"{a}_{b}"


def _add(a, b):
    if a is None:
        return b
    return a if b is None else a + b


# --------------------------------------------------------------------------- network


class SNN(nn.Module):
    """stem -> cell(C) -> reduction -> cell(2C) -> LIF + pool -> spiking head -> population vote."""

    def __init__(self, genotype: Genotype, macro: MacroConfig):
        super().__init__()
        warn_oversized_kernels(genotype.kernels, macro)
        self.genotype, self.macro = genotype.pruned(), macro
        c, m = macro.width, macro
        self.stem = nn.Sequential(
            nn.Conv2d(m.in_channels, c, 3, stride=m.stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(c),
        )
        self.cell1 = Cell(genotype, c, m)
        self.reduction = nn.Sequential(
            TimestepBatchNorm2d(c),
            lif(m.tau, m.threshold),
            layer.Conv2d(c, 2 * c, 3, padding=1, bias=False, step_mode="m"),
            TimestepBatchNorm2d(2 * c),
            layer.AvgPool2d(2, 2, step_mode="m"),
        )
        self.cell2 = Cell(genotype, 2 * c, m)
        self.last = nn.Sequential(
            TimestepBatchNorm2d(2 * c),
            lif(m.tau, m.threshold),
            layer.AvgPool2d(m.second_pool, m.second_pool, step_mode="m"),
        )
        self.head = nn.Sequential(
            layer.Dropout(m.dropout, step_mode="m"),
            nn.Linear(m.head_features, m.hidden, bias=False),
            lif(m.tau, m.threshold),
            nn.Linear(m.hidden, m.num_classes * m.votes),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """SNASNet's initialisation (the head's spread is a setting, see ``MacroConfig``)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=2)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                std = self.macro.head_init_std or (0.1 * module.in_features) ** -0.5
                nn.init.normal_(module.weight, 0.0, std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def lif_layers(self) -> list[nn.Module]:
        return [m for m in self.modules() if is_lif(m)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> class logits [B, classes], averaged over T timesteps."""
        return self.forward_steps(images).mean(0)

    def forward_steps(self, images: torch.Tensor) -> torch.Tensor:
        """Per-timestep logits [T, B, classes]. Neuron state starts from rest on every call."""
        functional.reset_net(self)
        static = self.stem(images)  # direct encoding: the stem sees the same image each step
        x = static.unsqueeze(0).expand(self.macro.timesteps, *static.shape)
        x = self.cell1(x)
        x = self.reduction(x)
        x = self.cell2(x)
        x = self.last(x).flatten(2)
        x = self.head(x)
        return x.view(*x.shape[:2], self.macro.num_classes, self.macro.votes).mean(-1)


def build_model(genotype: Genotype | str, macro: MacroConfig | str, device: torch.device | str | None = None) -> SNN:
    """The network, its weights drawn by ``device``'s generator (the CPU's by default)."""
    if isinstance(genotype, str):
        genotype = Genotype.parse(genotype)
    if isinstance(macro, str):
        macro = get_preset(macro)
    # Drawn in place: at CIFAR widths a host-side draw and copy cost more than scoring on a GPU.
    with torch.device(device) if device is not None else nullcontext():
        return SNN(genotype, macro)

