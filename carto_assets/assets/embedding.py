"""Embedding assets: co-occurrence, skip-gram neuron embedding, UMAP projection + neighbours."""

import dagster as dg
import numpy as np
import polars as pl

from carto_assets.assets._metadata import table_metadata
from carto_assets.assets.resources import StudyResource
from carto_assets.stages import embedding as stage
from carto_assets.storage import quality


@dg.asset(group_name="embedding", kinds={"duckdb"}, deps=["top_images"])
def cooccurrence(study: StudyResource) -> dg.MaterializeResult:
    """For every pair of neurons (any layers) sharing top images, how many they share."""
    store = study.prepare().store
    store.replace_tables({"cooccurrence": stage.COOCCURRENCE_SELECT})
    summary = store.query(
        "SELECT (SELECT count(*) FROM neurons) AS n, max(count) AS max_count, "
        "(SELECT count(*) FROM (SELECT neuron_a FROM cooccurrence UNION "
        "SELECT neuron_b FROM cooccurrence)) AS touched FROM cooccurrence"
    )
    n, touched = int(summary["n"][0]), int(summary["touched"][0])
    return dg.MaterializeResult(
        metadata={
            **table_metadata(store, "cooccurrence"),
            "neurons_with_no_cooccurrence": n - touched,
            "max_count": int(summary["max_count"][0] or 0),
        }
    )


@dg.asset(
    group_name="embedding",
    kinds={"duckdb", "pytorch"},
    # Trained on top_images' sentences (linear in top-k entries), not on the quadratic
    # cooccurrence table; clusters are only read for the metadata's closeness figure.
    deps=["top_images", "neuron_clusters"],
    check_specs=[dg.AssetCheckSpec("vectors_finite", asset="neuron_embedding")],
)
def neuron_embedding(
    context: dg.AssetExecutionContext, study: StudyResource
) -> dg.MaterializeResult:
    """Skip-gram with negative sampling over each top image's neurons: one vector per neuron."""
    prepared = study.prepare()
    cfg, store = prepared.study, prepared.store
    result = stage.train_embedding(store, cfg.embedding, cfg.seed, progress=context.log.info)
    closeness = stage.cluster_closeness(store, result.vectors, seed=cfg.seed)
    store.replace_tables(
        {"neuron_embedding": result.table},
        figures=("neuron_embedding", stage.closeness_figures(closeness)),
    )
    finite = bool(np.isfinite(result.vectors).all())
    meta = {
        **table_metadata(store, "neuron_embedding", preview_rows=3),
        "dim": cfg.embedding.dim,
        "epochs": cfg.embedding.epochs,
        "window": cfg.embedding.window,
        "epoch_losses": dg.MetadataValue.json([round(x, 5) for x in result.epoch_losses]),
        "loss_plot": dg.MetadataValue.md(
            stage.png_markdown(stage.loss_chart(result.epoch_losses), "loss per epoch")
        ),
        "isolated_neurons": result.n_isolated,
        "training_seconds": round(result.seconds, 2),
    }
    meta.update(quality.metadata(store.figures(), "neuron_embedding"))
    return dg.MaterializeResult(
        metadata=meta,
        check_results=[dg.AssetCheckResult(check_name="vectors_finite", passed=finite)],
    )


@dg.asset(
    group_name="embedding",
    kinds={"duckdb", "umap"},
    deps=["neuron_embedding"],
    check_specs=[
        dg.AssetCheckSpec("projection_finite_and_complete", asset="neuron_projection"),
    ],
)
def neuron_projection(study: StudyResource) -> dg.MaterializeResult:
    """UMAP of the embedding to 2-D, and each neuron's nearest neighbours in embedding space."""
    prepared = study.prepare()
    cfg, store = prepared.study, prepared.store
    vectors = stage.load_vectors(store)
    projection, neighbors = stage.projection_frames(vectors, cfg.embedding, cfg.seed)
    store.replace_tables({"neuron_projection": projection, "neuron_neighbors": neighbors})
    neurons = store.query("SELECT neuron_id, layer, layer_index FROM neurons")
    ok = bool(
        len(projection) == len(vectors)
        and projection.select(pl.col("x").is_finite().all() & pl.col("y").is_finite().all()).item()
        and neighbors["neuron_id"].n_unique() == len(vectors)
    )
    return dg.MaterializeResult(
        metadata={
            **table_metadata(store, "neuron_projection"),
            "neighbors_rows": len(neighbors),
            "preview": dg.MetadataValue.md(
                stage.png_markdown(stage.projection_chart(projection, neurons), "neuron projection")
            ),
        },
        check_results=[dg.AssetCheckResult(check_name="projection_finite_and_complete", passed=ok)],
    )
