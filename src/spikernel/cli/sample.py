"""``spikernel sample``: seeded random cells from a kernel-size set (SNASNet's sampler)."""

from __future__ import annotations

import json

import click

from spikernel.space.genotype import sample_many
from .group import main
from .options import CELL, KERNELS


@main.command()
@click.option("--kernels", "-k", type=KERNELS, default="1x1_3x3", show_default=True,
              help="Kernel-size set: a preset name (1x1_3x3_5x5) or odd sizes (1,3,9).")
@click.option("--cell", type=CELL, default="backward", show_default=True)
@click.option("-n", "count", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of genotype strings.")
def sample(kernels, cell, count, seed, as_json):
    """Sample N cells (pruned, with the direct 0->3 edge) from a kernel-size set."""
    genotypes = [str(g) for g in sample_many(kernels, cell, count, seed)]
    click.echo(json.dumps(genotypes) if as_json else "\n".join(genotypes))
