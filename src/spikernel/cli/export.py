"""``spikernel export``: a trained run as a NIR graph or as plain safetensors weights."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from spikernel.errors import ExportError, SpikernelError
from .group import main
from .options import BITS, download_option

FORMATS = ("nir", "safetensors")
TARGETS = ("generic", "sinabs")  # deploy.nir.TARGETS (tests/test_layers.py checks they agree)


def sample_images(name: str, count: int, data_dir: str | None, download: bool = False):
    """The first ``count`` test images of the run's dataset, normalised, to check the export on."""
    from spikernel.data.datasets import load_dataset

    try:
        dataset = load_dataset(name, data_dir, download)
    except SpikernelError as exc:
        raise ExportError(f"cannot load the run's dataset to check the export on ({exc})") from None
    return dataset.normalize(dataset.test.images[:count])


@main.command()
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path),
              help="A `spikernel train` folder, a `spikernel run` folder or a model .safetensors file.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="nir", show_default=True)
@click.option("--bits", type=BITS, default="32", show_default=True,
              help="safetensors: weight width (32 = the trained weights as is; 16/8/4 = folded and quantized).")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Output file [next to the weights: network.nir, network[-Bbit].safetensors].")
@click.option("--target", type=click.Choice(TARGETS), default=None,
              help="NIR: the readers to encode for [generic: snnTorch, Norse, spikingjelly, nirtorch; "
                   "sinabs: tau in steps, exact integration, Affine for Linear].")
@click.option("--check-images", type=click.IntRange(min=1), default=16, show_default=True,
              help="NIR: test images the file read back must reproduce spike for spike.")
@click.option("--data-dir", type=click.Path(), help="Directory with the run's dataset files.")
@download_option
def export(run_dir, fmt, bits, out, target, check_images, data_dir, download):
    """Write a trained network as a NIR graph (checked by simulation) or as safetensors + JSON."""
    from spikernel.deploy.export import export_nir, export_safetensors, load_run

    console = Console()
    model, info = load_run(run_dir)
    folder = run_dir if run_dir.is_dir() else run_dir.parent
    bits = int(bits)
    trained = {"epoch": info["epoch"], "epochs": info["epochs"]}  # an unfinished run's epoch goes into the file
    if fmt == "nir":
        if bits != 32:
            raise ExportError("--bits applies to --format safetensors; a NIR graph holds float32 weights")
        out = out or folder / "network.nir"
        from spikernel.training.checkpoint import recorded_data_dir

        data_dir = data_dir or recorded_data_dir(run_dir)
        report = export_nir(model, out, sample_images(info["dataset"], check_images, data_dir, download), target or "generic",
                            metadata={"dataset": info["dataset"], "trained_epoch": info["epoch"],
                                      "planned_epochs": info["epochs"]})
        console.print(f"wrote {out} (target {report['target']}): {report['nodes']} NIR nodes ({report['delays']} "
                      f"one-step delays for backward edges); read back and simulated on {report['images']} test images: all "
                      f"{report['spikes']:,} spikes of {report['lif_layers']} LIF layers equal, logits within "
                      f"{report['max_logit_error']:.1e}")
        return
    if target:
        raise ExportError("--target applies to --format nir")
    out = out or folder / ("network.safetensors" if bits == 32 else f"network-{bits}bit.safetensors")
    report = export_safetensors(model, out, bits, info["dataset"], trained=trained)
    console.print(f"wrote {out} ({report['file_bytes']:,} bytes) and {out.with_suffix('.json')}"
                  + (f"; deployed size at {bits} bits: {report['deployed']['bytes']:,} bytes" if bits != 32 else ""))
