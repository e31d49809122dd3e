"""Training-free score: sparsity-aware Hamming distance kernel (SPEC 5, SNASNet after NASWOT).

An untrained network that gives different inputs distinct spike patterns, beyond what their
firing rates alone would explain, tends to train well. For every LIF layer and timestep the
[B, B] kernel K measures that; the score is log|det| of K averaged over layers and steps.

Two paths give the same score. The plain one hooks spikingjelly's own LIFs. The fast one (the
default) swaps in inference-only forwards while it scores: a LIF scan that writes its spikes in
place, a cache-sized chunk at a time, and feeds the kernel directly, shared by the LIFs that see
the same tensor; per-timestep BatchNorm without running statistics, in place on a convolution's
output; pooling with a cache-friendly schedule; the reduction's convolution, BatchNorm and pool
by halves of the channels; one timestep at a time, up to the last LIF and no further, skipping
the last step's backward-edge convolutions that nothing reads; and malloc kept from returning
activations to the OS while a candidate is scored (``heap``). Every change keeps the arithmetic
of each operation, so the spikes, and the score, are the same bit for bit.
``benchmarks/score_speed.py`` measures it against a SNASNet-style scorer.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterable, Sequence
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from spikingjelly.activation_based import functional

from spikernel.heap import SCORING_KEPT_MIB, kept_freed_memory, release_freed_memory
from spikernel.nn.model import SNN, Cell, build_model
from spikernel.nn.neuron import is_lif, spikes_seen
from spikernel.space.genotype import NODES

EPS = 1e-3


def sahd_kernel(spikes: torch.Tensor) -> torch.Tensor:
    """[..., B, N] binary spike maps -> [..., B, B] float64 kernel ``N - d / (2 (e + eps))``.

    ``d_ij = a_i + a_j - 2 c_i.c_j`` is the Hamming distance (one product instead of the two
    ``c_i.(1-c_j)`` and ``(1-c_i).c_j``), ``e_ij`` the distance expected at the two sparsities.
    """
    n = spikes.shape[-1]
    overlap = spike_overlap(spikes)
    counts = overlap.diagonal(dim1=-2, dim2=-1)  # c_i . c_i = a_i: no second pass over the spikes
    sparsity = counts / n
    hamming = counts.unsqueeze(-1) + counts.unsqueeze(-2) - 2 * overlap
    s_i, s_j = sparsity.unsqueeze(-1), sparsity.unsqueeze(-2)
    expected = n * (s_i * (1 - s_j) + (1 - s_i) * s_j)
    return n - (0.5 / (expected + EPS)) * hamming


def _cpu_has_int8_dot_products() -> bool:
    try:  # VNNI (and AMX) CPUs run int8 products several times faster than float32 ones
        return bool(torch.cpu._is_vnni_supported())
    except (AttributeError, RuntimeError):
        return False


INT8_PRODUCTS = {"cuda": True, "cpu": _cpu_has_int8_dot_products()}


def spike_overlap(spikes: torch.Tensor) -> torch.Tensor:
    """[..., B, N] 0/1 spikes -> [..., B, B] float64 counts of neurons both images fired.

    The counts are integers, so any exact integer product gives the same bits: int8 products with
    int32 sums where the hardware has them (CUDA tensor cores, VNNI/AMX CPUs: 3-5x float32 on this
    project's CPU at 65K-131K neurons, conversion included), else float32 below 2**24 neurons.
    """
    if _int8_products_fit(spikes):
        return int8_overlap(spikes)
    n = spikes.shape[-1]
    c = spikes.float()
    if n >= 2**24:
        c = c.double()
    return (c @ c.transpose(-1, -2)).double()


def _int8_products_fit(spikes: torch.Tensor) -> bool:
    b, n = spikes.shape[-2:]
    kind = spikes.device.type
    if not INT8_PRODUCTS.get(kind) or n >= 2**31:  # int32 sums
        return False
    return kind == "cpu" or (b > 16 and b % 8 == 0 and n % 8 == 0)  # the shapes CUDA's _int_mm takes


def int8_overlap(spikes: torch.Tensor) -> torch.Tensor:
    b = spikes.shape[-2]
    q = spikes.to(torch.int8).reshape(-1, b, spikes.shape[-1])
    return torch.stack([torch._int_mm(x, x.t()) for x in q]).view(*spikes.shape[:-1], b).double()


class KernelAccumulator:
    """Sums the SAHD kernel over every (LIF layer, timestep) the network fires during a forward."""

    def __init__(self):
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, spikes: torch.Tensor) -> torch.Tensor:
        """``spikes``: one LIF layer's output [T, B, ...]. K stays on the spikes' device.

        Returns the layer's kernel summed over its steps (see ``add_kernel``).
        """
        kernel = sahd_kernel(spikes.flatten(2)).sum(0)
        self.add_kernel(kernel, spikes.shape[0])
        return kernel

    def add_kernel(self, kernel: torch.Tensor, steps: int) -> None:
        """Count a layer's step-summed kernel, e.g. again for a layer that fired the same spikes."""
        self.total = kernel if self.total is None else self.total + kernel
        self.count += steps

    def logdet(self) -> float:
        if self.total is None:
            raise ValueError("no LIF layer fired during the forward pass")
        return torch.linalg.slogdet(self.total / self.count).logabsdet.item()


@contextmanager
def recording(model: nn.Module, accumulator: KernelAccumulator):
    """Forward hooks on spikingjelly's own LIFs (the plain path, kept to cross-check the fast one)."""
    with spikes_seen(model, accumulator.add):
        yield accumulator


# --------------------------------------------------------------------------- fast path


LIF_CHUNK = 1 << 16  # elements per CPU pass: x, v and the spikes of a chunk stay in L2 together


def lif_scan(x_seq: torch.Tensor, v: torch.Tensor, tau: float, threshold: float,
             chunk: int | None = None) -> torch.Tensor:
    """Inference-only LIF over [T, ...] with hard reset to 0; updates ``v`` in place.

    Spike for spike the same as spikingjelly's LIFNode (the same operations in the same order,
    so the same rounding), but five in-place passes per step into one preallocated output
    instead of fresh temporaries per step and a final stack. On CPU the passes run over
    ``chunk`` (default ``LIF_CHUNK``) elements at a time (element-wise, so the same bits): at CIFAR
    widths with batch 256 a step is 128 MiB, and chunks make the five passes one trip through memory
    (1.7x faster).
    """
    chunk = chunk or LIF_CHUNK
    spikes = torch.empty(x_seq.shape, dtype=x_seq.dtype, device=x_seq.device)
    if v.device.type != "cpu" or not v.is_contiguous() or v.numel() <= chunk:
        for x, out in zip(x_seq, spikes):
            _lif_step(x, v, out, tau, threshold)
        return spikes
    flat_v = v.view(-1)
    for x, out in zip(x_seq, spikes):  # flattened alike: element i of each is the same neuron
        flat_x, flat_out = x.reshape(-1), out.view(-1)
        for first in range(0, v.numel(), chunk):
            part = slice(first, first + chunk)
            _lif_step(flat_x[part], flat_v[part], flat_out[part], tau, threshold)
    return spikes


def _lif_step(x: torch.Tensor, v: torch.Tensor, out: torch.Tensor, tau: float, threshold: float) -> None:
    torch.sub(x, v, out=out)
    v.add_(out.div_(tau))  # h = v + (x - v) / tau
    torch.ge(v, threshold, out=out)
    v.addcmul_(v, out, value=-1.0)  # v - v * spike: exactly h, or 0 where it fired


def batch_norm_steps(bn: nn.BatchNorm2d, x: torch.Tensor, in_place: bool = False,
                     channels: slice = slice(None)) -> torch.Tensor:
    """Training-mode BatchNorm of [B, C, H, W] or [T, B, C, H, W] with statistics per timestep.

    Each step goes through the same kernel as SNASNet's per-step BatchNorm, so the output is
    bit-identical; the running statistics, which the score never reads, are left alone.
    ``in_place`` (CPU) normalises ``x`` itself, for an input nothing else reads (a convolution's
    output): the same kernel writing over its input, without a fresh output to page in.
    ``channels``: ``x`` holds only these of ``bn``'s channels (each channel's statistics are its own).
    """
    in_place = in_place and x.device.type == "cpu"
    weight, bias = (None if p is None else p[channels] for p in (bn.weight, bn.bias))

    def norm(t: torch.Tensor) -> torch.Tensor:
        if not in_place:
            return F.batch_norm(t, None, None, weight, bias, True, 0.0, bn.eps)
        mean, invstd = t.new_empty(t.shape[1]), t.new_empty(t.shape[1])
        torch.ops.aten.native_batch_norm.out(t, weight, bias, None, None, True, 0.0, bn.eps,
                                             out=t, save_mean=mean, save_invstd=invstd)
        return t

    if x.dim() == 4:
        return norm(x)
    if x.shape[0] == 1:
        return norm(x[0]).unsqueeze(0)
    if in_place:
        for step in x:
            norm(step)
        return x
    out = torch.empty_like(x)
    for t in range(x.shape[0]):
        out[t] = norm(x[t])
    return out


WINDOW_CHUNK_BYTES = 512 << 10  # padded planes summed per chunk: a few fit in L2 together
WINDOW_SUM_MIN_BYTES = 16 << 20  # below this, the channels-last kernel (and its copies) stays in cache


def avg_pool_steps(pool: nn.AvgPool2d, x: torch.Tensor) -> torch.Tensor:
    """Average pooling of [..., C, H, W] on CPU, with PyTorch's values and a faster schedule.

    PyTorch's CPU kernels add each window's inputs in row-major order from zero and divide by
    the window size, so ``window_sum_pool`` and the channels-last kernel give the same values
    (the copies of the latter included, several times faster than the NCHW kernel). The result
    is NCHW because convolutions round differently channels-last, and one flipped spike moves
    the score. Other devices and settings use the module's own kernel.
    """
    args = (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode, pool.count_include_pad,
            pool.divisor_override)
    flat = x.flatten(0, x.dim() - 4)
    if x.device.type != "cpu":
        y = F.avg_pool2d(flat, *args)
    elif flat.nbytes >= WINDOW_SUM_MIN_BYTES and window_sum_fits(pool):
        y = window_sum_pool(flat, _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size), _pair(pool.padding))
    else:
        y = F.avg_pool2d(flat.contiguous(memory_format=torch.channels_last), *args).contiguous()
    return y.view(*x.shape[:-3], *y.shape[1:])


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def window_sum_fits(pool: nn.AvgPool2d) -> bool:
    """The settings ``window_sum_pool`` reproduces: zeros count as padding, windows never overhang."""
    return not pool.ceil_mode and pool.divisor_override is None and (pool.count_include_pad or not pool.padding)


def window_sum_pool(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                    padding: tuple[int, int]) -> torch.Tensor:
    """``F.avg_pool2d`` of a contiguous [N, C, H, W] (zero padding counted), summed window by window.

    Each output is the sum of its window in row-major order, divided by the window size, as
    PyTorch's kernel computes it; a padded input adds +0, which changes no sum (at most the sign
    of a zero). Working through a few planes at a time keeps the k*k passes in cache.
    """
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    out_h, out_w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    planes = x.reshape(n * c, h, w)
    out = x.new_empty(n * c, out_h, out_w)
    step = max(1, WINDOW_CHUNK_BYTES // ((h + 2 * ph) * (w + 2 * pw) * x.element_size()))
    padded = x.new_zeros(min(step, n * c), h + 2 * ph, w + 2 * pw) if ph or pw else None
    for first in range(0, n * c, step):
        source = planes[first : first + step]
        if padded is not None:
            padded[: len(source), ph : ph + h, pw : pw + w] = source
            source = padded[: len(source)]
        total = out[first : first + step]
        for i in range(kh):
            for j in range(kw):
                window = source[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw]
                if i == j == 0:
                    total.copy_(window)
                else:
                    total += window
        total.div_(kh * kw)
    return out.view(n, c, out_h, out_w)


SPLIT_MIN_BYTES = 64 << 20  # pooled convolution outputs from this size on are made in halves


def pooled_convolution(conv: nn.Conv2d, bn: nn.BatchNorm2d, pool: nn.AvgPool2d, x: torch.Tensor) -> torch.Tensor:
    """Conv -> BatchNorm -> average pool over [T, B, C, H, W], by halves of the output channels.

    Each output channel's convolution sums, batch statistics and windows are its own (oneDNN
    gives the same bits for a slice of the filters), so this is the three modules' result, while
    the full-resolution output never exists whole: at CIFAR widths with batch 256 the reduction's
    convolution and oneDNN's two copies of it would be 640 MiB at once, the scorer's peak.
    """
    if not _halves_pay(conv, x):
        return pool(bn(conv(x)))
    steps, batch = x.shape[:2]
    half = conv.out_channels // 2
    flat, parts = x.flatten(0, 1), []
    for first in (0, half):
        channels = slice(first, first + half)
        bias = None if conv.bias is None else conv.bias[channels]
        y = F.conv2d(flat, conv.weight[channels], bias, conv.stride, conv.padding, conv.dilation)
        y = batch_norm_steps(bn, y.view(steps, batch, *y.shape[1:]), in_place=True, channels=channels)
        parts.append(avg_pool_steps(pool, y))
        del y
    return torch.cat(parts, dim=2)


def _halves_pay(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """A plain convolution of a multi-step CPU input whose output is large enough to matter."""
    if x.dim() != 5 or x.device.type != "cpu" or conv.groups != 1 or conv.padding_mode != "zeros":
        return False
    batch, _, height, width = x.shape[1:]
    step_bytes = batch * conv.out_channels * height * width * x.element_size()  # one step's output, unpooled
    return conv.out_channels % 32 == 0 and step_bytes >= SPLIT_MIN_BYTES  # halves of 16-channel blocks


def _with_pooled_convolutions(seq: nn.Sequential):
    """A forward for ``seq`` running each Conv2d -> BatchNorm2d -> AvgPool2d as ``pooled_convolution``
    (None if it has none); the modules are grouped once, not on every call."""
    mods, steps = list(seq), []
    kinds = (nn.Conv2d, nn.BatchNorm2d, nn.AvgPool2d)
    while mods:
        if len(mods) >= 3 and all(isinstance(m, k) for m, k in zip(mods, kinds)):
            steps.append(functools.partial(pooled_convolution, *mods[:3]))
            mods = mods[3:]
        else:
            steps.append(mods.pop(0))
    if len(steps) == len(seq):
        return None

    def forward(x: torch.Tensor) -> torch.Tensor:
        for step in steps:
            x = step(x)
        return x

    return forward


class SharedNeurons:
    """The fast forward of one or more LIFs that always receive the same tensor.

    In a cell every convolution edge has its own LIF, so the edges leaving one node fire exactly
    the same spikes: they are scanned once and their kernel is counted once per LIF, as the
    score defines it. The state lives where spikingjelly keeps it (the first LIF's ``v``), so
    ``reset_net`` and the backward cells' one-step-at-a-time calls work unchanged. Each LIF is
    called once per pass; after the last sibling the spikes are let go, and the input is only
    weakly referenced, so sharing holds no activation longer than the plain path does.
    """

    def __init__(self, lifs: list[nn.Module], accumulator: KernelAccumulator):
        self.lead, self.size, self.accumulator = lifs[0], len(lifs), accumulator
        self.input = lambda: None
        self.spikes = self.kernel = None
        self.pending = 0

    def __call__(self, x_seq: torch.Tensor) -> torch.Tensor:
        if self.pending and self.input() is x_seq:  # a sibling already fired on this very tensor
            self.accumulator.add_kernel(self.kernel, x_seq.shape[0])
        else:
            lead = self.lead
            v = lead.v if isinstance(lead.v, torch.Tensor) else torch.full_like(x_seq[0], float(lead.v))
            self.spikes = lif_scan(x_seq, v, lead.tau, lead.v_threshold)
            lead.v = v
            self.input, self.kernel, self.pending = weakref.ref(x_seq), self.accumulator.add(self.spikes), self.size
        spikes = self.spikes
        self.pending -= 1
        if not self.pending:
            self.spikes = None
        return spikes


def sibling_lifs(model: nn.Module) -> list[list[nn.Module]]:
    """Every LIF in ``model``, grouped with the LIFs that always see the same input tensor."""
    groups: list[list[nn.Module]] = []
    for cell in (m for m in model.modules() if isinstance(m, Cell)):
        by_source: dict[str, list[nn.Module]] = {}
        for key, op in cell.ops.items():  # keys are "source_target"; an edge's op sees its source node
            if isinstance(op, nn.Sequential) and is_lif(op[0]):
                by_source.setdefault(key.split("_")[0], []).append(op[0])
        groups += by_source.values()
    grouped = {id(m) for group in groups for m in group}
    return groups + [[m] for m in model.modules() if is_lif(m) and id(m) not in grouped]


def fast_supported(model: nn.Module) -> bool:
    """The fast forwards cover multi-step LIFs with decay_input and a hard reset to 0."""
    return all(m.step_mode == "m" and m.v_reset == 0.0 and m.decay_input for m in model.modules() if is_lif(m))


@contextmanager
def scoring_forwards(model: nn.Module, accumulator: KernelAccumulator):
    """Swap in the fast forwards (LIFs record into ``accumulator``); restore the modules after."""
    lifs = [m for m in model.modules() if is_lif(m)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.training]
    for group in sibling_lifs(model):
        forward = SharedNeurons(group, accumulator)
        for m in group:
            m.forward = forward
    after_conv = {id(b) for seq in model.modules() if isinstance(seq, nn.Sequential)
                  for a, b in zip(seq, list(seq)[1:]) if isinstance(a, nn.Conv2d)}
    for m in norms:
        m.forward = lambda x, bn=m, own=id(m) in after_conv: batch_norm_steps(bn, x, in_place=own)
    pools = [m for m in model.modules() if isinstance(m, nn.AvgPool2d)]
    for m in pools:
        m.forward = lambda x, pool=m: avg_pool_steps(pool, x)
    pooled = []
    for m in model.modules():
        if isinstance(m, nn.Sequential) and (forward := _with_pooled_convolutions(m)):
            m.forward = forward
            pooled.append(m)
    try:
        yield accumulator
    finally:
        for m in lifs + norms + pools + pooled:
            del m.forward  # back to the class's forward


def run_in_chunks(net: SNN, images: torch.Tensor, chunk: int = 1) -> None:
    """``SNN.forward_steps`` ``chunk`` timesteps at a time, stopping at the head's LIF.

    The neurons keep their state between chunks, so the spikes are those of one pass over all
    T; one step at a time holds 1/T of the activations (SNASNet's own memory profile) and, on
    CPU, convolving B images T times costs what convolving T*B once does. What cannot change
    the score is skipped: the output Linear and the vote after the last LIF, and at the last
    step the convolutions of backward edges, whose output would enter the step after it.
    """
    functional.reset_net(net)
    static = net.stem(images)
    steps = net.macro.timesteps
    carries = {net.cell1: [None] * NODES, net.cell2: [None] * NODES}

    def cell(module: Cell, x: torch.Tensor, start: int) -> torch.Tensor:
        if not module.backward_edges:
            return module._step(x, [None] * NODES)[0]
        outputs = []
        for t in range(x.shape[0]):  # backward edges carry node values from t-1 into t
            out, carries[module] = module._step(x[t : t + 1], carries[module], carry_out=start + t < steps - 1)
            outputs.append(out)
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    for start in range(0, steps, chunk):
        x = static.unsqueeze(0).expand(min(chunk, steps - start), *static.shape)
        x = net.reduction(cell(net.cell1, x, start))
        x = net.last(cell(net.cell2, x, start)).flatten(2)
        net.head[:-1](x)


def _score_batch(model: nn.Module, images: torch.Tensor, fast: bool, chunk: int) -> float:
    accumulator = KernelAccumulator()
    functional.reset_net(model)  # every batch starts from rest (an SNN also does this itself)
    if not (fast and fast_supported(model)):
        with recording(model, accumulator):
            model(images)
        return accumulator.logdet()
    with scoring_forwards(model, accumulator):
        if isinstance(model, SNN):
            run_in_chunks(model, images, chunk)
        else:
            model(images)
    return accumulator.logdet()


def score_model(model: nn.Module, batches: Iterable[torch.Tensor], fast: bool = True, chunk: int = 1) -> float:
    """SNASNet's score: per batch, log|det K| of the mean kernel; averaged over batches.

    The network stays in training mode (batch statistics, dropout) as SNASNet scores it.
    ``fast=False`` runs spikingjelly's own LIFs with forward hooks; the score is the same, but
    only that path updates BatchNorm running statistics (the score never reads them).
    ``chunk``: timesteps per pass of the fast path (1 holds the least memory; any value gives
    the same score).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    model.train()
    scores = []
    with torch.inference_mode(), kept_freed_memory(SCORING_KEPT_MIB) if fast else nullcontext():
        for images in batches:
            scores.append(_score_batch(model, images, fast, chunk))
    if fast:  # the membranes go with the activations; the next candidate starts on an unfragmented peak
        functional.reset_net(model)
        release_freed_memory()
    if not scores:
        raise ValueError("score_model needs at least one batch")
    return sum(scores) / len(scores)


def scoring_picks(count: int, batch_size: int, repeats: int, seed: int) -> list[torch.Tensor]:
    """The indices of ``repeats`` fixed batches of ``count`` images, drawn once (seeded)."""
    if batch_size > count:
        raise ValueError(f"scoring batch {batch_size} is larger than the dataset ({count} images)")
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(count, generator=generator)[:batch_size] for _ in range(repeats)]


def scoring_batches(images: torch.Tensor, batch_size: int, repeats: int, seed: int) -> list[torch.Tensor]:
    """``repeats`` fixed batches drawn once (seeded) so every candidate is ranked on the same data."""
    return [images[i] for i in scoring_picks(len(images), batch_size, repeats, seed)]


def score_genotype(genotype, macro, batches: Sequence[torch.Tensor], seed: int = 0) -> float:
    """Score a freshly initialised network (weights seeded, so the score is reproducible).

    The weights are drawn where the batches are: on the CPU the same network on every machine;
    on a GPU, whose generator draws other numbers, the same network on the same kind of GPU.
    """
    torch.manual_seed(seed)
    net = build_model(genotype, macro, device=batches[0].device if len(batches) else None)
    return score_model(net, batches)
