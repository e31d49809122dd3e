"""The ``spikernel`` command group; each subcommand module adds its command to ``main``.

User errors (``SpikernelError``) print one line on stderr and exit 2; nothing is half-written
because every output file is written atomically.
"""

from __future__ import annotations

import logging
import sys
import warnings

import click

from spikernel.errors import SpikernelError


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The library's warnings (a silent LIF layer, a partly trained run) as one ``warning:`` line."""
    click.echo(f"warning: {message}", err=True)


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
        warnings.showwarning = _one_line_warning
        try:
            return super().invoke(ctx)
        except SpikernelError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: finished work is saved; run the same command again to resume", err=True)
            sys.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="spikernel")
def main():
    """Find accurate, small spiking neural networks: kernel-size sets, training-free search, budgets."""
    # torch warns once per process that Triton is absent; on a CPU that is expected, not news.
    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)


