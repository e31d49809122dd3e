"""Option types shared by several subcommands: parse early, fail with one clear line."""

from __future__ import annotations

import click

from spikernel.errors import SpikernelError
from spikernel.nn.footprint import BIT_WIDTHS, BUDGET_FORMS
from spikernel.nn.macro import PRESETS
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


class DurationType(_Parsed):
    name = "DURATION"

    @staticmethod
    def parser(text):
        from spikernel.training.timebudget import parse_duration

        return parse_duration(text)


DURATION = DurationType()
RECIPE_NAMES = ("fast", "snasnet")  # spikernel.training.recipe.RECIPES, without importing torch here
RECIPE = click.Choice(RECIPE_NAMES)


def threads_option(f):
    """``--threads N``: PyTorch's threads for this command [the cores the load leaves idle]."""
    return click.option("--threads", type=int, default=None,
                        help="CPU threads [the cores other processes leave idle, at least 1].")(f)


def apply_threads(threads: int | None) -> int:
    from spikernel.threads import use_threads

    return use_threads(threads)


BUDGET_HELP = (f"Memory limit: {BUDGET_FORMS}; bytes count weights at --bits. Exponents (1e3), signs, "
               "inf and nan are refused.")


def download_option(f):
    """``--download``: the same flag on every command that reads a dataset."""
    return click.option("--download", is_flag=True, help="Fetch the dataset (checksummed) if it is not on disk.")(f)
