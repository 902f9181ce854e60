"""Progress of long stages, reported to whoever listens (the ``carto`` command's bars).

Stage functions call :func:`advance` as work completes; without a listener it costs one
lookup. ``carto run`` installs a listener that draws one progress bar per stage. Reports are
per process: a stage running in another process (a worker of ``--jobs N``, a Celery worker)
reports to nobody, and its caller counts finished partitions instead.

This module never imports dagster.
"""

from __future__ import annotations

from collections.abc import Callable

#: ``listener(stage, done, total, unit)``: ``done`` of ``total`` units of ``stage`` are finished.
Listener = Callable[[str, int, int, str], None]

_listeners: list[Listener] = []


def advance(stage: str, done: int, total: int, unit: str) -> None:
    """Report that ``done`` of ``total`` ``unit`` of ``stage`` are finished (absolute counts)."""
    for listener in _listeners:
        listener(stage, done, total, unit)


def listen(listener: Listener) -> Callable[[], None]:
    """Install ``listener``; returns a function that removes it."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)
