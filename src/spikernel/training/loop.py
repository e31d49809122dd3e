"""Training and evaluation of a spiking network (SPEC 7): BPTT through T steps, SGD + cosine.

The engine keeps the data as uint8 tensors on the training device and builds each batch with a
few tensor ops (index, crop/flip, normalise): no per-image Python, no DataLoader workers. Every
random draw of an epoch comes from generators derived from (seed, epoch, rank), so an epoch
replays exactly after a resume and every DDP rank agrees on the shuffle. ``fit`` checkpoints
each finished epoch into a run folder (checkpoint.py) and continues from the last one.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spikernel.training import health
from spikernel.training.batchnorm import recalibrate
from spikernel.training.checkpoint import METRICS_FILE, load_checkpoint, save_checkpoint, write_metrics_csv
from spikernel.data.datasets import Dataset, Split
from spikernel.training.distributed import SINGLE, World, wrap
from spikernel.errors import ConfigError, SpikernelError
from spikernel.nn.layers import use_kernels
from spikernel.nn.neuron import is_lif
from spikernel.heap import kept_freed_memory


OPTIMIZERS = ("sgd", "adamw")
# A short training has not fitted the images it has, so it gains nothing from variants of them: on
# fashion-mnist-mini 2, 4 and 10 epochs all test better without crop and flip (10 epochs: +1.80 points,
# three seeds; benchmarks/recipe_study.py, docs/RESULTS.md). Where they start to pay is not measured;
# 20 is past every training measured, and SNASNet's 300-epoch recipe keeps them.
AUGMENT_FROM_EPOCHS = 20
SCHEDULES = ("cosine", "onecycle")
ABSENT_WHEN_OFF = ("step_loss", "precise_bn")  # left out of a run's identity when off: they came later


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 300
    batch_size: int = 64  # the global batch: split over DDP ranks
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    final_lr_ratio: float = 0.01  # the schedule ends at this fraction of lr
    optimizer: str = "sgd"
    schedule: str = "cosine"  # cosine from lr; onecycle: linear warm-up over `warmup` of the steps, then cosine
    warmup: float = 0.0  # fraction of all steps spent warming up (onecycle)
    label_smoothing: float = 0.0
    step_loss: bool = False  # cross-entropy of every timestep's logits (TET), not of their mean
    time_budget: float | None = None  # seconds: train as many epochs as fit (decided once, stored in the run)
    augment: bool | None = True  # random crop + flip; None: only in trainings of AUGMENT_FROM_EPOCHS or more
    seed: int = 0
    limit_train: int | None = None  # use the first N training images (smoke runs)
    amp: bool | None = None  # bf16 autocast; None = on for CUDA GPUs with bf16
    channels_last: bool | None = None  # None = on for CUDA GPUs
    compile: bool = False  # torch.compile the training step (a slow first batch, faster after)
    fused_lif: bool = True  # train on the LIF's fused kernel (same numbers as spikingjelly's)
    eval_batch: int = 256
    # Training images to recompute BatchNorm's running averages on after each epoch, with that epoch's
    # final weights (``training.batchnorm``, "precise BN"); 0: the momentum averages of training.
    precise_bn: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.precise_bn < 0:
            raise ConfigError(f"precise_bn must be a number of images, got {self.precise_bn}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"learning rate must be a positive number, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not 0 <= self.warmup < 1 or not 0 <= self.label_smoothing < 1:
            raise ConfigError("warmup and label_smoothing must be fractions in [0, 1)")
        if self.time_budget is not None and not (math.isfinite(self.time_budget) and self.time_budget > 0):
            raise ConfigError(f"time budget must be a positive number of seconds, got {self.time_budget}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def augments(self) -> bool:
        """Whether batches are cropped and flipped: as set, or (``None``) when the training is long enough."""
        return self.augment if self.augment is not None else self.epochs >= AUGMENT_FROM_EPOCHS

    def identity(self) -> dict:
        """The settings that change the numbers a run produces (a resume must keep them). How the
        step executes (compiled or not, fused LIF or spikingjelly's, eval batch) does not belong, and
        under a time budget the epochs are what the budget allowed, stored with the run."""
        skip = ("compile", "fused_lif", "eval_batch") + (("epochs",) if self.time_budget is not None else ())
        skip += tuple(name for name in ABSENT_WHEN_OFF if not getattr(self, name))  # older runs resume
        return {k: v for k, v in asdict(self).items() if k not in skip}

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class NonFiniteLoss(SpikernelError):
    def __init__(self, epoch: int, batch: int, value: float):
        super().__init__(f"loss became {value} at epoch {epoch}, batch {batch}: lower --lr or check the data "
                         "(the last good checkpoint is kept)")


class OutOfMemory(SpikernelError):
    def __init__(self, device, batch_size: int, epoch: int):
        super().__init__(f"out of memory on {device} at epoch {epoch} with batch {batch_size}: "
                         f"try --batch {max(1, batch_size // 2)} (or fewer --timesteps / a smaller --width)")


# --------------------------------------------------------------------------- randomness and batches


def derived_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from (seed, epoch, rank, purpose) via numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(2, np.uint64)[0] >> 1)


def epoch_generators(seed: int, epoch: int, world: World = SINGLE) -> tuple[torch.Generator, torch.Generator]:
    """(shuffle, augmentation) generators for an epoch; dropout draws from the reseeded global RNG.

    The shuffle is the same on every rank (each takes its own slice of it); augmentation and
    dropout differ per rank. All three depend only on (seed, epoch, rank), which is the RNG state
    a checkpoint has to carry.
    """
    torch.manual_seed(derived_seed(seed, epoch, world.rank, 2))
    shuffle = torch.Generator().manual_seed(derived_seed(seed, epoch, 0))
    augmentation = torch.Generator().manual_seed(derived_seed(seed, epoch, world.rank, 1))
    return shuffle, augmentation


def batch_indices(count: int, batch_size: int, generator: torch.Generator, world: World = SINGLE) -> Iterator[torch.Tensor]:
    """This rank's share of each shuffled global batch. A last batch too small to give every rank
    an image is dropped, so all ranks run the same number of steps (DDP needs that)."""
    order = torch.randperm(count, generator=generator)
    for start in range(0, count, batch_size):
        index = order[start : start + batch_size]
        if len(index) < world.size:
            return
        yield index[world.rank :: world.size]


def steps_per_epoch(count: int, batch_size: int, world: World = SINGLE) -> int:
    full, rest = divmod(count, batch_size)
    return full + (1 if rest >= world.size else 0)


def train_count(dataset: Dataset, config: TrainConfig) -> int:
    return len(dataset.train) if config.limit_train is None else min(config.limit_train, len(dataset.train))


# --------------------------------------------------------------------------- one epoch


def make_optimizer(model: nn.Module, config: TrainConfig, steps_per_epoch: int):
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(_decay_groups(model, config.weight_decay), lr=config.lr)
    else:
        optimizer = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return optimizer, make_schedule(optimizer, config, max(1, config.epochs * steps_per_epoch))


def _decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW decays only weight matrices and kernels: decaying BatchNorm scales toward 0 silences
    the LIFs behind them."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def make_schedule(optimizer, config: TrainConfig, total_steps: int):
    """Per-step learning rate: cosine to ``final_lr_ratio``, after a linear warm-up for onecycle."""
    warm = int(config.warmup * total_steps) if config.schedule == "onecycle" else 0
    floor = config.final_lr_ratio

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    if config.schedule == "cosine":  # the paper's recipe keeps PyTorch's own scheduler (same numbers as before)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=config.lr * floor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def input_batch(dataset: Dataset, split: Split, index, device: torch.device, generator: torch.Generator | None,
                channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (augmented while still uint8, so crops pad with black as torchvision's do) and labels."""
    index = index.to(split.images.device)
    images = split.images[index].to(device, non_blocking=True)
    if generator is not None:
        images = dataset.augment(images, generator)
    images = dataset.normalize(images)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, split.labels[index].to(device, non_blocking=True)


def train_epoch(model, dataset: Dataset, optimizer, scheduler, config: TrainConfig, epoch: int,
                generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                on_batch: Callable[[int, float], None] | None = None, world: World = SINGLE,
                augment_generator: torch.Generator | None = None) -> dict:
    """One pass over the (shuffled) training split; returns mean loss and accuracy over all ranks.

    ``model`` is what runs the step (possibly DDP-wrapped or compiled). ``generator`` shuffles;
    augmentation draws from ``augment_generator`` (default: the same generator).
    """
    device = torch.device(device)
    model.train()
    split = dataset.train
    generator = generator or torch.Generator().manual_seed(derived_seed(config.seed, epoch, 0))
    augment_generator = (augment_generator or generator) if config.augments else None
    use_amp, channels_last = amp_enabled(config, device), channels_last_enabled(config, device)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, seen
    for batch_index, index in enumerate(batch_indices(train_count(dataset, config), config.batch_size, generator, world)):
        images, labels = input_batch(dataset, split, index, device, augment_generator, channels_last)
        with autocast(device, use_amp):
            output = model(images)
        loss = training_loss(output, labels, config)
        logits = output.mean(0) if config.step_loss else output
        # Every rank must take the same decision, so the check uses the loss averaged over ranks.
        mean_loss = world.all_reduce(loss.detach().clone()) / world.size
        value = mean_loss.item()
        if not math.isfinite(value):
            raise NonFiniteLoss(epoch, batch_index + 1, value)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        n = len(index)
        totals += torch.stack([loss.detach().double() * n, (logits.argmax(1) == labels).sum().double(),
                               torch.tensor(n, dtype=torch.float64, device=device)])
        if on_batch is not None:
            on_batch(n * world.size, value)
    loss_sum, correct, seen = world.all_reduce(totals).tolist()
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}


def training_loss(output: torch.Tensor, labels: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """Cross-entropy of the mean logits [B, classes], or with ``step_loss`` the mean of every timestep's
    [T, B, classes] (TET, Deng et al. 2022, without its regulariser): each step must classify alone."""
    if config.step_loss:
        output, labels = output.flatten(0, 1), labels.repeat(output.shape[0])  # step-major, as flattened
    return F.cross_entropy(output.float(), labels, label_smoothing=config.label_smoothing)


class StepLogits(nn.Module):
    """The network with its per-timestep logits as output: what a per-step loss trains on."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.forward_steps(images)


def on_device(dataset: Dataset, device: torch.device) -> Dataset:
    """On a GPU the uint8 images live there (60k Fashion-MNIST images are 47 MB), so a batch
    costs no host-to-device copy; on the CPU this is the dataset itself."""
    if device.type == "cpu" or dataset.train.images.device == device:
        return dataset
    move = lambda s: Split(s.images.to(device), s.labels.to(device))  # noqa: E731
    return replace(dataset, train=move(dataset.train), test=move(dataset.test))


def amp_enabled(config: TrainConfig, device: torch.device) -> bool:
    if config.amp is not None:
        return config.amp
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def channels_last_enabled(config: TrainConfig, device: torch.device) -> bool:
    return config.channels_last if config.channels_last is not None else device.type == "cuda"


# --------------------------------------------------------------------------- evaluation


class SpikeCounter:
    """Counts spikes and neuron-steps of every LIF layer during forward passes (a forward hook each)."""

    def __init__(self, model: nn.Module, device):
        self.names = [name for name, m in model.named_modules() if is_lif(m)]
        self.sums = torch.zeros(len(self.names), 2, dtype=torch.float64, device=device)
        self.handles = [m.register_forward_hook(self._hook(i))
                        for i, m in enumerate(m for _, m in model.named_modules() if is_lif(m))]

    def _hook(self, i):
        def count(_module, _inputs, spikes):
            self.sums[i, 0] += spikes.sum(dtype=torch.float64)
            self.sums[i, 1] += spikes.numel()
        return count

    def close(self):
        for handle in self.handles:
            handle.remove()

    def rates(self) -> dict[str, float]:
        """Overall and per-layer fraction of neuron-steps that spiked."""
        spikes, steps = self.sums[:, 0], self.sums[:, 1].clamp_min(1)
        rates = {"spike_rate": (spikes.sum() / steps.sum()).item()}
        rates.update({f"spike_rate/{name}": r for name, r in zip(self.names, (spikes / steps).tolist())})
        return rates


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, split: Split | None = None, batch_size: int = 256,
             device: torch.device | str = "cpu", world: World = SINGLE, amp: bool = False,
             spike_rates: bool = True) -> dict:
    """Top-1 / top-5 accuracy, mean loss and per-LIF-layer spike rates on a split (test by default).

    Takes any module mapping images to logits (a trained SNN, a quantized copy of one). Under DDP
    each rank evaluates a slice and the counts are summed, so the figures cover the whole split.
    """
    device = torch.device(device)
    model.eval()
    split = split or dataset.test
    k = min(5, dataset.num_classes)
    counter = SpikeCounter(model, device) if spike_rates else None
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, top-1, top-k
    index = torch.arange(world.rank, len(split), world.size)
    try:
        for start in range(0, len(index), batch_size):
            images, labels = input_batch(dataset, split, index[start : start + batch_size], device, None, False)
            with autocast(device, amp):
                logits = model(images).float()
            best = logits.topk(k, dim=1).indices
            totals += torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                                   (best[:, 0] == labels).sum().double(),
                                   (best == labels.unsqueeze(1)).any(1).sum().double()])
    finally:
        if counter is not None:
            counter.close()
    loss_sum, top1, topk = world.all_reduce(totals).tolist()
    n = max(len(split), 1)
    result = {"test_loss": loss_sum / n, "test_acc": top1 / n, f"test_top{k}": topk / n}
    if counter is not None:
        world.all_reduce(counter.sums)
        result.update(counter.rates())
    return result


# --------------------------------------------------------------------------- the training loop


def fit(model: nn.Module, dataset: Dataset, config: TrainConfig, device: torch.device | str = "cpu",
        on_batch: Callable[[int, float], None] | None = None,
        on_epoch: Callable[[dict], None] | None = None,
        run_dir: str | Path | None = None, world: World = SINGLE,
        tensorboard: bool = False) -> list[dict]:
    """Train for ``config.epochs`` and evaluate after each; returns the per-epoch history.

    With ``run_dir`` every finished epoch is checkpointed there (by rank 0) together with
    metrics.csv, and a run folder holding a checkpoint continues from it: the result is the
    same, bit for bit on one CPU, as a run that was never interrupted.
    """
    device = torch.device(device)
    model.to(device)
    dataset = on_device(dataset, device)
    if channels_last_enabled(config, device):
        model.to(memory_format=torch.channels_last)
    count = train_count(dataset, config)
    steps = steps_per_epoch(count, config.batch_size, world)
    if steps == 0:
        raise ConfigError(f"{count} training images cannot fill one batch on {world.size} processes")
    optimizer, scheduler = make_optimizer(model, config, steps)
    history: list[dict] = []
    start_epoch = 0
    if run_dir is not None:
        state = load_checkpoint(run_dir, model, optimizer, scheduler)
        if state is not None:
            start_epoch, history = state["epoch"], state["history"]
    writer = _tensorboard(run_dir) if tensorboard and run_dir is not None and world.is_main else None
    try:
        with training_step_model(model, config, device, world) as step_model:
            for epoch in range(start_epoch + 1, config.epochs + 1):
                row = _run_epoch(model, step_model, dataset, optimizer, scheduler, config, epoch, device,
                                 on_batch, world)
                history.append(row)
                if run_dir is not None and world.is_main:
                    _record(Path(run_dir), model, optimizer, scheduler, history, config, writer)
                world.barrier()  # no rank runs ahead of the checkpoint it may have to resume from
                if on_epoch is not None:
                    on_epoch(row)
    except torch.OutOfMemoryError:
        raise OutOfMemory(device, config.batch_size, len(history) + 1) from None
    except RuntimeError as exc:  # the CPU allocator's out-of-memory is a plain RuntimeError
        if "can't allocate memory" not in str(exc):
            raise
        raise OutOfMemory(device, config.batch_size, len(history) + 1) from None
    finally:
        if writer is not None:
            writer.close()
    return history


@contextmanager
def first_batches_watched(model: nn.Module, device, on_batch, enabled: bool = True):
    """``on_batch`` that also counts the LIFs' spikes over the first batches, then warns about
    silent or saturated layers (``health``) and stops counting."""
    if not enabled:
        yield on_batch
        return
    counter, seen = SpikeCounter(model, device), [0]

    def watched(n, loss):
        seen[0] += 1
        if seen[0] == health.WATCHED_BATCHES:
            counter.close()
            health.warn(health.rate_findings(counter.rates(), getattr(model, "macro", None)))
        if on_batch is not None:
            on_batch(n, loss)

    try:
        yield watched
    finally:
        counter.close()


@contextmanager
def training_step_model(model: nn.Module, config: TrainConfig, device: torch.device, world: World = SINGLE):
    """What the training step calls: ``model`` with fused LIFs, DDP-wrapped and compiled as configured.

    The fused LIFs are swapped back out when the block ends; the weights are ``model``'s throughout.
    """
    # on a CPU, activations are reused instead of page-faulted in afresh every step
    with kept_freed_memory() if device.type == "cpu" else nullcontext(), use_kernels(model, "fused", config.fused_lif):
        step_model = wrap(StepLogits(model) if config.step_loss else model, world, device)
        yield torch.compile(step_model) if config.compile else step_model


def _run_epoch(model, step_model, dataset, optimizer, scheduler, config, epoch, device, on_batch, world) -> dict:
    started = time.perf_counter()
    shuffle, augmentation = epoch_generators(config.seed, epoch, world)
    row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
    watch = epoch == 1 and not config.compile and world.is_main  # hooks would make a compiled step recompile
    with first_batches_watched(model, device, on_batch, watch) as on_batch:
        row.update(train_epoch(step_model, dataset, optimizer, scheduler, config, epoch, shuffle, device, on_batch,
                               world, augmentation))
    train_seconds = time.perf_counter() - started
    if config.precise_bn:
        count = min(config.precise_bn, train_count(dataset, config))  # of the images it trains on
        recalibrate(model, _first_images(dataset, count, config.eval_batch, device))
    world.broadcast(list(model.buffers()))  # evaluate with rank 0's BatchNorm statistics, as saved
    row.update(evaluate(model, dataset, batch_size=config.eval_batch, device=device, world=world,
                        amp=amp_enabled(config, device)))
    if epoch == 1 and world.is_main:
        health.warn([f] if (f := health.chance_finding(row["test_acc"], dataset.num_classes, epoch)) else [])
    if epoch == config.epochs and world.is_main:
        health.warn([f] if (f := health.averages_finding(row["train_acc"], row["test_acc"],
                                                          getattr(model, "macro", None))) else [])
    row["train_img_per_s"] = train_count(dataset, config) / train_seconds
    row["seconds"] = time.perf_counter() - started
    return row


def _first_images(dataset: Dataset, count: int, batch_size: int, device) -> Iterator[torch.Tensor]:
    """The first ``count`` training images as model inputs, in batches (no augmentation)."""
    index = torch.arange(count)
    for start in range(0, len(index), batch_size):
        yield input_batch(dataset, dataset.train, index[start : start + batch_size], device, None, False)[0]


def _record(run_dir: Path, model, optimizer, scheduler, history, config: TrainConfig, writer) -> None:
    rng = {"scheme": "per-epoch: torch.manual_seed / shuffle / augmentation generators seeded from "
                     "SeedSequence(seed, epoch, rank, purpose)", "seed": config.seed, "next_epoch": len(history) + 1}
    save_checkpoint(run_dir, model, optimizer, scheduler, history[-1]["epoch"], history, rng)
    write_metrics_csv(run_dir / METRICS_FILE, history)
    if writer is not None:
        row = history[-1]
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                writer.add_scalar(key, value, row["epoch"])
        writer.flush()


def _tensorboard(run_dir):
    """A SummaryWriter under run_dir/tensorboard when TensorBoard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(Path(run_dir) / "tensorboard"))

