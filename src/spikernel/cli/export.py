"""``spikernel export``: a trained run as a NIR graph or as plain safetensors weights."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from spikernel.data.datasets import load_dataset
from spikernel.errors import SpikernelError
from spikernel.deploy.export import TARGETS, ExportError, export_nir, export_safetensors, load_run
from .group import main
from .options import BITS

FORMATS = ("nir", "safetensors")


def sample_images(name: str, count: int, data_dir: str | None):
    """The first ``count`` test images of the run's dataset, normalised, to check the export on."""
    try:
        dataset = load_dataset(name, data_dir)
    except SpikernelError as exc:
        raise ExportError(f"cannot load the run's dataset to check the export on ({exc}); pass --data-dir") from None
    return dataset.normalize(dataset.test.images[:count])


@main.command()
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path),
              help="A `spikernel train` folder, a `spikernel run` folder or a model .safetensors file.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="nir", show_default=True)
@click.option("--bits", type=BITS, default="32", show_default=True,
              help="safetensors: weight width (32 = the trained weights as is; 16/8/4 = folded and quantized).")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Output file [next to the weights: network.nir, network[-Bbit].safetensors].")
@click.option("--target", type=click.Choice(tuple(TARGETS)), default=None,
              help="NIR: the readers to encode for [generic: snnTorch, Norse, spikingjelly, nirtorch; "
                   "sinabs: tau in steps, exact integration, Affine for Linear].")
@click.option("--check-images", type=click.IntRange(min=1), default=16, show_default=True,
              help="NIR: test images the file read back must reproduce spike for spike.")
@click.option("--data-dir", type=click.Path(), help="Directory with the run's dataset files.")
def export(run_dir, fmt, bits, out, target, check_images, data_dir):
    """Write a trained network as a NIR graph (checked by simulation) or as safetensors + JSON."""
    console = Console()
    model, info = load_run(run_dir)
    folder = run_dir if run_dir.is_dir() else run_dir.parent
    bits = int(bits)
    if fmt == "nir":
        if bits != 32:
            raise ExportError("--bits applies to --format safetensors; a NIR graph holds float32 weights")
        out = out or folder / "network.nir"
        report = export_nir(model, out, sample_images(info["dataset"], check_images, data_dir), target or "generic")
        console.print(f"wrote {out} (target {report['target']}): {report['nodes']} NIR nodes ({report['delays']} "
                      f"one-step delays for backward edges); read back and simulated on {report['images']} test images: all "
                      f"{report['spikes']:,} spikes of {report['lif_layers']} LIF layers equal, logits within "
                      f"{report['max_logit_error']:.1e}")
        return
    if target:
        raise ExportError("--target applies to --format nir")
    out = out or folder / ("network.safetensors" if bits == 32 else f"network-{bits}bit.safetensors")
    report = export_safetensors(model, out, bits, info["dataset"])
    console.print(f"wrote {out} ({report['file_bytes']:,} bytes) and {out.with_suffix('.json')}"
                  + (f"; deployed size at {bits} bits: {report['deployed']['bytes']:,} bytes" if bits != 32 else ""))
