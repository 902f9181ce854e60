"""The studies of a comparison, checked before any work: each has results, all map the same
images. Light (no torch, no dagster), so ``carto compare`` refuses at once."""

from __future__ import annotations

from carto_assets.stages.comparison_images import check_same_images
from carto_assets.stages.prepared import PreparedComparison, PreparedStudy
from carto_assets.storage.store import CartoStore
from carto_assets.study import Study
from carto_assets.study.comparison import ComparisonError

#: What a study must have materialized to be compared (table -> the asset that writes it).
REQUIRED = {
    "images": "images",
    "neurons": "top_images",
    "top_images": "top_images",
    "neuron_clusters": "neuron_clusters",
    "clusters": "neuron_clusters",
}


def _checked_store(prepared: PreparedStudy, entry: str) -> CartoStore:
    study, store = prepared.study, prepared.store
    if not study.database_path.exists():
        raise ComparisonError(
            f"study {entry!r} has no results at {study.database_path}; run it first "
            f"(`carto run{' --study ' + entry if entry != 'demo' else ''}`)"
        )
    for table, asset in REQUIRED.items():
        if not store.table_exists(table):
            raise ComparisonError(
                f"study {entry!r} ({study.database_path}) has no table {table!r}; materialize "
                f"`{asset}` (e.g. `carto run`) first"
            )
    return store


def check_studies(prepared: PreparedComparison) -> tuple[list[Study], list[CartoStore], list]:
    """The studies, their stores and ``images`` tables, once every study has results and all
    map the same images; raises :class:`ComparisonError` naming the first problem."""
    entries = prepared.comparison.studies
    stores = [_checked_store(p, e) for p, e in zip(prepared.studies, entries, strict=True)]
    studies = [p.study for p in prepared.studies]
    images = [s.query("SELECT image_id, source FROM images ORDER BY image_id") for s in stores]
    check_same_images(studies, images)
    return studies, stores, images
