"""Study databases written directly (the tables a comparison reads), for fast comparison tests.

Imported by the tests as ``compare.known`` (``tests`` is on pytest's pythonpath).

A real study costs a whole-graph run; these hold chosen top-k sets, so what a comparison must
find is known: :func:`write_study_database` writes a study file and its database with the
tables ``carto compare`` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from carto_assets import schema
from carto_assets.stages import comparison as stage
from carto_assets.stages.prepared import PreparedComparison
from carto_assets.storage.store import CartoStore
from carto_assets.study.comparison import load_comparison


def write_study_database(
    folder: Path,
    name: str,
    sets: Sequence[Sequence[int]],
    layers: Sequence[str],
    clusters: Sequence[int],
    *,
    n_images: int,
    seed: int = 0,
    cluster_labels: dict[int, str] | None = None,
    sources: Sequence[str] | None = None,
    words: dict[int, tuple[str | None, float]] | None = None,
) -> Path:
    """A study file ``<name>.yaml`` (shapes world of ``n_images``, ``seed``) whose database
    holds ``images``, ``neurons``, ``top_images`` (unit ``i``'s images in ``sets[i]`` order,
    rank 1 first), ``neuron_clusters`` and ``clusters``; with ``words`` (cluster id ->
    (formula or None, AUC); a cluster not named has none) also ``cluster_labels``."""
    folder.mkdir(parents=True, exist_ok=True)
    study_file = folder / f"{name}.yaml"
    study_file.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "dataset": {"kind": "shapes", "size": n_images, "image_size": 32},
                "top_k": max(len(s) for s in sets),
                "shards": 1,
                "seed": seed,
                "database": f"{name}.duckdb",
            }
        )
    )
    order = {layer: i for i, layer in enumerate(dict.fromkeys(layers))}
    n = len(sets)
    images = schema.frame(
        "images",
        {
            "image_id": np.arange(n_images),
            "shard": np.zeros(n_images, dtype=np.int32),
            "source": list(sources) if sources else [f"shapes:{i}" for i in range(n_images)],
            "label": np.arange(n_images) % 2,
            "label_name": ["circle" if i % 2 == 0 else "heart" for i in range(n_images)],
        },
    )
    channel = [sum(1 for prev in layers[:i] if prev == layers[i]) for i in range(n)]
    neurons = schema.frame(
        "neurons",
        {
            "neuron_id": np.arange(n),
            "layer": list(layers),
            "layer_index": [order[x] for x in layers],
            "channel": channel,
            "map_height": [4] * n,
            "map_width": [4] * n,
            "kind": ["channel"] * n,
        },
    )
    top = schema.frame(
        "top_images",
        {
            "neuron_id": [u for u, s in enumerate(sets) for _ in s],
            "rank": [r + 1 for s in sets for r in range(len(s))],
            "image_id": [int(x) for s in sets for x in s],
            "activation": [float(len(s) - r) for s in sets for r in range(len(s))],
            "y": [0] * sum(len(s) for s in sets),
            "x": [0] * sum(len(s) for s in sets),
        },
    )
    labels = cluster_labels or {}
    members = pl.DataFrame({"neuron_id": np.arange(n), "cluster_id": list(clusters)})
    cluster_table = (
        members.with_columns(layer=pl.Series(list(layers)))
        .group_by("cluster_id", "layer")
        .agg(size=pl.len(), members=pl.col("neuron_id").sort())
        .sort("cluster_id")
    )
    clusters_frame = schema.frame(
        "clusters",
        {
            "cluster_id": cluster_table["cluster_id"],
            "layer": cluster_table["layer"],
            "size": cluster_table["size"],
            "label": [
                labels.get(c, f"class=circle ({0.5 + c % 5 / 10:.1f})")
                for c in cluster_table["cluster_id"]
            ],
            "top_class": ["circle"] * cluster_table.height,
            "top_class_fraction": [0.5] * cluster_table.height,
            "mean_jaccard": [1.0] * cluster_table.height,
            "members": cluster_table["members"],
        },
    )
    neuron_clusters = schema.frame(
        "neuron_clusters",
        {"neuron_id": np.arange(n), "cluster_id": list(clusters), "layer": list(layers)},
    )
    tables = {
        "images": images,
        "neurons": neurons,
        "top_images": top,
        "neuron_clusters": neuron_clusters,
        "clusters": clusters_frame,
    }
    if words is not None:
        ids = cluster_table["cluster_id"].to_list()
        formula = [words.get(c, (None, 0.6))[0] for c in ids]
        auc = [words.get(c, (None, 0.6))[1] for c in ids]
        tables["cluster_labels"] = schema.frame(
            "cluster_labels",
            {
                "cluster_id": ids,
                "layer": cluster_table["layer"],
                "size": cluster_table["size"],
                "formula": formula,
                "auc": auc,
                "p_value": [1e-6] * len(ids),
                "candidate": [f or "class=circle" for f in formula],
                "single_term": [f or "class=circle" for f in formula],
                "single_auc": auc,
                "n_terms_over_08": [1] * len(ids),
                "on_share": [0.2] * len(ids),
                "always_on": [False] * len(ids),
                "n_images": [n_images] * len(ids),
            },
        )
    CartoStore(folder / f"{name}.duckdb").replace_tables(tables)
    return study_file


HOSTILE = "<script>window.__xss=1</script>"
N_UNITS = 28


def permuted_pair(folder, write_study):
    """Study 'orig' and 'copy': within each layer, unit u of orig is unit perm[u] of copy."""
    rng = np.random.default_rng(0)
    layers = ["conv1"] * 12 + ["conv2"] * 16
    sets = [list(rng.choice(200, 10, replace=False)) for _ in layers]
    clusters = [i // 2 for i in range(N_UNITS)]
    labels = {0: HOSTILE + " (0.9)", 7: "colour=red (0.8), size=large (0.5)"}
    write_study(folder, "orig", sets, layers, clusters, n_images=200, cluster_labels=labels)
    perm = np.concatenate([rng.permutation(12), 12 + rng.permutation(16)])
    copy_sets, copy_clusters = [None] * N_UNITS, [None] * N_UNITS
    for u in range(N_UNITS):
        copy_sets[perm[u]], copy_clusters[perm[u]] = sets[u], clusters[u]
    write_study(
        folder, "copy", copy_sets, layers, copy_clusters, n_images=200, cluster_labels=labels
    )
    path = folder / "cmp.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "cmp",
                "studies": ["orig.yaml", "copy.yaml"],
                "cka_images": 0,
                "null_draws": 3,
                "embedding": {"epochs": 60, "batch_size": 64},
            }
        )
    )
    return load_comparison(path), perm


#: Study 'a' and 'b' of :func:`worded_trio`: cluster id -> (label, words, AUC); six clusters
#: of two units each, 0-2 in conv1 and 3-5 in conv2.
TRIO_WORDS = {
    "a": {
        0: ("shape=heart (0.9)", "colour=red AND shape=star", 0.9),
        1: ("shape=heart (0.7)", "shape=heart", 0.8),
        2: ("shape=heart (0.6)", None, 0.6),
        3: ("size=large (0.6)", "size=large", 0.95),
        4: ("colour=blue (0.5)", "NOT colour=red", 0.8),
        5: ("size=small (0.5)", None, 0.55),
    },
    "b": {
        0: ("colour=blue (0.8)", "shape=star AND colour=red", 0.85),
        1: ("shape=heart (0.9)", "shape=heart OR shape=circle", 0.9),
        2: ("size=large (0.9)", "size=large", 0.99),
        3: ("size=large (0.8)", "size=large", 0.9),
        4: ("size=large (0.7)", "size=large", 0.7),
        5: ("colour=red (0.7)", "colour=red", 0.8),
    },
}


def worded_trio(folder: Path, write_study) -> tuple[Path, list[list[int]], list[list[int]]]:
    """Studies 'a' and 'b' with words (:data:`TRIO_WORDS`) and 'c' without (no
    ``cluster_labels``, a copy of 'a''s top images): the comparison file and the top-k sets
    of 'a' and 'b' (cluster 0 of 'b' has the images of cluster 0 of 'a')."""
    rng = np.random.default_rng(3)
    layers = ["conv1"] * 6 + ["conv2"] * 6
    clusters = [i // 2 for i in range(12)]
    sets_a = [[int(x) for x in rng.choice(60, 8, replace=False)] for _ in layers]
    sets_b = sets_a[:2] + [[int(x) for x in rng.choice(60, 8, replace=False)] for _ in layers[2:]]
    for name, sets, words in (("a", sets_a, True), ("b", sets_b, True), ("c", sets_a, False)):
        rows = TRIO_WORDS["a" if name == "c" else name]
        write_study(
            folder,
            name,
            sets,
            layers,
            clusters,
            n_images=60,
            cluster_labels={c: r[0] for c, r in rows.items()},
            words={c: (r[1], r[2]) for c, r in rows.items()} if words else None,
        )
    path = folder / "trio.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "trio",
                "studies": ["a.yaml", "b.yaml", "c.yaml"],
                "cka_images": 0,
                "null_draws": 1,
                "patches_per_unit": 0,
                "embedding": {"epochs": 5, "batch_size": 64},
            }
        )
    )
    return path, sets_a, sets_b


def compare_in_process(comparison, with_map: bool = True) -> CartoStore:
    """The comparison's assets' work without Dagster (the projection replaced by a fixed
    layout: UMAP is tested with the studies)."""
    store = CartoStore(comparison.database_path)
    prepared = PreparedComparison(comparison, store)
    store.replace_tables(stage.collect(prepared).tables)
    store.replace_tables(stage.matches(comparison, store).tables)
    store.replace_tables(stage.layers(prepared).tables)
    store.replace_tables(stage.concepts(comparison, store).tables)
    if with_map:
        store.replace_tables(stage.embedding(comparison, store, progress=lambda m: None).tables)
        n = int(store.query("SELECT count(*) AS n FROM compare_units")["n"][0])
        angle = np.arange(n) * 2 * np.pi / n
        store.replace_tables(
            {
                "compare_projection": schema.frame(
                    "compare_projection",
                    {"unit_id": np.arange(n), "x": np.cos(angle), "y": np.sin(angle)},
                ),
                "compare_neighbors": schema.frame(
                    "compare_neighbors",
                    {
                        "unit_id": np.arange(n),
                        "rank": [1] * n,
                        "neighbor_id": (np.arange(n) + N_UNITS) % n,
                        "similarity": [0.5] * n,
                    },
                ),
            }
        )
    return store
