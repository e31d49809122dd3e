"""``spikernel info``: parameters, footprint and neuron count of a genotype in a macro preset."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from spikernel.errors import GenotypeError
from spikernel.nn.footprint import BIT_WIDTHS, footprint
from spikernel.nn.macro import get_preset
from spikernel.space.genotype import op_name
from .group import main
from .options import CELL, GENOTYPE, PRESET


@main.command()
@click.option("--genotype", "-g", type=GENOTYPE, required=True, help="Cell matrix, e.g. '0302 0030 3003 0000'.")
@click.option("--preset", "-p", type=PRESET, default="fmnist", show_default=True, help="Macro-architecture preset.")
@click.option("--cell", type=CELL, help="Assert the cell type (a backward cell has backward edges).")
@click.option("--second-pool", type=int, help="Override the pooling before the head (p).")
@click.option("--width", type=int, help="Override the cell width C.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(genotype, preset, cell, second_pool, width, as_json):
    """Parameters, memory footprint per bit width and LIF neurons of a genotype."""
    if cell is not None and cell != genotype.pruned().cell_type:
        raise GenotypeError(f"genotype {genotype} is a {genotype.pruned().cell_type} cell, not {cell}")
    macro = get_preset(preset, second_pool=second_pool, width=width)
    fp = footprint(genotype, macro)
    report = {
        "genotype": str(genotype),
        "pruned": str(genotype.pruned()),
        "cell": genotype.pruned().cell_type,
        "kernels": list(genotype.kernels),
        "preset": preset,
        "macro": macro.to_dict(),
        **fp.to_dict(),
    }
    if as_json:
        click.echo(json.dumps(report))
        return
    table = Table(title=f"{genotype}  ({report['cell']} cell, preset {preset})", show_header=False)
    table.add_row("edges", ", ".join(f"{a}->{b} {op_name(c)}{' (t-1)' if a > b else ''}"
                                     for a, b, c in genotype.pruned().all_edges))
    table.add_row("parameters", f"{fp.params:,}")
    table.add_row("BatchNorm statistics", f"{fp.bn_buffers:,}")
    for bits in BIT_WIDTHS:
        table.add_row(f"footprint {bits}-bit", f"{fp.bytes(bits):,} B ({fp.bytes(bits) / 2**20:.3f} MiB)")
    table.add_row("LIF neurons", f"{fp.lif_neurons:,} in {fp.lif_layers} layers")
    Console().print(table)
