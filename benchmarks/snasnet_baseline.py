"""A faithful SNASNet-style scorer, written for the speed benchmark only.

It reproduces how SNASNet's released search code scores a candidate, so the benchmark compares
spikernel's scorer with that cost structure rather than with a strawman:

- the network is SNASNet's: single-step neurons, the whole net stepped timestep by timestep in
  Python, zero edges computed as ``x * 0`` (its ``ScaleLayer``), ordinary per-step BatchNorm;
- a forward hook on every LIF computes the kernel with the two products ``x (1 - x)^T`` and
  ``(1 - x) x^T``, builds full ``B x B`` helper matrices, and moves K to NumPy on every call;
- each repeat makes a new data iterator over a dataset that normalises image by image.

Two deliberate differences, both so the equality check can be strict: the network is reset to
rest before each forward (so both scorers see the same state), and the ``B x B`` arithmetic after
the products runs in float64 (SNASNet used float32, which moves scores by ~1e-6 relative). The
products themselves stay float32 and are exact for 0/1 spikes.

Weights come from a spikernel ``SNN``, so both scorers evaluate the same network.
"""

from __future__ import annotations

import numpy as np
import torch
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn

from spikernel.nn.model import SNN
from spikernel.space.genotype import AVGPOOL, NODES, SKIP, kernel_of

# SNASNet builds edge modules column by column: forward (row < col), then backward (row > col).
FORWARD_ORDER = [(row, col) for col in range(1, NODES) for row in range(col)]
BACKWARD_ORDER = [(row, col) for col in range(NODES - 1) for row in range(col + 1, NODES)]


class ScaleLayer(nn.Module):
    """SNASNet's zero operation: it still computes ``input * 0``."""

    def forward(self, x):
        return x * 0.0


def single_step_lif(macro) -> neuron.LIFNode:
    return neuron.LIFNode(tau=macro.tau, decay_input=True, v_threshold=macro.threshold, v_reset=0.0,
                          surrogate_function=surrogate.ATan(), detach_reset=True, step_mode="s")


def make_edge(code: int, channels: int, macro) -> nn.Module:
    if code == 0:
        return ScaleLayer()
    if code == SKIP:
        return nn.Identity()
    if code == AVGPOOL:
        return nn.AvgPool2d(3, stride=1, padding=1)
    k = kernel_of(code)
    return nn.Sequential(single_step_lif(macro), nn.Conv2d(channels, channels, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(channels))


class BaselineCell(nn.Module):
    """SNASNet's ``Neuronal_Cell`` / ``Neuronal_Cell_backward``, one timestep per call."""

    def __init__(self, matrix, channels: int, macro, backward: bool):
        super().__init__()
        self.backward = backward
        self.cell_architecture = nn.ModuleList(make_edge(matrix[r][c], channels, macro) for r, c in FORWARD_ORDER)
        if backward:
            self.cell_architecture_back = nn.ModuleList(
                make_edge(matrix[r][c], channels, macro) for r, c in BACKWARD_ORDER)
        self.neuron_init()

    def neuron_init(self):
        self.last_xin = self.last_x1 = self.last_x2 = 0.0

    def forward(self, x_in):
        f = self.cell_architecture
        if not self.backward:
            x_1 = f[0](x_in)
            x_2 = f[1](x_in) + f[2](x_1)
            return f[3](x_in) + f[4](x_1) + f[5](x_2)
        b = self.cell_architecture_back
        x_1 = f[0](x_in + self.last_xin)
        x_2 = f[1](x_in + self.last_xin) + f[2](x_1 + self.last_x1)
        x_3 = f[3](x_in + self.last_xin) + f[4](x_1 + self.last_x1) + f[5](x_2 + self.last_x2)
        self.last_xin = b[0](x_1 + self.last_x1) + b[1](x_2 + self.last_x2) + b[2](x_3)
        self.last_x1 = b[3](x_2 + self.last_x2) + b[4](x_3)
        self.last_x2 = b[5](x_3)
        return x_3


class BaselineSNASNet(nn.Module):
    """SNASNet's network at any widths and kernel sizes, with a spikernel ``SNN``'s weights."""

    def __init__(self, net: SNN):
        super().__init__()
        g, m = net.genotype, net.macro
        c = m.width
        self.timesteps = m.timesteps
        self.stem = nn.Sequential(nn.Conv2d(m.in_channels, c, 3, stride=m.stem_stride, padding=1, bias=False),
                                  nn.BatchNorm2d(c))
        self.cell1 = BaselineCell(g.matrix, c, m, g.is_backward)
        self.downconv1 = nn.Sequential(nn.BatchNorm2d(c), single_step_lif(m),
                                       nn.Conv2d(c, 2 * c, 3, padding=1, bias=False), nn.BatchNorm2d(2 * c))
        self.resdownsample1 = nn.AvgPool2d(2, 2)
        self.cell2 = BaselineCell(g.matrix, 2 * c, m, g.is_backward)
        self.last_act = nn.Sequential(nn.BatchNorm2d(2 * c), single_step_lif(m))
        self.resdownsample2 = nn.AvgPool2d(m.second_pool, m.second_pool)
        self.classifier = nn.Sequential(layer.Dropout(m.dropout), nn.Linear(m.head_features, m.hidden, bias=False),
                                        single_step_lif(m), nn.Linear(m.hidden, m.num_classes * m.votes))
        self.boost = nn.AvgPool1d(m.votes, m.votes)
        self._load(net)

    def _load(self, net: SNN) -> None:
        g = net.genotype
        copy = lambda dst, src: dst.load_state_dict(src.state_dict())  # noqa: E731
        copy(self.stem, net.stem)
        for ours, theirs in ((net.cell1, self.cell1), (net.cell2, self.cell2)):
            orders = [(theirs.cell_architecture, FORWARD_ORDER)]
            if g.is_backward:
                orders.append((theirs.cell_architecture_back, BACKWARD_ORDER))
            for edges, order in orders:
                for index, (a, b) in enumerate(order):
                    if g.matrix[a][b]:
                        copy(edges[index], ours.ops[f"{a}_{b}"])
        copy(self.downconv1, net.reduction[:4])
        copy(self.last_act, net.last[:2])
        copy(self.classifier, net.head)

    def forward(self, images):
        functional.reset_net(self)
        self.cell1.neuron_init()
        self.cell2.neuron_init()
        acc_voltage = 0
        static_x = self.stem(images)
        for _ in range(self.timesteps):
            x = self.cell1(static_x)
            x = self.resdownsample1(self.downconv1(x))
            x = self.cell2(x)
            x = self.resdownsample2(self.last_act(x))
            x = self.classifier(x.view(len(images), -1))
            acc_voltage = acc_voltage + self.boost(x.unsqueeze(1)).squeeze(1)
        return acc_voltage / self.timesteps


class PerImageDataset(torch.utils.data.Dataset):
    """uint8 images normalised one at a time, as a torchvision transform pipeline does."""

    def __init__(self, images: torch.Tensor, mean, std):
        self.images = images
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return (self.images[index].float() / 255 - self.mean) / self.std


class EachBatchInTurn(torch.utils.data.Sampler):
    """Batch sampler whose n-th iterator yields the n-th prepared batch (SNASNet drew a shuffled one)."""

    def __init__(self, batch_size: int, repeats: int):
        self.batches = [list(range(r * batch_size, (r + 1) * batch_size)) for r in range(repeats)]
        self.calls = 0

    def __len__(self):
        return 1

    def __iter__(self):
        batch = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        yield batch


def make_loader(batches: list[torch.Tensor], mean, std) -> torch.utils.data.DataLoader:
    """A loader over the prepared uint8 batches; its own generator keeps the global RNG untouched."""
    images = torch.cat(batches)
    return torch.utils.data.DataLoader(PerImageDataset(images, mean, std),
                                       batch_sampler=EachBatchInTurn(len(batches[0]), len(batches)),
                                       generator=torch.Generator())


def snasnet_score(net: BaselineSNASNet, loader: torch.utils.data.DataLoader, repeats: int, device) -> float:
    """SNASNet's search loop for one candidate: hooks on every LIF, a new iterator per repeat."""
    state = {}

    def computing_K_eachtime(module, inp, out):
        out = out.view(out.size(0), -1)
        batch, neurons = out.size()
        x = (out > 0).float()
        full_matrix = torch.ones((batch, batch), dtype=torch.float64, device=device) * neurons
        sparsity = (x.sum(1, dtype=torch.float64) / neurons).unsqueeze(1)
        norm_K = ((sparsity @ (1 - sparsity.t())) + ((1 - sparsity) @ sparsity.t())) * neurons
        rescale_factor = torch.div(0.5 * torch.ones((batch, batch), dtype=torch.float64, device=device),
                                   norm_K + 1e-3)
        K1_0 = x @ (1 - x.t())
        K0_1 = (1 - x) @ x.t()
        K_total = full_matrix - rescale_factor * (K0_1 + K1_0).double()
        state["K"] = state["K"] + K_total.cpu().numpy()
        state["count"] += 1

    handles = [m.register_forward_hook(computing_K_eachtime) for m in net.modules()
               if isinstance(m, neuron.LIFNode)]
    scores = []
    with torch.no_grad():
        for _ in range(repeats):
            state.update(K=0.0, count=0)
            images = next(iter(loader)).to(device)
            net(images)
            scores.append(np.linalg.slogdet(state["K"] / state["count"])[1])
    for handle in handles:
        handle.remove()
    return float(np.mean(scores))
