"""Training run folders: what a run is, its per-epoch checkpoints, and rebuilding its model.

Layout of ``spikernel train --out DIR`` (docs/RESULTS.md describes it for users)::

    run.json                 what was asked: genotype, macro config, dataset, training config
    checkpoint.json          the last good epoch: optimizer/scheduler state, history, RNG scheme,
                             and the name + SHA-256 of the tensors file below
    checkpoints/epoch-N.safetensors   model weights and optimizer buffers of that epoch
    metrics.csv              one row per epoch (losses, top-1/top-5, spike rates, img/s)
    model.safetensors        final weights; its metadata repeats genotype, macro, dataset and training
                             settings, the epoch, and the SHA-256 of the tensors (``read_weights``)
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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from spikernel import __version__
from spikernel.errors import FileFormatError, SpikernelError, SpikernelWarning
from spikernel.nn.model import SNN, MacroConfig, build_model
from spikernel.space.genotype import Genotype
from spikernel.files import _atomic, read_json, read_json_object, write_json

RUN_FILE, CHECKPOINT_FILE, METRICS_FILE = "run.json", "checkpoint.json", "metrics.csv"
WEIGHTS_FILE, RESULT_FILE, CHECKPOINT_DIR = "model.safetensors", "result.json", "checkpoints"
FORMAT = "spikernel-run/1"
DIGEST_KEY = "tensors_sha256"  # in a weights file's metadata: what its tensors hashed to when written


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
    if first_non_finite(tensors) is not None:
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
        state = read_json_object(out / CHECKPOINT_FILE, ("epoch", "weights", "sha256", "optimizer", "history"))
        weights = out / state["weights"]
        int(state["epoch"])
    except FileFormatError:
        raise
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


def checkpoint_epoch(out: Path) -> int:
    """The last finished epoch recorded in ``out`` (0 before the first)."""
    path = Path(out) / CHECKPOINT_FILE
    if not path.exists():
        return 0
    epoch = read_json_object(path, ("epoch",))["epoch"]
    if not isinstance(epoch, int) or epoch < 0:
        raise CheckpointError(f"{path} is damaged (epoch {epoch!r}); restore it or start a new --out")
    return epoch


def load_checkpoint(out: Path, model: torch.nn.Module, optimizer=None, scheduler=None) -> dict | None:
    """Restore model (and optimizer, scheduler) from the last good checkpoint; returns its JSON."""
    found = read_checkpoint(out)
    if found is None:
        return None
    state, tensors = found
    load_state(model, {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")},
               out / state["weights"])
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


def save_model(path: Path, model: torch.nn.Module, spec: RunSpec, epoch: int | None = None) -> None:
    """Final weights; the metadata is enough to rebuild the network without the run folder."""
    metadata = {"format": FORMAT, "genotype": spec.genotype, "macro": json.dumps(spec.macro), "dataset": spec.dataset,
                "train": json.dumps(spec.train)}
    if epoch is not None:
        metadata["epoch"] = str(epoch)
    write_weights(path, model.state_dict(), metadata)


# --------------------------------------------------------------------------- weights files: one integrity check


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_weights(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file whose metadata records the tensors' digest (``read_weights`` checks it)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {**metadata, DIGEST_KEY: tensors_digest(tensors)}
    _atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A weights file's tensors and metadata, refused (``CheckpointError``) when unreadable, when its
    tensors differ from the digest recorded at writing (flipped bytes), or when any is NaN or inf.

    Every loader of final or exported weights goes through here. Files written before digests
    were recorded carry none; they are checked for finiteness only.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a spikernel weights file ({_first_line(exc)})") from None
    if DIGEST_KEY in metadata and tensors_digest(tensors) != metadata[DIGEST_KEY]:
        raise CheckpointError(f"{path} is damaged: its tensors differ from the checksum recorded when it was written")
    bad = first_non_finite(tensors)
    if bad is not None:
        raise CheckpointError(f"{path} holds non-finite weights (NaN or inf) in {bad}; it cannot be used")
    return tensors, metadata


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor holding a NaN or inf, else None.

    Checked on the weights themselves: a spiking network hides NaN weights from its outputs (a NaN
    membrane never crosses the threshold), so its logits can look finite and plausible.
    """
    return next((name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())),
                None)


def load_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source) -> None:
    """``model.load_state_dict`` that names what does not fit (missing, extra, wrong-shape tensors)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    shapes = [f"{k} {list(tensors[k].shape)} vs {list(v.shape)}" for k, v in expected.items()
              if k in tensors and tensors[k].shape != v.shape]
    problems = [f"{len(items)} {what} (first: {items[0]})" for what, items in
                (("missing", missing), ("unexpected", extra), ("of the wrong shape", shapes)) if items]
    if problems:
        genotype = getattr(model, "genotype", None)
        network = f"the network of cell {genotype}" if genotype is not None else "the network"
        raise CheckpointError(f"{source} does not fit {network}: tensors {'; '.join(problems)}; "
                              "the weights belong to another network")
    model.load_state_dict(tensors)


def check_same_network(metadata: dict[str, str], spec: RunSpec, weights: Path, described_by: Path) -> None:
    """The weights' recorded genotype, macro and dataset must be those ``described_by`` (run.json) names."""
    recorded = {"genotype": metadata.get("genotype"), "dataset": metadata.get("dataset")}
    expected = {"genotype": spec.genotype, "dataset": spec.dataset}
    try:
        if recorded["genotype"] is not None:
            recorded["genotype"] = str(Genotype.parse(recorded["genotype"]).pruned())
            expected["genotype"] = str(Genotype.parse(spec.genotype).pruned())
        if "macro" in metadata:
            recorded["macro"], expected["macro"] = json.loads(metadata["macro"]), spec.macro
        if "train" in metadata and spec.train:
            recorded["train"], expected["train"] = json.loads(metadata["train"]), spec.train
    except (SpikernelError, ValueError) as exc:
        raise CheckpointError(f"{described_by} or {weights} is damaged ({exc})") from None
    differ = [k for k, v in recorded.items() if v is not None and v != expected[k]]
    if differ:
        raise CheckpointError(f"{weights} was trained as another run than {described_by} describes "
                              f"({', '.join(differ)} differ{'s' if len(differ) == 1 else ''}): "
                              "the weights were swapped or the file was edited")


# --------------------------------------------------------------------------- loading a trained network


@dataclass
class Loaded:
    """A trained network and where it came from; ``epoch`` < ``epochs`` for an unfinished run."""

    model: SNN
    spec: RunSpec
    source: str
    epoch: int | None = None  # epochs trained (None: not recorded)
    epochs: int | None = None  # epochs the run was set to train

    @property
    def finished(self) -> bool:
        return self.epoch is None or self.epochs is None or self.epoch >= self.epochs


def load_model(path: str | Path) -> tuple[SNN, RunSpec, str]:
    """A trained network from a run folder (final weights, else its last checkpoint) or a weights file.

    Returns the model, its spec (a bare weights file's ``train`` is what it recorded, possibly empty)
    and where the weights came from.
    """
    loaded = load_trained(path)
    return loaded.model, loaded.spec, loaded.source


def resolve_run(run: str | Path) -> Path:
    """What ``--run`` names, as every command reads it: a ``spikernel train`` folder, a ``spikernel
    run`` folder (the trained run its selection chose) or a weights file."""
    run = Path(run)
    if not run.exists():
        raise CheckpointError(f"run {run} does not exist")
    if run.is_dir() and not (run / RUN_FILE).exists() and (run / "selection.json").is_file():
        selection = read_json(run / "selection.json")
        if not isinstance(selection, dict) or "run" not in selection:
            raise CheckpointError(f"{run}/selection.json names no trained run")
        run = run / selection["run"]
    if run.is_dir() and not (run / RUN_FILE).exists():
        raise CheckpointError(f"{run} is not a training run (no {RUN_FILE}): train one with spikernel train --out")
    return run


def recorded_data_dir(run: str | Path) -> str | None:
    """The ``--data-dir`` a run was trained with (kept in its run.json), if any."""
    run = resolve_run(run)
    path = run / RUN_FILE if run.is_dir() else None
    data_dir = read_json(path).get("data_dir") if path is not None and path.exists() else None
    return data_dir if isinstance(data_dir, str) else None


def load_trained(path: str | Path) -> Loaded:
    """``load_model`` with the epoch the weights are from; warns (``SpikernelWarning``) when the run is unfinished."""
    path = Path(path)
    loaded = _load_folder(path) if path.is_dir() else _load_file(path)
    if not loaded.finished:
        warnings.warn(SpikernelWarning(f"{path} is unfinished: using the weights of epoch {loaded.epoch} of "
                                       f"{loaded.epochs}"), stacklevel=2)
    return loaded


def _planned_epochs(spec: RunSpec) -> int | None:
    epochs = spec.train.get("epochs") if isinstance(spec.train, dict) else None
    return epochs if isinstance(epochs, int) else None


def _build(spec: RunSpec, described_by: Path) -> SNN:
    try:
        return spec.build()
    except SpikernelError as exc:
        raise CheckpointError(f"{described_by}: {exc}") from None


def _load_folder(path: Path) -> Loaded:
    if not (path / RUN_FILE).exists():
        raise CheckpointError(f"{path} is not a training run folder (no {RUN_FILE})")
    spec = RunSpec.from_dict(read_json_object(path / RUN_FILE))
    model = _build(spec, path / RUN_FILE)
    planned = _planned_epochs(spec)
    if (path / WEIGHTS_FILE).exists():
        tensors, metadata = read_weights(path / WEIGHTS_FILE)
        check_same_network(metadata, spec, path / WEIGHTS_FILE, path / RUN_FILE)
        load_state(model, tensors, path / WEIGHTS_FILE)
        return Loaded(model, spec, str(path / WEIGHTS_FILE), _int_or(metadata.get("epoch"), planned), planned)
    state = load_checkpoint(path, model)
    if state is None:
        raise CheckpointError(f"{path} has no weights yet (no finished epoch)")
    epoch = int(state["epoch"])
    return Loaded(model, spec, f"{path / state['weights']} (epoch {epoch} of {planned})", epoch, planned)


def _load_file(path: Path) -> Loaded:
    tensors, metadata = read_weights(path)
    try:
        spec = RunSpec(metadata["genotype"], json.loads(metadata["macro"]), metadata["dataset"],
                       json.loads(metadata.get("train", "{}")))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a spikernel weights file (no {exc} in its metadata)") from None
    model = _build(spec, path)
    load_state(model, tensors, path)
    planned = _planned_epochs(spec)
    return Loaded(model, spec, str(path), _int_or(metadata.get("epoch"), None), planned)


def _int_or(text: str | None, default: int | None) -> int | None:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
