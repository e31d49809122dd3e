"""NIR files that other tools run: snnTorch and Norse simulate spikernel's export spike for spike.

Two networks at fmnist-tiny widths, trained for a few batches on the embedded Fashion-MNIST
subset (a forward cell and a backward cell, pools in both), exported with ``export_nir``, read back
and run for T steps on real test images in each framework; every spike of every LIF layer and the
per-step logits are compared with spikernel's own PyTorch model.
"""

import functools

import nir
import nirtorch
import norse.torch
import numpy as np
import pytest
import snntorch.import_nir
import torch
from click.testing import CliRunner

from spikernel.cli import main
from spikernel.data.datasets import load_dataset
from spikernel.deploy.export import compare_nir, export_nir, simulate_nir, to_nir
from spikernel.deploy.fold import fold
from spikernel.deploy.nir_run import NIRGraphError, NIRStepper, delay_nodes, norse_nodes, snntorch_nodes
from spikernel.nn.model import build_model

FORWARD = "0412 0003 0004 0000"  # 0->1 pool, 0->2 skip, 0->3 conv1x1, 1->3 conv3x3, 2->3 pool
BACKWARD = "0303 0030 2002 0200"  # SNASNet's CIFAR-10 cell: backward conv1x1s 2->0 and 3->1
IMAGES = 8


@pytest.fixture(scope="module")
def data():
    return load_dataset("fashion-mnist-mini")


def trained(genotype: str, data, batches: int = 6, batch_size: int = 64):
    """A few Adam steps from a seeded init: weights, BatchNorm statistics and spike rates of a
    network that has started to learn, not of its initialisation."""
    torch.manual_seed(0)
    net = build_model(genotype, "fmnist-tiny")
    optimizer = torch.optim.Adam(net.parameters(), 3e-3)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
    for b in range(batches):
        index = order[b * batch_size:(b + 1) * batch_size]
        loss = torch.nn.functional.cross_entropy(net(data.normalize(data.train.images[index])), data.train.labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


@pytest.fixture(scope="module")
def exported(data, tmp_path_factory):
    """{genotype: (NIR file, folded network, StepGraph, test images)}, each file checked by export_nir."""
    images = data.normalize(data.test.images[:IMAGES])
    out = {}
    for genotype in (FORWARD, BACKWARD):
        folded = fold(trained(genotype, data)).float()
        path = tmp_path_factory.mktemp("nir") / "network.nir"
        report = export_nir(folded, path, images)
        assert report["mismatched_spikes"] == {}
        _, step = to_nir(folded, images[:1])
        out[genotype] = path, folded, step, images
    return out


def run_module(module, graph, images, timesteps, dtype=torch.float32):
    """Step a module that an importer built (``out, state = module(x, state)``), recording the
    output of every module named after a LIF node."""
    lifs = [n for n, node in graph.nodes.items() if isinstance(node, nir.LIF)]
    spikes = {n: [] for n in lifs}
    named = dict(module.named_modules())
    hooks = [named[n].register_forward_hook(lambda _m, _i, out, n=n: spikes[n].append(out if torch.is_tensor(out) else out[0]))
             for n in lifs]
    state, logits = None, []
    with torch.no_grad():
        for _ in range(timesteps):
            out, state = module(images.to(dtype), state)
            logits.append(out)
    for h in hooks:
        h.remove()
    return torch.stack(logits), {k: torch.stack(v) for k, v in spikes.items()}


def compare(exported, genotype, simulate, dtype=torch.float32):
    path, folded, step, images = exported[genotype]
    return compare_nir(nir.read(path), step, folded, images, simulate=simulate, dtype=dtype)


def assert_exact(report):
    assert report["spikes"] > 5000, "the comparison must not be between near-silent networks"
    assert report["mismatched_spikes"] == {}
    assert report["max_logit_error"] == 0.0  # equal spikes into the same readout: the same logits


def imported(importer):
    """A ``simulate`` for ``compare_nir`` that imports the graph with ``importer`` and steps it."""
    def simulate(graph, images, timesteps, dtype):
        return run_module(importer(graph).to(dtype), graph, images, timesteps, dtype)
    return simulate


# --------------------------------------------------------------------------- forward cells, upstream importers


def test_snntorch_import_from_nir_runs_a_forward_cell_spike_for_spike(exported):
    assert_exact(compare(exported, FORWARD, imported(snntorch.import_nir.import_from_nir)))


def test_norse_node_map_through_nirtorch_runs_a_forward_cell_spike_for_spike(exported):
    # Norse's own modules, run by nirtorch's current interpreter instead of from_nir's deprecated executor
    assert_exact(compare(exported, FORWARD, imported(lambda g: nirtorch.nir_to_torch(g, norse_nodes(dt=1e-4)))))


def test_norse_from_nir_as_is_runs_a_branching_graph_depth_first(exported):
    """Upstream (Norse 1.1.0, nirtorch 2.6): ``from_nir`` loads the file, but its executor visits
    nodes depth first, so a node can run before all its inputs, and it returns the last node
    visited (a cell feature map) instead of the logits. This is why the adapter above exists."""
    path, folded, step, images = exported[FORWARD]
    module = norse.torch.from_nir(nir.read(path), dt=1e-4)
    with torch.no_grad():
        out, _ = module(images)
    assert out.shape != (IMAGES, folded.macro.num_classes)


def test_spikingjelly_import_runs_the_same_file(exported):
    from spikernel.deploy.export import simulate_nir_spikingjelly

    report = compare(exported, FORWARD, simulate_nir_spikingjelly, dtype=torch.float64)
    assert report["mismatched_spikes"] == {} and report["max_logit_error"] < 1e-6


# --------------------------------------------------------------------------- backward cells: delays


def test_upstream_importers_refuse_delays(exported):
    graph = nir.read(exported[BACKWARD][0])
    assert sum(isinstance(n, nir.Delay) for n in graph.nodes.values()) == 4
    with pytest.raises(ValueError, match="Delay"):
        snntorch.import_nir.import_from_nir(graph)
    with pytest.raises(ValueError, match="Delay"):
        nirtorch.nir_to_torch(graph, norse_nodes(dt=1e-4))


@pytest.mark.parametrize("framework", ["snntorch", "norse"])
@pytest.mark.parametrize("genotype", [BACKWARD, FORWARD])
def test_framework_modules_through_the_stepper_spike_for_spike(exported, framework, genotype):
    nodes = snntorch_nodes() if framework == "snntorch" else norse_nodes(dt=1e-4)
    assert_exact(compare(exported, genotype, functools.partial(simulate_nir, nodes=nodes)))


def test_stepper_in_float64_agrees_too(exported):
    report = compare(exported, BACKWARD, functools.partial(simulate_nir, nodes=norse_nodes(dt=1e-4)), torch.float64)
    assert report["mismatched_spikes"] == {} and report["max_logit_error"] < 1e-6


def test_norse_at_its_default_dt_differs(exported):
    """The comparison bites: Norse's from_nir default dt (1e-3 s) makes tau = 1.33e-4 s a different neuron."""
    report = compare(exported, BACKWARD, functools.partial(simulate_nir, nodes=norse_nodes(dt=1e-3)))
    assert sum(report["mismatched_spikes"].values()) > 1000


# --------------------------------------------------------------------------- the stepper on its own


def chain_graph(delay_steps: int, dt: float = 1e-3):
    """x -> a (identity Linear) -> out, with a recurrent a -> delay -> a of ``delay_steps`` steps."""
    one = np.ones((1, 1), dtype=np.float32)
    nodes = {"x": nir.Input(np.array([1])), "a": nir.Linear(weight=one), "d": nir.Delay(np.full(1, delay_steps * dt)),
             "out": nir.Output(np.array([1]))}
    return nir.NIRGraph(nodes, [("x", "a"), ("a", "d"), ("d", "a"), ("a", "out")], metadata={"dt": dt})


@pytest.mark.parametrize("steps, expected", [(1, [1, 2, 3, 4, 5, 6]), (2, [1, 1, 2, 2, 3, 3])])
def test_stepper_delays_by_whole_steps(steps, expected):
    stepper = NIRStepper(chain_graph(steps), {})  # nirtorch's default map builds the Linear
    state, outputs = None, []
    for _ in range(6):
        out, state = stepper(torch.ones(1, 1), state)
        outputs.append(float(out.detach()))
    assert outputs == expected  # a_t = x_t + a_{t - steps}, zeros before the first


def test_delay_in_a_nirtorch_node_map_on_a_feed_forward_graph():
    dt = 1e-3
    nodes = {"x": nir.Input(np.array([2])), "d": nir.Delay(np.full(2, 2 * dt)), "out": nir.Output(np.array([2]))}
    net = nirtorch.nir_to_torch(nir.NIRGraph(nodes, [("x", "d"), ("d", "out")]), delay_nodes(dt))
    state, outputs = None, []
    for t in range(1, 5):
        out, state = net(torch.full((1, 2), float(t)), state)
        outputs.append(out[0, 0].item())
    assert outputs == [0.0, 0.0, 1.0, 2.0]


def test_stepper_refuses_what_it_cannot_run():
    graph = chain_graph(1)
    with pytest.raises(NIRGraphError, match="not a whole number of steps"):
        NIRStepper(graph, {}, dt=0.3e-3)
    cyclic = nir.NIRGraph({**graph.nodes}, [("x", "a"), ("a", "a"), ("a", "out")], type_check=False)
    del cyclic.nodes["d"]
    with pytest.raises(NIRGraphError, match="cycle without a delay"):
        NIRStepper(cyclic, {})
    with pytest.raises(NIRGraphError, match="does not map"):
        NIRStepper(graph, lambda node: None)


# --------------------------------------------------------------------------- what the file holds


def test_file_records_dt_integration_and_firing_rule_and_omits_zero_v_reset(exported):
    import h5py

    path, folded, step, _ = exported[BACKWARD]
    graph = nir.read(path)
    assert graph.metadata["dt"] == 1e-4 and graph.metadata["integration"] == "euler"
    assert graph.metadata["firing_rule"] == "v >= v_threshold" and graph.metadata["timesteps"] == folded.macro.timesteps
    with h5py.File(path) as f:
        lifs = [g for g in f["node/nodes"].values() if g["type"][()] == b"LIF"]
        assert len(lifs) == len(step.lif_names) and not any("v_reset" in g for g in lifs)
    pools = [n for n in graph.nodes.values() if isinstance(n, nir.SumPool2d)]
    assert len(pools) == 2 and all(p.kernel_size.shape == (2,) and p.stride.shape == (2,) for p in pools)
    flatten = next(n for n in graph.nodes.values() if isinstance(n, nir.Flatten))
    assert (flatten.start_dim, flatten.end_dim) == (-3, -1)  # the same with or without a batch axis


def test_sinabs_target_writes_tau_in_steps_and_passes_the_check(exported, tmp_path):
    path, folded, _, images = exported[BACKWARD]
    report = export_nir(folded, tmp_path / "sinabs.nir", images, target="sinabs")
    assert report["mismatched_spikes"] == {} and report["target"] == "sinabs"
    graph = nir.read(tmp_path / "sinabs.nir")
    lif = next(n for n in graph.nodes.values() if isinstance(n, nir.LIF))
    # exact integration in steps: the membrane keeps exp(-1/tau) = 25% and adds r (1 - 25%) = 1 x input
    np.testing.assert_allclose(np.exp(-1 / lif.tau), 0.25, rtol=1e-6)
    np.testing.assert_allclose(lif.r * (1 - np.exp(-1 / lif.tau)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(lif.v_threshold, 4 / 3, rtol=1e-6)
    assert graph.metadata["dt"] == 1.0 and graph.metadata["integration"] == "exact"
    assert not any(isinstance(n, nir.Linear) for n in graph.nodes.values())  # Sinabs maps Affine only


def test_cli_export_target(tmp_path, exported, data):
    from spikernel.training.checkpoint import RunSpec, save_model
    from spikernel.files import write_json

    model = trained(FORWARD, data, batches=1)
    spec = RunSpec(FORWARD, model.macro.to_dict(), "fashion-mnist-mini", {"epochs": 1})
    write_json(tmp_path / "run" / "run.json", spec.to_dict())
    save_model(tmp_path / "run" / "model.safetensors", model, spec)
    result = CliRunner().invoke(main, ["export", "--run", str(tmp_path / "run"), "--target", "sinabs",
                                       "--check-images", "2", "--out", str(tmp_path / "s.nir")])
    assert result.exit_code == 0, result.stderr
    assert nir.read(tmp_path / "s.nir").metadata["target"] == "sinabs" and "target sinabs" in " ".join(result.stdout.split())
    result = CliRunner().invoke(main, ["export", "--run", str(tmp_path / "run"), "--target", "sinabs",
                                       "--format", "safetensors"])
    assert result.exit_code == 2 and "--target applies to --format nir" in result.stderr
