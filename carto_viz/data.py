"""Load the study's tables and shape them into the small datasets the linked views need.

Everything here is pure data work (DuckDB + polars); no charting and no Dagster.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from carto_assets import schema
from carto_assets.storage import quality
from carto_assets.storage.store import DEFAULT_MEMORY_LIMIT
from carto_viz import audit as class_audit
from carto_viz import explained_images as images
from carto_viz import words
from carto_viz.class_graphs import ClassGraphs, encode_ids, graph_records
from carto_viz.connection import attached_store
from carto_viz.short_names import layer_short_names, short_label
from carto_viz.summary import neurons_with_kind, study_summary

#: tables the views need (the assets that write them come from carto_assets.schema).
REQUIRED_TABLES = (
    "images",
    "neurons",
    "neuron_clusters",
    "clusters",
    "concept_graph_units",
    "example_patches",
    "concept_graph_nodes",
    "concept_graph_edges",
    "concept_cascades",
    "neuron_projection",
    "neuron_neighbors",
)

_QUERIES: dict[str, str] = {
    "images": "SELECT label, any_value(label_name) AS label_name FROM images "
    "GROUP BY label ORDER BY label",
    "neurons": "SELECT neuron_id, layer, layer_index, channel, {kind} AS kind FROM neurons "
    "ORDER BY neuron_id",
    "neuron_clusters": "SELECT neuron_id, cluster_id FROM neuron_clusters",
    "clusters": "SELECT cluster_id, layer, size, label FROM clusters",
    "concept_graph_units": "SELECT label, neuron_id, cluster_id, score FROM concept_graph_units",
    # The PNGs stay in the database: sprites.pack_patches reads them a sheet at a time.
    "example_patches": "SELECT neuron_id, rank FROM example_patches ORDER BY neuron_id, rank",
    "concept_graph_nodes": "SELECT label, cluster_id, layer, layer_index, importance "
    "FROM concept_graph_nodes",
    "concept_graph_edges": "SELECT label, source_layer, source_cluster, target_layer, "
    "target_cluster, weight FROM concept_graph_edges",
    # The page walks cascades from each node's first step down and up.
    "concept_cascades": "SELECT label, root_cluster, member_cluster, depth, direction "
    "FROM concept_cascades WHERE depth = 1",
    "neuron_projection": "SELECT neuron_id, x, y FROM neuron_projection",
    "neuron_neighbors": "SELECT neuron_id, rank, neighbor_id FROM neuron_neighbors",
    "image_count": "SELECT count(*) AS n FROM images",
}

#: ``neurons.kind``: a channel of a layer's output, or a feature of its sparse-autoencoder
#: dictionary (in the pseudo-layer ``<layer>:features``). Databases older than the column hold
#: channels only.
KINDS = ("channel", "feature")

#: The header's quality figures, written by the assets that measured them (absent from
#: databases older than the table: the header then shows none).
QUALITY_TABLE = quality.TABLE


def load_tables(
    database_path: str | Path, memory_limit: str = DEFAULT_MEMORY_LIMIT
) -> dict[str, pl.DataFrame]:
    """Read every table the views need from a study database (read-only).

    Parameters
    ----------
    database_path
        Path of the study's DuckDB file.
    memory_limit
        DuckDB's memory limit for the reads (the study's ``database_memory_limit``).

    Returns
    -------
    dict
        Table name -> polars DataFrame with the columns the views use (``example_patches``
        without its PNGs: read them with :func:`patch_pngs`).

    Raises
    ------
    ValueError
        If the file or a table is missing; the message names the asset to materialize.
    """
    with attached_store(database_path, memory_limit) as con:
        present = {
            row[0]
            for row in con.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_catalog = 'carto' AND table_schema = 'main'"
            ).fetchall()
        }
        check_tables(present)

        def columns(name: str) -> set[str]:
            return {
                row[0]
                for row in con.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_catalog = 'carto' AND table_name = ?",
                    [name],
                ).fetchall()
            }

        # Before neurons.kind every unit was a channel.
        kind = "coalesce(kind, 'channel')" if "kind" in columns("neurons") else "'channel'"
        queries = {**_QUERIES, "neurons": _QUERIES["neurons"].format(kind=kind)}
        tables = {name: con.sql(query).pl() for name, query in queries.items()}
        if QUALITY_TABLE in present:
            tables[QUALITY_TABLE] = con.sql(f"SELECT * FROM {QUALITY_TABLE}").pl()
        tables.update(images.load(con, present))  # the explanations, where the study has them
        if all(name in present for name in words.TABLES):  # the words, where the study has them
            tables.update(
                {name: con.sql(words.query(name, columns(name))).pl() for name in words.TABLES}
            )
        tables.update(class_audit.load(con, present))  # the audit, where the study has it
        return tables


#: DuckDB's memory limit while the patches are read a sheet at a time: DuckDB keeps the blocks
#: it read cached up to its limit, which by default held every PNG (+0.6 GB vs +0.25 GB for
#: packing 61,740 patches of real photographs, 440 MB of PNG).
PATCH_READER_MEMORY_LIMIT = "64MB"


@contextlib.contextmanager
def patch_pngs(database_path: str | Path) -> Iterator[Callable[[list[int]], pl.DataFrame]]:
    """``load(neuron_ids)`` -> those neurons' ``(neuron_id, rank, png)`` rows, for
    :func:`carto_viz.sprites.pack_patches`, while the block runs (one connection, one thread).

    ``neuron_ids`` are best given as a run of ascending ids: the query reads the table's rows
    between the smallest and the largest (the table is stored in neuron order).
    """
    with attached_store(database_path, PATCH_READER_MEMORY_LIMIT) as con:

        def load(neuron_ids: list[int]) -> pl.DataFrame:
            rows = con.sql(
                "SELECT neuron_id, rank, png FROM example_patches "
                "WHERE neuron_id BETWEEN $lo AND $hi",
                params={"lo": min(neuron_ids), "hi": max(neuron_ids)},
            ).pl()
            return rows.filter(pl.col("neuron_id").is_in(neuron_ids))

        yield load


def check_tables(present: set[str] | Mapping[str, object]) -> None:
    """Raise ``ValueError`` naming the assets to materialize when tables are missing."""
    missing = [name for name in REQUIRED_TABLES if name not in present]
    if missing:
        assets = sorted({schema.table(name).asset for name in missing})
        raise ValueError(
            f"missing table(s) {', '.join(missing)}: materialize the asset(s) "
            f"{', '.join(assets)} first"
        )


def layer_kinds(neurons: pl.DataFrame) -> dict[str, str]:
    """Each layer's kind of unit (``channel`` or ``feature``), from ``neurons``.

    A table without ``kind`` (older databases) holds channels only.

    Raises
    ------
    ValueError
        If a kind is not one of :data:`KINDS`, or a layer mixes kinds (feature units live in
        their own pseudo-layer ``<layer>:features``).
    """
    if "kind" not in neurons.columns:
        return dict.fromkeys(neurons["layer"].unique().to_list(), "channel")
    unknown = sorted(set(neurons["kind"].unique().to_list()) - set(KINDS))
    if unknown:
        raise ValueError(f"neurons.kind holds {unknown}; valid kinds are {list(KINDS)}")
    per_layer = neurons.group_by("layer").agg(pl.col("kind").unique().sort())
    mixed = [
        f"{layer!r} ({', '.join(kinds)})"
        for layer, kinds in per_layer.iter_rows()
        if len(kinds) > 1
    ]
    if mixed:
        raise ValueError(
            f"layer(s) {', '.join(sorted(mixed))} mix kinds of unit; feature units belong in "
            "their own pseudo-layer '<layer>:features'"
        )
    return {layer: kinds[0] for layer, kinds in per_layer.iter_rows()}


def unit_label(kind: str, channel: int | None, layer: str) -> str:
    """How a unit is named everywhere on the page: ``"channel 5 · block3"``,
    ``"feature 17 · block3:features"`` (``channel`` is the feature's index in its dictionary)."""
    index = "" if channel is None else f" {int(channel)}"
    return f"{kind}{index} · {layer}"


def bar_list(values: list) -> str:
    """``[3, 7] -> "|3|7|"``: a membership string tested with ``indexof`` in Vega.

    An empty list gives ``"|"`` (never ``""``, which Vega-Lite may parse as null).
    """
    return "|" + "".join(f"{int(v)}|" for v in values)


@dataclass(frozen=True)
class ViewData:
    """The datasets of the page (records ready for JSON), and a few facts about them.

    ``graphs`` maps a class label to that class's graph in the page's compact form
    (:class:`carto_viz.class_graphs.ClassGraphs`; ``graphs.records(label)`` gives the full records);
    the page loads them per class. ``kinds`` are the kinds of unit the study holds, in
    :data:`KINDS` order.
    """

    neurons: list[dict]
    graphs: ClassGraphs
    graph_rows: list[dict]
    classes: list[dict]
    layers: list[str]
    max_columns: int
    summary: dict
    kinds: tuple[str, ...] = ("channel",)
    #: every graph node's cluster once (see :class:`carto_viz.class_graphs.GraphData`)
    graph_clusters: Mapping[str, list] = field(default_factory=dict)
    #: the explained images (:mod:`carto_viz.explained_images`), None where the study has none
    explained: images.Explained | None = None
    #: whether the study has words (:mod:`carto_viz.words`): the scorecard and word search
    has_words: bool = False
    #: with words: each graph node cluster's classes (``str(cluster) -> encode_ids(labels)``),
    #: so that the word search names the classes whose graphs use the clusters it found
    cluster_classes: Mapping[str, str] = field(default_factory=dict)
    #: what each class relies on (:mod:`carto_viz.audit`), None where the study has no audit
    audit: class_audit.Audit | None = None

    @property
    def has_features(self) -> bool:
        """Whether the page offers the channels / features / both toggle."""
        return len(self.kinds) > 1


def neuron_records(tables: Mapping[str, pl.DataFrame]) -> list[dict]:
    """One record per neuron: position, layer, kind, cluster and its label, neighbours, patches,
    and, where the study has words (:mod:`carto_viz.words`), its unit's and its cluster's.

    ``unit`` names the unit with its kind and its layer's short name (:func:`unit_label`,
    :func:`layer_short_names`); ``neighbors`` lists the
    neuron's nearest neighbours in rank order (a :func:`bar_list`); ``n_patches`` how many
    example patches it has.
    """
    neurons = (
        neurons_with_kind(tables)
        .join(tables["neuron_projection"], on="neuron_id", how="inner")
        .join(tables["neuron_clusters"].select("neuron_id", "cluster_id"), on="neuron_id")
        .join(
            tables["clusters"].select(
                "cluster_id", pl.col("label").alias("cluster_label"), pl.col("size")
            ),
            on="cluster_id",
            how="left",
        )
    )
    neighbors = (
        tables["neuron_neighbors"]
        .sort("neuron_id", "rank")
        .group_by("neuron_id", maintain_order=True)
        .agg(pl.col("neighbor_id").alias("neighbors"))
    )
    n_patches = tables["example_patches"].group_by("neuron_id").agg(pl.len().alias("n_patches"))
    neurons = (
        neurons.join(neighbors, on="neuron_id", how="left")
        .join(n_patches, on="neuron_id", how="left")
        .sort("neuron_id")
    )
    worded = words.has_words(tables)
    if worded:
        neurons = neurons.join(
            words.cluster_captions(tables).rename(
                {"words": "cluster_words", "words_auc": "cluster_words_auc"}
            ),
            on="cluster_id",
            how="left",
        ).join(
            tables["unit_labels"].select("neuron_id", *words.UNIT_FIELDS.values()),
            on="neuron_id",
            how="left",
        )
    records = []
    # Units are named by their layer's distinguishing end; the full name is in ``layer``.
    short = layer_short_names(neurons["layer"].unique().to_list())
    for row in neurons.iter_rows(named=True):
        label = row["cluster_label"] or ""
        record = {
            "neuron_id": int(row["neuron_id"]),
            "layer": row["layer"],
            "layer_index": int(row["layer_index"]),
            "kind": row["kind"],
            "unit": unit_label(row["kind"], row["channel"], short[row["layer"]]),
            "cluster_id": int(row["cluster_id"]),
            "cluster_label": label,
            "cluster_short": short_label(label),
            "cluster_size": int(row["size"] or 1),
            "x": round(float(row["x"]), 4),
            "y": round(float(row["y"]), 4),
            "neighbors": bar_list(row["neighbors"] or []),
            "n_patches": int(row["n_patches"] or 0),
        }
        if worded:
            # The cluster is named by its words (never the top images' leading term).
            named = row["caption"] or words.NO_WORD
            record.update(
                cluster_label=named,
                cluster_short=named,
                cluster_words=row["cluster_words"],
                # NaN (a constant pooled activation) is not JSON: null, as a missing value
                cluster_words_auc=words.rounded(row["cluster_words_auc"]),
                **words.unit_fields(row),
            )
        records.append(record)
    return records


def view_data(
    tables: Mapping[str, pl.DataFrame], study_info: Mapping[str, object] | None = None
) -> ViewData:
    """All datasets of the page except the patches (see :mod:`carto_viz.sprites`)."""
    check_tables(tables)
    kinds = layer_kinds(neurons_with_kind(tables))
    graph = graph_records(tables, kinds)
    classes = [
        {"label": int(label), "name": str(name), "graph": int(label) in graph.graphs}
        for label, name in tables["images"].select("label", "label_name").sort("label").iter_rows()
    ]
    audit = class_audit.audit_data(tables)
    summary = study_summary(tables, study_info)
    if audit and not any(q["asset"] == "class_audit" for q in summary["quality"]):
        summary["quality"].append(class_audit.header_figure(audit))
    layers = [
        str(name)
        for name, _ in tables["neurons"]
        .select("layer", "layer_index")
        .unique()
        .sort("layer_index")
        .iter_rows()
    ]
    return ViewData(
        neurons=neuron_records(tables),
        graphs=graph.graphs,
        graph_rows=graph.rows,
        classes=classes,
        layers=layers,
        max_columns=graph.max_columns,
        summary=summary,
        kinds=tuple(kind for kind in KINDS if kind in set(kinds.values())),
        graph_clusters=graph.clusters,
        explained=images.explained(tables, graph.rows),
        has_words=words.has_words(tables),
        cluster_classes={
            str(cluster): encode_ids(labels)
            for cluster, labels in words.cluster_classes(tables).items()
        }
        if words.has_words(tables)
        else {},
        audit=audit,
    )
