"""What an exploration is asked to do (``ExploreSettings``) and the main job's defaults, without
PyTorch: the command line builds its options from them before anything heavy loads."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

from spikernel.errors import ConfigError
from spikernel.nn.footprint import Budget
from spikernel.nn.macro import MacroSpace, get_preset, sort_values
from spikernel.proxy import DEFAULT_PROXY
from spikernel.space.genotype import KernelSet


@dataclass(frozen=True)
class ExploreSettings:
    kernel_sets: tuple[str, ...] = ("1x1_3x3", "1x1_5x5", "1x1_7x7")
    dataset: str = "fashion-mnist-mini"
    preset: str = "fmnist-small"
    cell: str = "backward"
    candidates: int = 100
    budget: str | None = None
    bits: int = 32
    top_k: int = 3
    epochs: int = 3
    recipe: str = "fast"
    seeds: int = 1  # trainings per top-K cell (seeds seed, seed+1, ...): the noise of each set's accuracy
    fidelity: str | None = None  # multi-fidelity search setting (nas.fidelity), e.g. "fast"
    score_batch: int = 256  # the scoring batch of every command (the main job uses 64)
    repeats: int = 2
    train_batch: int = 64
    limit_train: int | None = None
    timesteps: int | None = None
    seed: int = 0
    ablation: tuple[int, ...] = ()
    # How each set's search draws and picks, as in `spikernel search` (absent from explore.json at
    # their defaults, so folders from before they existed still resume).
    sampler: str = "random"
    objectives: str | None = None  # "score,footprint[,energy]"
    state_budget: str | None = None
    state_bits: int | None = None
    energy_budget: str | None = None
    refine: int = 0  # train the best K of each search briefly on a validation split; pick by that
    refine_epochs: int = 2
    refine_images: int = 1000  # training images per refinement rung (nas.refine.IMAGES)
    validation: int = 1000
    proxy: str = DEFAULT_PROXY  # what each search ranks by
    step_averages: bool = False  # BatchNorm running averages per timestep for direct input too (MacroConfig)
    # Macro settings by name: one value overrides the preset, several are searched beside the cell
    # ({"width": (8, 16)}, {"encoding": ("direct", "poisson")}); the search's macro dimensions.
    macro_values: tuple[tuple[str, tuple], ...] | Mapping = ()

    def __post_init__(self):
        names = [KernelSet.parse(k).name for k in self.kernel_sets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"kernel set listed twice: {', '.join(duplicates)}")
        if not names:
            raise ConfigError("give at least one kernel set")
        if self.seeds < 1:
            raise ConfigError(f"seeds must be at least 1, got {self.seeds}")
        object.__setattr__(self, "kernel_sets", tuple(names))
        object.__setattr__(self, "step_averages", bool(self.step_averages))  # the CLI's None: not asked
        object.__setattr__(self, "ablation", tuple(sorted(set(self.ablation) or self.default_ablation())))
        if self.budget:
            Budget.parse(self.budget, self.bits)  # fail early on a malformed budget
        given = {name: tuple(v) if isinstance(v, (list, tuple, range)) else (v,) for name, v in dict(self.macro_values).items()}
        object.__setattr__(self, "macro_values", tuple((name, given[name]) for name in sorted(given)))
        self.macro_space()  # fail early on an unknown setting, a bad value or an invalid combination
        object.__setattr__(self, "macro_values", tuple((name, sort_values(name, v)) for name, v in self.macro_values))

    def macro_space(self) -> MacroSpace:
        """The preset with the overrides and the searched settings (at the preset's image shape)."""
        base = get_preset(self.preset, timesteps=self.timesteps, step_averages=self.step_averages or None)
        return MacroSpace.of(base, dict(self.macro_values))

    def default_ablation(self) -> tuple[int, ...]:
        """SpiKernel's 1000 vs 2500 vs 5000 scaled to this search: a fifth, a half and all of it."""
        return tuple(sorted({max(1, self.candidates // 5), max(1, self.candidates // 2), self.candidates}))

    @property
    def budget_limit(self) -> Budget | None:
        return Budget.parse(self.budget, self.bits) if self.budget else None

    def to_dict(self) -> dict:
        data = {**asdict(self), "kernel_sets": list(self.kernel_sets), "ablation": list(self.ablation)}
        data.pop("macro_values")
        if not self.step_averages:  # absent when unused: explore.json files from before it existed still match
            data.pop("step_averages")
        for name, default in SEARCH_DEFAULTS.items():
            if data[name] == default:
                data.pop(name)
        if self.macro_values:  # absent when unused: explore.json files from before it existed still match
            data["macro_values"] = {name: list(values) for name, values in self.macro_values}
        return data

    def search_options(self) -> dict:
        """The keyword arguments of ``nas.run.search`` that these settings choose beside the set."""
        return dict(candidates=self.candidates, budget=self.budget, bits=self.bits, cell=self.cell,
                    batch=self.score_batch, repeats=self.repeats, seed=self.seed, top=max(self.top_k, 10),
                    fidelity=self.fidelity, limit_train=self.limit_train if self.refine else None,
                    **{name: getattr(self, name) for name in SEARCH_DEFAULTS})


SEARCH_DEFAULTS = {name: ExploreSettings.__dataclass_fields__[name].default
                   for name in ("sampler", "objectives", "state_budget", "state_bits", "energy_budget", "refine",
                                "refine_epochs", "refine_images", "validation", "proxy")}

# Sized to stay under ten minutes on a 2-core CPU on the embedded fashion-mnist-mini. T = 2 for 4 epochs
# costs what T = 4 for 2 did and tested 2-6 points better, without augmentation (benchmarks/recipe_study.py).
RUN_DEFAULTS = ExploreSettings(
    kernel_sets=("1x1_3x3", "1x1_5x5", "1x1_7x7"), candidates=100, top_k=1, epochs=4, budget="300K",
    preset="fmnist-small", timesteps=2, score_batch=64, repeats=2,
)
