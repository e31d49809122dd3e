"""Training run folders: what a run is, its per-epoch checkpoints, and rebuilding its model.

Layout of ``spikernel train --out DIR`` (docs/RESULTS.md describes it for users)::

    run.json                 what was asked: genotype, macro config, dataset, training config
    checkpoint.json          the last good epoch: optimizer/scheduler state, history, RNG scheme,
                             and the name + SHA-256 of the tensors file below
    checkpoints/epoch-N.safetensors   model weights and optimizer buffers of that epoch
    metrics.csv              one row per epoch (losses, top-1/top-5, spike rates, img/s)
    model.safetensors        final weights; its metadata repeats genotype, macro and dataset
    result.json              written last: final metrics, wall time, machine

Every file is written to a temporary name and renamed. ``checkpoint.json`` is the commit point:
it is replaced only after the tensors file it names is complete, and older tensors files are
removed only after that, so a kill at any instant leaves a consistent pair. Loading reads JSON
and safetensors only; nothing is unpickled.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from spikernel import __version__
from spikernel.errors import SpikernelError
from spikernel.nn.model import SNN, MacroConfig, build_model
from spikernel.space.genotype import Genotype
from spikernel.files import _atomic, read_json, write_json

RUN_FILE, CHECKPOINT_FILE, METRICS_FILE = "run.json", "checkpoint.json", "metrics.csv"
WEIGHTS_FILE, RESULT_FILE, CHECKPOINT_DIR = "model.safetensors", "result.json", "checkpoints"
FORMAT = "spikernel-run/1"


class CheckpointError(SpikernelError):
    """A run folder that cannot be resumed or loaded as it is."""


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a training run; a rerun into the same folder must match it exactly."""

    genotype: str
    macro: dict
    dataset: str
    train: dict

    def to_dict(self) -> dict:
        return {"format": FORMAT, "spikernel": __version__, "genotype": self.genotype, "macro": self.macro,
                "dataset": self.dataset, "train": self.train}

    @classmethod
    def from_dict(cls, data: dict) -> RunSpec:
        try:
            return cls(data["genotype"], data["macro"], data["dataset"], data["train"])
        except (KeyError, TypeError):
            raise CheckpointError("run.json is missing genotype/macro/dataset/train") from None

    def build(self) -> SNN:
        return build_model(Genotype.parse(self.genotype), MacroConfig.from_dict(self.macro))


def open_run(out: Path, spec: RunSpec, resume: bool = False) -> str:
    """Create the run folder, or check a rerun matches it. Returns 'new', 'resume' or 'finished'."""
    out = Path(out)
    existing = out / RUN_FILE
    if not existing.exists():
        if resume:
            raise CheckpointError(f"nothing to resume: {out} holds no run (no {RUN_FILE})")
        if out.exists() and any(out.iterdir()):
            raise CheckpointError(f"{out} is not empty and is not a spikernel training run; choose another --out")
        write_json(existing, spec.to_dict())
        return "new"
    previous = RunSpec.from_dict(read_json(existing))
    for key in ("genotype", "macro", "dataset", "train"):
        if getattr(previous, key) != getattr(spec, key):
            raise CheckpointError(f"{out} holds a different run ({key} differs: {_diff(getattr(previous, key), getattr(spec, key))}); "
                                  "use another --out or the same settings to resume")
    if (out / RESULT_FILE).exists():
        return "finished"
    if resume and not (out / CHECKPOINT_FILE).exists():
        raise CheckpointError(f"nothing to resume: {out} has no finished epoch yet")
    return "resume"


def _diff(old, new) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
    return f"{old!r} -> {new!r}"


# --------------------------------------------------------------------------- nested state <-> JSON + tensors


def split_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A state dict as JSON, its tensors moved to ``tensors`` under dotted keys.

    Dicts with non-string keys (an optimizer's per-parameter state) become ``{"items": [[k, v]]}``
    so integer keys survive the round trip.
    """
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"tensor": prefix}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"dict": {k: split_state(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}}
        return {"items": [[k, split_state(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"list": [split_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"value": obj}
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {prefix}")


def join_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    (kind, value), = obj.items()
    if kind == "tensor":
        return tensors[value]
    if kind == "dict":
        return {k: join_state(v, tensors) for k, v in value.items()}
    if kind == "items":
        return {k: join_state(v, tensors) for k, v in value}
    if kind == "list":
        return [join_state(v, tensors) for v in value]
    return value


# --------------------------------------------------------------------------- per-epoch checkpoints


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_checkpoint(out: Path, model: torch.nn.Module, optimizer, scheduler, epoch: int, history: list[dict],
                    rng: dict) -> Path:
    """Epoch ``epoch`` finished: tensors file first, then the JSON that names it, then old files go."""
    out = Path(out)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if not all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()):
        raise CheckpointError(f"weights are not finite after epoch {epoch}; the last good checkpoint is kept")
    optimizer_state = split_state(optimizer.state_dict(), "optimizer", tensors)
    name = f"{CHECKPOINT_DIR}/epoch-{epoch:04d}.safetensors"
    _atomic(out / name, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT, "epoch": str(epoch)}))
    write_json(out / CHECKPOINT_FILE, {
        "format": FORMAT,
        "epoch": epoch,
        "weights": name,
        "sha256": _sha256(out / name),
        "optimizer": optimizer_state,
        "scheduler": split_state(scheduler.state_dict(), "scheduler", {}),
        "rng": rng,
        "history": history,
    })
    # Older epochs, and temporaries a kill left mid-write, are garbage only now.
    for stale in (out / CHECKPOINT_DIR).iterdir():
        if stale.name != Path(name).name:
            stale.unlink(missing_ok=True)
    return out / name


def read_checkpoint(out: Path) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """The last good checkpoint's JSON and tensors, verified against the recorded SHA-256."""
    out = Path(out)
    if not (out / CHECKPOINT_FILE).exists():
        return None
    try:
        state = read_json(out / CHECKPOINT_FILE)
        weights = out / state["weights"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{out / CHECKPOINT_FILE} is unreadable ({exc})") from None
    if not weights.exists():
        raise CheckpointError(f"{weights} named by {CHECKPOINT_FILE} is missing")
    if _sha256(weights) != state.get("sha256"):
        raise CheckpointError(f"{weights} does not match the checksum in {CHECKPOINT_FILE} (corrupt)")
    try:
        return state, load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights} is unreadable ({exc})") from None


def load_checkpoint(out: Path, model: torch.nn.Module, optimizer=None, scheduler=None) -> dict | None:
    """Restore model (and optimizer, scheduler) from the last good checkpoint; returns its JSON."""
    found = read_checkpoint(out)
    if found is None:
        return None
    state, tensors = found
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    if optimizer is not None:
        optimizer.load_state_dict(join_state(state["optimizer"], tensors))
    if scheduler is not None:
        scheduler.load_state_dict(join_state(state["scheduler"], {}))
    return state


# --------------------------------------------------------------------------- metrics and final weights


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    """The whole per-epoch history as CSV (columns: every key seen, in first-seen order)."""
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else v) for k, v in row.items()})
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(buffer.getvalue()))


def save_model(path: Path, model: torch.nn.Module, spec: RunSpec) -> None:
    """Final weights; the metadata is enough to rebuild the network without the run folder."""
    metadata = {"format": FORMAT, "genotype": spec.genotype, "macro": json.dumps(spec.macro), "dataset": spec.dataset}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_model(path: str | Path) -> tuple[SNN, RunSpec, str]:
    """A trained network from a run folder (final weights, else its last checkpoint) or a weights file.

    Returns the model, its spec (``train`` is empty for a bare weights file) and where the weights came from.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / RUN_FILE).exists():
            raise CheckpointError(f"{path} is not a training run folder (no {RUN_FILE})")
        spec = RunSpec.from_dict(read_json(path / RUN_FILE))
        model = spec.build()
        if (path / WEIGHTS_FILE).exists():
            model.load_state_dict(_load_tensors(path / WEIGHTS_FILE))
            return model, spec, str(path / WEIGHTS_FILE)
        state = load_checkpoint(path, model)
        if state is None:
            raise CheckpointError(f"{path} has no weights yet (no finished epoch)")
        return model, spec, f"{path / state['weights']} (epoch {state['epoch']})"
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        spec = RunSpec(metadata["genotype"], json.loads(metadata["macro"]), metadata["dataset"], {})
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a spikernel weights file ({exc})") from None
    model = spec.build()
    model.load_state_dict(_load_tensors(path))
    return model, spec, str(path)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc})") from None
