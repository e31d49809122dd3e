"""Plain deployment weights: safetensors plus the JSON that ``load_exported`` rebuilds the network from."""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from spikernel.deploy.fold import fold
from spikernel.errors import ExportError
from spikernel.deploy.nir import check_finite
from spikernel.files import read_json_object, write_json
from spikernel.training.checkpoint import load_state, read_weights, write_weights
from spikernel.nn.model import SNN, MacroConfig, build_model
from spikernel.space.genotype import Genotype

WEIGHTS_FORMAT = "spikernel-weights/1"


def export_safetensors(model: SNN, path: str | os.PathLike, bits: int = 32, dataset: str | None = None,
                       trained: dict | None = None) -> dict:
    """Weights as safetensors plus ``<name>.json`` with the architecture ``load_exported`` rebuilds.

    32 bits: the trained state dict as is (BatchNorm included), with the metadata of the training
    engine's weights files, so ``spikernel evaluate --run FILE`` reads it too. ``trained`` ({"epoch",
    "epochs"}, as ``load_run`` gives) is recorded in both files. 16, 8, 4 bits: the folded network
    with its weights at that width: float16, or integer codes (int8 tensors; 4-bit codes lie in
    [-7, 7], unpacked) with a float32 ``<name>.weight_scale`` per output channel.
    """
    from spikernel.nn.footprint import check_bits
    from spikernel.deploy.quantize import measured_size, quantize, quantize_codes

    check_bits(bits)
    check_finite(model)
    path = Path(path)
    if bits == 32:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    else:
        folded = quantize(model, bits)
        tensors = {}
        weights = {f"{n}.weight" for n, m in folded.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        for name, value in folded.state_dict().items():
            if name in weights and bits < 16:
                tensors[name], tensors[f"{name}_scale"] = quantize_codes(value, bits)
            else:
                tensors[name] = value.half() if bits == 16 else value.float()
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    architecture = {
        "format": WEIGHTS_FORMAT,
        "genotype": model.genotype.to_dict(),
        "macro": model.macro.to_dict(),
        "bits": bits,
        "folded": bits != 32,
        "weights": path.name,
        **({"trained": trained} if trained else {}),
    }
    if bits != 32:
        architecture["deployed"] = measured_size(model, bits).to_dict()
    metadata = {"architecture": json.dumps(architecture)}
    if bits == 32 and dataset:
        from spikernel.training.checkpoint import FORMAT

        metadata.update(format=FORMAT, genotype=str(model.genotype), macro=json.dumps(model.macro.to_dict()),
                        dataset=dataset)
        if trained and trained.get("epoch") is not None:
            metadata["epoch"] = str(trained["epoch"])
        if trained and trained.get("epochs") is not None:
            metadata["train"] = json.dumps({"epochs": trained["epochs"]})
    write_weights(path, tensors, metadata)
    write_json(path.with_suffix(".json"), architecture)
    return {**architecture, "file_bytes": path.stat().st_size}


def load_exported(path: str | os.PathLike) -> SNN:
    """Rebuild the network ``export_safetensors`` wrote (the ``.json`` or the ``.safetensors`` path)."""
    path = Path(path)
    spec_path, weights_path = path.with_suffix(".json"), path.with_suffix(".safetensors")
    try:
        spec = read_json_object(spec_path, ("format", "genotype", "macro", "folded"))
        if spec.get("format") != WEIGHTS_FORMAT:
            raise ExportError(f"{spec_path} is not a spikernel weights file (format {spec.get('format')!r})")
        model = build_model(Genotype.from_dict(spec["genotype"]), MacroConfig.from_dict(spec["macro"]))
        tensors, _ = read_weights(weights_path)
    except OSError as exc:
        raise ExportError(f"cannot read exported network {path}: {exc}") from None
    if spec["folded"]:
        model = fold(model)
        for name in [k for k in tensors if k.endswith(".weight_scale")]:
            weight = name.removesuffix("_scale")
            if weight not in tensors:
                raise ExportError(f"{weights_path} has {name} but no {weight}")
            codes = tensors.pop(weight).float()
            tensors[weight] = codes * tensors.pop(name).view(-1, *[1] * (codes.dim() - 1))
        tensors = {k: v.float() for k, v in tensors.items()}
    load_state(model, tensors, weights_path)
    return model.eval()
