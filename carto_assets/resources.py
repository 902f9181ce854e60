"""Dagster resources: the study and its storage."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from carto_assets.storage import CartoStore
from carto_assets.study import DEMO_STUDY, Study, load_study, study_from_dict


class StudyResource(dg.ConfigurableResource):
    """The study being mapped (model + dataset + layers + parameters) and its DuckDB store."""

    study_file: str = Field(
        default="",
        description="Path of the study YAML; empty runs the built-in shapes demo study.",
    )

    def load(self) -> Study:
        """The validated study (raises StudyError naming the bad field)."""
        if self.study_file:
            return load_study(self.study_file)
        return study_from_dict(DEMO_STUDY)

    def store(self) -> CartoStore:
        return CartoStore(self.load().database_path)
