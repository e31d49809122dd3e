"""``spikernel evaluate``: top-1/top-5, loss and spike rates of a trained run folder or weights file."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from spikernel.data import DATASET_NAMES
from spikernel.errors import ConfigError
from spikernel.nn.macro import MacroConfig
from .group import main
from .options import BITS, download_option


def load_for_evaluation(path: Path, dataset_name: str | None, data_dir, download: bool):
    """The trained model, its spec, the dataset it is evaluated on (its own unless overridden) and how it was loaded."""
    from spikernel.data.datasets import load_dataset
    from spikernel.training.checkpoint import load_trained, resolve_run

    from spikernel.training.checkpoint import recorded_data_dir

    data_dir = data_dir or (recorded_data_dir(path) if dataset_name is None else None)
    loaded = load_trained(resolve_run(path))  # warns when the run is unfinished
    model, spec = loaded.model, loaded.spec
    data = load_dataset(dataset_name or spec.dataset, data_dir, download)
    macro = MacroConfig.from_dict(spec.macro)
    shape = (data.in_channels, data.image_size, data.num_classes)
    if shape != (macro.in_channels, macro.image_size, macro.num_classes):
        raise ConfigError(f"{data.name} has {shape[0]}x{shape[1]}x{shape[1]} images and {shape[2]} classes; the model "
                          f"expects {macro.in_channels}x{macro.image_size}x{macro.image_size} and {macro.num_classes}")
    if macro.spiking_input:  # its encoder undoes the normalisation the images come with: this dataset's
        model.macro = macro.for_data(data)
    return model, spec, data, loaded


@main.command()
@click.option("--run", "path", type=click.Path(exists=True, path_type=Path), required=True,
              help="A `spikernel train` folder, a `spikernel run` folder or a model .safetensors file (as export takes).")
@click.option("--dataset", type=click.Choice(sorted(DATASET_NAMES)), help="Evaluate on another dataset of the same shape.")
@click.option("--data-dir", type=click.Path(), help="Directory with the dataset's files.")
@download_option
@click.option("--batch", "batch_size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--amp/--no-amp", default=False, show_default=True, help="bf16 autocast.")
@click.option("--bits", type=BITS, default="32", show_default=True,
              help="Fold BatchNorm and quantize weights to this width first (16 = float16, 8/4 = integers).")
@click.option("--e-ac", type=float, help="pJ per accumulate [0.9, 45 nm].")
@click.option("--e-mac", type=float, help="pJ per multiply-accumulate [4.6, 45 nm].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def evaluate(path, dataset, data_dir, download, batch_size, device, amp, bits, e_ac, e_mac, as_json):
    """Test-split accuracy (top-1, top-5), loss and per-LIF-layer spike rates of a trained network."""
    from spikernel.deploy.quantize import footprint_at, quantize
    from spikernel.nn.energy import EnergyModel, OpCounter
    from spikernel.training.distributed import resolve_device
    from spikernel.training.loop import evaluate as evaluate_model

    energy_model = EnergyModel(**{k: v for k, v in {"e_ac": e_ac, "e_mac": e_mac}.items() if v is not None})
    model, spec, data, loaded = load_for_evaluation(path, dataset, data_dir, download)
    source = loaded.source
    device = resolve_device(device)
    model = quantize(model, int(bits)) if int(bits) != 32 else model
    with OpCounter(model, energy_model) as ops:  # counts ride along the accuracy pass
        report = evaluate_model(model.to(device), data, batch_size=batch_size, device=device, amp=amp)
    ops = ops.report()
    report = {"weights": source, "genotype": spec.genotype, "epoch": loaded.epoch, "epochs": loaded.epochs,
              "dataset": data.name, "images": len(data.test), **report,
              "footprint": footprint_at(spec.genotype, model.macro, int(bits)), "energy": ops.to_dict()}
    if as_json:
        click.echo(json.dumps(report))
        return
    table = Table(title=f"spikernel evaluate  {source}", show_header=False)
    top5 = next((k for k in report if k.startswith("test_top")), None)
    table.add_row("dataset", f"{data.name} test ({len(data.test)} images)")
    table.add_row("genotype", spec.genotype)
    if not loaded.finished:
        table.add_row("weights", f"epoch {loaded.epoch} of {loaded.epochs} (unfinished run)")
    table.add_row("top-1 accuracy", f"{report['test_acc']:.2%}")
    if top5:
        table.add_row(f"top-{top5[len('test_top'):]} accuracy", f"{report[top5]:.2%}")
    table.add_row("loss", f"{report['test_loss']:.4f}")
    fp = report["footprint"]
    table.add_row(f"footprint at {bits} bits", f"{fp['deployed_bytes']:,} B deployed (folded); budget accounting "
                                                f"{fp['budget_bytes']:,} B")
    for label, value in ops.rows():
        table.add_row(label, value)
    table.add_row("spike rate (all LIF)", f"{report['spike_rate']:.4f}")
    for key, value in report.items():
        if key.startswith("spike_rate/"):
            table.add_row(f"  {key[len('spike_rate/'):]}", f"{value:.4f}")
    Console().print(table)
