"""What a process that runs the cycle in-process (`sync`) tells the runs inside it: stop now, and
where to show a chunk's progress. Runs launched by the daemon have neither; they log progress and
stop on Dagster's own termination."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

#: Set by `sync` on the first SIGINT/SIGTERM: no request starts after it, no further run starts.
stop_requested = threading.Event()

_progress_listeners: list[Callable[[str, Any], None]] = []


def add_progress_listener(listener: Callable[[str, Any], None]) -> None:
    """Call `listener(chunk_key, progress)` on each fetch progress of a chunk run in this process."""
    _progress_listeners.append(listener)


def remove_progress_listener(listener: Callable[[str, Any], None]) -> None:
    _progress_listeners.remove(listener)


def report_progress(chunk_key: str, progress: Any) -> None:
    for listener in list(_progress_listeners):
        listener(chunk_key, progress)


class AnyOf:
    """Set when any of `events` is set (what `fetch_many`'s `stop` looks at: `is_set()`)."""

    def __init__(self, *events: threading.Event):
        self._events = events

    def is_set(self) -> bool:
        return any(event.is_set() for event in self._events)
