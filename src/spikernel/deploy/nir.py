"""NIR export: one timestep of a folded network as a NIR graph that other NIR tools run.

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
4. encodes the graph for its readers (``encode``, see ``TARGETS``): pools as the nodes the
   importers map, with (H, W) parameters, Flatten in dimensions valid with or without a batch
   axis, and dt, integration and firing rule in the graph's metadata;
5. writes it without the parameters older readers reject (``v_reset``, zero by default), reads
   it back, simulates T steps on sample images (``simulate_nir``) and compares every spike of
   every LIF layer and the logits with the PyTorch model; only a file that passes is kept.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import numpy as np
import torch
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

from spikernel.deploy.fold import ChannelAffine, fold, is_folded
from spikernel.errors import ExportError
from spikernel.files import _atomic
from spikernel.nn.model import SNN
from spikernel.nn.layers import StepAvgPool2d
from spikernel.nn.neuron import LIF, is_lif
from spikernel.space.genotype import INPUT, NODES, OUTPUT, SKIP, Genotype

NIR_DT = 1e-4  # seconds per step: the NIR convention spikingjelly, snnTorch and most simulators use
FIRING_RULE = ">="  # spikingjelly fires at v >= threshold; NIR's LIF says v > threshold

# How each target writes the graph (both valid NIR). generic: what snnTorch, Norse, spikingjelly,
# nirtorch and ``nir_run.NIRStepper`` load: no AvgPool2d (Norse maps none), no pool with padding
# (Norse and nirtorch drop it), no grouped convolution (spikingjelly refuses one), LIF integrated by
# Euler steps of dt = 1e-4 s. sinabs: its importer reads tau in steps and integrates exactly,
# ignores r, and maps Affine but not Linear.
TARGETS = {
    "generic": {"dt": NIR_DT, "integration": "euler", "linear": "linear"},
    "sinabs": {"dt": 1.0, "integration": "exact", "linear": "affine"},
}

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


def _exportable(m: nn.Module) -> nn.Module:
    """spikingjelly's own class for spikernel's LIF and pool (its exporter maps modules by exact
    class); the same neuron or pool, single-step."""
    if isinstance(m, LIF):
        return neuron.LIFNode(tau=m.tau, decay_input=m.decay_input, v_threshold=m.v_threshold, v_reset=m.v_reset,
                              surrogate_function=m.surrogate_function, detach_reset=m.detach_reset)
    if isinstance(m, StepAvgPool2d):
        return layer.AvgPool2d(m.kernel_size, m.stride, m.padding)
    return m


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
        for parent in list(self.modules()):
            for name, child in list(parent.named_children()):
                setattr(parent, name, _exportable(child))

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


def check_direct_input(model: SNN) -> None:
    """A NIR graph starts at the stem: it has no encoder node to turn images into spikes."""
    if model.macro.spiking_input:
        raise ExportError(f"NIR export needs direct input: this network uses the {model.macro.encoding} "
                          "encoding, and a NIR graph has no encoder node")
    if model.macro.step_averages:
        raise ExportError("NIR export needs one BatchNorm average for all steps: this network keeps them per "
                          "step (step_averages), and a NIR graph has no per-step affine")


# --------------------------------------------------------------------------- encoding for readers


def _pair(value) -> np.ndarray:
    """A pool parameter as the (H, W) array NIR declares (the exporter writes scalars)."""
    pair = np.atleast_1d(np.asarray(value)).astype(np.int64)
    return np.repeat(pair, 2) if pair.size == 1 else pair


def _typed(node, like):
    """``node`` with the input and output types of the node it replaces (pools infer none)."""
    node.input_type, node.output_type = like.input_type, like.output_type
    return node


def _diagonal_conv(pool, kernel, stride, padding):
    """An average pool (zeros counted at the border) as a Conv2d that keeps channels apart.

    Every NIR importer maps an ungrouped Conv2d, while spikingjelly refuses grouped ones and
    Norse and nirtorch drop a pool's padding.
    """
    import nir

    channels, *size = (int(d) for d in pool.input_type["input"])
    weight = np.zeros((channels, channels, *kernel), dtype=np.float32)
    weight[np.arange(channels), np.arange(channels)] = 1.0 / float(np.prod(kernel))
    return nir.Conv2d(input_shape=tuple(size), weight=weight, stride=tuple(stride), padding=tuple(padding),
                      dilation=(1, 1), groups=1, bias=np.zeros(channels, dtype=np.float32))


def _fold_pool_scale(graph, name: str, scale: float) -> bool:
    """Scale the weights next to pool ``name`` by ``scale`` so a sum pool computes its average.

    Before the pool: a convolution feeding only the pool (its bias too). After it: the first
    linear layer it reaches through Flatten nodes, fed by nothing else (weights only). Scaling by
    1/4 or 1/16 is exact in floating point; other sizes round once.
    """
    import nir

    def targets(node):
        return [t for s, t in graph.edges if s == node]

    def fed_only_by(node, source):
        return [s for s, t in graph.edges if t == node] == [source]

    sources = [s for s, t in graph.edges if t == name]
    if len(sources) == 1 and isinstance(graph.nodes[sources[0]], nir.Conv2d) and targets(sources[0]) == [name]:
        conv = graph.nodes[sources[0]]
        conv.weight = (conv.weight.astype(np.float64) * scale).astype(conv.weight.dtype)
        conv.bias = (conv.bias.astype(np.float64) * scale).astype(conv.bias.dtype)
        return True
    previous, node = name, targets(name)
    while len(node) == 1 and isinstance(graph.nodes[node[0]], nir.Flatten) and fed_only_by(node[0], previous):
        previous, node = node[0], targets(node[0])
    if len(node) == 1 and isinstance(graph.nodes[node[0]], (nir.Linear, nir.Affine)) and fed_only_by(node[0], previous):
        linear = graph.nodes[node[0]]
        linear.weight = (linear.weight.astype(np.float64) * scale).astype(linear.weight.dtype)
        return True
    return False


def _encode_pool(graph, name: str):
    """An average pool as a SumPool2d with its 1/k^2 folded into a neighbour, else a Conv2d."""
    import nir

    pool = graph.nodes[name]
    kernel, stride, padding = _pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding)
    if not padding.any() and _fold_pool_scale(graph, name, 1.0 / float(np.prod(kernel))):
        return _typed(nir.SumPool2d(kernel_size=kernel, stride=stride, padding=padding), pool)
    return _diagonal_conv(pool, kernel, stride, padding)


def _lif_in_steps(lif, dt: float):
    """A LIF of the ``generic`` encoding (Euler, dt seconds) as Sinabs reads one: tau in steps,
    integrated exactly (decay exp(-1/tau)), r ignored (input gain 1).

    spikernel's neuron keeps ``1 - 1/tau_s`` of v per step and adds ``x / tau_s`` (tau_s = tau / dt
    steps). With u = tau_s * v: u keeps the same share and adds x, fires at tau_s * threshold:
    NIR's exact solution with tau = -1 / ln(1 - 1/tau_s) steps and r = tau_s.
    """
    import nir

    tau_steps = lif.tau.astype(np.float64) / dt
    values = {"tau": -1.0 / np.log1p(-1.0 / tau_steps), "r": tau_steps, "v_leak": lif.v_leak * tau_steps,
              "v_threshold": lif.v_threshold * tau_steps, "v_reset": lif.v_reset * tau_steps}
    return nir.LIF(**{k: np.asarray(v, dtype=np.float32) for k, v in values.items()})


def encode(graph, target: str = "generic", timesteps: int | None = None):
    """The graph ``_rewire`` left, as ``target`` (see ``TARGETS``) reads it; a new graph."""
    import nir

    if target not in TARGETS:
        raise ExportError(f"unknown NIR target {target!r}; known: {', '.join(TARGETS)}")
    spec = TARGETS[target]
    graph = copy.deepcopy(graph)
    for name, node in list(graph.nodes.items()):
        if isinstance(node, nir.AvgPool2d):
            graph.nodes[name] = _encode_pool(graph, name)
    for name, node in list(graph.nodes.items()):
        if isinstance(node, nir.Flatten):
            # NIR has no batch axis and its importers pass the dimensions to torch unshifted:
            # counted from the end they mean the same with a batch axis or without.
            dims = len(node.input_type["input"])
            graph.nodes[name] = nir.Flatten(input_type=node.input_type, start_dim=node.start_dim - dims,
                                            end_dim=node.end_dim if node.end_dim < 0 else node.end_dim - dims)
        elif isinstance(node, nir.LIF) and spec["integration"] == "exact":
            graph.nodes[name] = _lif_in_steps(node, NIR_DT)
        elif isinstance(node, nir.Delay):
            graph.nodes[name] = nir.Delay(delay=np.full(node.delay.shape, spec["dt"], dtype=np.float32))
        elif isinstance(node, nir.Linear) and spec["linear"] == "affine":
            graph.nodes[name] = nir.Affine(weight=node.weight, bias=np.zeros(node.weight.shape[0], node.weight.dtype))
    metadata = {"dt": spec["dt"], "integration": spec["integration"], "firing_rule": f"v {FIRING_RULE} v_threshold",
                "target": target, "producer": "spikernel"}
    if timesteps:
        metadata["timesteps"] = int(timesteps)
    return nir.NIRGraph(nodes=graph.nodes, edges=graph.edges, metadata=metadata, type_check=True)


def to_nir(model: SNN, example: torch.Tensor, target: str = "generic"):
    """(NIR graph, the ``StepGraph`` it was traced from) of ``model``, folded first, on an example batch."""
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    check_direct_input(model)
    check_expressible(model.genotype)
    folded = model if is_folded(model) else fold(model)
    step = StepGraph(folded)
    graph = export_to_nir(step, example.to(next(step.parameters()).dtype), dt=NIR_DT)
    return encode(_rewire(graph, step), target, folded.macro.timesteps), step


def write_nir(path: str | os.PathLike, graph) -> None:
    """``nir.write``, then drop every LIF ``v_reset`` that is zero: the default of the readers that
    know it (nir >= 1.0.5), and a field older ones (Sinabs pins nir <= 1.0.4) fail on."""
    import h5py
    import nir

    nir.write(path, graph)
    with h5py.File(path, "r+") as f:
        for node in f["node/nodes"].values():
            if node["type"][()] in (b"LIF", "LIF") and "v_reset" in node and not np.any(node["v_reset"][()]):
                del node["v_reset"]


# --------------------------------------------------------------------------- simulation


class _LIFStep(nn.Module):
    """A NIR LIF, stepped as the graph's metadata says (integration, firing rule): the reference
    reading of what the file holds, in float64 state whatever the input."""

    def __init__(self, node, dt: float, integration: str, rule: str):
        super().__init__()
        tau, r = (torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (node.tau, node.r))
        decay = torch.exp(-dt / tau) if integration == "exact" else 1.0 - dt / tau
        self.register_buffer("decay", decay)
        self.register_buffer("gain", (1.0 - decay) * r)
        self.register_buffer("leak", (1.0 - decay) * torch.as_tensor(np.asarray(node.v_leak, dtype=np.float64)))
        self.register_buffer("threshold", torch.as_tensor(np.asarray(node.v_threshold, dtype=np.float64)))
        self.register_buffer("reset", torch.as_tensor(np.asarray(node.v_reset, dtype=np.float64)))
        self.inclusive = rule.startswith("v >=")

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        v = torch.zeros_like(x) if state is None else state
        v = self.decay * v + self.gain * x + self.leak
        spikes = v >= self.threshold if self.inclusive else v > self.threshold
        return spikes.to(x.dtype), torch.where(spikes, self.reset.to(x.dtype), v)


class _SumPool(nn.Module):
    def __init__(self, node):
        super().__init__()
        self.kernel, self.stride, self.padding = (tuple(int(v) for v in _pair(a))
                                                  for a in (node.kernel_size, node.stride, node.padding))

    def forward(self, x):
        return nn.functional.avg_pool2d(x, self.kernel, self.stride, self.padding, divisor_override=1)


def reference_nodes(graph):
    """The node map ``simulate_nir`` runs a graph with: spikingjelly's NIR importer's modules for
    linear layers, convolutions, average pools and Flatten; sum pools and LIF neurons as the NIR
    spec and the graph's metadata (integration, firing rule) define them."""
    import nir
    from spikingjelly.activation_based.nir_exchange.from_nir import _NodeMapper  # not exported by the package

    metadata = graph.metadata if isinstance(graph.metadata, dict) else {}
    dt = float(metadata.get("dt", NIR_DT))
    integration = str(metadata.get("integration", "euler"))
    rule = str(metadata.get("firing_rule", "v > v_threshold"))  # NIR's own rule unless the file says otherwise
    mapping = dict(_NodeMapper(dt=dt).map_dict)
    mapping[nir.LIF] = lambda node: _LIFStep(node, dt, integration, rule)
    mapping[nir.SumPool2d] = _SumPool
    return mapping


@torch.no_grad()
def simulate_nir(graph, images: torch.Tensor, timesteps: int, dtype=torch.float64, nodes=None, dt: float | None = None):
    """Run a NIR graph for T steps on the same image each step, in discrete time.

    ``nodes`` is a node map for ``nir_run.NIRStepper`` (an importer's: ``nir_run.snntorch_nodes()``,
    ``norse_nodes()``), by default ``reference_nodes(graph)``. Delays hold their input for
    ``delay / dt`` steps (``dt`` from the graph's metadata unless given).

    Returns (per-step logits [T, B, classes], {LIF node name: spikes [T, B, ...]}).
    """
    import nir

    from spikernel.deploy.nir_run import NIRGraphError, NIRStepper

    try:
        stepper = NIRStepper(graph, nodes if nodes is not None else reference_nodes(graph),
                             dt if dt is not None else graph.metadata.get("dt", NIR_DT)).to(dtype)
    except NIRGraphError as exc:
        raise ExportError(str(exc)) from None
    lifs = [n for n, node in graph.nodes.items() if isinstance(node, nir.LIF)]
    x, state = images.to(dtype), None
    logits, spikes = [], {n: [] for n in lifs}
    for _ in range(timesteps):
        values, state = stepper.step(x, state)
        logits.append(values[stepper.output_name])
        for n in lifs:
            spikes[n].append(values[n])
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


def compare_nir(graph, step: StepGraph, folded: SNN, images: torch.Tensor, simulate=simulate_nir,
                dtype=torch.float64) -> dict:
    """Simulate the graph and the PyTorch model (float64 by default); count spike and logit differences."""
    reference = copy.deepcopy(folded).to(dtype)
    ref_logits, ref_spikes = model_spikes(reference, images.to(dtype))
    logits, spikes = simulate(graph, images.to(dtype), folded.macro.timesteps, dtype=dtype)
    mismatched = {}
    for nir_name, snn_name in step.lif_names.items():
        if nir_name not in spikes:
            raise ExportError(f"the NIR graph lost the LIF layer {snn_name}")
        differ = int((spikes[nir_name].to(dtype) != ref_spikes[snn_name]).sum())
        if differ:
            mismatched[snn_name] = differ
    return {
        "images": len(images),
        "lif_layers": len(step.lif_names),
        "neuron_steps": int(sum(s.numel() for s in ref_spikes.values())),
        "spikes": int(sum(s.sum() for s in ref_spikes.values())),
        "mismatched_spikes": mismatched,
        "max_logit_error": float((logits.to(dtype) - ref_logits).abs().max()),
        "logit_scale": float(ref_logits.abs().max()),
    }


@torch.no_grad()
def check_nir_file(path: str | os.PathLike, step: StepGraph, folded: SNN, images: torch.Tensor) -> dict:
    """Read a NIR file back, simulate it and compare with the PyTorch model; raise on any difference."""
    import nir

    report = compare_nir(nir.read(str(path)), step, folded, images)
    if not (math.isfinite(report["logit_scale"]) and math.isfinite(report["max_logit_error"])):  # NaN compares as "no difference"
        raise ExportError("the network's logits are not finite (NaN or inf weights): nothing to check the NIR graph by")
    if report["mismatched_spikes"] or report["max_logit_error"] > 1e-4 * (1.0 + report["logit_scale"]):
        raise ExportError(f"the NIR graph read back does not reproduce the network: {report['mismatched_spikes']} "
                          f"spikes differ per layer, logits by up to {report['max_logit_error']:.3g}")
    return report


def check_finite(model: nn.Module) -> None:
    """Refuse to export NaN or inf weights (the NIR spike check alone would not notice them)."""
    from spikernel.training.checkpoint import first_non_finite

    bad = first_non_finite(model.state_dict())
    if bad is not None:
        raise ExportError(f"the network's weights are not finite (NaN or inf in {bad}); nothing to export")


def export_nir(model: SNN, path: str | os.PathLike, images: torch.Tensor, target: str = "generic",
               metadata: dict | None = None) -> dict:
    """Write ``model`` (folded) as a NIR file for ``target``, only once the file read back gives
    the same spikes. ``images`` are normalised sample inputs [B, C, H, W]; ``metadata`` (strings and
    numbers, e.g. the epoch the weights are from) joins the graph's metadata. Returns the comparison report.
    """
    check_direct_input(model)
    check_finite(model)
    folded = (model if is_folded(model) else fold(model)).float()
    graph, step = to_nir(folded, images[:1].float(), target)
    graph.metadata = {**graph.metadata, "genotype": str(model.genotype),
                      **{k: v for k, v in (metadata or {}).items() if v is not None}}
    report = {}

    def write(tmp):
        write_nir(tmp, graph)
        report.update(check_nir_file(tmp, step, folded, images.float()))

    _atomic(Path(path), write)
    report["nodes"] = len(graph.nodes)
    report["delays"] = sum(type(n).__name__ == "Delay" for n in graph.nodes.values())
    report["target"] = target
    return report
