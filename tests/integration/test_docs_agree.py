"""The database a study writes holds exactly the tables and columns carto_assets/schema/
declares (and docs/schema.md documents, see tests/test_schema.py)."""

import pytest

from carto_assets import schema
from carto_assets.storage.store import CartoStore

pytestmark = pytest.mark.slow


def test_every_table_written_is_declared_with_its_columns_and_types(materialized):
    study, _, _ = materialized
    store = CartoStore(study.database_path)
    columns = store.query(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "ORDER BY table_name, ordinal_position"
    )
    written = sorted(set(columns["table_name"].to_list()))
    # A comparison's tables live in the comparison's database (tests/compare/).
    assert written == sorted(n for n, t in schema.TABLES.items() if t.database == "study")
    for name in written:
        rows = columns.filter(table_name=name).select("column_name", "data_type").rows()
        schema.check_columns(name, rows)
