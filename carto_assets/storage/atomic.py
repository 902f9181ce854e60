"""Files and folders written whole or not at all.

Everything a run leaves on disk for another step or process to read (Parquet parts, a shard's
or chunk's folder, the manifest, a model or dictionary cache folder, the exported page) is
written under a
temporary name beside its target and renamed over it (``os.replace``, atomic on POSIX), so a
reader sees the old version or the new one, and a writer killed midway leaves only a temporary
file, never half a result. The study database's snapshots follow the same rule with a copy and
a sync first (:meth:`carto_assets.storage.store.CartoStore.write`).

No dagster, no torch here: core modules use it too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def temporary(path: str | Path) -> Path:
    """The temporary name beside ``path`` this process writes it under: ``.<name>.<pid>.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to (a file, or a folder the block
    creates); on success it replaces ``path``, on an exception it is removed and ``path`` is
    left as it was.

    A folder cannot be renamed over a non-empty one, so an existing folder is removed just
    before the rename: a reader that looks in between finds none, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    _remove(tmp)  # left by a killed writer with this pid
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if tmp.is_dir() and path.is_dir():
        shutil.rmtree(path)
    os.replace(tmp, path)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
