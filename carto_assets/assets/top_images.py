"""The ``top_images`` asset: each neuron's global top-k images, merged from the shards."""

import dagster as dg

from carto_assets.assets._metadata import table_metadata
from carto_assets.assets.resources import StudyResource
from carto_assets.stages.top_images import merge_top_images


@dg.asset(
    group_name="activations",
    kinds={"duckdb"},
    deps=["activations"],
    check_specs=[
        dg.AssetCheckSpec("every_neuron_has_k_top_images", asset="top_images"),
        dg.AssetCheckSpec("activations_finite_and_ordered", asset="top_images"),
    ],
)
def top_images(context: dg.AssetExecutionContext, study: StudyResource) -> dg.MaterializeResult:
    """Each neuron's global top-k images (top_images) and the neuron list (neurons)."""
    prepared = study.prepare()
    cfg, store = prepared.study, prepared.store
    merged = merge_top_images(prepared)
    n_images = merged.n_images_processed
    expected = min(cfg.top_k, n_images)
    per_neuron = store.query(
        "SELECT n.neuron_id, count(t.rank) AS n, coalesce(max(t.rank), 0) AS max_rank "
        "FROM neurons n LEFT JOIN top_images t USING (neuron_id) GROUP BY n.neuron_id"
    )
    bad_order = store.query(
        "SELECT count(*) AS n FROM (SELECT activation, lag(activation) OVER "
        "(PARTITION BY neuron_id ORDER BY rank) AS prev FROM top_images) "
        "WHERE prev < activation OR NOT isfinite(activation)"
    )["n"][0]
    short = per_neuron.filter((per_neuron["n"] != expected) | (per_neuron["max_rank"] != expected))
    checks = [
        dg.AssetCheckResult(
            check_name="every_neuron_has_k_top_images",
            passed=len(short) == 0,
            metadata={"expected_per_neuron": expected, "neurons_off": len(short)},
        ),
        dg.AssetCheckResult(
            check_name="activations_finite_and_ordered", passed=int(bad_order) == 0
        ),
    ]
    context.log.info(
        f"merged {len(merged.layers)} layers, {merged.counts['neurons']} neurons, "
        f"{n_images} images ({merged.n_failed} failed to decode)"
    )
    return dg.MaterializeResult(
        metadata={
            **table_metadata(store, "top_images"),
            "neurons": merged.counts["neurons"],
            "top_k": cfg.top_k,
            "n_images_processed": n_images,
            "n_images_failed_to_decode": merged.n_failed,
            "failed_images": dg.MetadataValue.json(merged.failed),
            "activation_pass_seconds": round(merged.activation_seconds, 2),
        },
        check_results=checks,
    )
