"""Deployment files from a trained run: ``load_run`` finds the network; NIR (``deploy.nir``) and
safetensors (``deploy.weights``) write it. The names below are importable from here as before."""

from __future__ import annotations

import os

from spikernel.deploy.nir import (NIR_DT, TARGETS, StepCell, StepGraph, check_expressible, check_finite,  # noqa: F401
                                  check_nir_file,
                                  compare_nir, encode, export_nir, model_spikes, simulate_nir,
                                  simulate_nir_spikingjelly, to_nir, write_nir)
from spikernel.deploy.weights import WEIGHTS_FORMAT, export_safetensors, load_exported  # noqa: F401
from spikernel.errors import ExportError
from spikernel.nn.model import SNN


def load_run(run: str | os.PathLike) -> tuple[SNN, dict]:
    """The trained network of a run and {"dataset", "source"}.

    ``run`` is a ``spikernel train`` folder (final weights, else its last finished epoch), a
    ``spikernel run`` folder (the network its selection chose) or a weights file; "epoch" and
    "epochs" say how far its training got (a warning is issued when it is unfinished).
    """
    from spikernel.training.checkpoint import load_trained, resolve_run

    loaded = load_trained(resolve_run(run))  # a folder with no finished epoch: "has no weights yet"; unfinished: a warning
    return loaded.model.eval(), {"dataset": loaded.spec.dataset, "source": loaded.source,
                                 "genotype": loaded.spec.genotype, "epoch": loaded.epoch, "epochs": loaded.epochs}
