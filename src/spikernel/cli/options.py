"""Option types shared by several subcommands: parse early, fail with one clear line."""

from __future__ import annotations

import click

from spikernel.errors import SpikernelError
from spikernel.nas import SAMPLERS
from spikernel.proxy import RANKINGS
from spikernel.selection.settings import SEARCH_DEFAULTS
from spikernel.nn.footprint import BIT_WIDTHS, BUDGET_FORMS
from spikernel.nn.macro import ENCODING_NAMES, NAMED, PRESETS, parse_values
from spikernel.space.genotype import CELL_TYPES, Genotype, KernelSet


class _Parsed(click.ParamType):
    parser = staticmethod(lambda text: text)

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            return self.parser(value)
        except SpikernelError as exc:
            self.fail(str(exc), param, ctx)


class GenotypeType(_Parsed):
    name = "GENOTYPE"
    parser = staticmethod(Genotype.parse)


class KernelSetType(_Parsed):
    name = "KERNELS"
    parser = staticmethod(KernelSet.parse)


GENOTYPE = GenotypeType()
KERNELS = KernelSetType()
PRESET = click.Choice(sorted(PRESETS))
CELL = click.Choice(CELL_TYPES)
BITS = click.Choice([str(b) for b in BIT_WIDTHS])
ENCODING = click.Choice(ENCODING_NAMES)  # one encoding, where a command does not search
ENCODING_HELP = ("Input encoding: direct (the analog image every step), poisson (rate-coded spikes) or latency "
                 "(one spike per pixel, brighter earlier) [the preset's: direct].")


class DurationType(_Parsed):
    name = "DURATION"

    @staticmethod
    def parser(text):
        from spikernel.training.timebudget import parse_duration

        return parse_duration(text)


DURATION = DurationType()


class MacroValuesType(click.ParamType):
    """``8`` (an override) or ``8,16,32`` (a search dimension): the values of one macro setting."""

    name = "N[,N...]"

    def __init__(self, name: str | None = None):
        self.name = name or self.name

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        if isinstance(value, int):
            return (value,)
        setting = param.name if param is not None else "value"
        try:
            return parse_values(setting, value)
        except SpikernelError as exc:
            self.fail(str(exc), param, ctx)


MACRO_VALUES = MacroValuesType()
MACRO_NAMES = MacroValuesType("NAME[,NAME...]")  # a setting whose values are names (the encoding)
# The macro settings a search can vary, as options: (flag, setting, help). One value overrides the
# preset; a comma-separated list makes the setting a search dimension beside the cell.
MACRO_OPTIONS = (
    ("--width", "width", "cell width C"),
    ("--hidden", "hidden", "head hidden width H"),
    ("--votes", "votes", "output neurons per class V"),
    ("--second-pool", "second_pool", "pooling before the head p"),
    ("--stem-stride", "stem_stride", "stem stride s"),
    ("--timesteps", "timesteps", "timesteps T"),
    ("--encoding", "encoding", f"input encoding ({', '.join(ENCODING_NAMES)})"),
)


STEP_AVERAGES_HELP = ("Keep BatchNorm running averages per timestep for direct input too (spike encodings always do) "
                      "[one for all steps, as SNASNet; the search's for --from-search].")
step_averages_option = click.option("--step-averages", is_flag=True, default=None, help=STEP_AVERAGES_HELP)


def macro_options(defaults: dict | None = None):
    """The ``MACRO_OPTIONS`` on a command (``-T`` for ``--timesteps``), then ``--step-averages``;
    ``defaults`` by setting name."""
    defaults = defaults or {}

    def decorate(f):
        f = step_averages_option(f)
        for flag, setting, about in reversed(MACRO_OPTIONS):
            names = (flag, "-T") if setting == "timesteps" else (flag,)
            default = defaults.get(setting)
            value = "NAME" if setting in NAMED else "N"
            f = click.option(*names, setting, type=MACRO_NAMES if setting in NAMED else MACRO_VALUES, default=default,
                             show_default=default is not None,
                             help=f"The {about}: {value} overrides the preset; {value},{value},... searches over "
                                  "the values.")(f)
        return f

    return decorate


def macro_values(options: dict) -> dict[str, tuple[int, ...]]:
    """The macro settings given (removed from ``options``): {setting: values}."""
    given = {setting: options.pop(setting) for _, setting, _ in MACRO_OPTIONS if setting in options}
    return {setting: values for setting, values in given.items() if values is not None}
RECIPE_NAMES = ("fast", "snasnet", "refine")  # spikernel.training.recipe.RECIPES, without importing torch here
RECIPE = click.Choice(RECIPE_NAMES)


def threads_option(f):
    """``--threads N``: PyTorch's threads for this command [the cores the load leaves idle]."""
    return click.option("--threads", type=int, default=None,
                        help="CPU threads [the cores other processes leave idle, at least 1].")(f)


def apply_threads(threads: int | None) -> int:
    from spikernel.threads import use_threads

    return use_threads(threads)


OBJECTIVES_HELP = ("What --sampler nsga2 trades off, and selection.json's pareto is over: score,footprint (default) "
                   "or score,footprint,energy [energy too under an --energy-budget].")

def selection_options(f):
    """How candidates are drawn and picked, and the budgets beside memory: the same options on
    ``search``, ``explore`` and ``run``."""
    options = [
        click.option("--sampler", type=click.Choice(SAMPLERS), default=SEARCH_DEFAULTS["sampler"], show_default=True,
                     help="random = SNASNet's sampling, exactly; tpe; nsga2 (score vs footprint, and energy: "
                          "--objectives)."),
        click.option("--objectives", help=OBJECTIVES_HELP),
        click.option("--proxy", type=click.Choice(RANKINGS), default=SEARCH_DEFAULTS["proxy"], show_default=True,
                     help="What candidates are ranked by: a proxy, or a rank vote of them over the finished candidates "
                          "(vote, vote+params; random sampler) (docs/EVIDENCE.md: how well each ranks trained accuracy)."),
        click.option("--state-budget", help="Neuron-state limit in bytes (50KB): one membrane potential per LIF neuron."),
        click.option("--state-bits", type=BITS, help="Bits per membrane potential [--bits]."),
        click.option("--energy-budget", help="Energy (5uJ, 800nJ) or synaptic operations (2MSOP) per inference, "
                                             "estimated from each candidate's spikes at initialisation on the first "
                                             "scoring batch."),
        click.option("--refine", type=click.IntRange(min=0), default=SEARCH_DEFAULTS["refine"], show_default=True,
                     help="Train the best K briefly on a validation split (successive halving) and pick by "
                          "validation accuracy."),
        click.option("--refine-epochs", type=click.IntRange(min=1), default=SEARCH_DEFAULTS["refine_epochs"],
                     show_default=True),
        click.option("--refine-images", type=click.IntRange(min=1), default=SEARCH_DEFAULTS["refine_images"],
                     show_default=True,
                     help="Training images each refined candidate trains on per epoch."),
        click.option("--validation", type=click.IntRange(min=1), default=SEARCH_DEFAULTS["validation"], show_default=True,
                     help="Training images held out for refinement's validation accuracy."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


BUDGET_HELP = (f"Memory limit: {BUDGET_FORMS}; bytes count weights at --bits. Exponents (1e3), signs, "
               "inf and nan are refused.")


def download_option(f):
    """``--download``: the same flag on every command that reads a dataset."""
    return click.option("--download", is_flag=True, help="Fetch the dataset (checksummed) if it is not on disk.")(f)
