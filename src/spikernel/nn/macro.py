"""The macro-architecture's settings (``MacroConfig``) and the preset registry, without PyTorch.

Kept apart from the modules that build networks so that option parsing, footprints and budgets
(which need only the widths) start in a fraction of a second.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields, replace

from spikernel.errors import ConfigError, SpikernelWarning

TAU = 4.0 / 3.0  # v <- v + (x - v) / tau: the membrane keeps 25% per step
THRESHOLD = 1.0


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
