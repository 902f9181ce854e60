"""Clustering assets: MinHash signatures, neuron clusters and their concept quality."""

import dagster as dg
import numpy as np
import polars as pl

from carto_assets.assets._metadata import frame_table, table_metadata
from carto_assets.assets.resources import StudyResource
from carto_assets.core.similarity.linkage import cluster_size_distribution
from carto_assets.stages import cluster_quality as quality_stage
from carto_assets.stages import clustering as stage
from carto_assets.stages.dictionary import features_vs_channels
from carto_assets.storage import quality


@dg.asset(
    group_name="clustering",
    kinds={"duckdb", "numpy"},
    deps=["top_images"],
    check_specs=[dg.AssetCheckSpec("signatures_match_datasketch", asset="minhash_signatures")],
)
def minhash_signatures(study: StudyResource) -> dg.MaterializeResult:
    """Each neuron's MinHash signature of its top-k image set (datasketch's scheme, vectorized)."""
    prepared = study.prepare()
    cfg, store = prepared.study, prepared.store
    sets = stage.load_cluster_sets(prepared).sets
    frame = stage.signatures_frame(sets, cfg.clustering)
    store.replace_tables({"minhash_signatures": frame})
    sigs = np.stack(frame["signature"].to_numpy())
    same = stage.datasketch_agreement(sets, sigs, cfg.clustering)
    return dg.MaterializeResult(
        metadata={
            **table_metadata(store, "minhash_signatures", preview_rows=3),
            "num_perm": cfg.clustering.num_perm,
            "seed": cfg.clustering.seed,
            "scheme": "datasketch affine32, image ids as 8-byte little-endian int64",
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="signatures_match_datasketch",
                passed=bool(same),
                metadata={"neurons_compared": min(5, sets.n_neurons)},
            )
        ],
    )


@dg.asset(group_name="clustering", kinds={"duckdb"}, deps=["minhash_signatures"])
def neuron_clusters(
    context: dg.AssetExecutionContext, study: StudyResource
) -> dg.MaterializeResult:
    """Neurons of a layer grouped by Jaccard similarity of their top-k images (LSH or exact)."""
    prepared = study.prepare()
    cfg, store = prepared.study, prepared.store
    measured = stage.load_cluster_sets(prepared)
    sets = measured.sets
    signatures = stage.load_signatures(store, sets) if cfg.clustering.method == "lsh" else None
    result = stage.find_clusters(sets, cfg.clustering, signatures=signatures)
    layers = store.query("SELECT neuron_id, layer FROM neurons")
    top = sets if measured.basis == "top_k" else stage.load_neuron_sets(store)
    frames = stage.tables(result, store, layers, top_sets=top)
    store.replace_tables(frames)
    sizes = cluster_size_distribution(result.clustering.labels)
    dist = pl.DataFrame({"size": list(sizes), "clusters": list(sizes.values())})
    multi = frames["clusters"].filter(pl.col("size") >= 2).sort("size", descending=True)
    context.log.info(
        f"{len(frames['clusters'])} clusters, {len(multi)} with 2+ neurons; "
        f"{result.pairs.n_pairs} similar pairs"
    )
    meta = {
        **table_metadata(store, "neuron_clusters"),
        "n_clusters": len(frames["clusters"]),
        "n_multi_neuron_clusters": len(multi),
        "largest_cluster": int(frames["clusters"]["size"].max()),
        "cluster_size_distribution": frame_table(dist),
        "largest_clusters": frame_table(
            multi.select("cluster_id", "layer", "size", "label", "mean_jaccard").head(20)
        ),
        "n_similar_pairs": result.pairs.n_pairs,
        "method": cfg.clustering.method,
        "threshold": cfg.clustering.threshold,
        "sets": measured.basis,
        "set_size": measured.set_size,
        "set_images": measured.n_images,
    }
    if result.lsh is not None:
        meta.update(
            lsh_bands=result.lsh.bands,
            lsh_rows=result.lsh.rows,
            lsh_candidates=result.lsh.n_candidates,
            lsh_largest_bucket=result.lsh.largest_bucket,
        )
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    group_name="clustering",
    kinds={"duckdb"},
    deps=["neuron_clusters"],
    check_specs=[
        dg.AssetCheckSpec("lsh_pair_recall_at_least_0_95", asset="cluster_quality"),
        dg.AssetCheckSpec("clusters_beat_random_groups", asset="cluster_quality"),
    ],
)
def cluster_quality(study: StudyResource) -> dg.MaterializeResult:
    """Concept gain of clusters vs random same-size groups and single units; LSH vs exact."""
    prepared = study.prepare()
    cfg, store = prepared.study, prepared.store
    measured = stage.load_cluster_sets(prepared)
    # Gains are scored on the units' top images whatever the clustering measured, so a study's
    # figures compare across clustering.sets.
    sets = measured.sets if measured.basis == "top_k" else stage.load_neuron_sets(store)
    # The clusters and pairs neuron_clusters stored are scored as they are; only the exact
    # reference is computed here.
    labels, pairs = quality_stage.stored_clustering(store, sets)
    report = quality_stage.quality(
        sets, labels, pairs, store, cfg.clustering, seed=cfg.seed, cluster_sets=measured
    )
    table = report.table
    store.replace_tables(
        {"cluster_quality": table} if len(table) else {},
        figures=("cluster_quality", report.figures()),
    )
    # Everything below reads the figures as stored: the header and `carto run` read the same.
    stored = quality.figures_of(store.figures(), "cluster_quality")
    kind = "concept" if ("concept_cluster_gain", None) in stored else "class"
    cluster_gain = stored.get((f"{kind}_cluster_gain", None), float("nan"))
    random_gain = stored.get((f"{kind}_random_gain", None), float("nan"))
    pair_recall = stored[("pair_recall", None)]
    checks = [
        dg.AssetCheckResult(
            check_name="lsh_pair_recall_at_least_0_95",
            passed=bool(pair_recall >= 0.95),
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"pair_recall": pair_recall},
        ),
        dg.AssetCheckResult(
            check_name="clusters_beat_random_groups",
            # NaN (no multi-unit cluster) fails: nothing shows the clusters beat chance.
            passed=bool(cluster_gain > random_gain),
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"cluster_gain": cluster_gain, "random_gain": random_gain, "basis": kind},
        ),
    ]
    meta: dict = {}
    for key, value in quality.metadata(store.figures(), "cluster_quality").items():
        meta[key] = dg.MetadataValue.json(value) if isinstance(value, dict) else value
    by_layer = meta.get(f"{kind}_single_unit_gain_by_layer")
    if by_layer is not None:
        # Features and channels of one layer side by side (pseudo-layer gains are per layer).
        versus = features_vs_channels(by_layer.value, meta[f"{kind}_units_gain_0_8_by_layer"].value)
        if versus:
            meta["feature_vs_channel_single_unit_gain"] = dg.MetadataValue.json(versus)
            meta["feature_vs_channel_basis"] = kind
    if len(table):
        meta.update(table_metadata(store, "cluster_quality"))
    return dg.MaterializeResult(metadata=meta, check_results=checks)
