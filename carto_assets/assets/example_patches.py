"""The ``example_patches`` asset: each neuron's top images cropped around the argmax."""

import base64

import dagster as dg
import polars as pl

from carto_assets.assets._metadata import frame_table, table_metadata
from carto_assets.assets.resources import StudyResource
from carto_assets.stages import example_patches as patches


@dg.asset(group_name="graph", kinds={"duckdb", "pytorch"}, deps=["top_images"])
def example_patches(
    context: dg.AssetExecutionContext, study: StudyResource
) -> dg.MaterializeResult:
    """Each neuron's top images cropped around the argmax, sized by the layer's receptive field."""
    prepared = study.prepare()
    cfg, store = prepared.study, prepared.store
    written = patches.example_patches(prepared, progress=context.log.info)
    patches.publish_patches(store, written)
    # A strip of the first neurons' strongest patches, shown inline in the UI.
    first = store.query(
        "SELECT neuron_id, png FROM example_patches WHERE rank = 1 ORDER BY neuron_id LIMIT 8"
    )
    strip = " ".join(
        f"![n{n}](data:image/png;base64,{base64.b64encode(png).decode()})"
        for n, png in zip(first["neuron_id"], first["png"])
    )
    rf = pl.DataFrame([{"layer": k, **v} for k, v in written.receptive_fields.items()])
    return dg.MaterializeResult(
        metadata={
            **table_metadata(store, "example_patches", preview_rows=0),
            "receptive_fields": frame_table(rf),
            "patches_per_neuron": cfg.graph.patches_per_neuron,
            "patch_size_px": cfg.graph.patch_size,
            "first_neurons_top_patch": dg.MetadataValue.md(strip),
        }
    )
