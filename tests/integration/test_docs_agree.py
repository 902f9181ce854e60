"""docs/schema.md documents every table and column the pipeline writes."""

from pathlib import Path

import pytest

from carto_assets.storage import CartoStore

pytestmark = pytest.mark.slow

SCHEMA_DOC = Path(__file__).resolve().parents[2] / "docs" / "schema.md"


def test_every_table_and_column_is_documented(materialized):
    study, _, _ = materialized
    doc = SCHEMA_DOC.read_text()
    store = CartoStore(study.database_path)
    columns = store.query(
        "SELECT table_name, column_name FROM information_schema.columns ORDER BY ALL"
    )
    undocumented = [
        f"{t}.{c}"
        for t, c in columns.iter_rows()
        if (f"`{t}`" not in doc and f"{t}(" not in doc) or c not in doc
    ]
    assert undocumented == []
