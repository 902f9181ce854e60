"""Materialize the whole asset graph, every shard partition included, in one call.

Dagster's CLI needs ``--partition`` per run; this runs the prepare job, one activation run per
shard partition and the summaries job, all recorded in the given Dagster instance so the UI
shows every materialization afterwards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import dagster as dg

from carto_assets.definitions import (
    ACTIVATIONS_JOB,
    PREPARE_JOB,
    SUMMARIES_JOB,
    build_definitions,
)
from carto_assets.partitions import SHARDS
from carto_assets.sources.datasets import shard_key

log = logging.getLogger("carto")


class RunFailed(RuntimeError):
    pass


def materialize_all(
    study_file: str,
    instance: dg.DagsterInstance,
    say: Callable[[str], None] = log.info,
) -> dict[str, float]:
    """Run every job of the study in order; returns seconds per stage. Raises on failure."""
    defs = build_definitions(study_file)
    study = defs.resources["study"].load()  # type: ignore[union-attr]
    timings: dict[str, float] = {}

    def execute(job_name: str, partition_key: str | None = None) -> None:
        job = defs.resolve_job_def(job_name)
        result = job.execute_in_process(
            instance=instance, partition_key=partition_key, raise_on_error=False
        )
        if not result.success:
            failures = [
                ev.event_specific_data.error.to_string()  # type: ignore[union-attr]
                for ev in result.all_events
                if ev.is_step_failure and ev.event_specific_data is not None
            ]
            detail = failures[0] if failures else "see the run's logs in the Dagster UI"
            raise RunFailed(
                f"{job_name}{' ' + partition_key if partition_key else ''} failed:\n{detail}"
            )
        for check in result.get_asset_check_evaluations():
            if not check.passed:
                say(
                    f"WARNING: asset check {check.asset_key.to_user_string()}:"
                    f"{check.check_name} failed"
                )

    t0 = time.perf_counter()
    say(f"[1/3] images + model for study '{study.name}'")
    execute(PREPARE_JOB)
    timings["prepare"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    keys = [shard_key(s) for s in range(study.shards)]
    registered = set(instance.get_dynamic_partitions(SHARDS.name))
    missing = [k for k in keys if k not in registered]
    if missing:
        raise RunFailed(f"shard partitions not registered: {missing}")
    for i, key in enumerate(keys, 1):
        say(f"[2/3] activations {key} ({i}/{len(keys)})")
        execute(ACTIVATIONS_JOB, partition_key=key)
    timings["activations"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    say("[3/3] summaries (top images and everything after)")
    execute(SUMMARIES_JOB)
    timings["summaries"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    return timings
