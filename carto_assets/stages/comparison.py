"""The comparison's stages: read the studies' stored tables, compute, return the tables.

Each function below is one asset's work (:mod:`carto_assets.assets.comparison` only calls it and
writes the result with :meth:`CartoStore.replace_tables`). The studies' databases are only
read (read-only snapshots; a study being re-run meanwhile never blocks nor half-feeds a
comparison): :func:`collect` copies what the comparison needs into its own database, and every
later stage reads from there. Only CKA goes back to a study: its prepared network (the cached
checkpoint, never retrained) runs on a sample of the shared images.

No dagster here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from carto_assets import schema
from carto_assets.core.comparison import cka as cka_of
from carto_assets.core.comparison.concepts import concept_frame, concept_sets, formula_frame
from carto_assets.core.comparison.joint_embedding import (
    cross_neighbors,
    joint_embedding,
    match_closeness,
    project_2d,
)
from carto_assets.core.comparison.layer_shares import layer_shares, shuffled_null
from carto_assets.core.comparison.matching import UnitSets, match_units, unit_sets
from carto_assets.stages.comparison_studies import check_studies
from carto_assets.stages.prepared import PreparedComparison, PreparedStudy, open_comparison_store
from carto_assets.storage.store import CartoStore
from carto_assets.study.comparison import Comparison, ComparisonError


@dataclass
class Result:
    """An asset's tables and the figures its metadata shows."""

    tables: dict[str, pl.DataFrame]
    figures: dict[str, Any] = field(default_factory=dict)


def collect(prepared: PreparedComparison) -> Result:
    """``compare_units`` and what later stages and the page read, copied from the studies,
    after checking that they map the same images."""
    comparison = prepared.comparison
    studies, stores, images = check_studies(prepared)

    units, tops, clusters, nodes, edges, patches, rows = [], [], [], [], [], [], []
    offset = 0
    for position, (study, store, entry) in enumerate(
        zip(studies, stores, comparison.studies, strict=True)
    ):
        neurons = store.query(
            "SELECT n.neuron_id, n.layer, n.layer_index, n.channel, n.kind, c.cluster_id "
            "FROM neurons n LEFT JOIN neuron_clusters c USING (neuron_id) ORDER BY n.neuron_id"
        )
        ids = neurons["neuron_id"].to_numpy()
        if not np.array_equal(ids, np.arange(ids.size)):
            raise ComparisonError(f"study {entry!r}: neuron ids are not 0..{ids.size - 1}")
        units.append(
            neurons.with_columns(unit_id=pl.col("neuron_id") + offset, study=pl.lit(study.name))
        )
        tops.append(
            store.query("SELECT neuron_id, rank, image_id FROM top_images").with_columns(
                unit_id=pl.col("neuron_id") + offset
            )
        )
        # The words: a study mapped before them, or with labels.enabled: false, has none (its
        # concepts are then matched by images, `concepts`).
        has_words = store.table_exists("cluster_labels")
        clusters.append(
            store.query(
                "SELECT c.cluster_id, c.layer, c.size, c.label, w.formula, w.auc FROM clusters c "
                "LEFT JOIN cluster_labels w USING (cluster_id)"
                if has_words
                else "SELECT cluster_id, layer, size, label, NULL::VARCHAR AS formula, "
                "NULL::DOUBLE AS auc FROM clusters"
            ).with_columns(study=pl.lit(study.name))
        )
        if store.table_exists("concept_graph_nodes"):
            nodes.append(
                store.query(
                    "SELECT n.label, any_value(i.label_name) AS label_name, n.cluster_id, "
                    "n.layer, n.layer_index, n.importance FROM concept_graph_nodes n "
                    "JOIN images i ON i.label = n.label GROUP BY ALL"
                ).with_columns(study=pl.lit(study.name))
            )
            edges.append(
                store.query(
                    "SELECT label, source_cluster, target_cluster, weight FROM concept_graph_edges"
                ).with_columns(study=pl.lit(study.name))
            )
        if comparison.patches_per_unit and store.table_exists("example_patches"):
            patches.append(
                store.query(
                    "SELECT neuron_id, rank, png FROM example_patches WHERE rank <= ?",
                    [comparison.patches_per_unit],
                ).with_columns(unit_id=pl.col("neuron_id") + offset)
            )
        is_builtin = study.is_builtin_model
        rows.append(
            {
                "study": study.name,
                "position": position,
                "study_file": comparison.study_files()[position],
                "database": str(study.database_path),
                "model": study.model,
                "weights": study.weights,
                "training_seed": study.training_seed if is_builtin else None,
                "checkpoint_epoch": study.training.checkpoint_epoch if is_builtin else None,
                "n_units": int(ids.size),
                "n_images": len(images[0]),
                "top_k": study.top_k,
                "has_words": has_words,
            }
        )
        offset += ids.size

    def table(name: str, parts: list[pl.DataFrame]) -> pl.DataFrame:
        if not parts:
            return schema.empty_frame(name)
        frame = pl.concat(parts, how="vertical_relaxed")
        return schema.frame(name, {c: frame[c] for c in schema.column_names(name)})

    tables = {
        "compare_studies": schema.frame(
            "compare_studies", {c: [r[c] for r in rows] for c in rows[0]}
        ),
        "compare_units": table("compare_units", units),
        "compare_top_images": table("compare_top_images", tops),
        "compare_clusters": table("compare_clusters", clusters),
        "compare_graph_nodes": table("compare_graph_nodes", nodes),
        "compare_graph_edges": table("compare_graph_edges", edges),
        "compare_patches": table("compare_patches", patches),
    }
    return Result(
        tables,
        {
            "studies": [r["study"] for r in rows],
            "n_images": len(images[0]),
            "units_per_study": {r["study"]: r["n_units"] for r in rows},
        },
    )


def _columns(frame: pl.DataFrame, table: str) -> dict[str, pl.Series]:
    return {c: frame[c] for c in schema.column_names(table)}


# ---- reading the comparison's own tables ------------------------------------------------
def study_names(store: CartoStore) -> list[str]:
    return store.query("SELECT study FROM compare_studies ORDER BY position")["study"].to_list()


def load_units(store: CartoStore) -> tuple[pl.DataFrame, UnitSets, list[str]]:
    """The units frame (``unit``, ``study``, ``layer``, ``layer_index``, ``cluster_id``), their
    top-k sets and the studies' names in order."""
    names = study_names(store)
    units = store.query(
        "SELECT unit_id AS unit, study, layer, layer_index, cluster_id FROM compare_units "
        "ORDER BY unit_id"
    )
    index = {name: i for i, name in enumerate(names)}
    study = np.array([index[s] for s in units["study"].to_list()], dtype=np.int64)
    top = store.query("SELECT unit_id, image_id, rank FROM compare_top_images")
    sets = unit_sets(
        top["unit_id"].to_numpy(), top["image_id"].to_numpy(), top["rank"].to_numpy(), study
    )
    return units, sets, names


# ---- unit_matches -----------------------------------------------------------------------
def matches(comparison: Comparison, store: CartoStore) -> Result:
    """``unit_matches``: each unit's best match in every other study."""
    _, sets, names = load_units(store)
    start = time.perf_counter()
    pairs, best = match_units(sets, threshold=comparison.threshold, minhash=comparison)
    seconds = time.perf_counter() - start
    frame = best.frame()
    table = schema.frame(
        "unit_matches",
        {
            "unit_id": frame["unit"],
            "other_study": [names[i] for i in frame["other_study"].to_list()],
            "match_id": frame["match"].replace(-1, None),
            "jaccard": pl.Series(np.where(best.match >= 0, best.jaccard, np.nan)).fill_nan(None),
            "mutual": frame["mutual"],
            "partners": frame["partners"],
        },
    )
    mutual = table.filter("mutual")
    return Result(
        {"unit_matches": table},
        {
            "units": sets.n_units,
            "bands": pairs.bands,
            "rows": pairs.rows,
            "distinct_sets": pairs.n_distinct_sets,
            "lsh_candidates": pairs.n_candidates,
            "confirmed_pairs": int(pairs.a.size),
            "units_with_a_match": int(table["match_id"].is_not_null().sum()),
            "units_with_a_mutual_match": len(mutual),
            "mean_mutual_jaccard": float(mutual["jaccard"].mean() or 0.0),
            "matching_seconds": round(seconds, 3),
        },
    )


# ---- layer_matches ----------------------------------------------------------------------
def layers(prepared: PreparedComparison, progress: Callable[[str], None] = print) -> Result:
    """``layer_matches``: match shares per pair of layers, the shuffled null and CKA (each
    study's network, from its preparation)."""
    comparison, store = prepared.comparison, prepared.store
    units, sets, names = load_units(store)
    best = store.query(
        "SELECT unit_id AS unit, coalesce(match_id, -1) AS match, mutual FROM unit_matches"
    )
    shares = layer_shares(units, best)
    null = shuffled_null(
        sets,
        units,
        draws=comparison.null_draws,
        threshold=comparison.threshold,
        minhash=comparison,
    )
    keys = ["study", "layer", "other_study", "other_layer"]
    shares = shares.join(null, on=keys, how="left")
    figures: dict[str, Any] = {}
    if comparison.cka_images > 0:
        progress(f"CKA: running each study's network on {comparison.cka_images} images")
        n_images = int(store.query("SELECT max(n_images) AS n FROM compare_studies")["n"][0])
        shares = shares.join(cka_frame(prepared, units, names, n_images), on=keys, how="left")
        figures["cka_images"] = min(comparison.cka_images, n_images)
    else:
        shares = shares.with_columns(cka=pl.lit(None, dtype=pl.Float64))
    if comparison.null_draws <= 0:
        shares = shares.with_columns(null_share=pl.lit(None, dtype=pl.Float64))
    table = schema.frame("layer_matches", _columns(shares, "layer_matches"))
    same = table.filter(pl.col("layer") == pl.col("other_layer"))
    figures["same_layer_share"] = {
        f"{r['study']} -> {r['other_study']} {r['layer']}": round(r["share"], 4)
        for r in same.iter_rows(named=True)
    }
    return Result({"layer_matches": table}, figures)


def layer_activations(
    prepared: PreparedStudy, image_ids: np.ndarray, batch_size: int
) -> tuple[np.ndarray, list[str]]:
    """Every unit's activation (spatial maximum, as for top images) on ``image_ids`` through
    the study's prepared network, in neuron order, and each unit's layer."""
    import torch

    from carto_assets.core.network.recorder import LayerRecorder
    from carto_assets.core.network.zoo import resolve_device

    study = prepared.study
    try:
        bundle, layer_infos = prepared.model
        features = prepared.feature_layers
    except FileNotFoundError as exc:
        raise ComparisonError(
            f"study '{study.name}': CKA needs its prepared network: {exc} (or set cka_images: 0)"
        ) from None
    device = resolve_device(study.device)
    bundle.module.to(device)
    source = prepared.source
    derived = [f.on(device) for f in features]
    values = []
    with LayerRecorder(bundle.module, layer_infos, derived) as recorder, torch.inference_mode():
        for lo in range(0, image_ids.size, batch_size):
            pixels, ok = source.load_many(image_ids[lo : lo + batch_size].tolist())
            if not ok.all():
                bad = image_ids[lo : lo + batch_size][~ok][0]
                raise ComparisonError(f"study '{study.name}': image {bad} cannot be read")
            bundle.module(bundle.normalize(torch.from_numpy(pixels).to(device)))
            batch, _, _ = recorder.collect()
            values.append(batch.double().cpu().numpy())
        unit_layers = [b.name for b in recorder.blocks for _ in range(int(b.channels or 0))]
    return np.concatenate(values), unit_layers


def cka_frame(
    prepared: PreparedComparison, units: pl.DataFrame, names: list[str], n_images: int
) -> pl.DataFrame:
    """Linear CKA of every pair of layers of every pair of studies on a seeded image sample."""
    comparison = prepared.comparison
    studies = {p.study.name: p for p in prepared.studies}
    rng = np.random.default_rng([comparison.seed, 5])
    sample = np.sort(rng.choice(n_images, min(comparison.cka_images, n_images), replace=False))
    grams: dict[str, tuple[list[str], list[np.ndarray]]] = {}
    for name in names:
        values, unit_layers = layer_activations(studies[name], sample, comparison.batch_size)
        expected = units.filter(pl.col("study") == name).sort("unit")["layer"].to_list()
        if unit_layers != expected:
            raise ComparisonError(
                f"study '{name}': its network's units ({len(unit_layers)}) are not the units "
                f"of its tables ({len(expected)}); re-run the study"
            )
        layer_order = list(dict.fromkeys(unit_layers))
        column_layer = np.array(unit_layers)
        grams[name] = (
            layer_order,
            [cka_of.centered_gram(values[:, column_layer == layer]) for layer in layer_order],
        )
    rows = []
    for a in names:
        for b in names:
            if a == b:
                continue
            la, ga = grams[a]
            lb, gb = grams[b]
            matrix = cka_of.cka_matrix(ga, gb)
            for i, layer in enumerate(la):
                for j, other in enumerate(lb):
                    value = matrix[i, j]
                    rows.append((a, layer, b, other, None if np.isnan(value) else float(value)))
    return pl.DataFrame(
        rows,
        schema={
            "study": pl.Utf8,
            "layer": pl.Utf8,
            "other_study": pl.Utf8,
            "other_layer": pl.Utf8,
            "cka": pl.Float64,
        },
        orient="row",
    )


# ---- concept_matches --------------------------------------------------------------------
def words_of(store: CartoStore) -> dict[str, bool]:
    """Whether each study has words (``cluster_labels``), by name, in the studies' order."""
    return dict(
        store.query("SELECT study, has_words FROM compare_studies ORDER BY position").iter_rows()
    )


def by_words(words: dict[str, bool]) -> set[tuple[str, str]]:
    """The ordered pairs of studies whose concepts are matched by words (both have them); the
    others are matched by images."""
    return {(a, b) for a in words for b in words if a != b and words[a] and words[b]}


def concepts(comparison: Comparison, store: CartoStore) -> Result:
    """``concept_matches``: every concept shared with each other study, or only in its own
    (matched by words where both studies have them, else by images)."""
    units, sets, names = load_units(store)
    clusters = (
        store.query(
            "SELECT study, cluster_id, layer, size, label, formula, auc FROM compare_clusters"
        )
        .with_columns(order=pl.col("study").replace_strict({n: i for i, n in enumerate(names)}))
        .sort("order", "cluster_id")
        .with_row_index("row")
        .with_columns(pl.col("row").cast(pl.Int64))
    )
    row_of = units.join(
        clusters.select("study", "cluster_id", "row"), on=["study", "cluster_id"], how="left"
    )
    concept_of_unit = row_of.sort("unit")["row"].fill_null(-1).to_numpy()
    study_of_concept = clusters["order"].to_numpy().astype(np.int64)
    csets = concept_sets(sets, concept_of_unit, study_of_concept)
    pairs = by_words(words_of(store))
    in_pairs = pl.concat_str("study", "other_study", separator="\x00").is_in(
        [f"{a}\x00{b}" for a, b in pairs]
    )
    parts = []
    if pairs:
        parts.append(formula_frame(clusters.drop("order"), csets, names).filter(in_pairs))
    if len(pairs) < len(names) * (len(names) - 1):
        _, best = match_units(csets, threshold=comparison.concept_threshold, minhash=comparison)
        parts.append(concept_frame(clusters.drop("order"), best, names).filter(~in_pairs))
    frame = pl.concat(parts, how="vertical_relaxed").sort("row", "other_study")
    table = schema.frame("concept_matches", _columns(frame, "concept_matches"))
    multi = table.filter(pl.col("size") > 1)
    figures = {
        f"{s} vs {o}": {
            "matched_by": g["matched_by"][0],
            "concepts": int(g["status"].is_not_null().sum()),
            "shared": int((g["status"] == "shared").sum()),
            "only": int((g["status"] == "only").sum()),
            "without_words": int(g["status"].is_null().sum()),
            "multi_unit_only": int(
                (
                    (multi["study"] == s)
                    & (multi["other_study"] == o)
                    & (multi["status"] == "only")
                ).sum()
            ),
            "label_changed": int(g["label_changed"].fill_null(False).sum()),
            "only_sharing_a_term": int(
                (g["same_label_elsewhere"].fill_null(False) & (g["status"] == "only")).sum()
            ),
        }
        for (s, o), g in table.group_by("study", "other_study", maintain_order=True)
    }
    return Result({"concept_matches": table}, figures)


def no_words_lines(words: dict[str, bool]) -> list[str]:
    """One line per study without words: its concepts are matched by images."""
    return [
        f"study '{name}' has no words (no cluster_labels: mapped before words, or with "
        "labels.enabled: false): its concepts are matched by their top images, not by words"
        for name, has in words.items()
        if not has
    ]


# ---- compare_embedding, compare_projection ----------------------------------------------
def embedding(
    comparison: Comparison, store: CartoStore, progress: Callable[[str], None] = print
) -> Result:
    """``compare_embedding``: one skip-gram over every image's list of every study's units."""
    units, sets, _ = load_units(store)
    top = store.query("SELECT unit_id, image_id FROM compare_top_images")
    cfg = comparison.embedding
    start = time.perf_counter()
    result = joint_embedding(
        top["unit_id"].to_numpy(),
        top["image_id"].to_numpy(),
        sets.n_units,
        cfg,
        comparison.seed,
        progress=lambda e, loss: (
            progress(f"epoch {e}/{cfg.epochs}: loss {loss:.4f}")
            if e == cfg.epochs or e % 5 == 0
            else None
        ),
    )
    vectors = np.asarray(result.vectors, dtype=np.float32)
    table = pl.DataFrame(
        {
            "unit_id": np.arange(sets.n_units, dtype=np.int64),
            "vector": pl.Series(vectors, dtype=pl.Array(pl.Float32, vectors.shape[1])),
            "isolated": np.asarray(result.isolated, dtype=bool),
        }
    )
    mutual = store.query("SELECT unit_id, match_id FROM unit_matches WHERE mutual")
    figures = {
        "epoch_losses": [round(x, 5) for x in result.epoch_losses],
        "isolated_units": int(np.sum(result.isolated)),
        "training_seconds": round(time.perf_counter() - start, 2),
        **{
            k: round(v, 4)
            for k, v in match_closeness(
                vectors,
                mutual["unit_id"].to_numpy(),
                mutual["match_id"].to_numpy(),
                sets.study,
                comparison.seed,
            ).items()
        },
    }
    del units
    return Result({"compare_embedding": table}, figures)


def projection(comparison: Comparison, store: CartoStore) -> Result:
    """``compare_projection`` (one UMAP of every study's units) and ``compare_neighbors``
    (each unit's nearest units of the other studies, in embedding space)."""
    _, sets, _ = load_units(store)
    frame = store.query("SELECT unit_id, vector FROM compare_embedding ORDER BY unit_id")
    vectors = np.stack(frame["vector"].to_numpy()).astype(np.float32)
    cfg = comparison.embedding
    xy = project_2d(vectors, cfg, seed=comparison.seed)
    unit, rank, neighbor, similarity = cross_neighbors(vectors, sets.study, cfg.neighbors)
    tables = {
        "compare_projection": schema.frame(
            "compare_projection",
            {"unit_id": np.arange(len(vectors)), "x": xy[:, 0], "y": xy[:, 1]},
        ),
        "compare_neighbors": schema.frame(
            "compare_neighbors",
            {"unit_id": unit, "rank": rank, "neighbor_id": neighbor, "similarity": similarity},
        ),
    }
    return Result(tables, {"units": len(vectors)})


def summary_lines(comparison: Comparison) -> list[str]:
    """What ``carto compare`` prints: per pair of studies, units and concepts matched."""
    store = open_comparison_store(comparison)
    names = study_names(store)
    words = words_of(store)
    pairs, lines = by_words(words), no_words_lines(words)
    for a in names:
        for b in names:
            if a == b:
                continue
            row = store.query(
                "SELECT sum(mutual)::DOUBLE AS mutual, "
                "sum(units) FILTER (WHERE first)::DOUBLE AS units, "
                "sum(null_share * units)::DOUBLE AS null FROM ("
                "SELECT *, row_number() OVER (PARTITION BY layer ORDER BY other_layer) = 1 "
                "AS first FROM layer_matches WHERE study = ? AND other_study = ?)",
                [a, b],
            ).row(0, named=True)
            concepts = store.query(
                "SELECT count(*) FILTER (WHERE status = 'shared') AS shared, "
                "count(*) FILTER (WHERE status = 'only') AS only, "
                "count(*) FILTER (WHERE status IS NULL) AS none FROM concept_matches "
                "WHERE study = ? AND other_study = ?",
                [a, b],
            ).row(0, named=True)
            units = row["units"] or 0
            share = f"{row['mutual'] / units:.1%}" if units else "n/a"
            null = f"{row['null'] / units:.1%}" if units and row["null"] is not None else "n/a"
            how = (
                f"matched by words; {concepts['none']} clusters without words"
                if (a, b) in pairs
                else "matched by top images"
            )
            lines.append(
                f"'{a}' vs '{b}': {share} of units with a mutual match (shuffled null {null}); "
                f"concepts {concepts['shared']} shared, {concepts['only']} only in '{a}' ({how})"
            )
    return lines
