"""The documented cluster (docs/deploy/) for real: Celery workers, Redis, Postgres, on loopback.

Starts Redis and Postgres, a Dagster instance from ``docs/deploy/dagster.yaml`` verbatim, the
code location from ``docs/deploy/README.md`` verbatim and two ``dagster-celery`` workers with
``docs/deploy/run_config.yaml``; runs ``prepare_study``, the ``activation_pass`` partitions (at
the same time, on both workers), ``summaries``, the ``concept_graph_chunks`` partitions and
``graph_and_views`` with ``dagster job execute``, as the README's "Try it on one machine"
section does; then checks every table equals a plain ``carto run``.
Then it kills the worker process executing a shard: the run fails naming that partition, and a
re-run completes it with nothing duplicated.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from local_cluster import LocalCluster, missing_servers

from carto_assets.assets.partitions import CLASS_CHUNKS
from carto_assets.cli.run import materialize_all
from carto_assets.storage.store import CartoStore
from carto_assets.study import load_study

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "docs" / "deploy"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(missing_servers()),
        reason=f"needs {', '.join(missing_servers())} (make test installs them)",
    ),
]


def documented_code_location() -> str:
    doc = (DEPLOY / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.S)
    assert code, "docs/deploy/README.md lost its code-location snippet"
    return code.group(1)


def dagster_job(job: str, cwd: Path, env: dict[str, str], partition: str | None = None):
    """``dagster job execute -f cluster_defs.py -j <job> -c run_config.yaml`` in the background."""
    cmd = [
        str(Path(sys.executable).parent / "dagster"),
        "job",
        "execute",
        "-f",
        "cluster_defs.py",
        "-j",
        job,
        "-c",
        str(DEPLOY / "run_config.yaml"),
    ]
    if partition:
        cmd += ["--tags", json.dumps({"dagster/partition": partition})]
    log = open(cwd / f"{job}-{partition or 'all'}-{time.monotonic_ns()}.log", "w+")
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT), log


def finish(proc_log, timeout_s: float = 600) -> tuple[int, str]:
    proc, log = proc_log
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        rc = -9
    log.seek(0)
    return rc, log.read()


def run_ok(proc_log) -> None:
    rc, out = finish(proc_log)
    assert rc == 0, out[-4000:]


def wait_for_workers(cluster: LocalCluster, broker: str, n: int, timeout_s: float = 120) -> None:
    from celery import Celery

    app = Celery(broker=broker)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dead = [name for name, proc, _ in cluster.procs if proc.poll() is not None]
        if dead:
            logs = {name: (cluster.root / f"{name.replace(' ', '-')}.log") for name in dead}
            raise RuntimeError(
                f"{dead} exited: " + " | ".join(p.read_text()[-1500:] for p in logs.values())
            )
        replies = app.control.ping(timeout=1.0) or []
        if len(replies) >= n:
            return
        time.sleep(0.5)
    raise TimeoutError(f"fewer than {n} Celery workers answered within {timeout_s:.0f} s")


def tables(study_file: Path) -> dict[str, pl.DataFrame]:
    """Every base table of a study's database, rows in a canonical order."""
    store = CartoStore(load_study(study_file).database_path)
    names = store.query(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_catalog = 'carto' AND table_type = 'BASE TABLE' ORDER BY table_name"
    )["table_name"].to_list()
    return {name: store.query(f'SELECT * FROM "{name}" ORDER BY ALL') for name in names}


def assert_same_tables(got: dict[str, pl.DataFrame], want: dict[str, pl.DataFrame]) -> None:
    assert sorted(got) == sorted(want)
    for name, expected in want.items():
        actual = got[name]
        assert actual.columns == expected.columns, name
        assert len(actual) == len(expected), f"{name}: {len(actual)} rows vs {len(expected)}"
        for col in expected.columns:
            a, b = actual[col], expected[col]
            if a.dtype.is_float():
                assert np.allclose(a.to_numpy(), b.to_numpy(), atol=1e-4, equal_nan=True), (
                    f"{name}.{col}"
                )
            elif a.dtype == pl.List(pl.Float32) or a.dtype == pl.List(pl.Float64):
                x, y = np.stack(a.to_numpy()), np.stack(b.to_numpy())
                assert np.allclose(x, y, atol=1e-4), f"{name}.{col}"
            else:
                assert a.equals(b), f"{name}.{col}"


def run_graph(instance: dg.DagsterInstance, location: Path, env: dict[str, str]) -> None:
    """``summaries``, every class chunk of the concept graph at once, then ``graph_and_views``."""
    run_ok(dagster_job("summaries", location, env))
    chunks = sorted(instance.get_dynamic_partitions(CLASS_CHUNKS.name))
    assert chunks, "prepare_study registered no class chunk"
    for proc_log in [dagster_job("concept_graph_chunks", location, env, c) for c in chunks]:
        run_ok(proc_log)
    run_ok(dagster_job("graph_and_views", location, env))


def step_start_pid(instance: dg.DagsterInstance, partition: str, after: float) -> tuple[str, int]:
    """The run for ``partition`` launched after ``after`` and the pid executing its step."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        runs = instance.get_runs(
            filters=dg.RunsFilter(job_name="activation_pass", tags={"dagster/partition": partition})
        )
        for run in runs:
            record = instance.get_run_record_by_id(run.run_id)
            if record is None or record.create_timestamp.timestamp() < after:
                continue
            starts = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
            if starts and starts[0].dagster_event.pid:
                return run.run_id, starts[0].dagster_event.pid
        time.sleep(0.05)
    raise TimeoutError(f"no step of {partition} started on a worker")


def test_celery_cluster_matches_carto_run_and_recovers_a_killed_worker(
    tmp_path, make_study, monkeypatch, one_torch_thread
):
    # Shards of 200 images at 64 px: long enough (seconds) to kill a worker in the middle of one.
    fields = {"shards": 3, "dataset": {"kind": "shapes", "size": 600, "image_size": 64}}
    (tmp_path / "plain").mkdir()
    (tmp_path / "cluster").mkdir()
    plain = make_study(tmp_path / "plain", **fields)
    study_file = make_study(tmp_path / "cluster", **fields)
    materialize_all(str(plain), dg.DagsterInstance.ephemeral(), say=lambda m: None)
    expected = tables(plain)

    cluster = LocalCluster(tmp_path)
    try:
        cluster.start()
        home = tmp_path / "dagster_home"
        home.mkdir()
        shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
        location = tmp_path / "location"
        location.mkdir()
        (location / "cluster_defs.py").write_text(documented_code_location())
        extra = {
            **cluster.env,
            "DAGSTER_HOME": str(home),
            "CARTO_STUDY": str(study_file),
            "CARTO_COMPUTE_LOGS": str(tmp_path / "compute_logs"),
            "OMP_NUM_THREADS": "1",  # as the reference run: one thread, same float sums
            # The environment activated, as on a worker machine (`celery` must be on PATH).
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        for key, value in extra.items():
            monkeypatch.setenv(key, value)
        env = dict(os.environ)
        # The schema first (as the docs say): two workers creating it at once collide.
        migrate = [str(Path(sys.executable).parent / "dagster"), "instance", "migrate"]
        subprocess.run(migrate, env=env, check=True, capture_output=True, timeout=300)
        for name in ("w1", "w2"):
            cluster.start_worker(name, DEPLOY / "run_config.yaml", env, location)
        wait_for_workers(cluster, extra["CARTO_CELERY_BROKER"], 2)
        instance = dg.DagsterInstance.from_config(str(home))

        run_ok(dagster_job("prepare_study", location, env))
        keys = ["shard-0000", "shard-0001", "shard-0002"]
        launched = [dagster_job("activation_pass", location, env, key) for key in keys]
        for proc_log in launched:
            run_ok(proc_log)
        assert instance.get_materialized_partitions(dg.AssetKey("activations")) == set(keys)
        run_graph(instance, location, env)
        assert_same_tables(tables(study_file), expected)

        # Kill the worker process that executes shard-0001, once its step has started.
        before = time.time()
        killed_run = dagster_job("activation_pass", location, env, "shard-0001")
        run_id, pid = step_start_pid(instance, "shard-0001", before)
        os.kill(pid, signal.SIGKILL)
        rc, out = finish(killed_run)
        assert rc != 0, out[-4000:]
        # Killed mid-step: it started on the worker and never finished.
        assert not instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
        run = instance.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.FAILURE
        assert run.tags["dagster/partition"] == "shard-0001"
        assert "WorkerLostError" in out or "exited prematurely" in out, out[-4000:]

        # The re-run completes the partition; the summaries give the same tables, no duplicates.
        run_ok(dagster_job("activation_pass", location, env, "shard-0001"))
        run_graph(instance, location, env)
        assert_same_tables(tables(study_file), expected)
        shard = load_study(study_file).files_dir / "activations" / "shard-0001"
        assert sorted(p.name for p in shard.iterdir()) == [
            "class_stats.parquet",
            "predictions.parquet",  # each image's prediction (image_predictions)
            "summary.json",
            "top_k.parquet",
            "unit_maxima.parquet",  # the labels' sample (labels are on by default)
        ]
        runs = instance.get_runs(
            filters=dg.RunsFilter(
                job_name="activation_pass", tags={"dagster/partition": "shard-0001"}
            )
        )
        assert sorted(r.status.value for r in runs) == ["FAILURE", "SUCCESS", "SUCCESS"]
    finally:
        killed = cluster.stop()
    assert killed == [], f"had to kill {killed} after the shutdown timeout"
