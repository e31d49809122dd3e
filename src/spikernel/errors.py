"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


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
