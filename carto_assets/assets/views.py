"""The ``views`` asset: the linked interactive views, exported as offline HTML."""

import base64

import dagster as dg

from carto_assets.assets.resources import StudyResource
from carto_assets.study import Study


def study_info(cfg: Study) -> dict:
    """What the page header says about the study beyond its tables (its quality figures are in
    the ``study_quality`` table)."""
    dataset = cfg.dataset.kind
    if cfg.dataset.kind == "imagefolder" and cfg.dataset.path:
        dataset = f"imagefolder {cfg.dataset.path}"
    weights = cfg.weights if cfg.model.startswith("torchvision:") else "trained on the dataset"
    return {"name": cfg.name, "model": cfg.model, "weights": weights, "dataset": dataset}


@dg.asset(
    group_name="views",
    kinds={"html", "altair"},
    deps=[
        "neuron_projection",
        "neuron_clusters",
        "cluster_quality",
        "example_patches",
        "concept_graph",
        "class_audit",
    ],
)
def views(study: StudyResource) -> dg.MaterializeResult:
    """Neuron Projection View, Graph View and detail panel, linked, as one offline index.html."""
    import carto_viz

    cfg = study.load()
    result = carto_viz.export_views(
        cfg.database_path,
        cfg.views_path,
        study_info=study_info(cfg),
        memory_limit=cfg.database_memory_limit,
    )
    picture = base64.b64encode(result.png_bytes).decode()
    return dg.MaterializeResult(
        metadata={
            "index_html": dg.MetadataValue.path(str(result.html_path)),
            "page_bytes": result.page_bytes,
            "page_mib": round(result.page_bytes / 2**20, 2),
            "n_neurons": result.n_neurons,
            "files": result.n_files,
            "patch_sheets": result.n_sheets,
            "patch_mib": round(result.patch_bytes / 2**20, 2),
            "chunks": str(result.sidecar_dir) if result.sidecar_dir else "inline",
            "specs": dg.MetadataValue.json([str(p) for p in result.spec_paths]),
            "picture": dg.MetadataValue.md(f"![views](data:image/png;base64,{picture})"),
        }
    )
