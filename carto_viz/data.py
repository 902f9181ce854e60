"""Load the study's tables and shape them into the small datasets the linked views need.

Everything here is pure data work (DuckDB + polars); no charting and no Dagster.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from carto_assets import quality, schema
from carto_assets.schema import PREDICTION, PREDICTION_CLUSTER
from carto_assets.storage import DEFAULT_MEMORY_LIMIT, CartoStore
from carto_viz.summary import neurons_with_kind, study_summary

#: tables the views need (the assets that write them come from carto_assets.schema).
REQUIRED_TABLES = (
    "images",
    "neurons",
    "neuron_clusters",
    "clusters",
    "class_importance",
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
    "class_importance": "SELECT label, neuron_id, score FROM class_importance WHERE score > 0",
    # The PNGs stay in the database: sprites.pack_patches reads them a sheet at a time.
    "example_patches": "SELECT neuron_id, rank FROM example_patches ORDER BY neuron_id, rank",
    "concept_graph_nodes": "SELECT label, cluster_id, layer, layer_index, importance "
    "FROM concept_graph_nodes",
    "concept_graph_edges": "SELECT label, source_layer, source_cluster, target_layer, "
    "target_cluster, weight FROM concept_graph_edges",
    "concept_cascades": "SELECT label, root_cluster, member_cluster, depth, direction "
    "FROM concept_cascades",
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
    with _attached(database_path, memory_limit) as con:
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
        return tables


#: DuckDB's memory limit while the patches are read a sheet at a time: DuckDB keeps the blocks
#: it read cached up to its limit, which by default held every PNG (+0.6 GB vs +0.25 GB for
#: packing 61,740 patches of real photographs, 440 MB of PNG).
PATCH_READER_MEMORY_LIMIT = "64MB"


@contextlib.contextmanager
def _attached(database_path: str | Path, memory_limit: str) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to the published study database (the store's own reader)."""
    path = Path(database_path)
    if not path.is_file():
        raise ValueError(f"database {str(path)!r} does not exist; materialize the assets first")
    with CartoStore(path, memory_limit=memory_limit).connect() as con:
        yield con


@contextlib.contextmanager
def patch_pngs(database_path: str | Path) -> Iterator[Callable[[list[int]], pl.DataFrame]]:
    """``load(neuron_ids)`` -> those neurons' ``(neuron_id, rank, png)`` rows, for
    :func:`carto_viz.sprites.pack_patches`, while the block runs (one connection, one thread).

    ``neuron_ids`` are best given as a run of ascending ids: the query reads the table's rows
    between the smallest and the largest (the table is stored in neuron order).
    """
    with _attached(database_path, PATCH_READER_MEMORY_LIMIT) as con:

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


def short_label(label: str | None) -> str:
    """The leading term of a cluster label: ``"colour=red (0.97), size=large" -> "colour=red"``."""
    if not label:
        return ""
    first = label.split(", ")[0]
    return re.sub(r"\s*\([0-9.]+\)$", "", first)


def bar_list(values: list) -> str:
    """``[3, 7] -> "|3|7|"``: a membership string tested with ``indexof`` in Vega.

    An empty list gives ``"|"`` (never ``""``, which Vega-Lite may parse as null).
    """
    return "|" + "".join(f"{int(v)}|" for v in values)


@dataclass(frozen=True)
class ViewData:
    """The datasets of the page (records ready for JSON), and a few facts about them.

    ``graphs`` maps a class label to that class's graph (``nodes`` and ``edges`` as columns,
    ``neurons``: the class's neurons as a :func:`bar_list`); the page loads them per class.
    ``kinds`` are the kinds of unit the study holds, in :data:`KINDS` order.
    """

    neurons: list[dict]
    graphs: Mapping[int, dict]
    graph_rows: list[dict]
    classes: list[dict]
    layers: list[str]
    max_columns: int
    summary: dict
    kinds: tuple[str, ...] = ("channel",)

    @property
    def has_features(self) -> bool:
        """Whether the page offers the channels / features / both toggle."""
        return len(self.kinds) > 1


def neuron_records(tables: Mapping[str, pl.DataFrame]) -> list[dict]:
    """One record per neuron: position, layer, kind, cluster and its label, neighbours, patches.

    ``unit`` names the unit with its kind (:func:`unit_label`); ``neighbors`` lists the
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
    records = []
    for row in neurons.iter_rows(named=True):
        label = row["cluster_label"] or ""
        records.append(
            {
                "neuron_id": int(row["neuron_id"]),
                "layer": row["layer"],
                "layer_index": int(row["layer_index"]),
                "kind": row["kind"],
                "unit": unit_label(row["kind"], row["channel"], row["layer"]),
                "cluster_id": int(row["cluster_id"]),
                "cluster_label": label,
                "cluster_short": short_label(label),
                "cluster_size": int(row["size"] or 1),
                "x": round(float(row["x"]), 4),
                "y": round(float(row["y"]), 4),
                "neighbors": bar_list(row["neighbors"] or []),
                "n_patches": int(row["n_patches"] or 0),
            }
        )
    return records


def _bar_strings(frame: pl.DataFrame, keys: list[str], value: str, name: str) -> pl.DataFrame:
    """Group ``frame`` by ``keys`` and join the sorted unique ``value`` as a :func:`bar_list`."""
    return frame.group_by(keys).agg(
        pl.format("|{}|", pl.col(value).unique().sort().cast(pl.Utf8).str.join("|")).alias(name)
    )


def _cascades(cascades: pl.DataFrame, classes_per_batch: int = 100) -> pl.DataFrame:
    """Each node's concept cascade as the Graph View tests it.

    Returns ``(label, cluster_id, cascade, cascade_edges)`` per root: ``cascade`` the chain's
    clusters as a :func:`bar_list` (the root included), ``cascade_edges`` its edges as
    ``|source-target|...``. A chain is the root followed by its members in depth order; each
    consecutive pair is an edge (lower, upper), reversed for chains that go toward the input.

    Classes are independent; they are done ``classes_per_batch`` at a time, so the string
    building's intermediates (+0.55 GB for 1,000 classes' 3.1M cascade rows) stay O(batch).
    """
    labels = cascades["label"].unique().sort().to_list()
    parts = [
        _class_cascades(cascades.filter(pl.col("label").is_in(labels[lo : lo + classes_per_batch])))
        for lo in range(0, len(labels), classes_per_batch)
    ]
    return pl.concat(parts) if parts else _class_cascades(cascades)


def _class_cascades(cascades: pl.DataFrame) -> pl.DataFrame:
    keys = ["label", "root_cluster", "direction"]
    chains = cascades.select(*keys, "depth", "member_cluster")
    roots = (
        chains.select(*keys)
        .unique()
        .with_columns(
            depth=pl.lit(0, chains.schema["depth"]), member_cluster=pl.col("root_cluster")
        )
    )
    path = (
        pl.concat([roots.select(chains.columns), chains])
        .sort(*keys, "depth")
        .with_columns(previous=pl.col("member_cluster").shift(1).over(keys))
    )
    down = pl.col("direction") == "down"
    step = pl.when(pl.col("previous").is_not_null()).then(
        pl.format(
            "{}-{}",
            pl.when(down).then("member_cluster").otherwise("previous"),
            pl.when(down).then("previous").otherwise("member_cluster"),
        )
    )
    return (
        path.with_columns(step=step)
        .group_by("label", "root_cluster")
        .agg(
            pl.format(
                "|{}|", pl.col("member_cluster").unique().sort().cast(pl.Utf8).str.join("|")
            ).alias("cascade"),
            pl.format("|{}|", pl.col("step").drop_nulls().unique().sort().str.join("|")).alias(
                "cascade_edges"
            ),
        )
        .rename({"root_cluster": "cluster_id"})
    )


def _class_neurons(tables: Mapping[str, pl.DataFrame], fraction: float) -> pl.DataFrame:
    """Per class, the neurons the projection's class filter shows: the members of the class's
    graph nodes and the top ``fraction`` of all neurons by ``class_importance.score`` (> 0).
    Returns ``(label, neurons)`` with ``neurons`` a bar list."""
    scores = tables["class_importance"].filter(pl.col("score") > 0)
    n_top = max(1, round(fraction * tables["neurons"].height))
    top = (
        scores.group_by("label")
        .agg(pl.col("neuron_id").top_k_by(["score", "neuron_id"], n_top, reverse=[False, True]))
        .explode("neuron_id")
    )
    members = (
        tables["concept_graph_nodes"]
        .select("label", "cluster_id")
        .join(tables["neuron_clusters"].select("neuron_id", "cluster_id"), on="cluster_id")
        .select("label", "neuron_id")
    )
    both = pl.concat([top, members.cast(top.schema)])
    return _bar_strings(both, ["label"], "neuron_id", "neurons")


def _relative(value: str, top: str, default: float) -> pl.Expr:
    """``value / top`` rounded for the page, ``default`` where ``top`` is not positive."""
    return pl.when(pl.col(top) > 0).then(pl.col(value) / pl.col(top)).otherwise(default).round(4)


def _by_label(frame: pl.DataFrame) -> dict[int, pl.DataFrame]:
    """Split a frame by ``label`` into per-class frames (without the label column)."""
    if frame.height == 0:
        return {}
    parts = frame.partition_by("label", as_dict=True, include_key=False, maintain_order=True)
    return {int(key[0]): part for key, part in parts.items()}


class ClassGraphs(Mapping[int, dict]):
    """class label -> ``{"nodes": columns, "edges": columns, "neurons": bar list}``, each
    class's columns built when it is looked up.

    The page's graph chunks are encoded one class at a time; every class at once as Python
    lists took 0.6 GB at the paper's scale (1,000 classes), the same rows as polars frames a
    fraction of that.
    """

    def __init__(
        self,
        nodes: dict[int, pl.DataFrame],
        edges: dict[int, pl.DataFrame],
        neurons: dict[int, str],
    ) -> None:
        self._nodes, self._edges, self._neurons = nodes, edges, neurons
        self._labels = sorted(set(nodes) | set(neurons))
        self._known = set(self._labels)

    def __getitem__(self, label: int) -> dict:
        if label not in self._known:
            raise KeyError(label)
        nodes, edges = self._nodes.get(label), self._edges.get(label)
        return {
            "nodes": {} if nodes is None else nodes.to_dict(as_series=False),
            "edges": {} if edges is None else edges.to_dict(as_series=False),
            "neurons": self._neurons.get(label, "|"),
        }

    def __iter__(self) -> Iterator[int]:
        return iter(self._labels)

    def __len__(self) -> int:
        return len(self._labels)


def graph_records(
    tables: Mapping[str, pl.DataFrame], class_fraction: float = 0.1
) -> tuple[ClassGraphs, list[dict], int]:
    """Every class's concept graph laid out for the Graph View, and the row labels.

    Rows are layers (``row`` = layer_index, the prediction node one row above the last layer;
    feature pseudo-layers are rows like any other);
    within a row nodes are ordered by importance, strongest first, centred on 0 (``col``).
    ``strength`` (node) and ``weight_rel`` (edge) are relative to the class's maximum, so a
    single slider filters both. ``patch`` is the neuron whose rank-1 patch pictures the node:
    the member most important for the class. ``kind`` is the node's layer's kind of unit
    (:func:`layer_kinds`), ``prediction`` for the prediction node.

    Returns
    -------
    graphs
        class label -> ``{"nodes": columns, "edges": columns, "neurons": bar list}``.
    rows
        ``{row, name, kind}`` per layer, plus ``prediction`` (kind ``prediction``).
    max_columns
        The most nodes in one row of any class (the graph's width).
    """
    nodes = tables["concept_graph_nodes"]
    kinds = layer_kinds(neurons_with_kind(tables))
    cascades = _cascades(tables["concept_cascades"])
    clusters = tables["clusters"].select(
        "cluster_id", "size", pl.col("label").alias("cluster_label")
    )
    shorts = {label: short_label(label) for label in clusters["cluster_label"].unique().to_list()}
    clusters = clusters.with_columns(
        pl.col("cluster_label").fill_null(""),
        short=pl.col("cluster_label").replace_strict(shorts, default="", return_dtype=pl.Utf8),
    )
    scored = tables["neuron_clusters"].join(tables["class_importance"], on="neuron_id")
    top_member = (
        scored.sort("score", "neuron_id", descending=[True, False])
        .group_by("label", "cluster_id", maintain_order=True)
        .agg(pl.col("neuron_id").first().alias("top_member"))
    )
    first_member = (
        tables["neuron_clusters"]
        .group_by("cluster_id")
        .agg(pl.col("neuron_id").min().alias("first_member"))
    )
    patched = tables["example_patches"].filter(pl.col("rank") == 1)["neuron_id"].unique()
    top_row = int(tables["neurons"]["layer_index"].max() or 0) + 1
    int_type = nodes.schema["cluster_id"]

    laid_out = (
        nodes.with_columns(
            order=pl.struct((-pl.col("importance")).alias("i"), pl.col("cluster_id").alias("c"))
            .rank("ordinal")
            .over("label", "layer_index"),
            n=pl.len().over("label", "layer_index"),
            max_importance=pl.col("importance").max().over("label"),
        )
        .with_columns(col=(pl.col("order") - 1 - (pl.col("n") - 1) / 2).cast(pl.Float64))
        .join(clusters, on="cluster_id", how="left")
        .join(
            top_member.cast({"label": nodes.schema["label"]}),
            on=["label", "cluster_id"],
            how="left",
        )
        .join(first_member, on="cluster_id", how="left")
        .with_columns(patch=pl.coalesce("top_member", "first_member"))
        .with_columns(patch=pl.when(pl.col("patch").is_in(patched.to_list())).then("patch"))
        .select(
            "label",
            "cluster_id",
            "layer",
            pl.col("layer")
            .replace_strict(kinds, default="channel", return_dtype=pl.Utf8)
            .alias("kind"),
            pl.col("layer_index").cast(pl.Int64).alias("row"),
            "col",
            pl.col("importance").round(6),
            _relative("importance", "max_importance", 1.0).alias("strength"),
            pl.col("size").fill_null(0).cast(pl.Int64),
            "cluster_label",
            "short",
            "patch",
        )
    )
    max_columns = int(nodes.group_by("label", "layer_index").len()["len"].max() or 1)
    names = tables["images"].select(
        pl.col("label").cast(nodes.schema["label"]), pl.col("label_name").cast(pl.Utf8)
    )
    prediction = (
        nodes.select("label")
        .unique()
        .join(names, on="label", how="left")
        .select(
            "label",
            pl.lit(PREDICTION_CLUSTER, int_type).alias("cluster_id"),
            pl.lit(PREDICTION).alias("layer"),
            pl.lit(PREDICTION).alias("kind"),
            pl.lit(top_row, pl.Int64).alias("row"),
            pl.lit(0.0).alias("col"),
            pl.lit(None, pl.Float64).alias("importance"),
            pl.lit(1.0).alias("strength"),
            pl.lit(0, pl.Int64).alias("size"),
            pl.format("prediction: {}", pl.col("label_name").fill_null("")).alias("cluster_label"),
            pl.col("label_name").fill_null("").alias("short"),
            pl.lit(None, first_member.schema["first_member"]).alias("patch"),
        )
    )
    # A node that roots no cascade (the prediction node) lights up only itself.
    all_nodes = (
        pl.concat([laid_out, prediction.cast(laid_out.schema)])
        .join(
            cascades.cast({"label": nodes.schema["label"], "cluster_id": int_type}),
            on=["label", "cluster_id"],
            how="left",
        )
        .with_columns(
            cascade=pl.coalesce("cascade", pl.format("|{}|", pl.col("cluster_id"))),
            cascade_edges=pl.col("cascade_edges").fill_null("|"),
        )
        .sort("label", "row", "col")
    )
    edges = tables["concept_graph_edges"].with_columns(
        target_cluster=pl.when(pl.col("target_layer") == PREDICTION)
        .then(pl.lit(PREDICTION_CLUSTER, int_type))
        .otherwise(pl.col("target_cluster").cast(int_type))
    )
    ends = all_nodes.select("label", "cluster_id", "col", "row", "strength")
    edge_rows = (
        edges.join(
            ends.rename({"cluster_id": "source_cluster", "strength": "s1"}),
            on=["label", "source_cluster"],
        )
        .join(
            ends.rename(
                {"cluster_id": "target_cluster", "col": "col2", "row": "row2", "strength": "s2"}
            ),
            on=["label", "target_cluster"],
        )
        .with_columns(top=pl.col("weight").max().over("label"))
        .select(
            "label",
            "source_cluster",
            "target_cluster",
            "col",
            "row",
            "col2",
            "row2",
            pl.col("weight").round(6),
            _relative("weight", "top", 0.0).alias("weight_rel"),
            pl.min_horizontal("s1", "s2").alias("min_strength"),
        )
        .sort("label", "row", "col", "col2")
    )
    class_neurons = {
        int(label): neurons for label, neurons in _class_neurons(tables, class_fraction).iter_rows()
    }
    graphs = ClassGraphs(_by_label(all_nodes), _by_label(edge_rows), class_neurons)
    layer_rows = (
        tables["neurons"].select("layer", "layer_index").unique().sort("layer_index").iter_rows()
    )
    rows = [{"row": int(i), "name": name, "kind": kinds[name]} for name, i in layer_rows]
    rows.append({"row": top_row, "name": PREDICTION, "kind": PREDICTION})
    return graphs, rows, max_columns


def view_data(
    tables: Mapping[str, pl.DataFrame], study_info: Mapping[str, object] | None = None
) -> ViewData:
    """All datasets of the page except the patches (see :mod:`carto_viz.sprites`)."""
    check_tables(tables)
    present = set(layer_kinds(neurons_with_kind(tables)).values())
    graphs, rows, max_columns = graph_records(tables)
    classes = [
        {"label": int(label), "name": str(name), "graph": int(label) in graphs}
        for label, name in tables["images"].select("label", "label_name").sort("label").iter_rows()
    ]
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
        graphs=graphs,
        graph_rows=rows,
        classes=classes,
        layers=layers,
        max_columns=max_columns,
        summary=study_summary(tables, study_info),
        kinds=tuple(kind for kind in KINDS if kind in present),
    )
