"""Run any NIR graph in PyTorch one timestep per call, ``nir.Delay`` nodes included.

NIR importers (snnTorch, Norse, Sinabs, spikingjelly, all through nirtorch) map every node to a
PyTorch module but none maps ``nir.Delay``, and nirtorch's interpreter runs a cycle by feeding
one of its edges the previous step's value, at a place chosen by node order. ``NIRStepper`` runs
a graph whose every recurrent edge goes through a ``Delay``: a delay outputs what reached it
``delay / dt`` steps earlier (zeros before that), so within a step only the other edges order the
work, and the modules are whatever a framework's importer maps the nodes to:

    import nir
    from spikernel.deploy.nir_run import NIRStepper, norse_nodes
    net = NIRStepper(nir.read("network.nir"), norse_nodes(dt=1e-4))   # or snntorch_nodes()
    state = None
    for t in range(T):
        logits, state = net(image, state)

Modules follow nirtorch's convention: one whose ``forward`` has a ``state`` parameter is called
as ``module(x, state)`` (``None`` at the first step) and returns ``(output, state)``; any other
is called as ``module(x)`` and keeps what it needs itself (snnTorch's neurons with
``init_hidden=True``, which are cleared whenever a run starts from ``state=None``).
``Delay`` follows the same convention, so it can also go into a nirtorch node map.
"""

from __future__ import annotations

import inspect
from graphlib import CycleError, TopologicalSorter
from typing import Callable, Mapping

import torch
from torch import nn

from spikernel.errors import SpikernelError

NodeMap = Mapping[type, Callable] | Callable


class NIRGraphError(SpikernelError, ValueError):
    """A NIR graph that cannot be run as asked (unmapped node, cycle without a delay, ...)."""


class Delay(nn.Module):
    """``nir.Delay`` of a whole number of steps: the input of ``steps`` calls ago, zeros before."""

    def __init__(self, steps: int):
        super().__init__()
        if steps < 1:
            raise NIRGraphError(f"a delay of {steps} steps: a NIR delay is at least one step")
        self.steps = steps

    def forward(self, x: torch.Tensor, state: tuple | None = None):
        held = state if state is not None else (torch.zeros_like(x),) * self.steps
        return held[0], (*held[1:], x)

    def extra_repr(self) -> str:
        return f"steps={self.steps}"


def delay_steps(node, dt: float) -> int:
    """How many steps of ``dt`` seconds a ``nir.Delay`` holds its input (uniform, a whole number)."""
    import numpy as np

    delay = np.asarray(node.delay, dtype=np.float64)
    if delay.size == 0 or not np.all(delay == delay.flat[0]):
        raise NIRGraphError("a nir.Delay with different delays per neuron is not supported")
    steps = float(delay.flat[0]) / dt
    if not np.isfinite(steps) or abs(steps - round(steps)) > 1e-6 * max(1.0, steps):
        raise NIRGraphError(f"a delay of {delay.flat[0]} s is not a whole number of steps of dt = {dt} s")
    return int(round(steps))


def delay_nodes(dt: float) -> dict:
    """``{nir.Delay: ...}`` for a nirtorch node map (delays on no cycle; ``NIRStepper`` for cycles)."""
    import nir

    return {nir.Delay: lambda node: Delay(delay_steps(node, dt))}


def graph_dt(graph, dt: float | None = None) -> float:
    """``dt`` as given, else the one the graph's metadata records (spikernel writes it there)."""
    if dt is None:
        dt = graph.metadata.get("dt") if isinstance(graph.metadata, dict) else None
    if dt is None:
        raise NIRGraphError("the graph records no dt in its metadata: pass dt (seconds per step)")
    return float(dt)


def _is_stateful(module: nn.Module) -> bool:
    return "state" in inspect.signature(module.forward).parameters


def _mapper(node_map: NodeMap) -> Callable:
    """``node -> module | None`` from a node map; types it lacks go to nirtorch's defaults (as in
    nirtorch's ``nir_to_torch``) where nirtorch is installed."""
    if callable(node_map) and not isinstance(node_map, Mapping):
        return node_map
    try:
        from nirtorch.nir_interpreter import DEFAULT_MAP
    except ImportError:
        DEFAULT_MAP = {}
    table = {**DEFAULT_MAP, **node_map}
    return lambda node: table[type(node)](node) if type(node) in table else None


class NIRStepper(nn.Module):
    """One timestep of a NIR graph per call: ``output, state = stepper(x, state)``.

    ``node_map`` maps NIR node types to functions building a module (nirtorch's ``node_map``; types
    it lacks take nirtorch's defaults), or is one function ``node -> module | None``; ``Input``,
    ``Output`` and ``Delay`` nodes are the stepper's own. ``dt`` (seconds per step) sets how many steps a delay holds; by default the
    graph's ``metadata["dt"]``.
    """

    def __init__(self, graph, node_map: NodeMap, dt: float | None = None):
        super().__init__()
        import nir

        mapper = _mapper(node_map)
        self.graph = graph
        self.sources: dict[str, list[str]] = {name: [] for name in graph.nodes}
        for source, target in graph.edges:
            self.sources[target].append(source)
        inputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
        outputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Output)]
        if len(inputs) != 1 or len(outputs) != 1:
            raise NIRGraphError(f"a graph with {len(inputs)} inputs and {len(outputs)} outputs: one of each is supported")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.delays = [n for n, node in graph.nodes.items() if isinstance(node, nir.Delay)]
        self.names = {name: name.replace(".", "_") for name in graph.nodes}  # ModuleDict keys have no dots
        self.nodes = nn.ModuleDict()
        for name, node in graph.nodes.items():
            if isinstance(node, (nir.Input, nir.Output)):
                continue
            module = Delay(delay_steps(node, graph_dt(graph, dt))) if isinstance(node, nir.Delay) else mapper(node)
            if module is None:
                raise NIRGraphError(f"NIR node {name} is a {type(node).__name__}, which the node map does not map")
            self.nodes[self.names[name]] = module
        self.order = self._order()

    def _order(self) -> list[str]:
        """Every node after its sources, edges out of a delay not counted (their value is known)."""
        delays = set(self.delays)
        dependencies = {n: [s for s in self.sources[n] if s not in delays] for n in self.graph.nodes if n not in delays}
        try:
            return [n for n in TopologicalSorter(dependencies).static_order() if n != self.input_name]
        except CycleError as exc:
            raise NIRGraphError(f"the NIR graph has a cycle without a delay: {exc.args[1]}") from None

    def module(self, name: str) -> nn.Module:
        return self.nodes[self.names[name]]

    def _total(self, name: str, values: dict):
        sources = self.sources[name]
        if not sources:
            raise NIRGraphError(f"NIR node {name} has no input")
        dtype = values[self.input_name].dtype  # some modules return float32 spikes whatever their input
        return sum((values[s].to(dtype) for s in sources[1:]), values[sources[0]].to(dtype))  # in edge order

    def _call(self, name: str, x, state: dict):
        module = self.module(name)
        if _is_stateful(module):
            out, state[name] = module(x, state.get(name))
            return out
        return module(x)

    def _start(self) -> dict:
        for module in self.nodes.values():  # modules that hold their own state start afresh too
            if hasattr(module, "reset_mem") and getattr(module, "init_hidden", False):
                module.reset_mem()
        return {}

    def step(self, x: torch.Tensor, state: dict | None = None) -> tuple[dict, dict]:
        """({node name: its output this step}, state for the next step)."""
        state = self._start() if state is None else dict(state)
        values = {self.input_name: x}
        for name in self.delays:  # what a delay outputs was fixed at the end of an earlier step
            held = state.get(name)
            values[name] = held[0] if held is not None else x.new_zeros(len(x), *self.graph.nodes[name].delay.shape)
        for name in self.order:
            total = self._total(name, values)
            values[name] = total if name == self.output_name else self._call(name, total, state)
        for name in self.delays:
            _, state[name] = self.module(name)(self._total(name, values), state.get(name))
        return values, state

    def forward(self, x: torch.Tensor, state: dict | None = None):
        values, state = self.step(x, state)
        return values[self.output_name], state


# --------------------------------------------------------------------------- importers' node maps


def snntorch_nodes() -> dict:
    """snnTorch's own NIR node mapping (``snntorch.import_nir``), as its ``import_from_nir`` uses it:
    a node map for ``NIRStepper`` or ``nirtorch.nir_to_torch``."""
    import nir
    from snntorch.import_nir import _nir_to_snntorch_module

    def build(node):
        return _nir_to_snntorch_module(node, init_hidden=True)

    return {t: build for t in (nir.Affine, nir.Linear, nir.Conv2d, nir.Flatten, nir.AvgPool2d, nir.IF, nir.LIF,
                               nir.CubaLIF)}


def norse_nodes(dt: float = 1e-4) -> dict:
    """Norse's own NIR node mapping (``norse.torch.utils.import_nir``) at ``dt`` seconds per step:
    a node map for ``NIRStepper`` or ``nirtorch.nir_to_torch``. Norse's ``from_nir`` runs the same
    modules through nirtorch's deprecated executor, which orders nodes depth first."""
    from functools import partial

    import nir
    from norse.torch.utils.import_nir import _import_norse_module

    build = partial(_import_norse_module, dt=dt)
    return {t: build for t in (nir.Affine, nir.Linear, nir.Conv2d, nir.Flatten, nir.SumPool2d, nir.IF, nir.LIF,
                               nir.CubaLIF)}
