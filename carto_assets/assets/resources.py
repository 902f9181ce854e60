"""Dagster resources: the study and its storage."""

from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr

from carto_assets.stages.prepared import PreparedStudy
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
        """The validated study (raises StudyError naming the bad field); reads the file."""
        return load_study(self.study_file) if self.study_file else demo_study()

    def prepare(self) -> PreparedStudy:
        """The study, read and validated once, with its store: what an asset hands its stage.

        One per step, never kept: the step before may have written the files it loads (the
        manifest, the model); writes publish a new snapshot (see :mod:`carto_assets.storage.store`).
        """
        label = f"Dagster run {self._run_id}" if self._run_id else None
        return PreparedStudy.open(self.load(), owner=label)
