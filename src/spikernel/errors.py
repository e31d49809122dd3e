"""User-facing errors: the CLI prints their message as one line and exits non-zero."""

from __future__ import annotations

import os


class SpikernelError(Exception):
    """An input or state problem the user can fix; never a bug."""


class GenotypeError(SpikernelError, ValueError):
    """A malformed genotype string, matrix or operation code."""


class KernelSetError(SpikernelError, ValueError):
    """An unknown kernel-set name or an invalid kernel size."""


class ConfigError(SpikernelError, ValueError):
    """An unknown preset or an impossible macro-architecture setting."""


class DatasetError(SpikernelError):
    """A missing, incomplete or corrupt dataset."""


class ExportError(SpikernelError):
    """The network or run cannot be exported as asked."""


class FileFormatError(SpikernelError, ValueError):
    """A file of a run or study folder that is not what spikernel wrote (not JSON, wrong fields)."""


class WriteError(SpikernelError):
    """A file or folder that cannot be written (read-only folder, full disk, ...); nothing half-written stays."""

    @classmethod
    def of(cls, exc: OSError, path: str | os.PathLike) -> WriteError:
        """``cannot write PATH: No space left on device``."""
        reason = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
        return cls(f"cannot write {path}: {reason}")


class SpikernelWarning(UserWarning):
    """Legitimate input that probably does not do what was meant; the CLI prints it as one ``warning:`` line."""
