"""`carto run` killed halfway through the activation shards, then run again: only the shards it
had not finished are computed; the finished ones' files are not touched."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import duckdb
import pytest
from readme.walk import CARTO, run, shell_env

from carto_assets.stages.activations import SHARD_FOLDER, shard_dir
from carto_assets.storage.partition_folders import SUMMARY
from carto_assets.study import load_study

pytestmark = pytest.mark.slow

SHARDS = 4


def _finished(study) -> dict[int, int]:
    """The complete shard folders and their summary's modification time (ns)."""
    return {
        s: (shard_dir(study, s) / SUMMARY).stat().st_mtime_ns
        for s in range(SHARDS)
        if SHARD_FOLDER.is_complete(shard_dir(study, s))
    }


def test_a_killed_run_computes_only_the_missing_shards_again(tmp_path, make_study):
    study_file = make_study(
        tmp_path,
        dataset={"kind": "shapes", "size": 400, "image_size": 32},
        shards=SHARDS,
        embedding={"epochs": 2},
        graph={"images_per_class": 4, "faithfulness_edges": 4},
    )
    study = load_study(study_file)
    argv = [str(CARTO), "run", "--study", study_file.name]
    first = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=shell_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the kill reaches all of it, only it
    )
    try:
        deadline = time.monotonic() + 600
        while not _finished(study):
            assert first.poll() is None, first.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no shard finished in 10 minutes"
            time.sleep(0.02)
        os.killpg(first.pid, signal.SIGKILL)  # no cleanup runs, as when a machine goes down
    finally:
        first.wait()
        first.stdout.close()  # type: ignore[union-attr]
    assert first.returncode == -signal.SIGKILL
    done = _finished(study)
    assert 1 <= len(done) < SHARDS, done

    again = run(argv, cwd=tmp_path).ok()
    assert f"{len(done)} of {SHARDS} shards up to date, not recomputed" in again.output
    assert f"activations: {SHARDS - len(done)} shard(s)" in again.output
    after = _finished(study)
    assert sorted(after) == list(range(SHARDS))
    for s in range(SHARDS):  # the finished shards' files were kept, the others written now
        assert (after[s] == done[s]) if s in done else (after[s] > max(done.values())), s
    with duckdb.connect(str(study.database_path), read_only=True) as con:
        predicted, images = con.execute(
            "SELECT (SELECT count(*) FROM image_predictions), (SELECT count(*) FROM images)"
        ).fetchone()
    assert predicted == images == 400
