"""Materialize the whole asset graph, every shard partition included, in one call.

Dagster's CLI needs ``--partition`` per run; this runs the prepare job, one activation run per
shard partition and the summaries job, all recorded in the given Dagster instance so the UI
shows every materialization afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from carto_assets.assets.events import EVENTS_LOGGER, QUIET_RUN_CONFIG, step_event
from carto_assets.assets.partitions import CLASS_CHUNKS, SHARDS
from carto_assets.definitions import (
    ACTIVATIONS_JOB,
    GRAPH_CHUNKS_JOB,
    PREPARE_JOB,
    PUBLISH_JOB,
    SUMMARIES_JOB,
    build_definitions,
)
from carto_assets.runtime import progress as progress_of
from carto_assets.runtime.environment import DAGSTER_HOME_ENV_VAR
from carto_assets.stages.activations import shard_states
from carto_assets.stages.prepared import PreparedStudy
from carto_assets.storage.sharding import shard_key
from carto_assets.storage.store import PUBLISH_STATS, describe_writer, exclusive_writer
from carto_assets.study import Study

log = logging.getLogger("carto")

ACTIVATIONS_KEY = dg.AssetKey("activations")


class RunFailed(RuntimeError):
    """A job or a partition failed. The message's first lines say which step failed and its
    root error in one line (what ``carto run`` prints); the rest is the full error (the log)."""

    def __init__(self, message: str, short: list[str] | None = None) -> None:
        super().__init__(message)
        #: The lines for the terminal: what failed and the root error, one line each.
        self.short = short or [line for line in message.splitlines() if line.strip()][:2]


def up_to_date_shards(prepared: PreparedStudy) -> set[int]:
    """Shards whose stored summary matches their current inputs (images, model, settings)
    and whose Parquet files exist (see :func:`carto_assets.stages.activations.shard_states`)."""
    fresh, _, _ = shard_states(prepared)
    return set(fresh)


def _root_error(error: Any) -> Any:
    """The error the step's own code raised: the first one in the cause chain of a Dagster
    error record that is not Dagster's (Dagster wraps it in a step execution error)."""
    while getattr(error, "cause", None) is not None and error.cls_name.startswith("Dagster"):
        error = error.cause
    return error


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def run_failed(what: str, result: dg.ExecuteInProcessResult) -> RunFailed:
    """:class:`RunFailed` for a failed in-process run: the step, its root error, the full error."""
    failures = [
        (ev.step_key, ev.event_specific_data.error)  # type: ignore[union-attr]
        for ev in result.all_events
        if ev.is_step_failure and ev.event_specific_data is not None
    ]
    if not failures:
        return RunFailed(f"{what} failed: see the run's logs in the Dagster UI")
    step, error = failures[0]
    root = _first_line(_root_error(error).message) or _root_error(error).cls_name
    short = [f"{what} failed at step {step}", root]
    return RunFailed("\n".join([*short, "", error.to_string()]), short=short)


#: The partitioned jobs and their partitions.
PARTITIONED_JOBS = {ACTIVATIONS_JOB: SHARDS.name, GRAPH_CHUNKS_JOB: CLASS_CHUNKS.name}


def execute_partition(
    study_file: str,
    partition_key: str,
    instance: dg.DagsterInstance,
    job_name: str = ACTIVATIONS_JOB,
) -> None:
    """One run of a partitioned job (activation shard or class chunk) for ``partition_key``
    in ``instance``; raises :class:`RunFailed`.

    What ``carto run-partition`` runs in each worker process of ``carto run --jobs N``.
    """
    defs = build_definitions(study_file)
    known = instance.get_dynamic_partitions(PARTITIONED_JOBS[job_name])
    if partition_key not in known:
        shown = ", ".join(known[:3]) + (", ..." if len(known) > 3 else "")
        raise RunFailed(
            f"{job_name}: unknown partition {partition_key!r}; the instance has "
            f"{len(known)} {PARTITIONED_JOBS[job_name]} partitions ({shown}); materialize "
            "`images` (the prepare_study job) first"
        )
    result = defs.resolve_job_def(job_name).execute_in_process(
        instance=instance,
        partition_key=partition_key,
        raise_on_error=False,
        run_config=QUIET_RUN_CONFIG,
    )
    if not result.success:
        raise run_failed(f"{job_name} {partition_key}", result)


def _run_partitions_in_processes(
    study_file: str,
    keys: list[str],
    instance: dg.DagsterInstance,
    jobs: int,
    say: Callable[[str], None],
    on_done: Callable[[str], None] = lambda key: None,
    log_dir: Path | None = None,
    job_name: str = ACTIVATIONS_JOB,
    step: str = "activations",
) -> None:
    """Run one ``carto run-partition`` process per key, at most ``jobs`` at a time.

    Every process records its run in the same (persistent) Dagster instance. Waits for all of
    them, then raises :class:`RunFailed` naming every failed partition with its error output.
    Each process's output goes to ``<log_dir>/<key>.log`` (default: a temporary folder);
    ``on_done(key)`` is called as each one succeeds.
    """
    if instance.is_ephemeral:
        raise RunFailed(
            f"--jobs {jobs} runs shards in separate processes, which need a persistent Dagster "
            "instance they can share: set DAGSTER_HOME (or --dagster-home), or use --jobs 1"
        )
    home = instance.root_directory
    env = {**os.environ, DAGSTER_HOME_ENV_VAR: str(home)}
    # N processes on one machine: split the CPU threads between them instead of oversubscribing.
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    pending = list(keys)
    running: dict[str, tuple[subprocess.Popen[str], Any]] = {}
    failed: dict[str, str] = {}
    done = 0
    with contextlib.ExitStack() as stack:
        logs = log_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="carto-shards-"))
        Path(logs).mkdir(parents=True, exist_ok=True)
        while pending or running:
            while pending and len(running) < jobs:
                key = pending.pop(0)
                log_file = open(Path(logs) / f"{key}.log", "w+")
                cmd = [
                    sys.executable,
                    "-m",
                    "carto_assets.cli.main",
                    "run-partition",
                    "--study",
                    study_file,
                    "--partition",
                    key,
                    "--dagster-home",
                    str(home),
                    "--threads",
                    str(threads),
                    "--job",
                    job_name,
                ]
                proc = subprocess.Popen(
                    cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, text=True
                )
                running[key] = (proc, log_file)
                log.info(f"{step} {key} started (pid {proc.pid}, {len(running)} running)")
            time.sleep(0.2)
            for key, (proc, log_file) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[key]
                done += 1
                log_file.seek(0)
                output = log_file.read()
                log_file.close()
                if proc.returncode != 0:
                    tail = "\n".join(output.strip().splitlines()[-30:])
                    failed[key] = tail or f"exit status {proc.returncode}"
                    say(f"{step} {key} FAILED ({done}/{len(keys)})")
                else:
                    log.info(f"{step} {key} done ({done}/{len(keys)})")
                    on_done(key)
    if failed:
        detail = "\n".join(f"--- {k} ---\n{v}" for k, v in sorted(failed.items()))
        first = sorted(failed)[0]
        # A worker's last line is its own one-line root error (`carto run-partition`).
        lines = [line for line in failed[first].splitlines() if line.strip()]
        root = lines[-1].removeprefix("carto: ") if lines else "no output"
        short = [f"{job_name} failed for partition(s) {', '.join(sorted(failed))}", root]
        raise RunFailed("\n".join([*short, "", detail]), short=short)


class _StepCounter(logging.Handler):
    """Counts finished steps of a job from its event log and reports them as progress."""

    def __init__(self, stage: str, total: int) -> None:
        super().__init__(level=logging.DEBUG)
        self.stage, self.total, self.done = stage, total, 0

    def emit(self, record: logging.LogRecord) -> None:
        event = step_event(record)
        if event and event[1] in ("STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED"):
            self.done += 1
            progress_of.advance(self.stage, self.done, self.total, "assets")


@contextlib.contextmanager
def _count_steps(stage: str, total: int):
    counter = _StepCounter(stage, total)
    events = logging.getLogger(EVENTS_LOGGER)
    events.addHandler(counter)
    try:
        yield
    finally:
        events.removeHandler(counter)


def materialize_all(
    study_file: str,
    instance: dg.DagsterInstance,
    say: Callable[[str], None] = log.info,
    jobs: int = 1,
    force: bool = False,
    log_dir: Path | None = None,
) -> dict[str, float]:
    """Run every job of the study in order; returns seconds per stage. Raises on failure.

    ``jobs``: activation shards (and concept-graph class chunks) run at once; 1 runs them one
    after another in this process,
    N > 1 runs them in up to N worker processes (``carto run-partition``) recording into the
    same persistent Dagster instance. Shards whose stored summary is up to date (see
    :func:`up_to_date_shards`) are not recomputed unless ``force``; the summaries always are.

    The runs' event logs go to the instance and to the ``carto.events`` Python logger (see
    :mod:`carto_assets.assets.events`), not to the terminal; stage progress is reported through
    :mod:`carto_assets.runtime.progress` (stages ``activations`` in images, ``summaries`` in
    assets). The study's writer lock is held for the whole call: a second run on the same study
    fails at once with :class:`~carto_assets.storage.store.DatabaseBusyError` naming this one.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    defs = build_definitions(study_file)
    study = defs.resources["study"].load()  # type: ignore[union-attr]
    owner = describe_writer(f"`carto run` of study '{study.name}'")
    with exclusive_writer(study.database_path, owner, wait_s=0.0):
        return _materialize_all(study_file, defs, study, instance, say, jobs, force, log_dir)


def _materialize_all(
    study_file: str,
    defs: dg.Definitions,
    study: Study,
    instance: dg.DagsterInstance,
    say: Callable[[str], None],
    jobs: int,
    force: bool,
    log_dir: Path | None,
) -> dict[str, float]:
    timings: dict[str, float] = {}

    def execute(job_name: str, partition_key: str | None = None) -> None:
        job = defs.resolve_job_def(job_name)
        result = job.execute_in_process(
            instance=instance,
            partition_key=partition_key,
            raise_on_error=False,
            run_config=QUIET_RUN_CONFIG,
        )
        if not result.success:
            raise run_failed(f"{job_name}{' ' + partition_key if partition_key else ''}", result)
        for check in result.get_asset_check_evaluations():
            if not check.passed:
                say(
                    f"WARNING: asset check {check.asset_key.to_user_string()}:"
                    f"{check.check_name} failed"
                )

    t0 = time.perf_counter()
    say(f"[1/3] images + model + dictionary for study '{study.name}'")
    execute(PREPARE_JOB)
    timings["prepare"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    keys = [shard_key(s) for s in range(study.shards)]
    registered = set(instance.get_dynamic_partitions(SHARDS.name))
    missing = [k for k in keys if k not in registered]
    if missing:
        raise RunFailed(f"shard partitions not registered: {missing}")
    # Prepared after the prepare job, which wrote the manifest, model and dictionaries.
    prepared = PreparedStudy.open(study)
    fresh = set() if force else {shard_key(s) for s in up_to_date_shards(prepared)}
    todo = [k for k in keys if k not in fresh]
    if fresh:
        say(f"[2/3] {len(fresh)} of {len(keys)} shards up to date, not recomputed (--force does)")
        materialized = instance.get_materialized_partitions(ACTIVATIONS_KEY)
        for key in sorted(fresh - materialized):
            # Up-to-date files this instance has no record of (e.g. a new DAGSTER_HOME).
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    ACTIVATIONS_KEY,
                    partition=key,
                    metadata={"reused": True, "shard_dir": str(study.files_dir / "activations")},
                )
            )
    timings["shards_computed"] = float(len(todo))
    timings["shards_reused"] = float(len(fresh))
    counts = prepared.images.group_by("shard").len()
    per_shard = dict(zip(counts["shard"].to_list(), counts["len"].to_list()))
    sizes = {k: int(per_shard.get(i, 0)) for i, k in enumerate(keys) if k in todo}
    total, finished = sum(sizes.values()), [0]

    def shard_progress(stage: str, done: int, _total: int, _unit: str) -> None:
        if stage in sizes:  # a shard in this process: images done so far, over all shards
            progress_of.advance("activations", finished[0] + done, total, "images")
            if done == sizes[stage]:
                finished[0] += done

    def shard_done(key: str) -> None:  # a shard in a worker process
        finished[0] += sizes[key]
        progress_of.advance("activations", finished[0], total, "images")

    say(f"[2/3] activations: {len(todo)} shard(s), {total} images")
    stop = progress_of.listen(shard_progress)
    progress_of.advance("activations", 0, total, "images")
    try:
        if jobs == 1 or len(todo) <= 1:
            for key in todo:
                execute(ACTIVATIONS_JOB, partition_key=key)
        else:
            say(f"      in up to {jobs} processes")
            _run_partitions_in_processes(
                study_file, todo, instance, jobs, say, on_done=shard_done, log_dir=log_dir
            )
    finally:
        stop()
    timings["activations"] = time.perf_counter() - t1
    timings["images"] = float(total)

    t2 = time.perf_counter()
    say("[3/3] summaries (top images and everything after)")
    n_steps = len(defs.resolve_job_def(SUMMARIES_JOB).asset_layer.executable_asset_keys)
    progress_of.advance("summaries", 0, n_steps, "assets")
    published = (PUBLISH_STATS.seconds, PUBLISH_STATS.writes, PUBLISH_STATS.bytes_copied)
    with _count_steps("summaries", n_steps):
        execute(SUMMARIES_JOB)
    # The concept graph's class chunks: partitions like the shards, then one merge.
    chunk_keys = sorted(instance.get_dynamic_partitions(CLASS_CHUNKS.name))
    t3 = time.perf_counter()
    progress_of.advance("concept graph", 0, len(chunk_keys), "class chunks")
    if jobs == 1 or len(chunk_keys) <= 1:
        for i, key in enumerate(chunk_keys, 1):
            execute(GRAPH_CHUNKS_JOB, partition_key=key)
            progress_of.advance("concept graph", i, len(chunk_keys), "class chunks")
    else:
        say(f"      concept graph: {len(chunk_keys)} class chunks in up to {jobs} processes")
        finished_chunks = [0]

        def chunk_done(key: str) -> None:
            finished_chunks[0] += 1
            progress_of.advance(
                "concept graph", finished_chunks[0], len(chunk_keys), "class chunks"
            )

        _run_partitions_in_processes(
            study_file,
            chunk_keys,
            instance,
            jobs,
            say,
            on_done=chunk_done,
            log_dir=log_dir,
            job_name=GRAPH_CHUNKS_JOB,
            step="concept graph",
        )
    timings["graph_chunks"] = time.perf_counter() - t3
    n_publish = len(defs.resolve_job_def(PUBLISH_JOB).asset_layer.executable_asset_keys)
    progress_of.advance("graph and views", 0, n_publish, "assets")
    with _count_steps("graph and views", n_publish):
        execute(PUBLISH_JOB)
    timings["summaries"] = time.perf_counter() - t2
    # What publishing whole snapshots (copy + sync + rename per write) cost the summaries.
    timings["publish"] = PUBLISH_STATS.seconds - published[0]
    timings["publish_writes"] = float(PUBLISH_STATS.writes - published[1])
    timings["publish_bytes"] = float(PUBLISH_STATS.bytes_copied - published[2])
    timings["total"] = time.perf_counter() - t0
    return timings
