"""benchmarks/patches.py: typed on a mapped study (the session's tiny one).

Only what it prints is checked, never a speed: one line per repeat, the patches it cut (as many
as the study's ``example_patches`` table holds), and that one thread and several wrote the same
rows and PNG bytes.
"""

import re

import duckdb
import pytest
from benchmark_run import run_benchmark


@pytest.mark.slow
def test_one_thread_and_three_cut_the_same_patches(materialized):
    study, _, study_file = materialized
    out = run_benchmark("patches.py", "--study", study_file, "--workers", 3, "--repeats", 2)
    assert out.returncode == 0, out.stderr
    assert (
        len(re.findall(r"^repeat \d: 1 thread [\d.]+ s, 3 threads [\d.]+ s$", out.stdout, re.M))
        == 2
    )
    summary = re.search(r"^(\d+) patches \((\d+) distinct PNGs\)", out.stdout, re.M)
    assert summary is not None, out.stdout
    con = duckdb.connect(str(study.database_path), read_only=True)
    try:
        rows, distinct = con.execute(
            "SELECT count(*), count(DISTINCT png) FROM example_patches"
        ).fetchone()
    finally:
        con.close()
    assert (int(summary.group(1)), int(summary.group(2))) == (rows, distinct)
    assert "the same rows and PNG bytes: yes" in out.stdout


def test_one_worker_is_refused(tmp_path):
    out = run_benchmark("patches.py", "--study", "x", "--workers", 1, timeout=120)
    assert out.returncode != 0 and "--workers must be at least 2" in out.stderr
