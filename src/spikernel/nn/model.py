"""SNASNet's macro-architecture around a searched cell (SPEC 4); its settings are ``nn.macro``.

Every tensor between the stem and the vote is multi-step, shaped [T, B, ...]. A forward cell runs
all T steps at once; a backward cell steps through time because its backward edges feed node j
at t-1 into node i at t.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from spikingjelly.activation_based import functional, layer
from torch import nn

from spikernel.errors import GenotypeError  # noqa: F401  (raised by Cell, re-exported)
from spikernel.nn.encoding import check_encodable, encode
from spikernel.nn.layers import StepAvgPool2d, StepCursor, TimestepBatchNorm2d
from spikernel.nn.macro import (DATASET_PRESETS, PRESET_NOTES, PRESETS, MacroConfig, default_preset,  # noqa: F401
                                get_preset, oversized_kernels, register_preset, warn_oversized_kernels)
from spikernel.nn.neuron import is_lif, lif
from spikernel.space.genotype import AVGPOOL, INPUT, NODES, OUTPUT, SKIP, Genotype, kernel_of


# --------------------------------------------------------------------------- cell


def make_op(code: int, channels: int, macro: MacroConfig) -> nn.Module:
    """One edge: skip, 3x3 average pool, or LIF -> Conv kxk (no bias) -> BatchNorm."""
    if code == SKIP:
        return nn.Identity()
    if code == AVGPOOL:
        return StepAvgPool2d(3, stride=1, padding=1)
    kernel = kernel_of(code)
    return nn.Sequential(
        lif(macro),
        layer.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False, step_mode="m"),
        TimestepBatchNorm2d(channels),
    )


class Cell(nn.Module):
    """A searched cell at a fixed width; zero edges and pruned nodes build nothing."""

    def __init__(self, genotype: Genotype, channels: int, macro: MacroConfig):
        super().__init__()
        self.genotype = genotype = genotype.pruned()  # connected: every Genotype is (see Genotype)
        self.forward_edges = [(i, j) for i, j, _ in genotype.forward_edges]
        self.backward_edges = [(j, i) for j, i, _ in genotype.backward_edges]
        # Per node, in edge order: the nodes feeding it forward, and the nodes it carries into.
        self.sources = [[i for i, jj in self.forward_edges if jj == j] for j in range(NODES)]
        self.carried_into = [[i for jj, i in self.backward_edges if jj == j] for j in range(NODES)]
        self.fan_out = [sum(j in sources for sources in self.sources) for j in range(NODES)]
        self.ops = nn.ModuleDict(
            {_edge_key(a, b): make_op(code, channels, macro) for a, b, code in genotype.all_edges}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0]

    def run(self, x: torch.Tensor, carry: list | None = None, carry_last: bool = True):
        """Steps [t, B, ...] -> (output, carry): ``carry`` holds what backward edges carry from the
        step before ``x`` into its first (None: at rest), and the result what the last step carries
        on, so a sequence may run a few steps per call. ``carry_last=False``: nothing reads the last
        step's carry (see ``_step``)."""
        if not self.backward_edges:
            return self._step(x, [None] * NODES)[0], None
        carry = carry or [None] * NODES
        outputs = []
        for t in range(x.shape[0]):  # the LIFs keep their state between these 1-step calls
            out, carry = self._step(x[t : t + 1], carry, carry_out=carry_last or t < x.shape[0] - 1)
            outputs.append(out)
        return (outputs[0] if len(outputs) == 1 else torch.cat(outputs)), carry

    def _step(self, x_in, carry, carry_out: bool = True):
        """Nodes in order; node i's outgoing ops see its value plus what backward edges carried in.

        ``carry`` is consumed: each entry, and each node's value, is let go after its last use
        (at CIFAR widths with batch 256 each one is 128 MiB). A node's backward edges run as soon
        as its value exists. ``carry_out=False`` (the scorer's last timestep, whose carry nothing
        reads) fires those edges' LIFs, whose spikes the score counts, and skips their convolutions.
        """
        values: list[torch.Tensor | None] = [None] * NODES
        uses = list(self.fan_out)
        new_carry: list[torch.Tensor | None] = [None] * NODES
        for j in range(NODES):
            node = x_in if j == INPUT else None
            for i in self.sources[j]:
                node = _add(node, self.ops[_edge_key(i, j)](values[i]))
                uses[i] -= 1
                if not uses[i]:
                    values[i] = None
            if j != OUTPUT:
                node, carry[j] = _add(node, carry[j]), None
            # A node fed only by backward edges is at rest (zero) on the first step.
            values[j] = node if node is not None else torch.zeros_like(x_in)
            for i in self.carried_into[j]:
                op = self.ops[_edge_key(j, i)]
                if carry_out:
                    new_carry[i] = _add(new_carry[i], op(values[j]))
                elif isinstance(op, nn.Sequential):
                    op[0](values[j])
            if not uses[j] and j != OUTPUT:
                values[j] = None
        return values[OUTPUT], new_carry


def _edge_key(a: int, b: int) -> str:
    return f"{a}_{b}"


def _add(a, b):
    if a is None:
        return b
    return a if b is None else a + b


# --------------------------------------------------------------------------- network


class SNN(nn.Module):
    """stem -> cell(C) -> reduction -> cell(2C) -> LIF + pool -> spiking head -> population vote."""

    def __init__(self, genotype: Genotype, macro: MacroConfig):
        super().__init__()
        warn_oversized_kernels(genotype.kernels, macro)
        check_encodable(macro)
        self.genotype, self.macro = genotype.pruned(), macro
        c, m = macro.width, macro
        self.stem = nn.Sequential(stem_conv(m), TimestepBatchNorm2d(c))
        self.cell1 = Cell(genotype, c, m)
        self.reduction = nn.Sequential(
            TimestepBatchNorm2d(c),
            lif(m),
            layer.Conv2d(c, 2 * c, 3, padding=1, bias=False, step_mode="m"),
            TimestepBatchNorm2d(2 * c),
            StepAvgPool2d(2, 2),
        )
        self.cell2 = Cell(genotype, 2 * c, m)
        self.last = nn.Sequential(
            TimestepBatchNorm2d(2 * c),
            lif(m),
            StepAvgPool2d(m.second_pool, m.second_pool),
        )
        self.head = nn.Sequential(
            layer.Dropout(m.dropout, step_mode="m"),
            nn.Linear(m.head_features, m.hidden, bias=False),
            lif(m),
            nn.Linear(m.hidden, m.num_classes * m.votes),
        )
        if m.per_step_averages:  # steps whose statistics differ: running averages per step
            stem = self.stem[1] if not m.spiking_input else None  # direct: one stem output for every step
            for module in self.modules():
                if isinstance(module, TimestepBatchNorm2d) and module is not stem:
                    module.track_steps(m.timesteps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """SNASNet's initialisation (the head's spread is a setting, see ``MacroConfig``)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=2)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                std = self.macro.head_init_std or (0.1 * module.in_features) ** -0.5
                nn.init.normal_(module.weight, 0.0, std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def lif_layers(self) -> list[nn.Module]:
        return [m for m in self.modules() if is_lif(m)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> class logits [B, classes], averaged over T timesteps."""
        return self.forward_steps(images).mean(0)

    def forward_steps(self, images: torch.Tensor) -> torch.Tensor:
        """Per-timestep logits [T, B, classes]. Neuron state starts from rest on every call."""
        self.rest()
        x = self.stem_steps(self.stem_source(images), 0, self.macro.timesteps)
        x = self.cell1(x)
        x = self.reduction(x)
        x = self.cell2(x)
        x = self.last(x).flatten(2)
        x = self.head(x)
        return x.view(*x.shape[:2], self.macro.num_classes, self.macro.votes).mean(-1)

    def fire(self, images: torch.Tensor, steps_per_pass: int | None = None) -> None:
        """Every LIF fires as in ``forward_steps``, ``steps_per_pass`` timesteps at a time (all T by
        default), and nothing runs that only the logits need: the output Linear and the vote after
        the head's LIF, and at the last step the convolutions of backward edges, whose output would
        enter the step after it. For observers of spikes (``neuron.spikes_seen``), e.g. the score.

        The neurons keep their state between passes, so the spikes are those of one pass over all
        T; one step at a time holds 1/T of the activations and, on CPU, convolving B images T times
        costs what convolving T*B once does.
        """
        self.rest()
        steps = self.macro.timesteps
        per_pass = steps_per_pass or steps
        carries = [None, None]
        source = self.stem_source(images)
        for start in range(0, steps, per_pass):
            x = self.stem_steps(source, start, min(per_pass, steps - start))
            final = start + per_pass >= steps
            x, carries[0] = self.cell1.run(x, carries[0], carry_last=not final)
            x, carries[1] = self.cell2.run(self.reduction(x), carries[1], carry_last=not final)
            self.head[:-1](self.last(x).flatten(2))

    def rest(self) -> None:
        """Neurons at rest, and per-step statistics (spike encodings) back at step 0. (Not named
        ``reset``: spikingjelly's ``reset_net`` calls every module's ``reset``.)"""
        functional.reset_net(self)
        for module in self.modules():
            if isinstance(module, StepCursor):
                module.rewind()

    def stem_source(self, images: torch.Tensor) -> torch.Tensor:
        """What ``stem_steps`` takes its steps from. Direct encoding: the stem's output on the image
        [B, C, H, W], computed once and reused for every step. A spike encoding: the input spikes
        of all T steps [T, B, C_in, H, W], drawn at once (the same draws however the steps are run)."""
        inputs = encode(images, self.macro)
        return inputs if self.macro.spiking_input else self.stem(inputs)

    def stem_steps(self, source: torch.Tensor, start: int, count: int) -> torch.Tensor:
        """The stem's output [count, B, C, H, W] for timesteps ``start`` ... (on input spikes, the
        stem runs on those steps only: its BatchNorm has statistics per step)."""
        if not self.macro.spiking_input:
            return source.unsqueeze(0).expand(count, *source.shape)
        return self.stem(source[start : start + count])


def stem_conv(macro: MacroConfig) -> nn.Conv2d:
    """The 3x3 stem convolution: on one image (direct input), or multi-step on the input spikes
    (the same parameters, so the same state_dict keys)."""
    m = macro
    if not m.spiking_input:
        return nn.Conv2d(m.in_channels, m.width, 3, stride=m.stem_stride, padding=1, bias=False)
    return layer.Conv2d(m.in_channels, m.width, 3, stride=m.stem_stride, padding=1, bias=False, step_mode="m")


def build_model(genotype: Genotype | str, macro: MacroConfig | str, device: torch.device | str | None = None) -> SNN:
    """The network, its weights drawn by ``device``'s generator (the CPU's by default)."""
    if isinstance(genotype, str):
        genotype = Genotype.parse(genotype)
    if isinstance(macro, str):
        macro = get_preset(macro)
    # Drawn in place: at CIFAR widths a host-side draw and copy cost more than scoring on a GPU.
    with torch.device(device) if device is not None else nullcontext():
        return SNN(genotype, macro)

