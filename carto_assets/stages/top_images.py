"""The global top-k per neuron from the shards' candidates, and the ``neurons`` table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from carto_assets import schema
from carto_assets.core.network.layers import LayerInfo
from carto_assets.core.sae.layer import FeatureLayer
from carto_assets.stages.activations import SHARD_FOLDER, shard_dir, shard_summaries
from carto_assets.storage.store import sql_path_list

if TYPE_CHECKING:
    from carto_assets.stages.prepared import PreparedStudy


@dataclass(frozen=True)
class MergeResult:
    """What merging the shards wrote."""

    #: rows written per table (``neurons``, ``top_images``)
    counts: dict[str, int]
    n_images_processed: int
    n_failed: int
    #: up to 100 images that failed to decode: ``{"image_id", "source", "reason"}``
    failed: list[dict[str, Any]]
    #: the model's layer rows (see :class:`carto_assets.stages.stored_model.ModelInfo`)
    layers: list[dict[str, Any]]
    #: seconds of the activation pass, summed over shards
    activation_seconds: float


def neurons_frame(
    layers: Sequence[LayerInfo], features: Sequence[FeatureLayer] = ()
) -> pl.DataFrame:
    """The ``neurons`` table: one row per unit, in the activation pass's neuron order.

    Every mapped layer's channels (``kind = 'channel'``) in forward order, each layer followed
    by its dictionary's features if it has one (pseudo-layer ``<layer>:features``,
    ``kind = 'feature'``, ``channel`` = the feature's index, its source layer's map size), so
    ``layer_index`` counts pseudo-layers too.
    """
    by_source = {f.source: f for f in features}
    rows: list[tuple[str, int, str, tuple[int, int]]] = []  # (layer, units, kind, map size)
    for info in layers:
        rows.append((info.name, int(info.channels or 0), "channel", info.map_size))
        if info.name in by_source:
            f = by_source[info.name]
            rows.append((f.name, f.n_features, "feature", info.map_size))
    unknown = sorted(set(by_source) - {info.name for info in layers})
    if unknown:
        raise ValueError(f"features of layers {unknown} that are not mapped layers")
    widths = [n for _, n, _, _ in rows]
    block = np.repeat(np.arange(len(rows)), widths)
    return schema.frame(
        "neurons",
        {
            "neuron_id": np.arange(sum(widths)),
            "layer": [rows[i][0] for i in block],
            "layer_index": block,
            "channel": np.concatenate([np.arange(n) for n in widths] or [np.zeros(0, int)]),
            "map_height": [rows[i][3][0] for i in block],
            "map_width": [rows[i][3][1] for i in block],
            "kind": [rows[i][2] for i in block],
        },
    )


def _empty_select(table: str) -> str:
    """A SELECT of no rows with ``table``'s declared columns and types."""
    columns = ", ".join(f'NULL::{c.type} AS "{c.name}"' for c in schema.table(table).columns)
    return f"(SELECT {columns} WHERE false)"


def merge_top_images(prepared: PreparedStudy) -> MergeResult:
    """Global top-k per neuron from the shards, and the ``neurons`` table, in one transaction.

    Also (re)creates the views ``activation_shard_top_k`` and ``activation_class_stats`` over
    the per-shard Parquet files.
    """
    study, store = prepared.study, prepared.store
    summaries = shard_summaries(prepared)
    layers, info = prepared.layers, prepared.model_info
    features = prepared.feature_layers
    # Each of the shard folder's tables, read over every shard's file; an optional table no
    # shard wrote (``unit_maxima`` with ``labels`` off) is an empty view of its columns.
    source: dict[str, str] = {}
    for name, table in SHARD_FOLDER.tables.items():
        paths = [SHARD_FOLDER.path(shard_dir(study, s.shard), name) for s in summaries]
        paths = [p for p in paths if p.is_file()] if name in SHARD_FOLDER.optional else paths
        source[name] = f"read_parquet({sql_path_list(paths)})" if paths else _empty_select(table)
    # The shard files carry their own shard-local `rank`; re-rank globally under another name.
    top_images_sql = f"""
        SELECT neuron_id, global_rank::INTEGER AS rank, image_id, activation, y, x
        FROM (
            SELECT neuron_id::BIGINT AS neuron_id, image_id::BIGINT AS image_id,
                   activation::FLOAT AS activation, y::INTEGER AS y, x::INTEGER AS x,
                   row_number() OVER (PARTITION BY neuron_id ORDER BY activation DESC, image_id)
                       AS global_rank
            FROM {source["top_k"]}
        )
        WHERE global_rank <= {int(study.top_k)}
        ORDER BY neuron_id, rank
    """
    counts = store.replace_tables(
        {"neurons": neurons_frame(layers, features), "top_images": top_images_sql},
        views={
            table: f"SELECT * FROM {source[name]}" for name, table in SHARD_FOLDER.tables.items()
        },
    )
    return MergeResult(
        counts=counts,
        n_images_processed=sum(s.n_processed for s in summaries),
        n_failed=sum(s.n_failed for s in summaries),
        failed=[f for s in summaries for f in s.failed][:100],
        layers=info.layers,
        activation_seconds=sum(s.seconds for s in summaries),
    )
