"""The hook every asset step runs after it, for a study's and a comparison's definitions."""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

from carto_assets.runtime.memory import release_memory


@dg.success_hook(name="release_memory")
def release_memory_after(_context: dg.HookContext) -> None:
    """After each asset step: give the memory it freed back to the OS (see
    carto_assets.runtime.memory).

    ``carto run`` runs every step of a job in one process; without this, the resident size a
    step leaves behind is its peak, and the next step's peak comes on top of it.
    """
    release_memory()


def with_release_memory(assets: Iterable[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """``assets``, each followed by :func:`release_memory_after` wherever it runs (jobs, the
    UI, ``dg.materialize``)."""
    return [asset.with_hooks({release_memory_after}) for asset in assets]
