"""Training throughput: spikernel's training step against a plain eager spikingjelly loop, in one run.

    python benchmarks/train_speed.py                     # fmnist-small, batch 64, T=5
    python benchmarks/train_speed.py --preset fmnist --steps 5 --rounds 2

Both sides train the same network (the baseline is built from the spikernel model's initial
weights and must produce the same logits before any step) on the same embedded Fashion-MNIST
images with the same batch, loss and SGD settings.

- baseline: SNASNet's network as its code runs it (``snasnet_baseline.BaselineSNASNet``:
  single-step spikingjelly LIFs, the whole net stepped timestep by timestep in Python, per-step
  BatchNorm), fed by a torch ``DataLoader`` over a dataset that crops, flips and normalises one
  image at a time, as a torchvision transform pipeline does;
- spikernel: ``train.train_epoch`` as ``spikernel train`` runs it (multi-step layers, the fused
  LIF, batched uint8 crop/flip/normalise, and torch.compile unless ``--no-compile``).

The two take turns, ``--steps`` batches each per round, so both see the same machine load.
The last line is ``ratio: X.XX`` (spikernel img/s / baseline img/s).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402
from snasnet_baseline import BaselineSNASNet  # noqa: E402

from spikernel.data.datasets import Split, load_dataset  # noqa: E402
from spikernel.training.distributed import device_label  # noqa: E402
from spikernel.nn.model import build_model, get_preset  # noqa: E402
from spikernel.training.loop import TrainConfig, make_optimizer, on_device, train_epoch, training_step_model  # noqa: E402
from spikernel.training.loop import channels_last_enabled as train_channels_last  # noqa: E402


class PerImageTrainSet(torch.utils.data.Dataset):
    """RandomCrop(padding) + RandomHorizontalFlip + Normalize, one image per ``__getitem__``."""

    def __init__(self, split: Split, mean, std, padding: int):
        self.split, self.padding = split, padding
        self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        image = self.split.images[i].float() / 255
        size = image.shape[-1]
        padded = F.pad(image, (self.padding,) * 4)
        top, left = torch.randint(0, 2 * self.padding + 1, (2,)).tolist()
        image = padded[:, top : top + size, left : left + size]
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        return (image - self.mean) / self.std, self.split.labels[i]


def baseline_steps(net, loader, optimizer, steps: int, device: torch.device) -> int:
    """``steps`` SGD steps of the baseline; returns the images seen."""
    net.train()
    seen = 0
    batches = iter(loader)
    for _ in range(steps):
        images, labels = next(batches)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(labels)
    synchronize(device)
    return seen


def synchronize(device: torch.device) -> None:
    """GPU work is asynchronous: wait for it before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--genotype", default="0302 0030 3003 0000", help="SNASNet's CIFAR-100 cell by default")
    parser.add_argument("--preset", default="fmnist-small")
    parser.add_argument("--timesteps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="batches per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast, spikernel side (default: as `spikernel train`, on for CUDA GPUs)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--fused-lif", action=argparse.BooleanOptionalAction, default=True,
                        help="spikernel side: train on the LIF's fused kernel (else spikingjelly's own LIF kernels)")
    parser.add_argument("--workers", type=int, default=None,
                        help="baseline DataLoader workers (default: 0 on CPU, where they would take the "
                             "training's cores; 4 with pinned memory on CUDA, as GPU scripts run it)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    device = torch.device(args.device)
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)

    data = load_dataset("fashion-mnist-mini")
    macro = get_preset(args.preset, timesteps=args.timesteps)
    torch.manual_seed(0)
    ours = build_model(args.genotype, macro)
    theirs = BaselineSNASNet(copy.deepcopy(ours))
    probe = data.normalize(data.test.images[: args.batch])
    with torch.no_grad():
        same = torch.allclose(ours.eval()(probe), theirs.eval()(probe), atol=1e-5)
    if not same:
        raise SystemExit("the baseline does not compute the same network")
    params = sum(p.numel() for p in ours.parameters())

    steps_per_round = args.steps
    config = TrainConfig(epochs=1, batch_size=args.batch, limit_train=steps_per_round * args.batch,
                         compile=args.compile, amp=args.amp, fused_lif=args.fused_lif)
    optimizer, scheduler = make_optimizer(ours, config, steps_per_round)
    loader = torch.utils.data.DataLoader(PerImageTrainSet(data.train, data.mean, data.std, data.crop_padding),
                                         batch_size=args.batch, shuffle=True, drop_last=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    ours.to(device)
    theirs.to(device)
    if train_channels_last(config, device):
        ours.to(memory_format=torch.channels_last)
    data = on_device(data, device)
    base_optimizer = torch.optim.SGD(theirs.parameters(), lr=config.lr, momentum=config.momentum,
                                     weight_decay=config.weight_decay)
    print(f"machine: {machine()}; device {device_label(device)}; baseline loader workers {workers}")
    print(f"network: {args.genotype} in {args.preset}, T={macro.timesteps}, {params:,} parameters; batch {args.batch}")

    with training_step_model(ours, config, device) as step_model:
        started = time.perf_counter()  # warm-up: torch.compile's first batches, allocator, caches
        train_epoch(step_model, data, optimizer, scheduler, replace_limit(config, 2 * args.batch), 0, device=device)
        synchronize(device)
        warm_ours = time.perf_counter() - started
        started = time.perf_counter()
        baseline_steps(theirs, loader, base_optimizer, 2, device)
        warm_theirs = time.perf_counter() - started
        print(f"warm-up (2 batches): spikernel {warm_ours:.1f} s (compile included), baseline {warm_theirs:.1f} s")

        totals = {"spikernel": [0, 0.0], "baseline": [0, 0.0]}
        for r in range(args.rounds):
            started = time.perf_counter()
            seen = baseline_steps(theirs, loader, base_optimizer, steps_per_round, device)
            totals["baseline"][0] += seen
            totals["baseline"][1] += time.perf_counter() - started
            started = time.perf_counter()
            train_epoch(step_model, data, optimizer, scheduler, config, r + 1, device=device)
            synchronize(device)
            totals["spikernel"][0] += config.limit_train
            totals["spikernel"][1] += time.perf_counter() - started
            rates = {k: n / s for k, (n, s) in totals.items()}
            print(f"round {r + 1}: spikernel {rates['spikernel']:7.1f} img/s   baseline {rates['baseline']:7.1f} img/s")

    rates = {k: n / s for k, (n, s) in totals.items()}
    ratio = rates["spikernel"] / rates["baseline"]
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "device": device_label(device),
                                         "settings": vars(args) | {"json": None}, "img_per_s": rates,
                                         "ratio": ratio}, indent=2) + "\n")
    print(f"spikernel {rates['spikernel']:.1f} img/s, baseline {rates['baseline']:.1f} img/s")
    print(f"ratio: {ratio:.2f}")


def replace_limit(config: TrainConfig, images: int) -> TrainConfig:
    from dataclasses import replace

    return replace(config, limit_train=images)


if __name__ == "__main__":
    main()
