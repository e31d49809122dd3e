"""Zero-cost proxies: training-free guesses of how well a freshly initialised network will train.

``PROXIES`` maps a name to a function ``(model, batches, labels) -> float`` where higher means
"predicted better". ``model`` is a freshly initialised ``spikernel.nn.model.SNN``, ``batches`` a
list of normalised images [B, C, H, W], ``labels`` a matching list of label tensors (or None for
the proxies that need none). Each function may change the model (gradients, BatchNorm statistics,
signs of weights), so ``compute_proxies`` builds a fresh, seeded network for every proxy.

The published proxies were defined on ReLU networks; the adaptations to LIF neurons are in each
docstring. Gradients through the spikes are spikingjelly's surrogate (ATan) gradients.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from spikingjelly.activation_based import functional, layer

from spikernel.errors import ConfigError
from spikernel.nn.footprint import footprint
from spikernel.nn.model import SNN, MacroConfig, build_model, get_preset
from spikernel.nn.neuron import is_lif, spikes_seen
from spikernel.proxy.sahd import score_model, scoring_picks, spike_overlap
from spikernel.space.genotype import Genotype

Batches = Sequence[torch.Tensor]
Labels = Sequence[torch.Tensor] | None
Proxy = Callable[[SNN, Batches, Labels], float]

JACOB_COV_K = 1e-5  # Mellor et al.'s regulariser of the eigenvalues


# --------------------------------------------------------------------------- shared pieces


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """Convolutions and Linears: the layers whose weights the gradient proxies score.

    Abdelfattah et al. (ICLR 2021) score these layers' weights only (no BatchNorm, no biases),
    as do the papers they follow; spikingjelly's multi-step Conv2d is an ``nn.Conv2d``.
    """
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def prepare_for_gradients(model: SNN) -> SNN:
    """Training mode (batch statistics, as the papers score networks), dropout off.

    Dropout's random mask would add noise that the proxies' own benchmarks (no dropout) never had.
    """
    model.train()
    for m in model.modules():
        if isinstance(m, (nn.Dropout, layer.Dropout)):
            m.eval()
    return model


def loss_gradients(model: SNN, images: torch.Tensor, labels: torch.Tensor,
                   logits_out: list | None = None) -> list[torch.Tensor]:
    """Cross-entropy gradients of each ``weight_layers`` weight on one labelled batch (the batch's
    logits appended to ``logits_out`` when given)."""
    model.zero_grad(set_to_none=True)
    functional.reset_net(model)
    logits = model(images)
    F.cross_entropy(logits, labels).backward()
    if logits_out is not None:
        logits_out.append(logits.detach())
    return [m.weight.grad.detach().clone() if m.weight.grad is not None else torch.zeros_like(m.weight)
            for m in weight_layers(model)]


def ignores_input(logits: Sequence[torch.Tensor]) -> bool:
    """Every image of every batch got the same logits: the network's output does not depend on its input."""
    return all(bool((batch - batch[:1]).abs().max() <= 1e-6 * (1 + batch.abs().max())) for batch in logits)


def _need_labels(name: str, batches: Batches, labels: Labels) -> Sequence[torch.Tensor]:
    if labels is None or len(labels) != len(batches):
        raise ConfigError(f"proxy {name!r} needs one label tensor per batch")
    return labels


def _mean(values: list[float]) -> float:
    if not values:
        raise ConfigError("a proxy needs at least one batch")
    return sum(values) / len(values)


# --------------------------------------------------------------------------- size and SAHD


def params_proxy(model: SNN, batches: Batches = (), labels: Labels = None) -> float:
    """Trainable parameter count: the baseline every proxy must beat (SPEC 10)."""
    return float(sum(p.numel() for p in model.parameters() if p.requires_grad))


def sahd_proxy(model: SNN, batches: Batches, labels: Labels = None) -> float:
    """SNASNet's sparsity-aware Hamming kernel score (Kim et al., ECCV 2022): ``score_model``."""
    return score_model(model, batches)


# --------------------------------------------------------------------------- NASWOT on spikes


@contextmanager
def binary_codes(model: nn.Module):
    """Collects, per forward, the Hamming kernel ``sum_l N_l - d_H`` of every LIF layer and step."""
    totals: list[torch.Tensor] = []

    def hook(spikes):
        codes = spikes.detach().flatten(2)  # [T, B, N]: each step's spike map is a binary code
        n = codes.shape[-1]
        overlap = spike_overlap(codes)  # c_i . c_j, exact integers
        counts = overlap.diagonal(dim1=-2, dim2=-1)
        # agreements c_i.c_j + (1 - c_i).(1 - c_j) = N - a_i - a_j + 2 c_i.c_j
        totals.append((n - counts.unsqueeze(-1) - counts.unsqueeze(-2) + 2 * overlap).sum(0))

    with spikes_seen(model, hook):
        yield totals


def naswot_proxy(model: SNN, batches: Batches, labels: Labels = None) -> float:
    """NASWOT (Mellor et al., ICML 2021) with LIF spikes in place of ReLU codes.

    Each image's binary code is every LIF neuron's spike at every timestep (ReLU nets: every
    unit's on/off state). ``K_ij = N_A - d_H(c_i, c_j)``, the number of units on which two images
    agree, summed over all units; the score is ``log|det K|`` per batch, averaged over batches.
    Unlike SAHD, the Hamming distance is not divided by the distance two random codes of those
    firing rates would have, so images that differ only in how much they fire count as distinct,
    and K is summed over layers (NASWOT concatenates all codes), not averaged. No gradient;
    training mode (batch statistics, dropout on), as SAHD scores. -inf when no two images can be
    told apart.
    """
    model.train()
    scores = []
    with torch.no_grad(), binary_codes(model) as totals:
        for images in batches:
            totals.clear()
            functional.reset_net(model)
            model(images)
            scores.append(torch.linalg.slogdet(sum(totals)).logabsdet.item())
    return _mean(scores)


# --------------------------------------------------------------------------- synflow


@contextmanager
def linear_neurons(model: nn.Module):
    """Every LIF passes its input through unchanged while the context lasts."""
    lifs = [m for m in model.modules() if is_lif(m)]
    for m in lifs:
        m.forward = lambda x: x
    try:
        yield model
    finally:
        for m in lifs:
            del m.forward  # back to the class's forward


def synflow_proxy(model: SNN, batches: Batches = (), labels: Labels = None) -> float:
    """SynFlow (Tanaka et al., NeurIPS 2020), data-free, on the SNN's linear skeleton.

    ``R = 1^T (prod_l |W_l|) 1`` is the network's output summed, with every weight replaced by
    its absolute value and an all-ones input; the score is ``sum_w |w| dR/d|w|`` over the
    convolution and Linear weights, in float64 (the paper's precision). BatchNorm is in eval mode
    with its fresh statistics (mean 0, variance 1: a near-identity) and dropout is off, as the
    paper evaluates. With positive weights and input every ReLU is on, i.e. the identity; an LIF
    fed a constant would instead fire binary spikes whose surrogate gradient says little about
    the paths, so here every LIF is the identity too: the score is the l1 path norm of the
    convolutions, pools, skips and (backward-edge) carries between input and output. A weight
    set to zero cuts its paths; a network whose stem is zero scores 0. ``batches`` gives only
    the image shape and device.
    """
    if not batches:
        raise ConfigError("synflow needs a batch for the input's shape")
    model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    ones = torch.ones((1, *batches[0].shape[1:]), dtype=torch.float64, device=batches[0].device)
    model.zero_grad(set_to_none=True)
    with linear_neurons(model):
        functional.reset_net(model)
        model(ones).sum().backward()
    # a weight no output depends on (a backward edge's convolution at the last step) gets no gradient: 0
    return sum((m.weight * m.weight.grad).sum().item() for m in weight_layers(model) if m.weight.grad is not None)


# --------------------------------------------------------------------------- gradient saliencies


def snip_proxy(model: SNN, batches: Batches, labels: Labels) -> float:
    """SNIP (Lee et al., ICLR 2019): connection sensitivity ``sum_w |w dL/dw|``.

    ``L`` is the cross-entropy of a labelled batch; gradients pass the spikes through the
    surrogate. Summed over convolution and Linear weights (Abdelfattah et al.'s network-level
    score), averaged over batches.
    """
    labels = _need_labels("snip", batches, labels)
    prepare_for_gradients(model)
    return _snip(model, [loss_gradients(model, images, targets) for images, targets in zip(batches, labels)])


def _snip(model: SNN, samples: list[list[torch.Tensor]]) -> float:
    weights = [m.weight.detach() for m in weight_layers(model)]
    return _mean([sum((w * g).abs().sum().item() for w, g in zip(weights, grads)) for grads in samples])


def grad_norm_proxy(model: SNN, batches: Batches, labels: Labels) -> float:
    """grad_norm (Abdelfattah et al., ICLR 2021): the sum over layers of ``||dL/dW_l||_2``.

    Cross-entropy on a labelled batch, surrogate gradients through the spikes; averaged over batches.
    One guard beyond the paper: a network whose logits are the same for every image scores -inf.
    Its signals are constant, and BatchNorm divides a constant's gradient by sqrt(eps), so as
    published such a network would score highest.
    """
    labels = _need_labels("grad_norm", batches, labels)
    prepare_for_gradients(model)
    logits: list[torch.Tensor] = []
    return _grad_norm([loss_gradients(model, images, targets, logits) for images, targets in zip(batches, labels)],
                      logits)


def _grad_norm(samples: list[list[torch.Tensor]], logits: list[torch.Tensor]) -> float:
    return -math.inf if ignores_input(logits) else _mean([sum(g.norm().item() for g in grads) for grads in samples])


def zico_batches(batches: Batches, labels: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """ZiCo needs at least two gradient samples to measure a spread; one batch is split in halves."""
    pairs = list(zip(batches, labels))
    if len(pairs) >= 2:
        return pairs
    images, targets = pairs[0]
    half = len(images) // 2
    if half < 1:
        raise ConfigError("zico needs two batches or one batch of at least two images")
    return [(images[:half], targets[:half]), (images[half:], targets[half:])]


def zico_proxy(model: SNN, batches: Batches, labels: Labels) -> float:
    """ZiCo (Li et al., ICLR 2023): ``sum_l log( sum_{w in l} E|g_w| / sd(g_w) )``.

    ``g_w`` is the loss gradient of weight ``w`` on each batch (mean and population sd over the
    batches); weights whose gradient never changes are left out, and so is a layer with none
    left, as the paper does. High mean, low spread across batches: training moves steadily.
    Surrogate gradients through the spikes; convolution and Linear weights.
    """
    labels = _need_labels("zico", batches, labels)
    prepare_for_gradients(model)
    return _zico([loss_gradients(model, images, targets) for images, targets in zico_batches(batches, labels)])


def _zico(samples: list[list[torch.Tensor]]) -> float:
    score = 0.0
    for layer_grads in zip(*samples):
        g = torch.stack(layer_grads).flatten(1).double()
        sd = g.std(0, unbiased=False)
        moving = sd > 0
        total = (g.abs().mean(0)[moving] / sd[moving]).sum().item()
        if total > 0:
            score += math.log(total)
    return score


SALIENCIES = ("snip", "grad_norm", "zico")


def saliencies(model: SNN, batches: Batches, labels: Labels) -> dict[str, float]:
    """snip, grad_norm and zico from one set of loss gradients: alone, each computes the same
    gradients of the same fresh network on the same batches (bit for bit), so a vote pays once.
    Needs two or more batches (ZiCo splits a single one)."""
    labels = _need_labels("snip", batches, labels)
    if len(batches) < 2:
        raise ConfigError("shared saliencies need two or more batches")
    prepare_for_gradients(model)
    logits: list[torch.Tensor] = []
    samples = [loss_gradients(model, images, targets, logits) for images, targets in zip(batches, labels)]
    return {"snip": _snip(model, samples), "grad_norm": _grad_norm(samples, logits), "zico": _zico(samples)}


# --------------------------------------------------------------------------- jacob_cov


def jacob_cov_proxy(model: SNN, batches: Batches, labels: Labels = None) -> float:
    """jacob_cov (Mellor et al., arXiv 2006.04647 v1): how uncorrelated the input Jacobians are.

    ``J_i = d(sum of outputs)/d x_i`` per image, through the surrogate gradients; with ``s`` the
    eigenvalues of the images' Jacobian correlation matrix, the score is
    ``-sum(log(s + k) + 1 / (s + k))``, k = 1e-5, averaged over batches. -inf when an image's
    Jacobian is constant (no input reaches the output, so its correlations are undefined).
    """
    prepare_for_gradients(model)
    scores = []
    for images in batches:
        x = images.detach().clone().requires_grad_(True)
        model.zero_grad(set_to_none=True)
        functional.reset_net(model)
        model(x).sum().backward()
        scores.append(_jacobian_score(x.grad.flatten(1).double()))
    return _mean(scores)


def _jacobian_score(jacobians: torch.Tensor) -> float:
    if bool((jacobians.std(1) == 0).any()):
        return -math.inf
    eigenvalues = torch.linalg.eigvalsh(torch.corrcoef(jacobians)).clamp(min=0)
    return -(torch.log(eigenvalues + JACOB_COV_K) + 1 / (eigenvalues + JACOB_COV_K)).sum().item()


# --------------------------------------------------------------------------- registry


PROXIES: dict[str, Proxy] = {
    "params": params_proxy,
    "sahd": sahd_proxy,
    "naswot": naswot_proxy,
    "synflow": synflow_proxy,
    "snip": snip_proxy,
    "grad_norm": grad_norm_proxy,
    "jacob_cov": jacob_cov_proxy,
    "zico": zico_proxy,
}
NEEDS_LABELS = frozenset({"snip", "grad_norm", "zico"})


def check_names(names: Sequence[str]) -> list[str]:
    """``names`` as a list, or a ConfigError naming the known proxies."""
    unknown = [n for n in names if n not in PROXIES]
    if unknown:
        raise ConfigError(f"unknown proxy {unknown[0]!r}; known: {', '.join(PROXIES)}")
    return list(names)


def _genotype_and_macro(genotype: Genotype | str, macro: MacroConfig | str) -> tuple[Genotype, MacroConfig]:
    return (Genotype.parse(genotype) if isinstance(genotype, str) else genotype,
            get_preset(macro) if isinstance(macro, str) else macro)


def compute_proxy(name: str, genotype: Genotype | str, macro: MacroConfig | str, batches: Batches,
                  labels: Labels = None, seed: int = 0) -> float:
    """One proxy on a freshly built network, its weights drawn under ``torch.manual_seed(seed)``.

    ``params`` comes from the footprint (no network is built); the others build the network
    where the batches are, like ``score_genotype``.
    """
    check_names([name])
    genotype, macro = _genotype_and_macro(genotype, macro)
    if name == "params":
        return float(footprint(genotype, macro).params)
    return PROXIES[name](_fresh(genotype, macro, batches, seed), batches, labels)


def _fresh(genotype: Genotype, macro: MacroConfig, batches: Batches, seed: int) -> SNN:
    torch.manual_seed(seed)
    return build_model(genotype, macro, device=batches[0].device if len(batches) else None)


def compute_proxies(genotype: Genotype | str, macro: MacroConfig | str, batches: Batches, labels: Labels,
                    names: Sequence[str], seed: int = 0) -> dict[str, float]:
    """``{name: value}``: each proxy on its own fresh network from the same seed (deterministic);
    two or more of ``SALIENCIES`` share one network's loss gradients (the same values, computed once)."""
    names = check_names(names)
    shared = [n for n in names if n in SALIENCIES]
    values = {}
    if len(shared) > 1 and len(batches) > 1:
        genotype, macro = _genotype_and_macro(genotype, macro)
        values = saliencies(_fresh(genotype, macro, batches, seed), batches, labels)
    return {name: values[name] if name in values else compute_proxy(name, genotype, macro, batches, labels, seed)
            for name in names}


def proxy_rows(genotypes: Sequence[Genotype | str], macro: MacroConfig | str, batches: Batches, labels: Labels,
               names: Sequence[str], seed: int = 0, bits: int = 32) -> list[dict]:
    """One row per genotype, every candidate on the same batches: the ground-truth CSV's proxy part.

    Columns: genotype, cell, params, footprint_bytes (at ``bits``), ``proxy_<name>`` and
    ``seconds_<name>`` (wall time of that proxy on this candidate, network build included).
    """
    names = check_names(names)
    macro = get_preset(macro) if isinstance(macro, str) else macro
    rows = []
    for genotype in genotypes:
        genotype, _ = _genotype_and_macro(genotype, macro)
        size = footprint(genotype, macro)
        row = {"genotype": str(genotype), "cell": genotype.cell_type, "params": size.params,
               "footprint_bytes": size.bytes(bits)}
        for name in names:
            started = time.perf_counter()
            row[f"proxy_{name}"] = compute_proxy(name, genotype, macro, batches, labels, seed)
            row[f"seconds_{name}"] = time.perf_counter() - started
        rows.append(row)
    return rows


def labelled_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, repeats: int,
                     seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``scoring_batches``'s draw (the same images for the same seed) with the labels that go with them."""
    try:
        picks = scoring_picks(len(images), batch_size, repeats, seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return [images[i] for i in picks], [labels[i] for i in picks]
