"""The ``spikernel`` command group; each subcommand module adds its command to ``main``.

User errors (``SpikernelError``) print one line on stderr and exit 2; so do files that cannot
be written or read (``OSError``: a read-only folder, a full disk), named with the reason. Nothing
is half-written because every output file is written atomically. Library warnings
(``SpikernelWarning``: legitimate input that probably does not do what was meant) print as one
``warning:`` line each, once per message.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import contextmanager

import click

from spikernel.errors import SpikernelError, SpikernelWarning


class Group(click.Group):
    def main(self, *args, **kwargs):
        """Usage errors as one ``error:`` line too, not click's three-line block."""
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        try:
            with warning_lines(), threads_kept():
                return super().invoke(ctx)
        except SpikernelError as exc:
            click.echo(f"error: {_one_line(str(exc))}", err=True)
            sys.exit(2)
        except OSError as exc:  # outside the library's own writes: still the file and the reason, not a traceback
            click.echo(f"error: {os_error_line(exc)}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: finished work is saved; run the same command again to resume", err=True)
            sys.exit(130)


def os_error_line(exc: OSError) -> str:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return f"{exc.filename}: {reason}" if exc.filename else reason


def _one_line(text: str) -> str:
    return " ".join(text.split())


@contextmanager
def threads_kept():
    """A command's ``--threads`` holds for that command: a caller running commands in-process (tests,
    notebooks) gets its own thread count back."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        torch = sys.modules.get("torch")
        if torch is not None and before is not None:
            torch.set_num_threads(before)


@contextmanager
def warning_lines():
    """Print each distinct ``SpikernelWarning`` once, as ``warning: ...`` on stderr."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, SpikernelWarning):
            return shown(message, category, filename, lineno, file, line)
        text = _one_line(str(message))
        if text not in seen:  # the same note from several call sites (a search builds many networks) once
            seen.add(text)
            click.echo(f"warning: {text}", err=True)

    with warnings.catch_warnings():
        shown = warnings.showwarning
        warnings.simplefilter("always", SpikernelWarning)
        warnings.showwarning = show
        yield


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="spikernel")
def main():
    """Find accurate, small spiking neural networks: kernel-size sets, training-free search, budgets."""
    # torch warns once per process that Triton is absent; on a CPU that is expected, not news.
    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)
