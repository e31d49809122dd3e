"""Rendering the library's progress events and tables with rich (the only place besides the
commands that knows about the terminal)."""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from spikernel.events import Event


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )


@contextmanager
def rendered_events(console: Console | None = None):
    """An ``on_event`` callback drawing one progress bar per stage; messages print as lines.

    The bars appear with the first event, so a call that fails before any work prints only its error.
    """
    console = console or Console(stderr=True)
    progress = progress_bar(console)
    tasks: dict[str, int] = {}

    def on_event(event: Event) -> None:
        if not tasks and not progress.live.is_started:
            progress.start()
        if event.message is not None:
            progress.console.print(event.message, soft_wrap=True, markup=False, highlight=False)
            return
        if event.stage not in tasks:
            tasks[event.stage] = progress.add_task(event.stage, total=event.total, info="")
        if event.done is None and event.total is None:
            progress.advance(tasks[event.stage])
        else:
            progress.update(tasks[event.stage], completed=event.done, total=event.total, info=event.info)

    try:
        yield on_event
    finally:
        if progress.live.is_started:
            progress.stop()


def stdout() -> Console:
    """Standard output: a terminal's own width, or wide enough that piped tables keep whole names."""
    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 160))
