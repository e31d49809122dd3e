"""The Python API: ``import spikernel as sk``; every name here is also ``sk.<name>``.

One function per step of the method, each returning a value object, none printing. Long calls
take ``on_event`` (see ``spikernel.events``); calls that write a folder (``out=``) resume it.

    data = sk.load_dataset("fashion-mnist-mini")
    macro = sk.preset("fmnist-small", data)
    found = sk.search("1x1_3x3_5x5", macro, data, candidates=100, budget="300K", out="runs/s")
    run = sk.train(found.best.genotype, data, macro=macro, epochs=2, out="runs/t")
    sk.export(run, format="nir")
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Sequence

import torch

from spikernel.data.datasets import Dataset, load_dataset
from spikernel.errors import ConfigError
from spikernel.events import OnEvent
from spikernel.nas.run import SearchResult, as_dataset, as_macro
from spikernel.nas.run import search  # noqa: F401  (sk.search: the whole search in one call)
from spikernel.nn.footprint import Footprint
from spikernel.nn.footprint import footprint as _footprint
from spikernel.nn.macro import MacroSpace
from spikernel.nn.model import SNN, MacroConfig, get_preset
from spikernel.proxy import DEFAULT_PROXY
from spikernel.space.genotype import Genotype, KernelSet, sample_many
from spikernel.training.loop import TrainConfig
from spikernel.training.run import TrainResult
from spikernel.training.run import train as _train


__all__ = ["proxies", "load_dataset", "preset", "MacroConfig", "MacroSpace", "Genotype", "kernel_set", "sample", "footprint", "score",
           "search", "build", "train", "evaluate", "explore", "select", "quantize", "energy", "export", "load",
           "Scored", "Evaluation", "SearchResult", "TrainResult", "TrainConfig", "Dataset"]


def preset(name: str, data: Dataset | None = None, **overrides) -> MacroConfig:
    """A registered macro preset (``fmnist-small``, ``snasnet-cifar10``, ...), with fields overridden
    and, given ``data``, fitted to its image shape and class count."""
    macro = get_preset(name, **overrides)
    return macro.for_data(data) if data is not None else macro


def kernel_set(kernels: str | Iterable[int]) -> KernelSet:
    """``"1x1_3x3_5x5"``, ``"1,3,9"`` or ``[1, 3, 9]``: the convolution sizes a search may place."""
    return KernelSet.parse(kernels if isinstance(kernels, str) else ",".join(str(k) for k in kernels))


def sample(kernels: KernelSet | str, n: int, seed: int = 0, cell: str = "backward") -> list[Genotype]:
    """SNASNet's seeded random cells: the first ``n`` of the stream a search with ``seed`` draws."""
    return list(sample_many(kernels, cell, n, seed))


def _genotype(genotype: Genotype | str) -> Genotype:
    return Genotype.parse(genotype) if isinstance(genotype, str) else genotype


def _macro(macro: MacroConfig | str) -> MacroConfig:
    return get_preset(macro) if isinstance(macro, str) else macro


def footprint(genotype: Genotype | str, macro: MacroConfig | str) -> Footprint:
    """Parameters, BatchNorm statistics and LIF neurons, from the widths alone (nothing is built);
    ``.bytes(bits)`` is the weight memory at a bit width."""
    return _footprint(_genotype(genotype), _macro(macro))


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Scored:
    """One cell's training-free figures (the JSON of ``spikernel score`` has the same fields)."""

    genotype: Genotype
    params: int
    footprint_bytes: int
    score: float  # the chosen proxy's value
    proxies: dict  # every computed proxy by name

    def to_dict(self) -> dict:
        return {f.name: str(v) if f.name == "genotype" else v
                for f, v in ((f, getattr(self, f.name)) for f in fields(self))}


def score(genotypes: Sequence[Genotype | str], macro: MacroConfig | str | None, data: Dataset | str, *,
          proxy: str = DEFAULT_PROXY, also: Sequence[str] = (), batch: int = 256, repeats: int = 2, seed: int = 0,
          bits: int = 32, device: str = "cpu") -> list[Scored]:
    """Score cells on the seeded batches a search with these settings uses: a cell gets the same
    SAHD score here as in ``sk.search``. ``proxy`` is the one ranked by (``score``): a proxy, or a
    rank vote (``vote``, ``vote+params``: the mean rank of its proxies among these cells); ``also``
    names more proxies to compute (``sk.proxies()`` lists them)."""
    from spikernel.proxy import VOTES, members
    from spikernel.proxy.combine import rank_vote
    from spikernel.proxy.zero_cost import check_names, compute_proxies, labelled_batches
    from spikernel.training.distributed import resolve_device

    names = check_names(list(dict.fromkeys(["params", *members(proxy), *also])))
    data = as_dataset(data)
    macro = as_macro(macro, data)
    device = resolve_device(device)
    raw, labels = labelled_batches(data.train.images, data.train.labels, batch, repeats, seed)
    batches = [data.normalize(b).to(device) for b in raw]
    labels = [y.to(device) for y in labels]
    cells = [_genotype(g) for g in genotypes]
    values = [compute_proxies(genotype, macro, batches, labels, names, seed) for genotype in cells]
    scores = rank_vote(values, VOTES[proxy]) if proxy in VOTES else [v[proxy] for v in values]
    results = []
    for genotype, ranked, computed in zip(cells, scores, values):
        fp = _footprint(genotype, macro)
        results.append(Scored(genotype.pruned(), fp.params, fp.bytes(bits), float(ranked), computed))
    return results


def proxies() -> list[str]:
    """The zero-cost proxies ``score`` knows."""
    from spikernel.proxy.zero_cost import PROXIES

    return list(PROXIES)


# --------------------------------------------------------------------------- networks


def build(genotype: Genotype | str, macro: MacroConfig | str, seed: int | None = None) -> SNN:
    """The network of a cell in a macro-architecture (weights drawn with ``seed`` when given)."""
    if seed is not None:
        torch.manual_seed(seed)
    return SNN(_genotype(genotype), _macro(macro))


def train(genotype: Genotype | str | SNN, data: Dataset | str, *, out: str | Path | None = None,
          macro: MacroConfig | str | None = None, recipe: str = "fast", config: TrainConfig | None = None,
          device: str = "auto", on_event: OnEvent | None = None, **settings) -> TrainResult:
    """Train a cell (or a built SNN) and evaluate it, as ``spikernel train`` does.

    ``recipe`` names the defaults (``fast`` or ``snasnet``), ``settings`` override ``TrainConfig``
    fields (``epochs=2, batch_size=64, lr=..., time_budget=600``), or ``config`` gives them all.
    With ``out`` the run resumes where it stopped.
    """
    from spikernel.training.recipe import recipe as named

    config = TrainConfig(**{**config.to_dict(), **settings}) if config else named(recipe, **settings)
    return _train(genotype, data, out=out, macro=macro, config=config, device=device, on_event=on_event)


def load(run: str | Path | TrainResult) -> SNN:
    """The trained network of a run folder, a ``spikernel run`` folder or a weights file (eval mode)."""
    from spikernel.deploy.export import load_run

    if isinstance(run, TrainResult):
        return run.model.eval()
    return load_run(run)[0]


def _model(run: str | Path | TrainResult | SNN) -> SNN:
    return run if isinstance(run, torch.nn.Module) else load(run)


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    top5: float | None
    loss: float
    spike_rates: dict  # overall ("spike_rate") and per LIF layer
    images: int


def evaluate(run: str | Path | TrainResult | SNN, data: Dataset | str, *, bits: int = 32, batch: int = 256,
             device: str = "cpu") -> Evaluation:
    """Test-split accuracy and spike rates; ``bits`` < 32 folds BatchNorm and quantizes first."""
    from spikernel.training.loop import evaluate as _evaluate

    data = as_dataset(data)
    model = quantize(_model(run), bits) if bits != 32 else _model(run)
    report = _evaluate(model, data, batch_size=batch, device=device)
    top = next((v for k, v in report.items() if k.startswith("test_top")), None)
    rates = {k: v for k, v in report.items() if k.startswith("spike_rate")}
    return Evaluation(report["test_acc"], top, report["test_loss"], rates, len(data.test))


def quantize(model: SNN, bits: int) -> SNN:
    """A folded copy with weights at ``bits`` (16 = float16; 8 and 4 = per-channel integers)."""
    from spikernel.deploy.quantize import quantize as _quantize

    return _quantize(model, bits)


def energy(run: str | Path | TrainResult | SNN, data: Dataset | str, images: int = 1000):
    """Spikes, synaptic operations and energy per inference, counted on the first test images."""
    from spikernel.nn.energy import measure_dataset

    return measure_dataset(_model(run), as_dataset(data), limit=images)


def export(run: str | Path | TrainResult | SNN, format: str = "nir", out: str | Path | None = None, *,
           data: Dataset | str | None = None, bits: int = 32, check_images: int = 16, target: str = "generic") -> dict:
    """Write a NIR graph (checked spike for spike on test images) or safetensors + JSON; a run
    stopped early is exported with a warning and the epoch its weights come from."""
    from spikernel.deploy.export import export_nir, export_safetensors, load_run

    trained, dataset, folder = {}, None, Path(".")
    if isinstance(run, (str, Path)):
        model, info = load_run(run)
        trained, dataset = {"epoch": info["epoch"], "epochs": info["epochs"]}, info["dataset"]
        folder = Path(run) if Path(run).is_dir() else Path(run).parent
    elif isinstance(run, TrainResult):
        model, dataset = run.model, run.result["dataset"]["name"]
        trained = {"epoch": run.result["epochs"], "epochs": run.result["epochs"]}
        folder = Path(run.out) if run.out else folder
    else:
        model = run
    if format == "nir":
        data = as_dataset(data or dataset or "fashion-mnist-mini")  # checked on the run's own test images
        images = data.normalize(data.test.images[:check_images])
        return export_nir(model, Path(out or folder / "network.nir"), images, target,
                          metadata={"trained_epoch": trained.get("epoch"), "planned_epochs": trained.get("epochs")})
    if format == "safetensors":
        name = "network.safetensors" if bits == 32 else f"network-{bits}bit.safetensors"
        return export_safetensors(model, Path(out or folder / name), bits, trained=trained or None)
    raise ConfigError(f"unknown export format {format!r}; choose nir or safetensors")


# --------------------------------------------------------------------------- exploration and selection


def explore(out: str | Path, *, data_dir: str | None = None, on_event: OnEvent | None = None, **settings):
    """Kernel-size exploration (search + train per kernel set) into one resumable study folder;
    ``settings`` are ``ExploreSettings`` fields (kernel_sets=("1x1_3x3", "1x1_5x5"), candidates=100, ...)."""
    from spikernel.selection.explore import ExploreSettings, explore as _explore

    return _explore(ExploreSettings(**settings), Path(out), data_dir, on_event)


def select(study, budget: str | None = None):
    """The most accurate trained network of a study (a folder or ``sk.explore``'s result) under a
    budget (default: the study's own)."""
    from spikernel.selection.explore import load_study, select as _select

    study = load_study(Path(study)) if isinstance(study, (str, Path)) else study
    return _select(study, budget)
