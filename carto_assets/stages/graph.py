"""Example patches and the per-class concept graph (nodes, influence edges, cascades).

No dagster imports. The model and images come through the same loading code as the
activation pass, so patches are cut from exactly the pixels the model saw.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from scipy.stats import spearmanr

from carto_assets import schema
from carto_assets.core.attribution.ablation import ablation_faithfulness, sample_edges
from carto_assets.core.attribution.cascades import concept_cascades
from carto_assets.core.attribution.features import FeatureSpec, graph_pairs
from carto_assets.core.attribution.influence import influence_edges
from carto_assets.core.network.patches import crop_patches, patch_boxes, receptive_field
from carto_assets.memory import release_memory
from carto_assets.quality import Figure
from carto_assets.sharding import chunk_labels, n_class_chunks
from carto_assets.stages.features import feature_layers, source_layer
from carto_assets.stages.manifest import load_manifest, source_for_manifest
from carto_assets.stages.model import load_model
from carto_assets.storage import CartoStore, sql_path_list, write_parquet_atomic
from carto_assets.study import Study


# ---- example patches ------------------------------------------------------------------------
@dataclass(frozen=True)
class PatchParts:
    """Where :func:`example_patches` wrote its rows, and what the metadata shows."""

    #: Parquet part files holding the ``example_patches`` rows
    parts: list[Path]
    #: layer -> ``{"receptive_field_px", "truncated"}``
    receptive_fields: dict[str, dict[str, Any]]
    n_images_loaded: int


#: Patches encoded and written per Parquet part (64 px PNGs: about 12 kB each, ~50 MB a part).
PATCH_ROWS = 4096


def example_patches(study: Study, store: CartoStore, progress=None) -> PatchParts:
    """``example_patches(neuron_id, rank, image_id, png)``: each neuron's top images cropped
    around the argmax cell, with a window as large as the layer's receptive field.

    Returns the Parquet part files holding the rows (one per chunk of images, under
    ``example_patches/`` of the study's files) and information for the metadata. The PNGs are
    written a chunk at a time and never held together in memory (googlenet's 49k patches of
    a noisy image set are ~0.6 GB, and each in-memory copy on the way to DuckDB added that
    much); :func:`patches_select` loads the parts into the table in SQL.
    """
    say = progress or (lambda m: None)
    images, class_names = load_manifest(study)
    bundle, layers, _ = load_model(study)
    source = source_for_manifest(study, images, class_names)
    m = study.graph.patches_per_neuron
    top = store.query(
        "SELECT t.neuron_id, t.rank, t.image_id, t.y, t.x, n.layer, n.map_height, n.map_width "
        f"FROM top_images t JOIN neurons n USING (neuron_id) WHERE t.rank <= {int(m)} "
        "ORDER BY t.neuron_id, t.rank"
    )
    fields: dict[str, Any] = {}
    infos = {info.name: info for info in layers}
    for info in layers:
        if info.output_shape is not None and len(info.output_shape) == 3:
            fields[info.name] = receptive_field(bundle.module, info.name, bundle.input_size)
    # Measuring a deep layer's field backpropagates through a float64 copy of the model on a
    # canvas up to twice the input size (googlenet: +0.4 GB); give that back before the crops.
    release_memory()
    # Boxes first (they need no pixels), then images a chunk at a time: memory stays
    # O(chunk), not O(images with patches) (62k ImageNet images for googlenet's 9 per neuron).
    boxed = []
    for layer, group in top.group_by("layer", maintain_order=True):
        mapped = source_layer(layer[0])  # features are cropped with their source layer's field
        boxes = _layer_boxes(infos[mapped], fields.get(mapped), group, bundle.input_size)
        boxed.append(
            group.select("neuron_id", "rank", "image_id").with_columns(
                top=pl.Series(boxes[:, 0], dtype=pl.Int32),
                left=pl.Series(boxes[:, 1], dtype=pl.Int32),
                bottom=pl.Series(boxes[:, 2], dtype=pl.Int32),
                right=pl.Series(boxes[:, 3], dtype=pl.Int32),
            )
        )
    rows = pl.concat(boxed)
    wanted = np.unique(rows["image_id"].to_numpy())
    say(f"loading {len(wanted)} images for {len(rows)} patches")
    parts: list[Path] = []
    out = study.files_dir / "example_patches"
    shutil.rmtree(out, ignore_errors=True)
    n_loaded = 0
    for lo in range(0, len(wanted), 256):
        ids = wanted[lo : lo + 256]
        batch, ok = source.load_many(ids.tolist(), workers=4)
        pixels = {int(i): img for i, img in zip(ids[ok], batch)}
        n_loaded += len(pixels)
        chunk = rows.filter(pl.col("image_id").is_in(list(pixels)))
        # A few images can hold most patches (200 images, 49k patches of 5,488 neurons): the
        # PNGs are encoded and written PATCH_ROWS at a time, so memory is bounded either way.
        for start in range(0, len(chunk), PATCH_ROWS):
            piece = chunk.slice(start, PATCH_ROWS)
            boxes = piece.select("top", "left", "bottom", "right").to_numpy()
            pngs = crop_patches(
                pixels, piece["image_id"].to_numpy(), boxes, out_size=study.graph.patch_size
            )
            part = piece.with_columns(png=pl.Series(pngs, dtype=pl.Binary))
            parts.append(write_parquet_atomic(part, out / f"part-{len(parts):05d}.parquet"))
            del pngs, part
        del batch, pixels, chunk
        release_memory()  # the images were decoded in loader threads, each with its own heap
    if not parts:  # no rows: one empty part keeps the table's columns
        empty = rows.head(0).with_columns(png=pl.Series([], dtype=pl.Binary))
        parts.append(write_parquet_atomic(empty, out / "part-00000.parquet"))
    rf_table = {
        n: {"receptive_field_px": f.size_px, "truncated": f.truncated} for n, f in fields.items()
    }
    for n in infos.keys() - fields.keys():
        rf_table[n] = {"receptive_field_px": bundle.input_size, "truncated": True}
    return PatchParts(parts, rf_table, n_loaded)


def publish_patches(store: CartoStore, written: PatchParts) -> None:
    """Load :func:`example_patches`' part files into the ``example_patches`` table (in SQL: the
    PNGs never sit in this process all at once), then remove them."""
    store.replace_tables({"example_patches": patches_select(written.parts)})
    for part in written.parts:
        part.unlink()


def patches_select(parts: list[Path]) -> str:
    """The SELECT that loads :func:`example_patches`' part files as the table, ordered."""
    return (
        "SELECT neuron_id::BIGINT AS neuron_id, rank::INTEGER AS rank, "
        'image_id::BIGINT AS image_id, top::INTEGER AS top, "left"::INTEGER AS "left", '
        'bottom::INTEGER AS bottom, "right"::INTEGER AS "right", png::BLOB AS png '
        f"FROM read_parquet({sql_path_list(parts)}) ORDER BY neuron_id, rank"
    )


def _layer_boxes(info, rf, group: pl.DataFrame, input_size: int) -> np.ndarray:
    """Crops for one layer's rows: around the argmax cell, sized by the receptive field.

    Token layers (ViT) see the whole image; their argmax token still says where the neuron
    responded, so a patch token is cropped around its patch (a quarter of the image) and the
    class token, like a vector output, gets the whole image.
    """
    ys, xs = group["y"].to_numpy(), group["x"].to_numpy()
    if rf is not None:
        return patch_boxes(
            ys,
            xs,
            int(group["map_height"][0]),
            int(group["map_width"][0]),
            input_size,
            rf.size_px,
            min_fraction=0.25,
            offset_px=rf.offset_px,
        )
    whole = np.tile(np.array([0, 0, input_size, input_size], dtype=np.int64), (len(ys), 1))
    grid = info.token_grid
    if grid is None:
        return whole
    extra = info.output_shape[0] - grid[0] * grid[1]  # 1 with a class token first
    patch = ys - extra
    on_grid = patch >= 0
    if on_grid.any():
        rows, cols = np.divmod(patch[on_grid], grid[1])
        whole[on_grid] = patch_boxes(rows, cols, grid[0], grid[1], input_size, 0, min_fraction=0.25)
    return whole


# ---- concept graph --------------------------------------------------------------------------
def graph_nodes(study: Study, store: CartoStore) -> pl.DataFrame:
    """``concept_graph_nodes(label, cluster_id, layer, importance, ...)``.

    Per class and layer, the class's most important neurons (the top ``top_neuron_fraction`` of
    the layer by class_importance score) are mapped to their clusters; a cluster's importance is
    the sum of those members' scores; the ``nodes_per_layer`` most important clusters are kept.
    """
    g = study.graph
    return store.query(f"""
        WITH ranked AS (
            SELECT ci.label, ci.neuron_id, ci.score, n.layer, n.layer_index, nc.cluster_id,
                   row_number() OVER (PARTITION BY ci.label, n.layer
                                      ORDER BY ci.score DESC, ci.neuron_id) AS r,
                   count(*) OVER (PARTITION BY ci.label, n.layer) AS layer_size
            FROM class_importance ci
            JOIN neurons n USING (neuron_id)
            JOIN neuron_clusters nc USING (neuron_id)
        ), top AS (
            SELECT * FROM ranked
            WHERE r <= greatest(1, ceil(layer_size * {float(g.top_neuron_fraction)})) AND score > 0
        ), nodes AS (
            SELECT label, cluster_id, layer, any_value(layer_index) AS layer_index,
                   sum(score) AS importance, count(*) AS important_members
            FROM top GROUP BY label, cluster_id, layer
        )
        SELECT label::INTEGER AS label, cluster_id::BIGINT AS cluster_id, layer,
               layer_index::INTEGER AS layer_index, importance::DOUBLE AS importance,
               important_members::INTEGER AS important_members
        FROM nodes
        QUALIFY row_number() OVER (PARTITION BY label, layer
                                   ORDER BY importance DESC, cluster_id) <= {int(g.nodes_per_layer)}
        ORDER BY label, layer_index, importance DESC, cluster_id
    """)


def class_images(study: Study, label: int, images: pl.DataFrame, source, bundle) -> torch.Tensor:
    """Up to ``images_per_class`` images of the class (seeded sample), normalized."""
    ids = images.filter(pl.col("label") == label)["image_id"].to_numpy()
    rng = np.random.default_rng([study.seed, label])
    pick = np.sort(rng.choice(ids, size=min(len(ids), study.graph.images_per_class), replace=False))
    pixels, _ = source.load_many(pick.tolist(), workers=4)
    return bundle.normalize(torch.from_numpy(pixels))


@dataclass(frozen=True)
class GraphChunk:
    """The concept graph's per-class work for one chunk of classes."""

    labels: list[int]
    #: ``concept_graph_edges`` rows of these classes
    edges: pl.DataFrame
    #: ``concept_cascades`` rows of these classes
    cascades: pl.DataFrame
    #: ablation effects of the sampled edges, with their ``label``
    faithfulness: pl.DataFrame
    #: (lower, upper) layer pairs where the upper layer does not depend on the lower one
    no_dependency: list[tuple[str, str]]
    prediction_edges: bool
    n_classes_computed: int
    seconds: float


@dataclass(frozen=True)
class ConceptGraph:
    """The concept graph's tables for every class, merged from the chunks."""

    nodes: pl.DataFrame
    edges: pl.DataFrame
    cascades: pl.DataFrame
    faithfulness: pl.DataFrame
    #: Spearman rank correlation of edge weight with ablation drop (NaN under 3 edges)
    spearman_rho: float
    no_dependency: list[tuple[str, str]]
    prediction_edges: bool
    seconds: float
    chunks: int
    seconds_per_class: float


# ---- class chunks: the per-class work, partitioned --------------------------------------------
def graph_chunk_dir(study: Study, key: str) -> Path:
    return study.files_dir / "concept_graph" / key


def concept_graph_chunk(
    study: Study, store: CartoStore, labels: list[int], progress=None
) -> GraphChunk:
    """Influence edges, cascades and ablation effects for the classes ``labels``.

    Reads the database only (``neuron_clusters``, ``class_importance``), so chunks run in
    parallel processes. Every class's work depends on the class alone (its own seeded image
    sample and faithfulness sample), so any split into chunks gives the same tables.

    With dictionary features (:func:`~carto_assets.stages.features.feature_layers`), their
    pseudo-layers are units beside the channel layers: the channel layers keep their chain (the
    graph of a study without features), the feature layers form a second one
    (:func:`~carto_assets.core.attribution.features.graph_pairs`), and cascades stay in their
    root's chain.
    """
    say = progress or (lambda m: None)
    start = time.perf_counter()
    images, class_names = load_manifest(study)
    bundle, layers, _ = load_model(study)
    model = bundle.module.eval()
    source = source_for_manifest(study, images, class_names)
    layer_names = [i.name for i in layers]
    features = {f.name: FeatureSpec.from_sae(f.source, f.sae) for f in feature_layers(study)}
    units = layer_names + list(features)
    chains = {name: "features" if name in features else "channels" for name in units}
    nc = store.query(
        "SELECT n.layer, n.channel, nc.cluster_id FROM neuron_clusters nc "
        "JOIN neurons n USING (neuron_id) ORDER BY n.layer_index, n.channel"
    )
    cluster_of = {
        name: nc.filter(pl.col("layer") == name)["cluster_id"].to_numpy() for name in layer_names
    }
    for name, spec in features.items():
        # One entry per feature; one the clustering left out (none should be) is unclustered.
        rows = nc.filter(pl.col("layer") == name)
        ids = np.full(spec.n_features, -1, dtype=np.int64)
        ids[rows["channel"].to_numpy()] = rows["cluster_id"].to_numpy()
        cluster_of[name] = ids
    nodes = graph_nodes(study, store)
    # Prediction edges need the model's outputs to be the study's classes: true for the
    # built-in model trained on them; for other models only when the head has that many classes.
    n_out = _n_outputs(model, bundle.input_size)
    predict = study.is_builtin_model or n_out == len(class_names)
    pairs = graph_pairs(layer_names, features, prediction=predict)
    uppers = list(dict.fromkeys(upper for _, upper in pairs if upper != schema.PREDICTION))
    edge_parts, cascade_parts, effects = [], [], []
    no_dependency: set[tuple[str, str]] = set()
    present = sorted(set(images["label"].to_list()))
    todo = [label for label in labels if label in set(present)]
    faith_budget = study.graph.faithfulness_edges
    share = max(1, faith_budget // max(1, len(present)))
    for k, label in enumerate(todo):
        # Nodes of layers the graph does not cover (features of dictionaries the study no
        # longer maps) are left out.
        class_nodes = nodes.filter((pl.col("label") == label) & pl.col("layer").is_in(units))
        if len(class_nodes) == 0:
            continue
        x = class_images(study, label, images, source, bundle)
        if len(x) == 0:
            continue
        upper = {
            name: class_nodes.filter(pl.col("layer") == name)["cluster_id"].to_list()
            for name in uppers
        }
        result = influence_edges(
            model,
            units,
            cluster_of,
            x,
            class_index=label,
            upper_clusters=upper,
            features=features,
            pairs=pairs,
            include_prediction=predict,
        )
        no_dependency.update(tuple(p) for p in result.no_dependency)
        edges = pl.DataFrame({k2: np.asarray(v) for k2, v in result.edges.items()})
        node_keys = set(zip(class_nodes["layer"].to_list(), class_nodes["cluster_id"].to_list()))
        if len(edges):
            keep = [
                (sl, sc) in node_keys
                for sl, sc in zip(
                    edges["source_layer"].to_list(), edges["source_cluster"].to_list()
                )
            ]
            edges = edges.filter(pl.Series(keep))
        if len(edges):
            edge_parts.append(edges.with_columns(label=pl.lit(label, dtype=pl.Int32)))
            casc = concept_cascades(
                list(zip(class_nodes["layer"].to_list(), class_nodes["cluster_id"].to_list())),
                {c: edges[c].to_numpy() for c in edges.columns},
                chains,
            )
            cdf = pl.DataFrame({c: np.asarray(v) for c, v in casc.items()})
            if len(cdf):
                cascade_parts.append(cdf.with_columns(label=pl.lit(label, dtype=pl.Int32)))
            if faith_budget > 0:
                # Seeded per class, so the sample does not depend on the chunking.
                sample = sample_edges(
                    {c: edges[c].to_numpy() for c in edges.columns},
                    share,
                    seed=int(np.random.default_rng([study.seed, label]).integers(2**31)),
                )
                _, eff = ablation_faithfulness(
                    model,
                    units,
                    cluster_of,
                    x,
                    sample,
                    features=features,
                    class_index=label if predict else None,
                )
                effects.append(
                    pl.DataFrame({c: np.asarray(v) for c, v in eff.items()}).with_columns(
                        label=pl.lit(label, dtype=pl.Int32)
                    )
                )
        say(
            f"class {class_names[label]} ({k + 1}/{len(todo)}): "
            f"{len(class_nodes)} nodes, {len(edges)} edges"
        )
        # The class's autograd graph was freed into malloc's heap (tensors under its mmap
        # threshold); return it, or the next classes' allocations fragment on top of it.
        release_memory()
    return GraphChunk(
        labels=list(labels),
        edges=_edge_table(edge_parts),
        cascades=_cascade_table(cascade_parts),
        faithfulness=pl.concat(effects, how="diagonal_relaxed") if effects else pl.DataFrame(),
        no_dependency=sorted(no_dependency),
        prediction_edges=predict,
        n_classes_computed=len(todo),
        seconds=time.perf_counter() - start,
    )


_CHUNK_TABLES = ("edges", "cascades", "faithfulness")


def write_graph_chunk(study: Study, key: str, chunk: GraphChunk) -> Path:
    """One chunk's tables as Parquet under ``concept_graph/<key>/``, ``summary.json`` last
    (the activation shards' convention: a chunk with a summary is complete)."""
    out = graph_chunk_dir(study, key)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)
    for name in _CHUNK_TABLES:
        write_parquet_atomic(getattr(chunk, name), out / f"{name}.parquet")
    summary = {
        "key": key,
        "labels": chunk.labels,
        "no_dependency": [list(p) for p in chunk.no_dependency],
        "prediction_edges": chunk.prediction_edges,
        "n_classes_computed": chunk.n_classes_computed,
        "seconds": chunk.seconds,
    }
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary))
    tmp.replace(out / "summary.json")
    return out


def read_graph_chunk(study: Study, key: str) -> GraphChunk:
    out = graph_chunk_dir(study, key)
    if not (out / "summary.json").is_file():
        raise FileNotFoundError(
            f"class chunk {key} has no results under {out}; materialize the "
            f"concept_graph_chunk partition {key} first"
        )
    summary = json.loads((out / "summary.json").read_text())
    return GraphChunk(
        labels=summary["labels"],
        **{name: pl.read_parquet(out / f"{name}.parquet") for name in _CHUNK_TABLES},
        no_dependency=[tuple(p) for p in summary["no_dependency"]],
        prediction_edges=summary["prediction_edges"],
        n_classes_computed=summary["n_classes_computed"],
        seconds=summary["seconds"],
    )


def merge_graph_chunks(study: Study, store: CartoStore, chunks: list[GraphChunk]) -> ConceptGraph:
    """The concept graph's tables from every chunk: nodes, edges, cascades, faithfulness."""
    n_classes = len(load_manifest(study)[1])
    covered = sorted(label for c in chunks for label in c.labels)
    if covered != list(range(n_classes)):
        missing = sorted(set(range(n_classes)) - set(covered))
        raise ValueError(
            f"the class chunks do not cover the study's {n_classes} classes exactly "
            f"(missing {missing[:10]}, {len(covered)} labels in {len(chunks)} chunks); "
            "re-materialize every concept_graph_chunk partition"
        )
    edges = _edge_table([c.edges for c in chunks if len(c.edges)])
    cascades = _cascade_table([c.cascades for c in chunks if len(c.cascades)])
    faith_parts = [c.faithfulness for c in chunks if len(c.faithfulness)]
    faith = pl.DataFrame()
    if faith_parts:
        faith = pl.concat(faith_parts, how="diagonal_relaxed")
        faith = faith.sort("label", maintain_order=True).drop("label")
    rho = float("nan")
    if len(faith) >= 3:
        rho = float(spearmanr(faith["weight"].to_numpy(), faith["drop"].to_numpy()).statistic)
    seconds = float(sum(c.seconds for c in chunks))
    computed = sum(c.n_classes_computed for c in chunks)
    return ConceptGraph(
        nodes=graph_nodes(study, store),
        edges=edges,
        cascades=cascades,
        faithfulness=faith,
        spearman_rho=rho,
        no_dependency=sorted({p for c in chunks for p in c.no_dependency}),
        prediction_edges=any(c.prediction_edges for c in chunks),
        seconds=seconds,
        chunks=len(chunks),
        seconds_per_class=seconds / max(1, computed),
    )


def graph_figures(graph: ConceptGraph) -> list[Figure]:
    """The concept graph's figures for ``study_quality``: edge faithfulness."""
    rho, n = graph.spearman_rho, len(graph.faithfulness)
    return [
        Figure(
            "faithfulness_spearman_rho",
            rho,
            "Spearman rank correlation between the sampled edges' weights and the drop of their "
            "target when their source cluster is ablated",
            # Under 3 ablated edges there is no correlation to show.
            name="edge faithfulness" if rho == rho else "",
            shown=f"Spearman ρ {rho:.2f} between edge weight and ablation drop ({n} edges)",
        ),
        Figure("faithfulness_edges_ablated", n, "edges whose source cluster was ablated"),
    ]


def concept_graph(
    study: Study, store: CartoStore, progress=None, classes_per_chunk: int | None = None
) -> ConceptGraph:
    """Nodes, influence edges, cascades and the ablation faithfulness check, for every class,
    all chunks in this process (what the partitioned assets compute across processes)."""
    n_classes = len(load_manifest(study)[1])
    per = classes_per_chunk or study.graph.classes_per_chunk
    chunks = [
        concept_graph_chunk(study, store, chunk_labels(i, n_classes, per), progress)
        for i in range(n_class_chunks(n_classes, per))
    ]
    return merge_graph_chunks(study, store, chunks)


def _n_outputs(model: torch.nn.Module, size: int) -> int:
    with torch.no_grad():
        out = model(torch.zeros(1, 3, size, size))
    return int(out.shape[-1]) if isinstance(out, torch.Tensor) else -1


def _typed_concat(parts: list[pl.DataFrame], table: str) -> pl.DataFrame:
    """Per-class frames stacked as the declared table (an empty table keeps its columns)."""
    columns = schema.polars_schema(table)
    if not parts:
        return pl.DataFrame(schema=columns)
    df = pl.concat(parts, how="diagonal_relaxed")
    return df.select([pl.col(c).cast(t) for c, t in columns.items()])


def _edge_table(parts: list[pl.DataFrame]) -> pl.DataFrame:
    return _typed_concat(parts, "concept_graph_edges").sort(
        "label", "target_layer", "target_cluster", "weight", descending=[False, False, False, True]
    )


def _cascade_table(parts: list[pl.DataFrame]) -> pl.DataFrame:
    return _typed_concat(parts, "concept_cascades").sort(
        "label", "root_cluster", "direction", "depth"
    )
