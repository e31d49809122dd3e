"""Named training recipes: the paper's SGD schedule and a fast one for short budgets.

``fast`` is what ``benchmarks/recipe_study.py`` measured best on Fashion-MNIST for a few epochs on a
CPU (docs/RESULTS.md has the table); ``snasnet`` is SPEC 7 as SNASNet trains (300 epochs); ``refine``
is how refinement (``nas.refine``) trains its candidates on a few images.
"""

from __future__ import annotations

from dataclasses import replace

from spikernel.errors import ConfigError
from spikernel.training.loop import TrainConfig

RECIPES: dict[str, dict] = {
    "snasnet": dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine", warmup=0.0,
                    label_smoothing=0.0, batch_size=64),
    "fast": dict(optimizer="adamw", lr=5e-3, weight_decay=0.01, schedule="onecycle", warmup=0.1,
                 label_smoothing=0.1, batch_size=64, augment=None),  # crop + flip in long trainings only (AUGMENT_FROM_EPOCHS)
    # Refinement's rungs: a thousand images an epoch. Small batches give them four times the steps of
    # `fast` (benchmarks/early_training.py, docs/EVIDENCE.md).
    "refine": dict(optimizer="adamw", lr=1e-2, weight_decay=0.01, schedule="onecycle", warmup=0.1,
                   label_smoothing=0.1, batch_size=16, augment=False),
}
DEFAULT_RECIPE = "fast"


def recipe(name: str = DEFAULT_RECIPE, **overrides) -> TrainConfig:
    """A ``TrainConfig`` from a named recipe, with fields overridden (``None`` values are ignored)."""
    try:
        settings = RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}") from None
    return replace(TrainConfig(**settings), **{k: v for k, v in overrides.items() if v is not None})
