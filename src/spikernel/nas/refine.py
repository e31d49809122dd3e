"""Training-based refinement: after training-free screening, train the best K candidates briefly
and pick by validation accuracy, with successive halving so weak candidates stop early.

Validation images are held out of the training split (``Dataset.holdout``): the test split is never
looked at. Each candidate is an Optuna trial in ``out/refine.db`` that reports its validation
accuracy after every epoch; Optuna's ``SuccessiveHalvingPruner`` stops a candidate that is not in
the top half of those that reached the same epoch. Each training is a resumable run folder
(``out/runs/<genotype>``), so a killed refinement continues inside the rung it was in: finished
and pruned candidates are kept, the interrupted one resumes from its last finished epoch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import optuna
from optuna.trial import TrialState

from spikernel.data.datasets import Dataset
from spikernel.errors import ConfigError
from spikernel.events import OnEvent, emit
from spikernel.nas.engine import Candidate, open_storage
from spikernel.nn.model import MacroConfig
from spikernel.training.recipe import recipe
from spikernel.training.run import train

STUDY = "refine"
IMAGES = 1000  # training images per rung: K = 4 costs about a fifth of a 4-epoch training on 10,000
GENOTYPE_ATTR = "genotype"


class _Pruned(Exception):
    pass


@dataclass(frozen=True)
class Refined:
    genotype: str
    state: str  # complete or pruned
    val_acc: float  # the last validation accuracy it reached
    epochs: int  # epochs it trained before finishing or being pruned
    rungs: dict  # epoch -> validation accuracy
    seconds: float
    name: str = ""  # the candidate (``Candidate.name``): the genotype, with its searched macro values if any


def refine(shortlist: Sequence[Candidate], data: Dataset, macro: MacroConfig, out: Path, *, epochs: int = 2,
           validation: int = 1000, images: int | None = IMAGES, recipe_name: str = "refine", seed: int = 0,
           limit_train: int | None = None, on_event: OnEvent | None = None) -> list[Refined]:
    """Train ``shortlist`` (best first) with successive halving; returns every candidate's outcome,
    the most accurate on validation first. Each trains at its own settings (``Candidate.macro``),
    ``macro`` for candidates without them, on the first ``images`` training images (None: all)."""
    if not shortlist:
        raise ConfigError("nothing to refine: no candidate was scored under the budget")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    training, held = data.holdout(validation, seed)
    tuning = replace(training, test=held)  # each epoch's "test" figures are validation figures
    study = _open(out)
    finished = {t.user_attrs[GENOTYPE_ATTR]: t for t in study.get_trials(deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    limit = min((n for n in (images, limit_train) if n is not None), default=None)
    config = recipe(recipe_name, epochs=epochs, seed=seed, limit_train=limit)
    for number, candidate in enumerate(shortlist):
        name = candidate.name  # the genotype alone without macro dimensions: older refine.db files resume
        emit(on_event, "refine", done=number, total=len(shortlist), info=name)
        if name in finished:
            continue
        trial = study.ask()
        trial.set_user_attr(GENOTYPE_ATTR, name)
        started = time.perf_counter()

        def report(row, trial=trial):
            trial.report(row["test_acc"], row["epoch"])
            if row["epoch"] < epochs and trial.should_prune():
                raise _Pruned

        try:
            result = train(candidate.genotype, tuning, out=out / "runs" / candidate.slug,
                           macro=candidate.macro or macro, config=config, device="cpu", on_epoch=report,
                           on_event=on_event, energy=False)
            trial.set_user_attr("seconds", time.perf_counter() - started)
            study.tell(trial, result.test_acc)
        except _Pruned:
            trial.set_user_attr("seconds", time.perf_counter() - started)
            study.tell(trial, state=TrialState.PRUNED)
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)  # the next call redoes it, resuming its run folder
            raise
    emit(on_event, "refine", done=len(shortlist), total=len(shortlist))
    return outcomes(study, [c.name for c in shortlist])


def _open(out: Path) -> optuna.Study:
    storage = open_storage(f"sqlite:///{(out / 'refine.db').resolve()}", heartbeat=None)
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize", pruner=pruner,
                                load_if_exists=True)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # its process was killed
        study.tell(t.number, state=TrialState.FAIL)
    return study


def outcomes(study: optuna.Study, names: Sequence[str]) -> list[Refined]:
    """The finished or pruned trial of each candidate (``Candidate.name``), best validation accuracy first."""
    trials = {t.user_attrs[GENOTYPE_ATTR]: t for t in study.get_trials(deepcopy=False)
              if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    rows = []
    for name in names:
        t = trials.get(name)
        if t is None:
            continue
        rungs = dict(sorted(t.intermediate_values.items()))
        last = rungs[max(rungs)] if rungs else float("nan")
        rows.append(Refined(name.split(" [")[0], "complete" if t.state == TrialState.COMPLETE else "pruned", last,
                            max(rungs, default=0), rungs, round(t.user_attrs.get("seconds", 0.0), 2), name))
    # complete candidates ran every epoch: they rank above pruned ones, then by validation accuracy
    return sorted(rows, key=lambda r: (r.state != "complete", -r.val_acc))
