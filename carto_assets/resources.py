"""Dagster resources: the study and its storage."""

from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr

from carto_assets.storage import CartoStore, describe_writer
from carto_assets.study import Study, demo_study, load_study


class StudyResource(dg.ConfigurableResource):
    """The study being mapped (model + dataset + layers + parameters) and its DuckDB store."""

    study_file: str = Field(
        default="",
        description="Path of the study YAML; empty runs the built-in shapes demo study.",
    )

    _run_id: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Writers name their Dagster run in the database's lock, so a blocked run can say who.
        self._run_id = context.run.run_id if context.run else None

    def load(self) -> Study:
        """The validated study (raises StudyError naming the bad field)."""
        return load_study(self.study_file) if self.study_file else demo_study()

    def store(self) -> CartoStore:
        """The study database; writes publish a new snapshot (see :mod:`carto_assets.storage`)."""
        label = f"Dagster run {self._run_id}" if self._run_id else None
        study = self.load()
        return CartoStore(
            study.database_path,
            owner=describe_writer(label),
            memory_limit=study.database_memory_limit,
        )
