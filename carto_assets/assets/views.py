"""The ``views`` asset: the linked interactive views, exported as offline HTML."""

import base64

import dagster as dg

from carto_assets.resources import StudyResource


@dg.asset(
    group_name="views",
    kinds={"html", "altair"},
    deps=["neuron_projection", "neuron_clusters", "example_patches", "concept_graph"],
)
def views(study: StudyResource) -> dg.MaterializeResult:
    """Neuron Projection View, Graph View and detail panel, linked, as one offline index.html."""
    import carto_viz

    cfg = study.load()
    result = carto_viz.export_views(cfg.database_path, cfg.views_path)
    picture = base64.b64encode(result.png_bytes).decode()
    return dg.MaterializeResult(
        metadata={
            "index_html": dg.MetadataValue.path(str(result.html_path)),
            "page_bytes": result.page_bytes,
            "page_mib": round(result.page_bytes / 2**20, 2),
            "n_neurons": result.n_neurons,
            "patches_sidecar": str(result.sidecar_dir) if result.sidecar_dir else "inline",
            "specs": dg.MetadataValue.json([str(p) for p in result.spec_paths]),
            "picture": dg.MetadataValue.md(f"![views](data:image/png;base64,{picture})"),
        }
    )
