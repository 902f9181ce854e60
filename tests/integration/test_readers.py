"""SQL sessions held open on the study database never block a run and never see half of one."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from carto_assets.assets.resources import StudyResource
from carto_assets.cli.run import materialize_all
from carto_assets.storage.store import CartoStore, DatabaseBusyError, current_writer
from carto_assets.study import load_study

pytestmark = pytest.mark.slow

READER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
for line in sys.stdin:
    print(con.execute(line).fetchall(), flush=True)
"""
#: What a reader checks: how many top images per neuron, and that the tables agree.
QUERY = (
    "SELECT (SELECT count(*) FROM top_images) // (SELECT count(*) FROM neurons), "
    "(SELECT count(*) FROM top_images t JOIN neurons n USING (neuron_id)), "
    "(SELECT count(*) FROM cooccurrence)"
)


def test_a_reader_held_open_never_blocks_a_run_and_keeps_its_snapshot(
    tmp_path, make_study, one_torch_thread
):
    study_file = make_study(tmp_path)
    materialize_all(str(study_file), dg.DagsterInstance.ephemeral(), say=lambda m: None)
    db = load_study(study_file).database_path

    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    def ask() -> str:
        reader.stdin.write(QUERY + "\n")
        reader.stdin.flush()
        return reader.stdout.readline().strip()

    run = None
    try:
        before = ask()
        assert before.startswith("[(8, ")  # top_k = 8
        # A second run with other settings (top_k 6), as `carto run` in another process.
        raw = yaml.safe_load(study_file.read_text())
        study_file.write_text(yaml.safe_dump({**raw, "top_k": 6}))
        run = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "carto_assets.cli.main",
                "run",
                "--study",
                str(study_file),
                "--dagster-home",
                str(tmp_path / "home"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 120
        while current_writer(db) is None and run.poll() is None:
            assert time.monotonic() < deadline, "carto run never took the study's writer lock"
            time.sleep(0.1)
        # A second run on the same study fails at once, naming the first.
        with pytest.raises(
            DatabaseBusyError, match=rf"`carto run` of study 'tiny' \(pid {run.pid}"
        ):
            materialize_all(str(study_file), dg.DagsterInstance.ephemeral(), say=lambda m: None)
        assert ask() == before
        out, _ = run.communicate(timeout=900)
        assert run.returncode == 0, out[-3000:]
        assert "Mapped:" in out and "Conflicting lock" not in out
        # A calm terminal: no Dagster event lines, no telemetry banner; they are in the log.
        assert "DEBUG" not in out and " - dagster - " not in out and "Telemetry" not in out
        log_file = Path(out.split("Log:", 1)[1].split()[0])
        assert "STEP_SUCCESS" in log_file.read_text()

        # The open session still sees its whole snapshot; a new connection sees the new run.
        assert ask() == before
        store = CartoStore(db)
        fresh = store.query(QUERY).row(0)
        assert fresh[0] == 6 and fresh[1] == 6 * store.query("SELECT * FROM neurons").height

        # One asset materialized as from the UI (Dagster's default loggers), reader still open.
        result = dg.materialize(
            [_asset("class_importance")],
            resources={"study": StudyResource(study_file=str(study_file))},
            instance=dg.DagsterInstance.ephemeral(),
        )
        assert result.success
        assert ask() == before
        assert store.query("SELECT count(*) AS n FROM class_importance")["n"][0] > 0
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.wait(timeout=30)
        reader.stdin.close()
        reader.wait(timeout=30)


def _asset(name: str):
    from carto_assets.definitions import ALL_ASSETS

    return next(a for a in ALL_ASSETS if a.key.to_user_string() == name)
