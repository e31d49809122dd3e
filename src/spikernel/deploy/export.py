"""Deployment files: a NIR graph (via spikingjelly's NIR exchange) and plain safetensors.

NIR describes one timestep of a network as a graph of nodes (convolutions, pools, linear
layers, LIF neurons, delays); a node sums everything that reaches it. spikingjelly's exporter
traces a single-step PyTorch module whose only functions are additions and cannot trace a
cycle, so export:

1. folds the BatchNorms (the exporter fails on them) and builds ``StepGraph``, one timestep of
   the folded network in single-step spikingjelly/torch layers (the average vote over each
   class's output neurons folds into the readout; dropout is gone in eval mode);
2. traces it with ``export_to_nir``, each backward edge j -> i cut: its operation runs on node j
   after the cell, and zero-weight marker convolutions let the exporter record who reads node i
   and what the edge carries (see ``StepCell``);
3. replaces each cut by a one-step ``nir.Delay`` from what the edge carries to every reader of
   node i, and removes the markers. Bare cycles would not do: nirtorch runs a cycle by delaying
   one of its edges, chosen by node order, while a cell needs one step on every backward edge,
   also on edges that close no cycle and in cycles that hold two of them;
4. reads the written file back, simulates T steps on sample images (``simulate_nir``) and
   compares every spike of every LIF layer and the logits with the PyTorch model; only a file
   that passes is kept.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from spikingjelly.activation_based import functional, layer
from torch import nn

from spikernel.errors import SpikernelError
from spikernel.deploy.fold import ChannelAffine, fold, is_folded
from spikernel.nn.model import SNN, MacroConfig, build_model
from spikernel.nn.neuron import is_lif
from spikernel.space.genotype import INPUT, NODES, OUTPUT, SKIP, Genotype
from spikernel.files import _atomic, read_json, read_json_object, write_json
from spikernel.training.checkpoint import first_non_finite, load_state, read_weights, write_weights

NIR_DT = 1e-4  # seconds per step: the NIR convention spikingjelly and most simulators use


class ExportError(SpikernelError):
    """The network or run cannot be exported as asked."""


# --------------------------------------------------------------------------- one timestep


def _affine_conv(affine: ChannelAffine) -> nn.Conv2d:
    """A per-channel affine as a 1x1 convolution with diagonal weights: NIR has no per-channel
    affine node for feature maps, and its Conv2d is read by every NIR simulator."""
    channels = affine.scale.numel()
    conv = nn.Conv2d(channels, channels, 1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.diag(affine.scale).view(channels, channels, 1, 1))
        conv.bias.copy_(affine.shift)
    return conv


def _zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 1, bias=True)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _step_modules(seq: nn.Module) -> nn.Sequential:
    """A folded Sequential in NIR-mappable single-step form (affines as 1x1 convolutions)."""
    mods = [_affine_conv(m) if isinstance(m, ChannelAffine) else m for m in seq
            if not isinstance(m, (nn.Identity, nn.Dropout, layer.Dropout))]
    return nn.Sequential(*mods)


class StepCell(nn.Module):
    """One timestep of a ``Cell``: the forward edges in node order, then the backward edges cut.

    Two kinds of zero-weight 1x1 convolutions are markers for the exporter and never reach the
    NIR file: ``readers[i]`` adds zero into node i, so its out-edges name every module that reads
    node i; ``carried[j_i]`` reads what backward edge j -> i carries (its operation's output, or
    node j itself for a skip), so its in-edges name the sources. Each carried marker becomes a
    ``nir.Delay`` of one step feeding the readers of node i.
    """

    def __init__(self, cell: nn.Module, channels: int, size: int):
        super().__init__()
        g = cell.genotype
        self.shape = (channels, size, size)
        self.genotype = str(g)
        self.forward_edges = [(i, j, g.matrix[i][j]) for i, j in cell.forward_edges]
        self.backward_edges = [(j, i, g.matrix[j][i]) for j, i in cell.backward_edges]
        self.ops = nn.ModuleDict({key: _step_modules(op) if isinstance(op, nn.Sequential) else op
                                  for key, op in cell.ops.items() if not isinstance(op, nn.Identity)})
        self.readers = nn.ModuleDict({str(i): _zero_conv(channels) for i in sorted({i for _, i, _ in self.backward_edges})})
        self.carried = nn.ModuleDict({f"{j}_{i}": _zero_conv(channels) for j, i, _ in self.backward_edges})

    def _op(self, key: str, code: int, x):
        return x if code == SKIP else self.ops[key](x)

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        values: list = [None] * NODES
        for j in range(NODES):
            terms = [x_in] if j == INPUT else []
            terms += [self._op(f"{i}_{j}", code, values[i]) for i, jj, code in self.forward_edges if jj == j]
            if str(j) in self.readers:
                terms.append(self.readers[str(j)](x_in))
            values[j] = sum(terms[1:], terms[0]) if terms else None
        for j, i, code in self.backward_edges:
            key = f"{j}_{i}"
            self.carried[key](self._op(key, code, values[j]))
        return values[OUTPUT]


class StepGraph(nn.Module):
    """One timestep of a folded ``SNN``: image -> per-step class logits (votes averaged)."""

    def __init__(self, folded: SNN):
        super().__init__()
        net = copy.deepcopy(folded).eval()
        functional.set_step_mode(net, "s")
        m = self.macro = net.macro
        snn_names = {id(mod): name for name, mod in net.named_modules() if is_lif(mod)}
        self.stem = _step_modules(net.stem)
        self.cell1 = StepCell(net.cell1, m.width, m.cell1_size)
        self.reduction = _step_modules(net.reduction)
        self.cell2 = StepCell(net.cell2, 2 * m.width, m.cell2_size)
        self.last = _step_modules(net.last)
        self.flatten = nn.Flatten(1)
        fc, lif_head, readout = _step_modules(net.head)
        self.head = nn.Sequential(fc, lif_head)
        # mean over a class's V outputs of W x + b == (mean of the V rows) x + mean of the biases
        self.readout = nn.Linear(readout.in_features, m.num_classes)
        with torch.no_grad():
            self.readout.weight.copy_(readout.weight.view(m.num_classes, m.votes, -1).mean(1))
            self.readout.bias.copy_(readout.bias.view(m.num_classes, m.votes).mean(1))
        # NIR node name of each LIF -> its name in the SNN (the exporter names nodes by path)
        self.lif_names = {_nir_name(n): snn_names[id(mod)] for n, mod in self.named_modules() if is_lif(mod)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cell1(self.stem(x))
        x = self.cell2(self.reduction(x))
        return self.readout(self.head(self.flatten(self.last(x))))


def _nir_name(path: str) -> str:
    return path.replace(".", "_")


# --------------------------------------------------------------------------- NIR graph


def _rewire(graph, step: StepGraph):
    """Markers -> one-step ``nir.Delay`` nodes on the backward edges; drop the exporter's extras."""
    import nir

    nodes, edges = dict(graph.nodes), list(graph.edges)
    rename, drop = {}, set()
    for prefix in ("cell1", "cell2"):
        cell: StepCell = getattr(step, prefix)
        for j, i, _ in cell.backward_edges:
            marker, delay = _nir_name(f"{prefix}.carried.{j}_{i}"), f"{prefix}_delay_{j}_{i}"
            nodes[delay] = nir.Delay(delay=np.full(cell.shape, NIR_DT, dtype=np.float32))
            rename[marker] = delay  # its in-edges are the delay's sources
            drop.add(marker)
            # A reader can be another edge's carried marker: this delay then feeds that delay.
            readers = [t for s, t in edges if s == _nir_name(f"{prefix}.readers.{i}")]
            edges += [(delay, t) for t in readers]
        drop |= {_nir_name(f"{prefix}.readers.{i}") for i in cell.readers}
    # The exporter gives every node without a successor its own output; only the logits are one.
    final = next(t for s, t in edges if s == "readout")
    drop |= {name for name, node in nodes.items() if isinstance(node, nir.Output) and name != final}
    edges = [(rename.get(s, s), rename.get(t, t)) for s, t in edges if s not in drop or s in rename]
    edges = [(s, t) for s, t in edges if s not in drop and t not in drop]
    return nir.NIRGraph(nodes={n: v for n, v in nodes.items() if n not in drop}, edges=edges, type_check=True)


def check_expressible(genotype: Genotype) -> None:
    """Raise ``ExportError`` naming the element of a cell that a NIR graph cannot hold.

    A NIR edge has no weight and the exporter keeps one edge per pair of modules, so a node that
    reaches another along two paths of forward skip edges (adding its value twice) is lost.
    """
    g = genotype.pruned()
    for a in range(NODES):
        paths = [0] * NODES
        paths[a] = 1
        for b in range(a + 1, NODES):
            paths[b] = sum(paths[c] for c, bb, code in g.forward_edges if bb == b and code == SKIP)
            if paths[b] > 1:
                raise ExportError(f"cell {g}: node {a} reaches node {b} along {paths[b]} paths of skip edges, "
                                  "adding its value more than once, and a NIR edge has no weight to say so")


def to_nir(model: SNN, example: torch.Tensor):
    """(NIR graph, the ``StepGraph`` it was traced from) of ``model``, folded first, on an example batch."""
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    check_expressible(model.genotype)
    folded = model if is_folded(model) else fold(model)
    step = StepGraph(folded)
    graph = export_to_nir(step, example.to(next(step.parameters()).dtype), dt=NIR_DT)
    return _rewire(graph, step), step


@torch.no_grad()
def simulate_nir(graph, images: torch.Tensor, timesteps: int, dtype=torch.float64):
    """Run a NIR graph for T steps on the same image each step, in discrete time.

    Every node becomes the module spikingjelly's NIR importer maps it to; a ``Delay`` outputs
    what reached it on the previous step (zero on the first). spikingjelly's own
    ``import_from_nir`` runs graphs without delays (``simulate_nir_spikingjelly``); nirtorch,
    which it builds on, has no delay node and breaks each cycle once, at a place set by node
    order, so it cannot give every backward edge of a cell its one-step delay.

    Returns (per-step logits [T, B, classes], {LIF node name: spikes [T, B, ...]}).
    """
    import nir
    from graphlib import CycleError, TopologicalSorter

    # The exchange's own NIR node -> spikingjelly module table (not exported by the package).
    from spikingjelly.activation_based.nir_exchange.from_nir import _NodeMapper

    mapping = _NodeMapper(dt=NIR_DT).map_dict
    sources: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for source, target in graph.edges:
        sources[target].append(source)
    delays = {n: node for n, node in graph.nodes.items() if isinstance(node, nir.Delay)}
    modules = {}
    for name, node in graph.nodes.items():
        if isinstance(node, (nir.Input, nir.Output, nir.Delay)):
            continue
        if type(node) not in mapping:
            raise ExportError(f"NIR node {name} is a {type(node).__name__}, which spikingjelly cannot simulate")
        modules[name] = mapping[type(node)](node).to(dtype)
    try:  # a delay's output is known at the start of a step, so only other edges order the work
        order = list(TopologicalSorter({n: [s for s in sources[n] if s not in delays]
                                        for n in graph.nodes if n not in delays}).static_order())
    except CycleError as exc:
        raise ExportError(f"the NIR graph has a cycle without a delay: {exc.args[1]}") from None
    x = images.to(dtype)
    held = {n: torch.zeros(len(x), *d.delay.shape, dtype=dtype) for n, d in delays.items()}
    state: dict[str, object] = {}
    logits, spikes = [], {n: [] for n, m in modules.items() if is_lif(getattr(m, "module", None))}
    for _ in range(timesteps):
        values = dict(held)
        for name in order:
            node = graph.nodes[name]
            if isinstance(node, nir.Input):
                values[name] = x
                continue
            total = sum(values[s] for s in sources[name][1:]) + values[sources[name][0]]
            if isinstance(node, nir.Output):
                logits.append(total)
            elif name in spikes:
                values[name], state[name] = modules[name](total, state.get(name))
                spikes[name].append(values[name])
            else:
                values[name] = modules[name](total)
        held = {n: sum(values[s] for s in sources[n][1:]) + values[sources[n][0]] for n in delays}
    return torch.stack(logits), {k: torch.stack(v) for k, v in spikes.items()}


@torch.no_grad()
def simulate_nir_spikingjelly(graph, images: torch.Tensor, timesteps: int, dtype=torch.float64):
    """``simulate_nir`` through spikingjelly's ``import_from_nir`` (graphs without delays)."""
    import nir
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    if any(isinstance(node, nir.Delay) for node in graph.nodes.values()):
        raise ExportError("spikingjelly's NIR importer has no Delay node (backward cells need one)")
    module = import_from_nir(graph, dt=NIR_DT, dtype=dtype, step_mode="s")
    spikes: dict[str, list] = {}
    hooks = [sub.register_forward_hook(lambda _m, _i, out, name=name: spikes.setdefault(name, []).append(out[0]))
             for name, sub in module.named_children() if is_lif(getattr(sub, "module", None))]
    state, logits = None, []
    try:
        for _ in range(timesteps):
            out, state = module(images.to(dtype), state)
            logits.append(out)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(logits), {k: torch.stack(v) for k, v in spikes.items()}


@torch.no_grad()
def model_spikes(model: SNN, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(per-step logits [T, B, classes], {LIF name: spikes [T, B, ...]}) of a PyTorch SNN."""
    model.eval()
    spikes: dict[str, list] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: spikes.setdefault(name, []).append(out))
             for name, m in model.named_modules() if is_lif(m)]
    try:
        logits = model.forward_steps(images)
    finally:
        for h in hooks:
            h.remove()
    return logits, {k: torch.cat(v) for k, v in spikes.items()}


def compare_nir(graph, step: StepGraph, folded: SNN, images: torch.Tensor, simulate=simulate_nir) -> dict:
    """Simulate the graph and the PyTorch model in float64; count spike and logit differences."""
    reference = copy.deepcopy(folded).double()
    ref_logits, ref_spikes = model_spikes(reference, images.double())
    logits, spikes = simulate(graph, images, folded.macro.timesteps)
    mismatched = {}
    for nir_name, snn_name in step.lif_names.items():
        if nir_name not in spikes:
            raise ExportError(f"the NIR graph lost the LIF layer {snn_name}")
        differ = int((spikes[nir_name] != ref_spikes[snn_name]).sum())
        if differ:
            mismatched[snn_name] = differ
    return {
        "images": len(images),
        "lif_layers": len(step.lif_names),
        "spikes": int(sum(s.sum() for s in ref_spikes.values())),
        "mismatched_spikes": mismatched,
        "max_logit_error": float((logits - ref_logits).abs().max()),
    }


@torch.no_grad()
def check_nir_file(path: str | os.PathLike, step: StepGraph, folded: SNN, images: torch.Tensor) -> dict:
    """Read a NIR file back, simulate it and compare with the PyTorch model; raise on any difference."""
    import nir

    report = compare_nir(nir.read(str(path)), step, folded, images)
    scale = 1.0 + float(folded(images).abs().max())
    if not (math.isfinite(scale) and math.isfinite(report["max_logit_error"])):  # NaN compares as "no difference"
        raise ExportError("the network's logits are not finite (NaN or inf weights): nothing to check the NIR graph by")
    if report["mismatched_spikes"] or report["max_logit_error"] > 1e-4 * scale:
        raise ExportError(f"the NIR graph read back does not reproduce the network: {report['mismatched_spikes']} "
                          f"spikes differ per layer, logits by up to {report['max_logit_error']:.3g}")
    return report


def check_finite(model: nn.Module) -> None:
    """Refuse to export NaN or inf weights (the NIR spike check alone would not notice them)."""
    bad = first_non_finite(model.state_dict())
    if bad is not None:
        raise ExportError(f"the network's weights are not finite (NaN or inf in {bad}); nothing to export")


def export_nir(model: SNN, path: str | os.PathLike, images: torch.Tensor, metadata: dict | None = None) -> dict:
    """Write ``model`` (folded) as a NIR file, only once the file read back gives the same spikes.

    ``images`` are normalised sample inputs [B, C, H, W]; ``metadata`` (strings and numbers, e.g.
    the epoch the weights are from) goes into the graph's metadata. Returns the comparison report.
    """
    import nir

    check_finite(model)
    folded = (model if is_folded(model) else fold(model)).float()
    graph, step = to_nir(folded, images[:1].float())
    graph.metadata = {"genotype": str(model.genotype), **{k: v for k, v in (metadata or {}).items() if v is not None}}
    report = {}

    def write(tmp):
        nir.write(tmp, graph)
        report.update(check_nir_file(tmp, step, folded, images.float()))

    _atomic(Path(path), write)
    report["nodes"] = len(graph.nodes)
    report["delays"] = sum(type(n).__name__ == "Delay" for n in graph.nodes.values())
    return report


# --------------------------------------------------------------------------- safetensors

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


# --------------------------------------------------------------------------- run folders


def load_run(run: str | os.PathLike) -> tuple[SNN, dict]:
    """The trained network of a run and {"dataset", "source"}.

    ``run`` is a ``spikernel train`` folder (final weights, else its last finished epoch), a
    ``spikernel run`` folder (the network its selection chose) or a weights file; "epoch" and
    "epochs" say how far its training got (a warning is issued when it is unfinished).
    """
    from spikernel.training.checkpoint import RUN_FILE, load_trained

    run = Path(run)
    if not run.exists():
        raise ExportError(f"run {run} does not exist")
    if run.is_dir() and not (run / RUN_FILE).exists() and (run / "selection.json").is_file():
        selection = read_json(run / "selection.json")
        if "run" not in selection:
            raise ExportError(f"{run}/selection.json names no trained run")
        run = run / selection["run"]
    if run.is_dir() and not (run / RUN_FILE).exists():
        raise ExportError(f"{run} is not a training run (no {RUN_FILE}): train one with spikernel train --out")
    loaded = load_trained(run)  # a folder with no finished epoch: "has no weights yet"; unfinished: a warning
    return loaded.model.eval(), {"dataset": loaded.spec.dataset, "source": loaded.source,
                                 "genotype": loaded.spec.genotype, "epoch": loaded.epoch, "epochs": loaded.epochs}
