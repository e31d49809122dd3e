"""The macro-architecture's settings (``MacroConfig``) and the preset registry, without PyTorch.

Kept apart from the modules that build networks so that option parsing, footprints and budgets
(which need only the widths) start in a fraction of a second.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import asdict, dataclass, fields, replace
from typing import Iterable, Mapping

from spikernel.errors import ConfigError, SpikernelWarning

TAU = 4.0 / 3.0  # v <- v + (x - v) / tau: the membrane keeps 25% per step
THRESHOLD = 1.0
SURROGATE_ALPHA = 2.0  # ATan surrogate's sharpness: its gradient at threshold is alpha / 2
# How an image enters the network (``nn.encoding`` has the encoders, under the same names): the
# analog image at every step (SNASNet's), or spikes: rate (Poisson) or time-to-first-spike coding.
DIRECT = "direct"
ENCODING_NAMES = (DIRECT, "poisson", "latency")


INPUT_STATS = ("input_mean", "input_std")
ABSENT_AT_DEFAULT = ("step_averages", "surrogate_alpha")  # left out of to_dict at their defaults


@dataclass(frozen=True, eq=False)
class MacroConfig:
    """Everything but the cell: data shape, widths, head, pooling, neuron settings and input encoding.

    Two settings are equal when they build the same network: with direct input the normalisation's
    statistics play no part (and ``to_dict`` leaves them out), so they are not compared.
    """

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
    surrogate_alpha: float = SURROGATE_ALPHA
    encoding: str = DIRECT
    # The per-channel mean and std the images were normalised with (``for_data`` sets them): a spike
    # encoding undoes the normalisation to see intensities in [0, 1]. The direct network never reads them.
    input_mean: tuple[float, ...] = ()
    input_std: tuple[float, ...] = ()
    # BatchNorm running averages per timestep after the stem (``nn.layers.TimestepBatchNorm2d``):
    # SNASNet keeps one for all steps, which a backward cell whose steps differ can fail at test time.
    # Spike encodings always keep them per step.
    step_averages: bool = False

    def __post_init__(self):
        for name in ("in_channels", "image_size", "num_classes", "width", "hidden", "votes",
                     "second_pool", "stem_stride", "timesteps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("tau", "threshold", "surrogate_alpha"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        check_encoding(self.encoding)
        self._check_input_stats()
        if self.head_size < 1:
            raise ConfigError(
                f"image size {self.image_size} is too small for stem stride {self.stem_stride}, "
                f"a 2x2 pool and second pool {self.second_pool}"
            )

    def _check_input_stats(self) -> None:
        try:  # JSON gives lists; a frozen config keeps tuples (hashable, one spelling)
            mean, std = tuple(map(float, self.input_mean)), tuple(map(float, self.input_std))
        except (TypeError, ValueError):
            raise ConfigError(f"input mean and std must be lists of numbers, got {self.input_mean!r}, "
                              f"{self.input_std!r}") from None
        if len(mean) != len(std) or (mean and len(mean) != self.in_channels):
            raise ConfigError(f"input mean and std need one value per input channel ({self.in_channels}), "
                              f"got {len(mean)} and {len(std)}")
        if any(not v > 0 for v in std):
            raise ConfigError(f"input std must be positive, got {list(std)}")
        object.__setattr__(self, "input_mean", mean)
        object.__setattr__(self, "input_std", std)

    def _compared(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self) if self.spiking_input or f.name not in INPUT_STATS)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and self._compared() == other._compared()

    def __hash__(self) -> int:
        return hash(self._compared())

    @property
    def per_step_averages(self) -> bool:
        return self.spiking_input or self.step_averages

    @property
    def spiking_input(self) -> bool:
        """Whether the stem sees spikes (a spike encoding) rather than the analog image."""
        return self.encoding != DIRECT

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
        ``image_size`` and ``num_classes``, e.g. a ``Dataset``), and its normalisation's mean and std
        when it has them (what a spike encoding needs)."""
        stats = {"input_mean": tuple(data.mean), "input_std": tuple(data.std)} if getattr(data, "mean", None) else {}
        return replace(self, in_channels=data.in_channels, image_size=data.image_size, num_classes=data.num_classes,
                       **stats)

    def to_dict(self) -> dict:
        data = asdict(self)
        if not self.spiking_input:  # absent for direct input: run.json files and studies from before match
            for name in ("encoding", *INPUT_STATS):
                data.pop(name)
        else:
            data["input_mean"], data["input_std"] = list(self.input_mean), list(self.input_std)
        defaults = {f.name: f.default for f in fields(self)}
        for name in ABSENT_AT_DEFAULT:  # settings newer than the oldest run.json files and studies: they still match
            if data[name] == defaults[name]:
                data.pop(name)
        return data

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


# --------------------------------------------------------------------------- macro dimensions

# The macro settings a search may vary alongside the cell, in the order combinations enumerate them:
# positive integers, and the input encoding (a name of ``ENCODING_NAMES``).
SEARCHABLE = ("width", "hidden", "votes", "second_pool", "stem_stride", "timesteps", "encoding")
NAMED = {"encoding": ENCODING_NAMES}  # settings whose values are names, in their canonical order


def check_encoding(name) -> str:
    if name not in ENCODING_NAMES:
        raise ConfigError(f"unknown encoding {name!r}; choose one of {', '.join(ENCODING_NAMES)}")
    return name


@dataclass(frozen=True)
class MacroSpace:
    """A base ``MacroConfig`` and the macro settings a search varies: ``{name: values}``.

    Build it with ``MacroSpace.of(base, width=(8, 16), hidden=(32, 64))``. A setting given one
    value is an override of the base, not a dimension, so a space without dimensions is the base
    alone and searches exactly as it does. Every combination is checked to be a valid
    ``MacroConfig`` when the space is made.
    """

    base: MacroConfig
    dimensions: tuple[tuple[str, tuple, ...], ...] = ()  # (name, values): SEARCHABLE order, ascending

    def __post_init__(self):
        if not isinstance(self.base, MacroConfig):
            raise ConfigError(f"a macro space needs a MacroConfig base, got {type(self.base).__name__}")
        for name, values in self.dimensions:
            if name not in SEARCHABLE:
                raise ConfigError(f"unknown macro dimension {name!r}; searchable: {', '.join(SEARCHABLE)}")
            if len(_values(name, values)) < 2:
                raise ConfigError(f"macro dimension {name} needs two or more values, got {list(values)}")
        if len({name for name, _ in self.dimensions}) != len(self.dimensions):
            raise ConfigError("a macro dimension is listed twice")
        # One spelling per space: dimensions in SEARCHABLE order, values ascending (8,16 is 16,8).
        canonical = tuple(sorted(((name, sort_values(name, values)) for name, values in self.dimensions),
                                 key=lambda d: SEARCHABLE.index(d[0])))
        object.__setattr__(self, "dimensions", canonical)
        for values in itertools.product(*(v for _, v in self.dimensions)):
            try:
                replace(self.base, **dict(zip(self.names, values)))
            except ConfigError as exc:
                raise ConfigError(f"macro combination {_label(dict(zip(self.names, values)))} is invalid: {exc}") from None

    @classmethod
    def of(cls, base: MacroConfig, dimensions: Mapping[str, Iterable] | None = None, **more) -> MacroSpace:
        """``base`` with each named setting searched over its values; a single value overrides the base.

        Values are positive integers (an encoding: one of ``ENCODING_NAMES``); an unknown name, a
        non-integer, a value below one, an unknown encoding or no value at all is a ``ConfigError``.
        """
        given = {**(dimensions or {}), **more}
        unknown = sorted(set(given) - set(SEARCHABLE))
        if unknown:
            raise ConfigError(f"unknown macro dimension {unknown[0]!r}; searchable: {', '.join(SEARCHABLE)}")
        overrides, searched = {}, []
        for name in SEARCHABLE:
            if name not in given:
                continue
            values = _values(name, given[name])
            if len(values) == 1:
                overrides[name] = values[0]
            else:
                searched.append((name, values))
        try:
            base = replace(base, **overrides)
        except ConfigError as exc:
            raise ConfigError(f"invalid macro setting: {exc}") from None
        return cls(base, tuple(searched))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.dimensions)

    @property
    def size(self) -> int:
        count = 1
        for _, values in self.dimensions:
            count *= len(values)
        return count

    def combination(self, index: int) -> MacroConfig:
        """The ``index``-th combination of ``combinations()`` (the first dimension varies slowest)."""
        choice = {}
        for name, values in reversed(self.dimensions):
            index, position = divmod(index, len(values))
            choice[name] = values[position]
        return self.with_choice(choice)

    def combinations(self) -> list[MacroConfig]:
        """Every combination of the dimensions' values, as settings (the base alone without dimensions)."""
        return [self.combination(i) for i in range(self.size)]

    def with_choice(self, choice: Mapping[str, int | str]) -> MacroConfig:
        """The base with the searched settings at ``choice`` (``{name: value}``, one per dimension)."""
        if set(choice) != set(self.names):
            raise ConfigError(f"a macro choice names {sorted(choice)}, the space searches {list(self.names)}")
        for name, values in self.dimensions:
            if choice[name] not in values:
                raise ConfigError(f"{name}={choice[name]!r} is not one of the searched values {list(values)}")
        return replace(self.base, **choice)

    def choice_of(self, macro: MacroConfig) -> dict[str, int | str]:
        """The searched settings' values in ``macro`` (empty without dimensions)."""
        return {name: getattr(macro, name) for name in self.names}

    def for_data(self, data) -> MacroSpace:
        """The space at a dataset's image shape and class count (every combination checked again)."""
        return MacroSpace(self.base.for_data(data), self.dimensions)

    def identity(self) -> dict:
        """What a study records of the space: the base settings and each dimension's values."""
        return {"base": self.base.to_dict(), "dimensions": {name: list(values) for name, values in self.dimensions}}

    def __str__(self) -> str:
        return ", ".join(f"{name} in {{{', '.join(map(str, values))}}}" for name, values in self.dimensions) or "none"


def choice_label(choice: Mapping[str, int]) -> str:
    """``width=8,hidden=32``: a candidate's searched macro settings as text (empty without any)."""
    return _label(choice)


def _label(choice: Mapping[str, int]) -> str:
    return ",".join(f"{name}={value}" for name, value in choice.items())


def _values(name: str, given) -> tuple:
    values = tuple(given) if isinstance(given, (list, tuple, set, frozenset, range)) else (given,)
    if not values:
        raise ConfigError(f"macro setting {name} has no values: the product of the dimensions is empty")
    for value in values:
        if name in NAMED:
            if value not in NAMED[name]:
                raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(NAMED[name])}")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} values must be positive integers, got {value!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{name} lists a value twice: {list(values)}")
    return values


def sort_values(name: str, values) -> tuple:
    """A setting's values in their one order: numbers ascending, names as ``NAMED`` lists them."""
    return tuple(sorted(values, key=NAMED[name].index if name in NAMED else None))


def parse_value(name: str, text):
    """One value of macro setting ``name`` as a table cell holds it (``"8"``, ``"poisson"``)."""
    return str(text) if name in NAMED else int(text)


def parse_values(name: str, text: str) -> tuple:
    """``"8,16,32"`` (``"direct,poisson"`` for the encoding) as the values of macro setting ``name``
    (one value: an override)."""
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise ConfigError(f"no {name} values given: the product of the dimensions is empty")
    if name in NAMED:
        return _values(name, parts)
    values = []
    for part in parts:
        try:
            values.append(int(part))
        except ValueError:
            raise ConfigError(f"expected positive integers separated by commas, got {part!r} in {text!r}") from None
    return _values(name, values)


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
