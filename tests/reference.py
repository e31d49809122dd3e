"""spikingjelly's own SNASNet (the reference model) loaded with a spikernel model's weights."""

import types

import torch
from spikingjelly.activation_based.model.snas_net import SNASNet

from spikernel.space.genotype import NODES

# The reference builds edge modules column by column (SNASNet's order).
_FORWARD = [(row, col) for col in range(1, NODES) for row in range(col)]
_BACKWARD = [(row, col) for col in range(NODES - 1) for row in range(col + 1, NODES)]


def reference_snasnet(net, dataset: str) -> SNASNet:
    """A SNASNet with ``net``'s genotype and weights; ``dataset`` picks its hard-coded widths."""
    g, m = net.genotype, net.macro
    args = types.SimpleNamespace(timestep=m.timesteps, second_avgpooling=m.second_pool, dataset=dataset,
                                 threshold=m.threshold, tau=m.tau,
                                 celltype="backward" if g.is_backward else "forward")
    ref = SNASNet(args, torch.tensor(g.matrix))
    copy = lambda dst, src: dst.load_state_dict(src.state_dict())  # noqa: E731
    copy(ref.stem, net.stem)
    for ours, theirs in ((net.cell1, ref.cell1), (net.cell2, ref.cell2)):
        for index, (a, b) in enumerate(_FORWARD):
            if g.matrix[a][b]:
                copy(theirs.cell_architecture[index], ours.ops[f"{a}_{b}"])
        for index, (a, b) in enumerate(_BACKWARD):
            if g.is_backward and g.matrix[a][b]:
                copy(theirs.cell_architecture_back[index], ours.ops[f"{a}_{b}"])
    copy(ref.downconv1, net.reduction[:4])
    copy(ref.last_act, net.last[:2])
    copy(ref.classifier, net.head)
    return ref
