"""What ``carto run`` shows on the terminal: one progress bar per stage, nothing else.

On a terminal each stage (``images``, ``model training``, ``dictionary sample``, ``dictionary
training``, ``activations``, ``summaries``, ``embedding``, ``concept graph``, ``graph and
views``) gets a tqdm bar as its first progress report arrives, with the time left estimated from
its rate so far; elsewhere (a pipe, a CI log) a stage that runs longer than
:data:`PROGRESS_EVERY` seconds prints a line that often with the same estimate, and each stage
prints one line when it finishes. Dagster's event log and Python logging go to the log file (see
:func:`log_to_file`).

This module never imports dagster.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import TextIO

#: The Python logger that receives Dagster's event log in ``carto run`` (see events.py).
EVENTS_LOGGER = "carto.events"
#: Stages drawn as bars, in the order they run; other progress reports are ignored.
STAGES = (
    "images",
    "model training",
    "dictionary sample",
    "dictionary training",
    "activations",
    "summaries",
    "embedding",
    "concept graph",
    "graph and views",
)


#: Off a terminal, a running stage reports its progress and time left this often (seconds).
PROGRESS_EVERY = 60.0


def time_left(done: int, total: int, seconds: float) -> str:
    """The rest of a stage at its rate so far, ``"about 3 min left"`` (``""`` before any
    progress)."""
    if done <= 0 or seconds <= 0 or done >= total:
        return ""
    left = seconds * (total - done) / done
    if left < 90:
        return f"about {left:.0f} s left"
    if left < 90 * 60:
        return f"about {left / 60:.0f} min left"
    return f"about {left / 3600:.1f} h left"


class StageBars:
    """A :mod:`carto_assets.runtime.progress` listener drawing one bar (or one line) per stage."""

    def __init__(
        self,
        stream: TextIO | None = None,
        bars: bool | None = None,
        clock=time.perf_counter,
        every: float = PROGRESS_EVERY,
    ) -> None:
        self.stream = stream or sys.stderr
        self.bars = self.stream.isatty() if bars is None else bars
        self.clock, self.every = clock, every
        self._open: dict[str, object] = {}
        self._started: dict[str, float] = {}
        self._said: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int, unit: str) -> None:
        if stage not in STAGES or total <= 0:
            return
        if stage not in self._started:
            self._started[stage] = self._said[stage] = self.clock()
            if self.bars:
                from tqdm import tqdm

                indent = "      " if stage in ("embedding", "concept graph") else "  "
                self._open[stage] = tqdm(
                    total=total,
                    desc=f"{indent}{stage}",
                    unit=f" {unit}",
                    file=self.stream,
                    leave=True,
                    dynamic_ncols=True,
                )
        bar = self._open.get(stage)
        if bar is not None:
            bar.n = done  # type: ignore[attr-defined]
            bar.refresh()  # type: ignore[attr-defined]
        if done >= total:
            self._finish(stage, total, unit)
        elif bar is None and self.clock() - self._said[stage] >= self.every:
            now = self._said[stage] = self.clock()
            left = time_left(done, total, now - self._started[stage])
            print(f"  {stage}: {done}/{total} {unit}, {left}", file=self.stream, flush=True)

    def _finish(self, stage: str, total: int, unit: str) -> None:
        seconds = self.clock() - self._started.pop(stage)
        self._said.pop(stage, None)
        bar = self._open.pop(stage, None)
        if bar is not None:
            bar.close()  # type: ignore[attr-defined]
            return
        rate = f", {total / seconds:.0f} {unit}/s" if unit == "images" and seconds > 0 else ""
        print(f"  {stage}: {total} {unit} in {seconds:.1f} s{rate}", file=self.stream, flush=True)

    def close(self) -> None:
        for bar in self._open.values():
            bar.close()  # type: ignore[attr-defined]
        self._open.clear()
        self._started.clear()
        self._said.clear()


class _LogFile(logging.FileHandler):
    """A log file created on its first record, its folder too: a folder removed while the
    run starts (another process clearing the instance's logs) is made again."""

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


class _EventFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text.replace("\n", "\n    ")


def log_to_file(path: Path, verbose: bool) -> list[logging.Handler]:
    """Send Dagster's event log and all Python logging (warnings included) to ``path``.

    With ``verbose`` they also go to the terminal (stderr), as Dagster prints them by default.
    Returns the handlers installed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created on the first record: a check that logs nothing leaves no empty file behind.
    handlers: list[logging.Handler] = [_LogFile(path, delay=True)]
    if verbose:
        handlers.append(logging.StreamHandler(sys.stderr))
    formatter = _EventFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for h in handlers:
        h.setFormatter(formatter)
    events = logging.getLogger(EVENTS_LOGGER)
    events.setLevel(logging.DEBUG)
    events.propagate = False
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        events.addHandler(h)
        root.addHandler(h)
    logging.captureWarnings(True)
    return handlers
