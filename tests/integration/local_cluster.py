"""A real multi-process cluster on one machine: Redis, Postgres and Celery workers on loopback.

Used by ``test_cluster.py``. Every server is started here with bounded waits and stopped by
:meth:`LocalCluster.stop` (a fast shutdown, then a kill after a timeout), so nothing is left
running. Postgres refuses to run as root: when the tests run as root (CI), ``initdb`` and
``postgres`` run as the unprivileged user ``nobody``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def postgres_bin(name: str) -> str | None:
    """Debian installs the server binaries outside PATH, under /usr/lib/postgresql/<v>/bin."""
    for folder in PG_BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    return shutil.which(name)


def missing_servers() -> list[str]:
    """The server programs this machine lacks (``make test`` installs them)."""
    wanted = {"redis-server": shutil.which("redis-server"), "postgres": postgres_bin("postgres")}
    return [name for name, path in wanted.items() if path is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s")


class LocalCluster:
    """Redis (Celery broker + result backend) and Postgres (the Dagster instance) on loopback.

    Parameters
    ----------
    root
        A folder for the servers' data and logs.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[tuple[str, subprocess.Popen, int]] = []
        self.redis_port = free_port()
        self.pg_port = free_port()
        # Postgres may not run as root: run it as `nobody` in a folder that user owns.
        self.pg_user = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
        self.pg_dir = Path(tempfile.mkdtemp(prefix="carto-pg-"))

    # ---- servers ---------------------------------------------------------------------------
    def start(self) -> None:
        redis = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
            stdout=open(self.root / "redis.log", "w"),
            stderr=subprocess.STDOUT,
        )
        self.procs.append(("redis", redis, signal.SIGTERM))
        wait_for_port(self.redis_port, redis, "redis-server")

        as_user: dict = {}
        if self.pg_user is not None:
            os.chown(self.pg_dir, self.pg_user.pw_uid, self.pg_user.pw_gid)
            as_user = {"user": self.pg_user.pw_uid, "group": self.pg_user.pw_gid}
        data = self.pg_dir / "data"
        subprocess.run(
            [
                postgres_bin("initdb"),
                "-D",
                str(data),
                "-U",
                "carto",
                "--auth=trust",
                "--locale=C",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=120,
            cwd=self.pg_dir,
            **as_user,
        )
        postgres = subprocess.Popen(
            [
                postgres_bin("postgres"),
                "-D",
                str(data),
                "-p",
                str(self.pg_port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.pg_dir}",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=100",
            ],
            stdout=open(self.root / "postgres.log", "w"),
            stderr=subprocess.STDOUT,
            cwd=self.pg_dir,
            **as_user,
        )
        # SIGINT is Postgres's fast shutdown (SIGTERM waits for clients to disconnect).
        self.procs.append(("postgres", postgres, signal.SIGINT))
        wait_for_port(self.pg_port, postgres, "postgres")

    @property
    def env(self) -> dict[str, str]:
        """The variables docs/deploy/dagster.yaml and run_config.yaml read."""
        return {
            "CARTO_PG_HOST": "127.0.0.1",
            "CARTO_PG_PORT": str(self.pg_port),
            "CARTO_PG_USER": "carto",
            "CARTO_PG_PASSWORD": "carto",  # trust authentication on loopback: not checked
            "CARTO_PG_DB": "postgres",
            "CARTO_CELERY_BROKER": f"redis://127.0.0.1:{self.redis_port}/0",
            "CARTO_CELERY_BACKEND": f"redis://127.0.0.1:{self.redis_port}/1",
        }

    # ---- workers ---------------------------------------------------------------------------
    def start_worker(self, name: str, run_config: Path, env: dict[str, str], cwd: Path):
        """``dagster-celery worker start`` as documented, in its own process group."""
        cmd = [
            str(Path(sys.executable).parent / "dagster-celery"),
            "worker",
            "start",
            "-A",
            "dagster_celery.app",
            "-y",
            str(run_config),
            "-n",
            name,
            "--",
            "--concurrency=1",
        ]
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdout=open(self.root / f"worker-{name}.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append((f"worker {name}", proc, signal.SIGTERM))
        return proc

    def stop(self) -> list[str]:
        """Stop everything started here, newest first; returns what had to be killed."""
        killed = []
        for name, proc, sig in reversed(self.procs):
            group = name.startswith("worker")  # the wrapper and the celery processes below it
            _signal(proc, sig, group)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL, group)
                proc.wait(timeout=10)
                killed.append(name)
            if group:
                _signal(proc, signal.SIGKILL, group)  # any pool process still there
        self.procs.clear()
        shutil.rmtree(self.pg_dir, ignore_errors=True)
        return killed


def _signal(proc: subprocess.Popen, sig: int, group: bool) -> None:
    """Signal a process, or the process group it leads (started with a session of its own)."""
    try:
        if group:
            os.killpg(proc.pid, sig)
        elif proc.poll() is None:
            proc.send_signal(sig)
    except ProcessLookupError:
        pass
