"""The ``spikernel`` command: one module per subcommand, registered on one group (``group.main``).

The CLI parses options, calls the library (``spikernel.api`` and the steps' functions) and renders
what comes back with rich; it holds no method logic of its own.
"""

from . import evaluate, explore, export, info, run, sample, score, search, train  # each adds its command
from .group import main

__all__ = ["main"]
