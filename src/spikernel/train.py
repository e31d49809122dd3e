"""Training and evaluation of a spiking network (SPEC 7): BPTT through T steps, SGD + cosine."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data import Dataset, Split
from .errors import SpikernelError


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 300
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    final_lr_ratio: float = 0.01  # cosine schedule ends at this fraction of lr
    augment: bool = True
    seed: int = 0
    limit_train: int | None = None  # use the first N training images (smoke runs)

    def to_dict(self) -> dict:
        return asdict(self)


class NonFiniteLoss(SpikernelError):
    def __init__(self, epoch: int, batch: int, value: float):
        super().__init__(f"loss became {value} at epoch {epoch}, batch {batch}: lower --lr or check the data")


def make_optimizer(model: nn.Module, config: TrainConfig, steps_per_epoch: int):
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, config.epochs * steps_per_epoch), eta_min=config.lr * config.final_lr_ratio
    )
    return optimizer, scheduler


def train_epoch(model, dataset: Dataset, optimizer, scheduler, config: TrainConfig, epoch: int,
                generator: torch.Generator, device: torch.device,
                on_batch: Callable[[int, float], None] | None = None) -> dict:
    """One pass over the (shuffled) training split; returns mean loss and accuracy."""
    model.train()
    split = dataset.train
    count = len(split) if config.limit_train is None else min(config.limit_train, len(split))
    order = torch.randperm(count, generator=generator)
    total_loss, correct, seen = 0.0, 0, 0
    for batch_index, start in enumerate(range(0, count, config.batch_size)):
        index = order[start : start + config.batch_size]
        images = dataset.normalize(split.images[index].to(device, non_blocking=True))
        labels = split.labels[index].to(device, non_blocking=True)
        if config.augment:
            images = dataset.augment(images, generator)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        if not math.isfinite(loss.item()):
            raise NonFiniteLoss(epoch, batch_index, loss.item())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(index)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(index)
        if on_batch is not None:
            on_batch(len(index), loss.item())
    return {"train_loss": total_loss / seen, "train_acc": correct / seen}


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, split: Split | None = None, batch_size: int = 256,
             device: torch.device | str = "cpu") -> dict:
    """Top-1 / top-5 accuracy and mean loss on a split (the test split by default)."""
    model.eval()
    split = split or dataset.test
    k = min(5, dataset.num_classes)
    total_loss, top1, topk = 0.0, 0, 0
    for start in range(0, len(split), batch_size):
        images = dataset.normalize(split.images[start : start + batch_size].to(device))
        labels = split.labels[start : start + batch_size].to(device)
        logits = model(images)
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        best = logits.topk(k, dim=1).indices
        top1 += (best[:, 0] == labels).sum().item()
        topk += (best == labels.unsqueeze(1)).any(1).sum().item()
    n = len(split)
    return {"test_loss": total_loss / n, "test_acc": top1 / n, f"test_top{k}": topk / n}


def fit(model: nn.Module, dataset: Dataset, config: TrainConfig, device: torch.device | str = "cpu",
        on_batch: Callable[[int, float], None] | None = None,
        on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Train for ``config.epochs`` and evaluate after each; returns the per-epoch history."""
    device = torch.device(device)
    model.to(device)
    count = len(dataset.train) if config.limit_train is None else min(config.limit_train, len(dataset.train))
    optimizer, scheduler = make_optimizer(model, config, math.ceil(count / config.batch_size))
    generator = torch.Generator().manual_seed(config.seed)
    history = []
    for epoch in range(config.epochs):
        started = time.perf_counter()
        row = {"epoch": epoch + 1}
        row.update(train_epoch(model, dataset, optimizer, scheduler, config, epoch + 1, generator, device, on_batch))
        row.update(evaluate(model, dataset, device=device))
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    return history
