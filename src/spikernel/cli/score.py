"""``spikernel score``: training-free proxies of given cells, on the batches a search scores on."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from spikernel.data import DEFAULT_DATASET
from spikernel.errors import ConfigError, GenotypeError
from spikernel.nn.macro import default_preset
from spikernel.proxy import DEFAULT_PROXY, RANKINGS
from spikernel.space.genotype import Genotype
from .group import main
from .options import BITS, CELL, ENCODING, ENCODING_HELP, GENOTYPE, PRESET, apply_threads, threads_option
from .render import stdout


def read_genotypes(path: Path) -> list[Genotype]:
    """One genotype per line; blank lines and ``#`` comments are skipped; a bad line is named."""
    genotypes = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            genotypes.append(Genotype.parse(text))
        except GenotypeError as exc:
            raise GenotypeError(f"{path}, line {number}: {exc}") from None
    if not genotypes:
        raise ConfigError(f"{path} holds no genotype")
    return genotypes


@main.command()
@click.option("--genotype", "-g", "genotypes", type=GENOTYPE, multiple=True, help="A cell; repeat for more.")
@click.option("--genotypes", "genotype_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file with one genotype per line.")
@click.option("--dataset", default=DEFAULT_DATASET, show_default=True)
@click.option("--data-dir", type=click.Path(), help="Directory with the dataset's files.")
@click.option("--preset", "-p", type=PRESET, help="Macro preset [the dataset's].")
@click.option("--width", type=click.IntRange(min=1), help="Override the cell width C.")
@click.option("--hidden", type=click.IntRange(min=1), help="Override the head's hidden width H.")
@click.option("--votes", type=click.IntRange(min=1), help="Override the output neurons per class V.")
@click.option("--second-pool", type=click.IntRange(min=1), help="Override the pooling before the head p.")
@click.option("--timesteps", "-T", type=click.IntRange(min=1), help="Override the timesteps T.")
@click.option("--encoding", type=ENCODING, help=ENCODING_HELP)
@click.option("--cell", type=CELL, help="Refuse cells that are not of this type.")
@click.option("--proxy", default=DEFAULT_PROXY, show_default=True,
              help="The proxy reported as `score` (see --all), or a rank vote among the cells given: vote (every "
                   "proxy but params), vote+params.")
@click.option("--all", "all_proxies", is_flag=True, help="Compute every known proxy.")
@click.option("--score-batch", "--batch", "batch", type=click.IntRange(min=2), default=256, show_default=True,
              help="Images per scoring batch, as in search.")
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True, help="Scoring batches.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the scoring batches and weights.")
@click.option("--bits", type=BITS, default="32", show_default=True, help="Bits per value of footprint_bytes.")
@click.option("--device", default="cpu", show_default=True)
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
def score(genotypes, genotype_file, dataset, data_dir, preset, width, hidden, votes, second_pool, timesteps, encoding,
          cell, proxy, all_proxies, batch, repeats, seed, bits, device, threads, as_json):
    """Score cells without training: the same score a search with these settings gives them."""
    from spikernel import api

    cells = list(genotypes) + (read_genotypes(genotype_file) if genotype_file else [])
    if not cells:
        raise click.UsageError("give cells with -g or --genotypes FILE")
    if cell is not None:
        wrong = next((g for g in cells if g.pruned().cell_type != cell), None)
        if wrong is not None:
            raise GenotypeError(f"genotype {wrong} is a {wrong.pruned().cell_type} cell, not {cell}")
    known = api.proxies()
    if proxy not in RANKINGS:
        raise ConfigError(f"unknown proxy {proxy!r}; known: {', '.join(RANKINGS)}")
    apply_threads(threads)
    data = api.load_dataset(dataset, data_dir)
    overrides = dict(width=width, hidden=hidden, votes=votes, second_pool=second_pool, timesteps=timesteps,
                     encoding=encoding)
    macro = api.preset(preset or default_preset(data.name), data, **overrides)
    scored = api.score(cells, macro, data, proxy=proxy, also=known if all_proxies else (), batch=batch,
                       repeats=repeats, seed=seed, bits=int(bits), device=device)
    rows = [s.to_dict() for s in scored]
    if as_json:
        click.echo(json.dumps(rows))
        return
    table = Table(title=f"spikernel score ({proxy})")
    for column in ("genotype", "params", "footprint_bytes", "score", *rows[0]["proxies"]):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["genotype"], f"{row['params']:,}", f"{row['footprint_bytes']:,}", f"{row['score']:.4g}",
                      *(f"{v:.4g}" for v in row["proxies"].values()))
    stdout().print(table)
