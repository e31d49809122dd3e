"""Input encodings (``MacroConfig.encoding``): direct as before, Poisson rate coding and
time-to-first-spike coding; the stem on input spikes, its operations, the encoding as a search
dimension and on every command. Tiny settings: fmnist-tiny, the embedded fashion-mnist-mini, a few images.
"""

import csv
import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from spikernel.data.datasets import load_dataset
from spikernel.deploy.export import ExportError, export_nir, to_nir
from spikernel.errors import ConfigError
from spikernel.nas.engine import check_energy_budget_reachable, make_scorer, scoring_data
from spikernel.nn.encoding import ENCODINGS, LATENCY_THRESHOLD, encode, intensities, latency, poisson
from spikernel.nn.energy import EnergyBudget, measure
from spikernel.nn.footprint import stem_macs
from spikernel.nn.macro import ENCODING_NAMES, MacroConfig, MacroSpace, get_preset, parse_values
from spikernel.nn.model import build_model
from spikernel.nn.neuron import is_lif
from spikernel.proxy.sahd import score_genotype, score_model
from spikernel.selection.settings import ExploreSettings
from helpers import assert_one_error, cli, write_fashion_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

GENOTYPE = "0303 0030 2002 0200"  # a backward cell (SNASNet's CIFAR-10 one)
DATA = load_dataset("fashion-mnist-mini")
TINY = get_preset("fmnist-tiny").for_data(DATA)
SPIKING = ("poisson", "latency")


def at(encoding: str, **more) -> MacroConfig:
    return replace(TINY, encoding=encoding, **more)


def images(n: int = 8) -> torch.Tensor:
    return DATA.normalize(DATA.train.images[:n])


def lif_spikes(net, run) -> dict[str, torch.Tensor]:
    """Each LIF layer's spikes over every call of ``run()``, joined along time."""
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: seen.setdefault(name, []).append(o.detach().clone()))
             for name, m in net.named_modules() if is_lif(m)]
    with torch.no_grad():
        run()
    for hook in hooks:
        hook.remove()
    return {name: torch.cat(steps) for name, steps in seen.items()}


# --------------------------------------------------------------------------- settings


def test_direct_is_the_network_built_without_the_field():
    """Settings written before encodings existed load as direct and build the same network, bit for bit."""
    old = {k: v for k, v in TINY.to_dict().items()}
    assert not {"encoding", "input_mean", "input_std"} & set(old)  # direct records nothing new
    assert MacroConfig.from_dict(old) == at("direct") == TINY and MacroConfig.from_dict(old).encoding == "direct"
    torch.manual_seed(0)
    before = build_model(GENOTYPE, MacroConfig.from_dict(old))
    torch.manual_seed(0)
    now = build_model(GENOTYPE, at("direct"))
    assert type(now.stem[0]) is nn.Conv2d  # the single-step convolution, run once per inference
    assert list(before.state_dict()) == list(now.state_dict())
    x = images()
    torch.manual_seed(1)
    a = before.forward_steps(x)
    torch.manual_seed(1)
    b = now.forward_steps(x)
    assert torch.equal(a, b)


def test_spike_encodings_record_their_statistics_and_round_trip():
    for name in SPIKING:
        macro = at(name)
        data = macro.to_dict()
        assert data["encoding"] == name and data["input_mean"] == list(DATA.mean) and data["input_std"] == list(DATA.std)
        assert MacroConfig.from_dict(json.loads(json.dumps(data))) == macro
        assert macro != at("direct") and at("poisson") != at("latency")
    # two direct settings that differ only in statistics build the same network
    assert get_preset("fmnist-tiny") == TINY and hash(get_preset("fmnist-tiny")) == hash(TINY)
    assert at("poisson") != replace(get_preset("fmnist-tiny"), encoding="poisson")
    assert set(ENCODINGS) == set(ENCODING_NAMES)


@pytest.mark.parametrize("settings, message", [
    ({"encoding": "rate"}, "unknown encoding 'rate'; choose one of direct, poisson, latency"),
    ({"input_mean": (0.1, 0.2), "input_std": (1.0, 1.0)}, "one value per input channel"),
    ({"input_mean": (0.1,), "input_std": (0.0,)}, "std must be positive"),
    ({"input_mean": ("a",), "input_std": (1.0,)}, "lists of numbers"),
])
def test_bad_settings_are_config_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        replace(get_preset("fmnist-tiny"), **settings)


def test_a_spike_encoding_without_the_images_statistics_is_refused_at_build():
    with pytest.raises(ConfigError, match="poisson encoding needs the images' mean and std"):
        build_model(GENOTYPE, replace(get_preset("fmnist-tiny"), encoding="poisson"))
    build_model(GENOTYPE, replace(get_preset("fmnist-tiny"), encoding="poisson", input_mean=(0.0,), input_std=(1.0,)))


# --------------------------------------------------------------------------- the encoders


def test_the_encoder_sees_the_raw_intensities():
    raw = DATA.train.images[:4]
    assert torch.allclose(intensities(DATA.normalize(raw), TINY), raw.float() / 255, atol=1e-6)
    assert torch.equal(encode(images(4), TINY), images(4))  # direct: the normalised image itself


def test_poisson_rates_match_intensities():
    torch.manual_seed(0)
    levels = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.9, 1.0]).view(1, 1, 1, -1).expand(1, 1, 50, 6)
    spikes = poisson(levels.contiguous(), 400)
    assert spikes.shape == (400, 1, 1, 50, 6) and set(spikes.unique().tolist()) <= {0.0, 1.0}
    rates = spikes.mean(dim=(0, 1, 2, 3))
    # 20000 draws per level: the rate's standard error is at most 0.0036
    assert rates.tolist() == pytest.approx(levels[0, 0, 0].tolist(), abs=0.015)
    assert rates[0] == 0 and rates[-1] == 1
    torch.manual_seed(0)
    assert torch.equal(poisson(levels.contiguous(), 400), spikes)  # seeded: the same draws


def test_poisson_through_the_normalisation_of_a_constant_image():
    """A uniform grey image (intensity 0.4) enters normalised; its spike rate is 0.4."""
    grey = torch.full((4, 1, 28, 28), round(0.4 * 255), dtype=torch.uint8)
    torch.manual_seed(0)
    spikes = encode(DATA.normalize(grey), at("poisson", timesteps=50))
    assert spikes.shape == (50, 4, 1, 28, 28)
    assert spikes.mean().item() == pytest.approx(102 / 255, abs=0.01)


def test_latency_one_spike_per_pixel_brighter_earlier():
    steps = 6
    levels = torch.linspace(0, 1, 101).view(1, 1, 1, -1)
    spikes = latency(levels, steps)
    counts = spikes.sum(0).flatten()
    assert counts.max() == 1
    assert torch.equal(counts.bool(), (levels >= LATENCY_THRESHOLD).flatten())  # near-black never fires
    first = spikes.flatten(1).argmax(0)[counts.bool()]
    assert first[-1] == 0  # full intensity fires at the first step
    assert (first[1:] <= first[:-1]).all()  # brighter never later
    assert first[0] == round((1 - levels.flatten()[counts.bool()][0].item()) * (steps - 1))
    assert set(first.tolist()) == set(range(steps))  # the ramp uses every step
    one_step = latency(levels, 1)
    assert torch.equal(one_step[0].bool(), levels >= LATENCY_THRESHOLD)


def test_latency_on_real_images():
    raw = DATA.train.images[:4].float() / 255
    spikes = encode(images(4), at("latency"))
    assert spikes.shape == (TINY.timesteps, 4, 1, 28, 28) and spikes.sum(0).max() == 1
    assert torch.equal(spikes.sum(0).bool(), raw >= LATENCY_THRESHOLD)


# --------------------------------------------------------------------------- the network on spikes


@pytest.mark.parametrize("encoding", SPIKING)
def test_the_stem_runs_on_spikes_with_batch_statistics_per_step(encoding):
    torch.manual_seed(0)
    net = build_model(GENOTYPE, at(encoding)).train()
    assert list(net.state_dict()) == list(build_model(GENOTYPE, TINY).state_dict())  # the same keys
    seen = {}
    net.stem.register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    torch.manual_seed(1)
    logits = net.forward_steps(images())
    assert logits.shape == (TINY.timesteps, 8, 10)
    x, y = seen["x"], seen["y"]
    assert x.shape == (TINY.timesteps, 8, 1, 28, 28) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert y.shape == (TINY.timesteps, 8, TINY.width, 28, 28)
    # training-mode BatchNorm per step: each step's output has zero mean per channel
    assert y.mean(dim=(1, 3, 4)).abs().max() < 1e-5
    if encoding == "latency":  # steps differ, so their outputs do: not one image repeated
        assert not torch.equal(y[0], y[-1])


def test_per_step_averages_normalise_each_step_as_training_did():
    """One running average for steps whose statistics differ is none of them (a latency-coded
    network trained so tested at 27%, 79% in training); per-step averages are each step's."""
    from spikernel.nn.layers import TimestepBatchNorm2d

    steps = torch.arange(4.0).view(4, 1, 1, 1, 1)
    x = torch.randn(4, 16, 3, 5, 5) * (1 + steps) + 2 * steps  # every step its own mean and spread
    shared, per_step = TimestepBatchNorm2d(3), TimestepBatchNorm2d(3)
    per_step.track_steps(4)
    for bn in (shared, per_step):
        bn.momentum = 1.0  # the running averages become this batch's statistics
    trained = per_step.train()(x)
    assert torch.equal(trained, shared.train()(x))  # training normalises as before: per step
    evaluated = per_step.eval()(x)
    torch.testing.assert_close(evaluated, trained, atol=1e-2, rtol=1e-2)  # (the running variance is unbiased)
    assert (shared.eval()(x) - trained).abs().max() > 1  # one average for all four steps
    assert torch.equal(torch.cat([per_step(x[t : t + 1]) for t in range(4)]), evaluated)  # steps in order
    assert per_step.cursor == 0
    per_step(x[:3])
    with pytest.raises(ValueError, match="rewind"):
        per_step(x[:2])


@pytest.mark.parametrize("encoding", SPIKING)
def test_spike_encoded_networks_keep_averages_per_step_and_fold_them(encoding):
    from spikernel.deploy.fold import fold, is_folded
    from spikernel.deploy.quantize import deployed_size
    from spikernel.nn.footprint import footprint
    from spikernel.nn.layers import TimestepBatchNorm2d
    from spikernel.space.genotype import Genotype

    net = build_model(GENOTYPE, at(encoding))
    norms = [m for m in net.modules() if isinstance(m, TimestepBatchNorm2d)]
    assert all(m.steps == TINY.timesteps and m.running_mean.shape == (TINY.timesteps, m.num_features) for m in norms)
    assert not any(m.steps for m in build_model(GENOTYPE, TINY).modules() if isinstance(m, TimestepBatchNorm2d))
    for m in norms:  # distinct averages per step, so that folding them per step is what is tested
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
    net.eval()
    folded = fold(net)
    assert is_folded(folded)
    x = images()
    torch.manual_seed(4)
    expected = net(x)
    torch.manual_seed(4)
    torch.testing.assert_close(folded(x), expected, atol=1e-4, rtol=1e-4)
    stored = sum(p.numel() for m in folded.modules() if type(m).__name__ in ("StepAffine", "ChannelAffine")
                 for p in m.parameters()) + sum(m.bias.numel() for m in folded.modules()
                                                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None)
    assert deployed_size(footprint(Genotype.parse(GENOTYPE), at(encoding)), at(encoding), 32).vectors == stored


@pytest.mark.parametrize("encoding", SPIKING)
def test_fire_sees_the_spikes_of_forward_steps(encoding):
    """The scorer's step-by-step pass draws the input spikes once, as the full forward does."""
    torch.manual_seed(0)
    net = build_model(GENOTYPE, at(encoding)).train()
    x = images()
    torch.manual_seed(5)
    full = lif_spikes(net, lambda: net.forward_steps(x))
    torch.manual_seed(5)
    stepped = lif_spikes(net, lambda: net.fire(x, 1))
    assert set(full) == set(stepped) and len(full) == len(net.lif_layers())
    for name, spikes in full.items():
        assert spikes.shape[0] == TINY.timesteps and torch.equal(stepped[name], spikes), name
    assert sum(s.sum() for s in full.values()) > 0


@pytest.mark.parametrize("encoding", ENCODING_NAMES)
def test_one_training_step_with_each_encoding(encoding):
    torch.manual_seed(0)
    net = build_model(GENOTYPE, at(encoding)).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = images(16), DATA.train.labels[:16]
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    grad = net.stem[0].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0  # gradients reach the stem
    before = net.stem[0].weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, net.stem[0].weight)


@pytest.mark.parametrize("encoding", SPIKING)
def test_scoring_a_candidate_twice_gives_the_same_score(encoding):
    batches, _ = scoring_data(DATA, 16, 2, 0)
    score = make_scorer(at(encoding), batches, seed=0)
    first, second = score(GENOTYPE), score(GENOTYPE)
    assert first == second and first != score_genotype(GENOTYPE, TINY, batches, seed=0)
    # the fast path (one step at a time) and the full forward see the same spikes, so the same score
    torch.manual_seed(0)
    slow = score_model(build_model(GENOTYPE, at(encoding)), batches, fast=False)
    assert slow == pytest.approx(first, rel=1e-9)


# --------------------------------------------------------------------------- operations and energy


def forced(encoding: str, intensity: float, timesteps: int = 2):
    """A 4x4 one-channel network with width 2 (tests/test_energy.py's) fed a uniform image."""
    macro = MacroConfig(in_channels=1, image_size=4, num_classes=2, width=2, hidden=3, votes=1, second_pool=2,
                        timesteps=timesteps, dropout=0.0, encoding=encoding, input_mean=(0.0,), input_std=(1.0,))
    net = build_model("0002 0000 0000 0000", macro).eval()
    return measure(net, [torch.full((3, 1, 4, 4), intensity)])


def test_the_stem_on_spikes_is_counted_in_accumulates_by_hand():
    # 3x3 conv, padding 1, on 4x4: a spike reaches 2, 3, 3, 2 rows (and columns) of outputs, so an
    # all-spiking image makes (2+3+3+2)^2 = 100 accumulates per output channel (2 of them) per step.
    latency_ops = forced("latency", 1.0)  # full intensity: one spike per pixel, at step 0
    stem = latency_ops.synapses[0]
    assert (stem.name, stem.kind, stem.input_spikes, stem.sops) == ("stem", "conv3x3", 16, 100 * 2)
    assert latency_ops.stem_macs == 0 and latency_ops.images == 3
    assert latency_ops.energy_pj == pytest.approx(latency_ops.sops * 0.9)
    poisson_ops = forced("poisson", 1.0)  # intensity 1: every pixel every step
    assert poisson_ops.synapses[0].sops == 100 * 2 * 2 and poisson_ops.synapses[0].input_spikes == 32
    silent = forced("poisson", 0.0)
    assert silent.synapses[0].sops == 0 and silent.stem_macs == 0
    direct = forced("direct", 1.0)
    assert direct.stem_macs == 2 * 16 * 9 and "stem" not in {s.name for s in direct.synapses}
    assert forced("latency", 1.0).to_dict()["encoding"] == "latency" and "encoding" not in direct.to_dict()
    assert dict(latency_ops.rows())["stem MACs / image"].startswith("0 (latency input spikes")


def test_no_stem_macs_means_no_energy_floor():
    assert stem_macs(at("poisson")) == 0 and stem_macs(TINY) > 0
    space = MacroSpace.of(TINY, encoding=("direct", "latency"))
    check_energy_budget_reachable(EnergyBudget.parse("1pJ"), space)  # the latency network has no stem MACs
    with pytest.raises(ConfigError, match="stem convolution alone"):
        check_energy_budget_reachable(EnergyBudget.parse("1pJ"), TINY)


def test_nir_export_refuses_a_spike_encoding(tmp_path):
    net = build_model(GENOTYPE, at("latency")).eval()
    with pytest.raises(ExportError, match="needs direct input: this network uses the latency encoding"):
        export_nir(net, tmp_path / "net.nir", images(2))
    with pytest.raises(ExportError, match="latency"):
        to_nir(net, images(1))
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- a search dimension and the commands


def test_the_encoding_is_a_macro_dimension_in_one_spelling():
    space = MacroSpace.of(TINY, encoding=("poisson", "direct"), width=(8,))
    assert space.dimensions == (("encoding", ("direct", "poisson")),)
    assert [m.encoding for m in space.combinations()] == ["direct", "poisson"]
    assert space.identity()["dimensions"] == {"encoding": ["direct", "poisson"]}
    assert MacroSpace.of(TINY, encoding="latency").base == at("latency")  # one value: an override
    assert parse_values("encoding", "direct, latency") == ("direct", "latency")
    for bad, message in ((("direct", "rate"), "unknown encoding 'rate'"), (("direct", "direct"), "twice"), ((), "empty")):
        with pytest.raises(ConfigError, match=message):
            MacroSpace.of(TINY, encoding=bad)
    settings = ExploreSettings(preset="fmnist-tiny", macro_values={"encoding": ("latency", "direct")})
    assert settings.to_dict()["macro_values"] == {"encoding": ["direct", "latency"]}
    assert settings.macro_space().names == ("encoding",)


def test_a_search_over_encodings_records_the_column_and_trains_the_pick(tmp_path):
    out = tmp_path / "s"
    code, _, err = cli("search", "-p", "fmnist-tiny", "--batch", 16, "--repeats", 1, "-T", 2, "-n", 6,
                       "--encoding", "direct,latency", "--seed", 1, "-o", out)
    assert code == 0, err
    with open(out / "candidates.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:3] == ["trial", "genotype", "encoding"]
    assert {r["encoding"] for r in rows} == {"direct", "latency"}
    selection = json.loads((out / "selection.json").read_text())
    assert selection["macro_dimensions"] == {"encoding": ["direct", "latency"]}
    for entry in selection["top"]:
        assert entry["macro"].get("encoding", "direct") == entry["encoding"]
    # the same candidate at the two encodings is two networks, scored apart
    scores = {(r["genotype"], r["encoding"]): r["score"] for r in rows if r["status"] == "scored"}
    assert len(scores) == sum(r["status"] == "scored" for r in rows)

    from spikernel.selection.explore import load_study

    study = load_study(out)
    assert {c["encoding"] for c in study.results[0].candidates} == {"direct", "latency"}
    assert cli("report", out)[0] == 0

    from spikernel.cli.train import resolve_macro
    from spikernel.training.run import read_search

    genotype, macro, dataset = read_search(out)
    picked = resolve_macro(load_dataset(dataset), macro, None, None, None)
    assert picked.encoding == selection["best"]["encoding"]
    assert resolve_macro(load_dataset(dataset), macro, None, None, None, "poisson").encoding == "poisson"


def test_train_and_score_take_the_encoding(tmp_path):
    run, data = tmp_path / "run", write_fashion_mnist(tmp_path / "data", train=16, test=16)
    code, _, err = cli("train", "-g", GENOTYPE, "-p", "fmnist-tiny", "-T", 2, "--encoding", "poisson",
                       "--dataset", "fashion-mnist", "--data-dir", data, "--epochs", 1, "--batch", 8, "--out", run)
    assert code == 0, err
    spec = json.loads((run / "run.json").read_text())
    assert spec["macro"]["encoding"] == "poisson" and spec["macro"]["input_mean"] == list(DATA.mean)
    code, out, err = cli("evaluate", "--run", run, "--json")
    assert code == 0, err
    energy = json.loads(out)["energy"]
    assert energy["encoding"] == "poisson" and energy["stem_macs"] == 0 and energy["synapses"][0]["name"] == "stem"
    code, _, err = cli("export", "--run", run)  # NIR has no encoder node: one line, exit 2
    assert_one_error(code, "", err, "NIR export needs direct input", "poisson encoding")
    args = ("score", "-g", GENOTYPE, "-p", "fmnist-tiny", "-T", 2, "--batch", 8, "--repeats", 1, "--json")
    poisson_runs = [json.loads(cli(*args, "--encoding", "poisson")[1])[0]["score"] for _ in range(2)]
    direct = json.loads(cli(*args)[1])[0]["score"]
    assert poisson_runs[0] == poisson_runs[1] != direct
    code, _, err = cli(*args, "--encoding", "rate")
    assert code == 2 and "'rate' is not one of" in err


def test_an_exploration_trains_the_best_of_each_encoding_at_its_own_encoding(tmp_path):
    from spikernel.selection.explore import explore

    settings = ExploreSettings(kernel_sets=("1x1_3x3",), preset="fmnist-tiny", timesteps=2, candidates=6, top_k=1,
                               epochs=1, limit_train=16, score_batch=16, repeats=1, seed=1,
                               macro_values={"encoding": ("latency", "direct")})
    study = explore(settings, tmp_path / "e", device="cpu")
    search_dir = tmp_path / "e" / "1x1_3x3" / "search"
    with open(search_dir / "candidates.csv", newline="") as f:
        scored = [r for r in csv.DictReader(f) if r["status"] == "scored"]
    best = {enc: max((r for r in scored if r["encoding"] == enc), key=lambda r: float(r["score"]))
            for enc in ("direct", "latency")}  # scores of different inputs are not compared: one pick per encoding
    assert {r["candidate"] for r in study.results[0].trained} == {f"{r['genotype']} [encoding={enc}]"
                                                                   for enc, r in best.items()}
    top = {r["genotype"] + r["encoding"]: r for r in json.loads((search_dir / "selection.json").read_text())["top"]}
    for enc, row in best.items():
        run_dir = tmp_path / "e" / "1x1_3x3" / "train" / f"{row['genotype'].replace(' ', '-')}-encoding{enc}"
        trained = json.loads((run_dir / "result.json").read_text())["macro"]
        assert trained.get("encoding", "direct") == enc
        if row["genotype"] + enc in top:  # built at the settings the search scored it at
            assert trained == top[row["genotype"] + enc]["macro"]
    assert json.loads((tmp_path / "e" / "explore.json").read_text())["macro_values"] == {"encoding": ["direct", "latency"]}


@pytest.mark.parametrize("encoding", SPIKING)
def test_a_spike_encoded_network_exports_at_8_bits_with_its_per_step_affines(tmp_path, encoding):
    from spikernel.deploy.quantize import deployed_size, measured_size, quantize
    from spikernel.deploy.weights import export_safetensors, load_exported
    from spikernel.nn.footprint import footprint
    from spikernel.space.genotype import Genotype

    model = build_model(GENOTYPE, at(encoding)).eval()
    info = export_safetensors(model, tmp_path / "q.safetensors", 8)
    x = images()
    with torch.no_grad():
        torch.manual_seed(6)
        expected = quantize(model, 8)(x)
        torch.manual_seed(6)
        torch.testing.assert_close(load_exported(tmp_path / "q.safetensors")(x), expected)
    analytic = deployed_size(footprint(Genotype.parse(GENOTYPE), at(encoding)), at(encoding), 8)
    assert info["deployed"] == measured_size(model, 8).to_dict() == analytic.to_dict()
