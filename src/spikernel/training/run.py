"""One call for a whole training: ``train(genotype, data, out=...)`` -> ``TrainResult``.

With ``out`` the run lives in a folder (run.json, per-epoch checkpoints, metrics.csv, the final
model.safetensors and, written last, result.json); calling it again continues after the last
finished epoch, bit for bit as if never interrupted, and a finished run is returned as it is.
Under ``torchrun`` every process calls it and the work is data-parallel.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from spikernel import __version__
from spikernel.data.datasets import Dataset, load_dataset
from spikernel.errors import ConfigError, GenotypeError
from spikernel.events import OnEvent, emit
from spikernel.files import read_json, write_json
from spikernel.nn.footprint import footprint
from spikernel.nn.model import SNN, MacroConfig, default_preset, get_preset
from spikernel.nn.energy import measure_dataset
from spikernel.space.genotype import Genotype
from spikernel.training import distributed
from spikernel.training.checkpoint import (CHECKPOINT_FILE, RESULT_FILE, RUN_FILE, WEIGHTS_FILE, RunSpec,
                                           checkpoint_epoch, load_model, open_run, save_model)
from spikernel.training.loop import TrainConfig, fit, steps_per_epoch, train_count
from spikernel.training.timebudget import epochs_within, time_one_epoch

ENERGY_IMAGES = 1000  # test images the result's spike, SOP and energy figures are counted on


@dataclass
class TrainResult:
    model: SNN
    result: dict  # what result.json holds (history, test figures, energy, machine)
    out: Path | None = None
    status: str = "new"  # new, resume or finished (nothing was trained)

    @property
    def test_acc(self) -> float:
        return self.result["test"]["test_acc"]


def train(genotype: Genotype | str | SNN, data: Dataset | str, *, out: str | Path | None = None,
          macro: MacroConfig | str | None = None, config: TrainConfig | None = None, device: str = "auto",
          resume: bool = False, command: str | None = None, on_event: OnEvent | None = None,
          on_epoch: Callable[[dict], None] | None = None, data_dir: str | None = None,
          energy: bool = True) -> TrainResult:
    """Train a cell (or a built ``SNN``, from its current weights) on ``data`` and evaluate it.

    ``macro``: a preset name or settings (default: the dataset's preset), fitted to the data's
    shape. ``config``: the recipe, epochs and batch (``TrainConfig``). ``resume=True`` insists on a
    run to continue in ``out``; without it a rerun continues anyway. ``on_epoch`` receives each
    finished epoch's metrics row (also the rows a resumed run had already finished, first).
    ``data_dir`` (where the dataset's files are, as the user gave it) is kept in run.json, so that
    evaluating or exporting the run later finds the data without being told again. ``energy=False``
    leaves the result's spike, SOP and energy count on test images out (refinement never reads it).
    """
    config = config or TrainConfig()
    world, device = distributed.init(device)
    try:
        data = load_dataset(data) if isinstance(data, str) else data
        model, macro = _initial_model(genotype, macro, data, config.seed)
        if config.batch_size < world.size:
            raise ConfigError(f"batch {config.batch_size} is smaller than the {world.size} processes")
        spec = RunSpec(str(model.genotype), macro.to_dict(), data.name, config.identity())
        out = Path(out) if out is not None else None
        status = _open(out, spec, resume, world) if out is not None else "new"
        if status == "finished":
            emit(on_event, "train", message=f"{out} is already finished; its result is in {out / RESULT_FILE}")
            return TrainResult(load_model(out)[0], read_json(out / RESULT_FILE), out, status)
        if status == "new" and out is not None and data_dir is not None and world.is_main:
            _record_in_run_file(out, "data_dir", str(data_dir))
        if config.time_budget is not None:
            config = _planned(config, model, data, device, out, world, on_event)
        config = _augmentation_decided(config, out, world)
        started = time.perf_counter()
        history = _fit(model, data, config, device, out, world, on_event, on_epoch)
        result = _result(spec, model, history, data, world, device, time.perf_counter() - started, command, energy)
        if out is not None and world.is_main:
            save_model(out / WEIGHTS_FILE, model, spec, epoch=len(history))
            write_json(out / RESULT_FILE, result)  # last: its presence marks a finished run
        return TrainResult(model, result, out, status)
    finally:
        distributed.shutdown(world)


def _initial_model(genotype, macro, data: Dataset, seed: int) -> tuple[SNN, MacroConfig]:
    if isinstance(genotype, SNN):
        return genotype, genotype.macro
    if isinstance(genotype, nn.Module):
        raise ConfigError("train takes a genotype or a spikernel SNN")
    genotype = Genotype.parse(genotype) if isinstance(genotype, str) else genotype
    if macro is None:
        macro = default_preset(data.name)
    macro = (get_preset(macro) if isinstance(macro, str) else macro).for_data(data)
    torch.manual_seed(seed)
    return SNN(genotype.pruned(), macro), macro


def _planned(config: TrainConfig, model, data, device, out: Path | None, world, on_event) -> TrainConfig:
    """The epochs a time budget allows: measured once, kept in run.json for every resume."""
    def measure() -> dict:
        steps = steps_per_epoch(train_count(data, config), config.batch_size, world)
        epoch_s = time_one_epoch(model, data, config, device, steps)
        epochs = epochs_within(config.time_budget, epoch_s)
        if epochs < 1:
            raise ConfigError(f"time budget of {config.time_budget:g} s is too short for one epoch "
                              f"(about {epoch_s:.0f} s measured here)")
        emit(on_event, "train", message=f"time budget {config.time_budget:g} s: {epochs} epochs of about "
                                        f"{epoch_s:.0f} s each")
        return {"epochs": epochs, "seconds_per_epoch": round(epoch_s, 2), "budget_seconds": config.time_budget}

    return replace(config, epochs=_decided_once(out, world, "plan", measure)["epochs"])


def _augmentation_decided(config: TrainConfig, out: Path | None, world) -> TrainConfig:
    """An unset augmentation follows the rule of the day (``AUGMENT_FROM_EPOCHS``) once, and run.json
    keeps the decision: a resume after the rule changed goes on as the run began."""
    if config.augment is not None:
        return config
    return replace(config, augment=_decided_once(out, world, "augment", lambda: config.augments))


def _decided_once(out: Path | None, world, key: str, decide: Callable[[], object]):
    """What a run decides at its start: rank 0 calls ``decide`` the first time and records the answer
    in run.json under ``key``, where every resume reads it back; the other ranks get rank 0's answer."""
    value = None
    if world.is_main:
        value = read_json(out / RUN_FILE).get(key) if out is not None else None
        if value is None:
            value = decide()
            if out is not None:
                _record_in_run_file(out, key, value)
    return world.share(value)


def _record_in_run_file(out: Path, key: str, value) -> None:
    """Add what the run decided or was told (its plan, its data folder) to run.json, beside its spec."""
    write_json(out / RUN_FILE, {**read_json(out / RUN_FILE), key: value})


def _open(out: Path, spec: RunSpec, resume: bool, world) -> str:
    """Rank 0 creates or checks the folder first; the others then check against what it wrote."""
    status = open_run(out, spec, resume) if world.is_main else None
    world.barrier()
    return status if world.is_main else open_run(out, spec, resume=False)


def _fit(model, data, config: TrainConfig, device, out, world, on_event, on_epoch=None) -> list[dict]:
    done = checkpoint_epoch(out) if out is not None else 0
    for row in read_json(out / CHECKPOINT_FILE)["history"] if done and on_epoch else ():
        on_epoch(row)  # the epochs a resumed run had finished, first
    if done and world.is_main:
        emit(on_event, "train", message=f"resuming {out} after epoch {done}")
    images = min(config.limit_train or len(data.train), len(data.train))
    total = config.epochs * images
    clock = {"t": time.perf_counter(), "n": 0, "done": done * images, "last": ""}
    report = on_event if world.is_main else None
    emit(report, "train", done=clock["done"], total=total)

    def on_batch(n, loss):
        clock["n"] += n
        clock["done"] += n
        rate = clock["n"] / max(time.perf_counter() - clock["t"], 1e-9)
        emit(report, "train", done=clock["done"], total=total, info=f"loss {loss:.3f} · {rate:,.0f} img/s{clock['last']}")

    def epoch_done(row):
        clock.update(t=time.perf_counter(), n=0, done=row["epoch"] * images, last=f" · test {row['test_acc']:.2%}")
        emit(report, "train", done=clock["done"], total=total, info=clock["last"].strip(" ·"))
        if on_epoch is not None:
            on_epoch(row)

    return fit(model, data, config, device, on_batch=on_batch, on_epoch=epoch_done, run_dir=out, world=world,
               tensorboard=out is not None)


def _result(spec: RunSpec, model, history, data, world, device, seconds: float, command: str | None,
            energy: bool = True) -> dict:
    fp = footprint(Genotype.parse(spec.genotype), MacroConfig.from_dict(spec.macro))
    last = history[-1]
    return {
        "spikernel": __version__,
        "command": command,  # the CLI's command line; None for a call from Python
        "genotype": spec.genotype,
        "macro": spec.macro,
        "dataset": {"name": data.name, "train": len(data.train), "test": len(data.test), "source": data.source},
        "train": spec.train,
        "params": fp.params,
        "footprint": fp.to_dict(),
        "test": {k: v for k, v in last.items() if k.startswith("test_")},
        "spike_rate": last.get("spike_rate"),
        "energy": measure_dataset(model, data, limit=ENERGY_IMAGES, device=device).to_dict() if energy else None,
        "best_test_acc": max(row["test_acc"] for row in history),
        "epochs": len(history),
        "train_img_per_s": sum(r["train_img_per_s"] for r in history) / len(history),
        "seconds_this_session": seconds,
        "seconds_all_epochs": sum(r["seconds"] for r in history),
        "history": history,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                    "device": distributed.device_label(device), "processes": world.size,
                    "threads": torch.get_num_threads()},
    }


def read_search(folder: Path) -> tuple[Genotype, dict | None, str | None]:
    """The best cell of a search folder (selection.json), a ``spikernel run`` folder (its pick) or
    a trained run (result.json), with the macro settings it was picked at and the dataset."""
    folder = Path(folder)
    try:
        if (folder / "selection.json").exists() and "run" in read_json(folder / "selection.json"):
            folder = folder / read_json(folder / "selection.json")["run"]  # a `spikernel run` folder's pick
        if (folder / "selection.json").exists():
            best = read_json(folder / "selection.json")["best"]
            if best is None:
                raise ConfigError(f"{folder}: the search selected nothing (every cell was over its budget)")
            settings = read_json(folder / "search.json")["settings"] if (folder / "search.json").exists() else {}
            dataset = settings.get("scoring", {}).get("dataset")
            # The pick's own settings (a search with macro dimensions picks them too), else the search's.
            return Genotype.parse(best["genotype"]), best.get("macro") or settings.get("macro"), dataset
        if (folder / "result.json").exists():
            result = read_json(folder / "result.json")  # a trained run: retrain its cell
            return Genotype.parse(result["genotype"]), result.get("macro"), result["dataset"]["name"]
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, GenotypeError):
            raise
        raise ConfigError(f"{folder}: unreadable search results ({exc})") from None
    raise ConfigError(f"{folder} holds no search results (selection.json or result.json)")
