"""Where ``carto run`` sends Dagster's event log: a Python logger, not the terminal.

Runs started by ``carto run`` configure the ``carto_events`` logger instead of Dagster's
console logger. Every event still goes to the Dagster instance (and so to the UI); this logger
hands the same records to the ``carto.events`` Python logger, whose handlers the command
installs: a log file, the progress bars, and the terminal only with ``-v``. Runs launched from
the UI are not affected (they use Dagster's default loggers).
"""

from __future__ import annotations

import logging

import dagster as dg

from carto_assets.runtime.console import EVENTS_LOGGER

#: The run config that routes a run's event log to :data:`EVENTS_LOGGER`.
QUIET_RUN_CONFIG = {"loggers": {"carto_events": {}}}


@dg.logger(description="Dagster's event log to the `carto.events` Python logger (carto run).")
def carto_events(_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.getLogger(EVENTS_LOGGER)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger


def step_event(record: logging.LogRecord) -> tuple[str, str] | None:
    """``(step_key, event type)`` when ``record`` carries a Dagster step event, else None."""
    meta = getattr(record, "dagster_meta", None) or {}
    event = meta.get("dagster_event")
    if event is None or not event.step_key:
        return None
    return event.step_key, event.event_type_value
