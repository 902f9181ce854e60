"""What a table declaration is: :class:`Column`, :class:`Table`, and the prediction's names.

The declarations themselves are in :mod:`carto_assets.schema.study_tables` and
:mod:`carto_assets.schema.comparison_tables`; :mod:`carto_assets.schema` puts them together.
"""

from __future__ import annotations

from dataclasses import dataclass

#: ``target_layer`` of edges into the class prediction (the class's logit).
PREDICTION = "prediction"
#: ``target_cluster`` of edges into the class prediction.
PREDICTION_CLUSTER = -1
#: A layer's dictionary features form the pseudo-layer named the layer's name plus this
#: (``neurons.layer``): ``block3`` -> ``block3:features``.
FEATURE_SUFFIX = ":features"


class SchemaError(ValueError):
    """A table written (or found) does not have the columns its declaration names."""


@dataclass(frozen=True)
class Column:
    name: str
    #: DuckDB type; ``[name]`` stands for a fixed array size given by a setting.
    type: str
    description: str


@dataclass(frozen=True)
class Table:
    name: str
    #: The asset that writes it.
    asset: str
    columns: tuple[Column, ...]
    #: ``table``, or ``view`` (over the per-shard Parquet files).
    kind: str = "table"
    #: ``study`` (a study's database) or ``comparison`` (a comparison's, ``carto compare``).
    database: str = "study"

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def declare(
    name: str,
    asset: str,
    *columns: tuple[str, str, str],
    kind: str = "table",
    database: str = "study",
) -> Table:
    return Table(name, asset, tuple(Column(*c) for c in columns), kind, database)
