"""``python -m carto_assets.cli`` is the ``carto`` command (the layout move once broke it)."""

import subprocess
import sys


def test_python_dash_m_runs_the_carto_command():
    out = subprocess.run(
        [sys.executable, "-m", "carto_assets.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "{run,layers,check,compare,explain,audit}" in out.stdout
