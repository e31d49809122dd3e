"""Training-free search: the Optuna engine (``nas.engine``), multi-fidelity (``nas.fidelity``) and
the one-call ``nas.run.search``."""

SAMPLERS = ("random", "tpe", "nsga2")
