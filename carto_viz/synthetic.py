"""A small synthetic study database with every table the views read (for tests and benchmarks)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
from PIL import Image

from carto_assets import schema
from carto_assets.schema import FEATURE_SUFFIX, PREDICTION
from carto_assets.storage import quality as study_quality
from carto_assets.storage.quality import Figure

#: class names that must stay text everywhere (quotes, markup, ampersands, non-ASCII).
HOSTILE_NAMES = (
    "<script>window.__xss=1</script>",
    '<img src=x onerror="window.__xss=1">',
    'it\'s "quoted" & <b>bold</b>',
    "Zürich café — 東京 🐕",
)


def _photo_pyramid() -> list[np.ndarray]:
    """Real photographs (scikit-learn's two sample images) at three scales."""
    from sklearn.datasets import load_sample_images

    levels = []
    for photo in load_sample_images().images:
        height, width = photo.shape[:2]
        for scale in (1.0, 0.6, 0.35):
            size = (int(width * scale), int(height * scale))
            levels.append(np.asarray(Image.fromarray(photo).resize(size, Image.BILINEAR)))
    return levels


def photo_patches(rng: np.random.Generator, n: int, size: int) -> list[bytes]:
    """``n`` distinct PNG patches: random crops of real photographs, so that compression is
    measured on natural-image detail rather than on flat colours."""
    levels = _photo_pyramid()
    out = []
    for i in range(n):
        level = levels[i % len(levels)]
        y = int(rng.integers(0, level.shape[0] - size))
        x = int(rng.integers(0, level.shape[1] - size))
        buffer = io.BytesIO()
        Image.fromarray(level[y : y + size, x : x + size]).save(
            buffer, format="PNG", compress_level=1
        )
        out.append(buffer.getvalue())
    return out


def _from_rows(table: str, rows: list[tuple]) -> pl.DataFrame:
    """A declared table from row tuples in its column order."""
    names = schema.column_names(table)
    return schema.frame(table, {name: [row[i] for row in rows] for i, name in enumerate(names)})


def make_database(
    path: str | Path,
    *,
    n_neurons: int = 45,
    layers: Sequence[str] = ("conv1", "conv2", "conv3"),
    class_names: Sequence[str] = ("cat", "dog", "bird"),
    cluster_labels: Sequence[str] | None = None,
    patches_per_neuron: int = 3,
    patch_size: int = 16,
    neighbors: int = 4,
    nodes_per_layer: int = 3,
    distinct_patches: int | None = 64,
    feature_layers: Sequence[str] = (),
    features_per_layer: int = 16,
    explained_per_class: int = 0,
    words: Sequence[str | None] = (),
    seed: int = 0,
) -> Path:
    """Write a synthetic study database with the tables :mod:`carto_viz` needs.

    ``n_neurons`` channels are split evenly over ``layers``; clusters hold 1-3 units; each
    class's graph takes the ``nodes_per_layer`` most important clusters of every layer.
    ``cluster_labels`` are cycled over the clusters (default ``"cluster <id>"``). Patches are
    crops of real photographs; ``distinct_patches`` of them are cycled over all patches
    (``None``: every patch distinct, as a real study, slower to generate). The quality tables
    (``cluster_quality``, ``concept_graph_faithfulness``) are filled with plausible figures.

    Each layer named in ``feature_layers`` also gets a dictionary of ``features_per_layer``
    feature units (``kind = 'feature'``), in a pseudo-layer ``<layer>:features`` placed right
    after it, with ids after all channels. Graph edges run from every layer to the next
    channel layer (or the prediction) and from a channel layer to its feature layer, so either
    kind alone still draws a connected graph where it can.

    ``words`` (formulas, ``None`` for "no word fits") are cycled over the units and, from the
    other end, over the clusters into ``unit_labels`` and ``cluster_labels``; without them the
    database has no words tables (as one written before them).
    """
    unknown = [name for name in feature_layers if name not in layers]
    if unknown:
        raise ValueError(f"feature_layers {unknown} are not among the layers {list(layers)}")
    rng = np.random.default_rng(seed)
    path = Path(path)
    # Graph rows in forward order: each layer, then its feature pseudo-layer if it has one.
    all_layers: list[str] = []
    is_feature: list[bool] = []
    for name in layers:
        all_layers.append(name)
        is_feature.append(False)
        if name in feature_layers:
            all_layers.append(name + FEATURE_SUFFIX)
            is_feature.append(True)
    n_layers = len(all_layers)
    channel_rows = [r for r in range(n_layers) if not is_feature[r]]
    feature_rows = [r for r in range(n_layers) if is_feature[r]]
    layer_of = np.arange(n_neurons) * len(layers) // n_neurons
    n_features = features_per_layer * len(feature_rows)
    n_units = n_neurons + n_features
    # Each unit's graph row (its layer_index): channels first, then the features.
    unit_row = np.concatenate(
        [
            np.asarray(channel_rows, np.int64)[layer_of],
            np.repeat(np.asarray(feature_rows, np.int64), features_per_layer),
        ]
    )
    channel = np.concatenate(
        [
            np.arange(n_neurons) - np.searchsorted(layer_of, layer_of),
            np.tile(np.arange(features_per_layer), len(feature_rows)),
        ]
    )
    neurons = schema.frame(
        "neurons",
        {
            "neuron_id": np.arange(n_units, dtype=np.int64),
            "layer": [all_layers[r] for r in unit_row],
            "layer_index": unit_row.astype(np.int32),
            "channel": channel.astype(np.int32),
            "map_height": np.full(n_units, 4, np.int32),
            "map_width": np.full(n_units, 4, np.int32),
            "kind": ["feature" if is_feature[r] else "channel" for r in unit_row],
        },
    )
    # Clusters: runs of 1-3 consecutive ids, never across a layer.
    run_end = np.append(np.flatnonzero(np.diff(unit_row)) + 1, n_units)
    cluster_of = np.zeros(n_units, np.int64)
    cluster = -1
    i = 0
    while i < n_units:
        cluster += 1
        take = int(rng.integers(1, 4))
        end = min(i + take, int(run_end[np.searchsorted(run_end, i, side="right")]))
        cluster_of[i:end] = cluster
        i = end
    n_clusters = cluster + 1
    first_unit = np.unique(cluster_of, return_index=True)[1]
    clusters_layer = [all_layers[unit_row[u]] for u in first_unit]
    labels = [
        cluster_labels[c % len(cluster_labels)] if cluster_labels else f"cluster {c}"
        for c in range(n_clusters)
    ]
    members = [np.flatnonzero(cluster_of == c).tolist() for c in range(n_clusters)]
    clusters = schema.frame(
        "clusters",
        {
            "cluster_id": np.arange(n_clusters, dtype=np.int64),
            "layer": clusters_layer,
            "size": np.array([len(m) for m in members], np.int32),
            "label": labels,
            "top_class": [class_names[c % len(class_names)] for c in range(n_clusters)],
            "top_class_fraction": np.full(n_clusters, 0.5),
            "mean_jaccard": np.ones(n_clusters),
            "members": members,
        },
    )
    neuron_clusters = schema.frame(
        "neuron_clusters",
        {"neuron_id": neurons["neuron_id"], "cluster_id": cluster_of, "layer": neurons["layer"]},
    )
    n_classes = len(class_names)
    images = schema.frame(
        "images",
        {
            "image_id": np.arange(n_classes * 2, dtype=np.int64),
            "shard": np.zeros(n_classes * 2, np.int32),
            "source": [f"synthetic:{i}" for i in range(n_classes * 2)],
            "label": np.repeat(np.arange(n_classes, dtype=np.int32), 2),
            "label_name": [class_names[i // 2] for i in range(n_classes * 2)],
        },
    )
    score = rng.random((n_classes, n_units)) * (rng.random((n_classes, n_units)) < 0.4)
    importance = schema.frame(
        "class_importance",
        {
            "label": np.repeat(np.arange(n_classes, dtype=np.int32), n_units),
            "neuron_id": np.tile(np.arange(n_units, dtype=np.int64), n_classes),
            "score": score.ravel(),
            "top_mass_count": (score.ravel() * 10).astype(np.int64),
            "n_images": np.full(n_classes * n_units, 10, np.int64),
            "mean_activation": score.ravel(),
        },
    )

    def next_channel_row(row: int) -> int | None:
        return next((r for r in channel_rows if r > row), None)

    def up_chain(row: int) -> list[int | None]:
        """The channel rows a cascade climbs through from ``row``, then the prediction."""
        chain: list[int | None] = []
        while (row := next_channel_row(row)) is not None:
            chain.append(row)
        return [*chain, None]

    candidates = [
        [c for c in range(n_clusters) if clusters_layer[c] == layer] for layer in all_layers
    ]
    node_rows, edge_rows, cascade_rows = [], [], []
    for label in range(n_classes):
        per_layer: list[list[int]] = []
        for li, layer in enumerate(all_layers):
            imp = {c: float(score[label, members[c]].sum()) for c in candidates[li]}
            chosen = sorted(candidates[li], key=lambda c: (-imp[c], c))[:nodes_per_layer]
            chosen = [c for c in chosen if imp[c] > 0] or chosen[:1]
            per_layer.append(chosen)
            for c in chosen:
                node_rows.append((label, c, layer, li, max(imp[c], 1e-3), len(members[c])))
        for li in range(n_layers):
            up = next_channel_row(li)
            ends = [(all_layers[up], t) for t in per_layer[up]] if up is not None else []
            ends = ends or [(PREDICTION, -1)]
            if li + 1 < n_layers and is_feature[li + 1] and not is_feature[li]:
                ends += [(all_layers[li + 1], t) for t in per_layer[li + 1]]
            for s in per_layer[li]:
                for tl, t in ends:
                    w = float(rng.random())
                    edge_rows.append((label, all_layers[li], s, tl, t, w, w, 0.5))
        for li in range(n_layers):
            below = [r for r in reversed(channel_rows) if r < li]
            for root in per_layer[li]:
                for depth, row in enumerate(up_chain(li), start=1):
                    nxt = per_layer[row][0] if row is not None else -1
                    name = all_layers[row] if row is not None else PREDICTION
                    cascade_rows.append((label, all_layers[li], root, name, nxt, depth, "up", 0.5))
                for depth, row in enumerate(below, start=1):
                    cascade_rows.append(
                        (
                            label,
                            all_layers[li],
                            root,
                            all_layers[row],
                            per_layer[row][0],
                            depth,
                            "down",
                            0.5,
                        )
                    )
    # The class's units: its nodes' members and the top tenth of each layer, positive scores.
    unit_rows = []
    for label in range(n_classes):
        counted = {m for row in node_rows if row[0] == label for m in members[row[1]]}
        for li in range(n_layers):
            units_here = np.flatnonzero(unit_row == li)
            ranked = units_here[np.argsort(-score[label, units_here], kind="stable")]
            counted.update(ranked[: max(1, -(-len(ranked) // 10))].tolist())
        unit_rows += [
            (label, int(u), int(cluster_of[u]), float(score[label, u]))
            for u in sorted(counted)
            if score[label, u] > 0
        ]
    graph_units = _from_rows("concept_graph_units", unit_rows)
    graph_nodes = _from_rows("concept_graph_nodes", node_rows)
    graph_edges = _from_rows("concept_graph_edges", edge_rows)
    cascades = _from_rows("concept_cascades", cascade_rows)
    n_patches = n_units * patches_per_neuron
    pngs = photo_patches(rng, min(distinct_patches or n_patches, n_patches), patch_size)
    patches = schema.frame(
        "example_patches",
        {
            "neuron_id": np.repeat(np.arange(n_units, dtype=np.int64), patches_per_neuron),
            "rank": np.tile(np.arange(1, patches_per_neuron + 1, dtype=np.int32), n_units),
            "image_id": np.zeros(n_patches, np.int64),
            "top": np.zeros(n_patches, np.int32),
            "left": np.zeros(n_patches, np.int32),
            "bottom": np.full(n_patches, patch_size, np.int32),
            "right": np.full(n_patches, patch_size, np.int32),
            "png": [pngs[i % len(pngs)] for i in range(n_patches)],
        },
    )
    centre = rng.normal(size=(n_clusters, 2)) * 5
    xy = centre[cluster_of] + rng.normal(size=(n_units, 2)) * 0.5
    projection = schema.frame(
        "neuron_projection", {"neuron_id": neurons["neuron_id"], "x": xy[:, 0], "y": xy[:, 1]}
    )
    k = min(neighbors, n_units - 1)
    nb_rows = []
    for lo in range(0, n_units, 512):
        d = np.linalg.norm(xy[lo : lo + 512, None, :] - xy[None, :, :], axis=2)
        d[np.arange(d.shape[0]), np.arange(lo, lo + d.shape[0])] = np.inf
        order = np.argpartition(d, k, axis=1)[:, :k]
        for i, row in enumerate(order):
            n = lo + i
            row = row[np.argsort(d[i, row])]
            nb_rows.extend((n, r, int(m), float(1 / (1 + d[i, m]))) for r, m in enumerate(row, 1))
    neighbor_table = _from_rows("neuron_neighbors", nb_rows)
    multi = [c for c in range(n_clusters) if len(members[c]) >= 2]
    quality = schema.frame(
        "cluster_quality",
        {
            "cluster_id": np.array(multi, np.int64),
            "kind": ["class"] * len(multi),
            "size": np.array([len(members[c]) for c in multi], np.int32),
            "concept": ["class"] * len(multi),
            "value": [class_names[c % n_classes] for c in multi],
            "purity": rng.uniform(0.5, 1.0, len(multi)),
            "layer_share": rng.uniform(0.05, 0.2, len(multi)),
            "gain": rng.uniform(0.4, 1.0, len(multi)),
            "random_gain": rng.uniform(0.0, 0.2, len(multi)),
        },
    )
    sample = edge_rows[:: max(1, len(edge_rows) // 40)][:40]
    weight = np.array([e[5] for e in sample])
    baseline = np.full(len(sample), 2.0)
    drop = weight * 0.8 + 0.05 * rng.random(len(sample))
    faithfulness = schema.frame(
        "concept_graph_faithfulness",
        {
            "source_layer": [e[1] for e in sample],
            "source_cluster": [e[2] for e in sample],
            "target_layer": [e[3] for e in sample],
            "target_cluster": [e[4] for e in sample],
            "weight": weight,
            "baseline": baseline,
            "ablated": baseline - drop,
            "drop": drop,
            "relative_drop": drop / baseline,
        },
    )
    # The figures the pipeline's assets would measure from these tables (the header's rows).
    gain, chance = float(quality["gain"].mean()), float(quality["random_gain"].mean())
    rho = float(
        pl.DataFrame({"w": weight, "d": drop}).select(pl.corr("w", "d", method="spearman")).item()
    )
    figures = pl.concat(
        [
            study_quality.figure_frame(
                "cluster_quality",
                [
                    Figure(
                        "class_cluster_gain",
                        gain,
                        "mean gain of the multi-unit clusters",
                        name="cluster gain (class)",
                        shown=f"{gain:.2f} vs {chance:.2f} for random same-size groups",
                    ),
                    Figure("class_random_gain", chance, "mean gain of random groups"),
                    Figure(
                        "pair_recall",
                        0.99,
                        "share of the exact pairs found",
                        name="LSH pair recall vs exact all-pairs",
                        shown="0.990",
                    ),
                ],
            ),
            study_quality.figure_frame(
                "concept_graph",
                [
                    Figure(
                        "faithfulness_spearman_rho",
                        rho,
                        "Spearman rank correlation of edge weight and ablation drop",
                        name="edge faithfulness",
                        shown=f"Spearman ρ {rho:.2f} between edge weight and ablation drop "
                        f"({len(sample)} edges)",
                    )
                ],
            ),
        ]
    )
    if words:
        tables_x_words = _words(rng, words, neurons, clusters)
    else:
        tables_x_words = {}
    if explained_per_class:
        tables_x = _explanations(
            rng, images, node_rows, all_layers, explained_per_class, patch_size, n_classes
        )
    else:
        tables_x = {}
    tables = {
        **tables_x,
        **tables_x_words,
        "images": images,
        "study_quality": figures,
        "cluster_quality": quality,
        "concept_graph_faithfulness": faithfulness,
        "neurons": neurons,
        "neuron_clusters": neuron_clusters,
        "clusters": clusters,
        "class_importance": importance,
        "example_patches": patches,
        "concept_graph_nodes": graph_nodes,
        "concept_graph_units": graph_units,
        "concept_graph_edges": graph_edges,
        "concept_cascades": cascades,
        "neuron_projection": projection,
        "neuron_neighbors": neighbor_table,
    }
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    try:
        for name, table in tables.items():
            con.register("incoming", table)
            con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM incoming')
            con.unregister("incoming")
    finally:
        con.close()
    return path


def _words(rng, formulas, neurons, clusters) -> dict:
    """``unit_labels`` and ``cluster_labels`` with ``formulas`` cycled (clusters in reverse)."""

    def rows(n: int, order: list) -> dict:
        formula = [order[i % len(order)] for i in range(n)]
        auc = np.round(0.8 + 0.19 * rng.random(n), 4)
        single = np.round(auc - 0.05 * rng.random(n), 4)
        # its own generator: the shared one's later draws stay as they were
        on_share = np.round(np.random.default_rng([7, n]).random(n), 3)
        return {
            "formula": formula,
            "auc": auc,
            "p_value": 10.0 ** -rng.uniform(2, 12, n),
            "candidate": [f if f is not None else "shape=blob" for f in formula],
            "single_term": [f"shape=s{i % 5}" for i in range(n)],
            "single_auc": single,
            "n_terms_over_08": rng.integers(0, 4, n).astype(np.int32),
            "on_share": on_share,
            "always_on": on_share >= 0.9,  # about one in ten
            "n_images": np.full(n, 100, np.int32),
        }

    units = rows(neurons.height, list(formulas))
    sharing = pl.Series(units["formula"], dtype=pl.Utf8)
    counts = sharing.value_counts().rows()
    shared = {formula: count - 1 for formula, count in counts if formula is not None}
    unit_labels = schema.frame(
        "unit_labels",
        {
            "neuron_id": neurons["neuron_id"],
            "layer": neurons["layer"],
            "kind": neurons["kind"],
            **units,
            "n_sharing_formula": [None if f is None else shared[f] for f in units["formula"]],
        },
    )
    cluster_labels = schema.frame(
        "cluster_labels",
        {
            "cluster_id": clusters["cluster_id"],
            "layer": clusters["layer"],
            "size": clusters["size"],
            **rows(clusters.height, list(formulas)[::-1]),
        },
    )
    return {"unit_labels": unit_labels, "cluster_labels": cluster_labels}


def _explanations(rng, images, node_rows, all_layers, per_class, size, n_classes) -> dict:
    """Explanation tables (:mod:`carto_viz.explained_images` reads them): per class, its images
    (every other one predicted as the next class), each explained by 3 of its class's graph nodes
    per layer with 2 x 2 maps, and each node's exemplars."""
    from carto_assets.core.attribution.explain import quantize

    thumbs = photo_patches(rng, 8, size)
    image_ids = images["image_id"].to_list()
    labels = images["label"].to_list()
    explained, concepts, layers_rows, exemplars = [], [], [], {}
    for image_id, label in zip(image_ids, labels):
        if sum(1 for e in explained if e[1] == label) >= per_class:
            continue
        predicted = label if image_id % 2 == 0 else (label + 1) % n_classes
        explained.append((image_id, label, predicted, "sample", 1.5, thumbs[image_id % 8]))
        for li, layer in enumerate(all_layers):
            mine = [row[1] for row in node_rows if row[0] == label and row[3] == li][:3]
            shares = sorted(rng.uniform(0.05, 0.4, len(mine)), reverse=True)
            maps = rng.normal(size=(len(mine), 2, 2)).astype(np.float32)
            codes, scales = quantize(maps) if len(mine) else ([], [])
            for rank, (cluster, share, code, scale) in enumerate(
                zip(mine, shares, codes, scales), start=1
            ):
                concepts.append(
                    (image_id, predicted, layer, rank, cluster, share, share, code, float(scale))
                )
                exemplars.setdefault(cluster, []).append((share, image_id, layer))
            codes, scales = quantize(rng.normal(size=(1, 2, 2)).astype(np.float32))
            layers_rows.append(
                (
                    image_id,
                    predicted,
                    layer,
                    1.5,
                    1.2,
                    0.0,
                    0.1,
                    0.3,
                    2,
                    2,
                    codes[0],
                    float(scales[0]),
                )
            )
    exemplar_rows = [
        (cluster, layer, rank, image_id, share, share)
        for cluster, found in exemplars.items()
        for rank, (share, image_id, layer) in enumerate(sorted(found, reverse=True)[:9], start=1)
    ]
    return {
        "explained_images": _from_rows("explained_images", explained),
        "explanation_concepts": _from_rows("explanation_concepts", concepts),
        "explanation_layers": _from_rows("explanation_layers", layers_rows),
        "relevance_exemplars": _from_rows("relevance_exemplars", exemplar_rows),
    }
