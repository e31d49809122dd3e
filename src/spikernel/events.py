"""Progress as values: the library reports what it is doing through an optional callback.

Long calls (``sk.search``, ``sk.train``, ``sk.explore``) take ``on_event``; each ``Event`` names a
stage and how far it is. The library never prints: the CLI renders events with rich, a notebook
may log them, and ``None`` (the default) ignores them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Event:
    stage: str  # "search", "full re-score", "train", "explore", ...
    done: int | None = None  # units finished so far (candidates, images)
    total: int | None = None
    info: str = ""  # a short status (rate, best score, loss)
    message: str | None = None  # a one-off note for the user ("resuming after epoch 2")


OnEvent = Callable[[Event], None]


def emit(on_event: OnEvent | None, stage: str, **fields) -> None:
    if on_event is not None:
        on_event(Event(stage, **fields))
