"""The ``dictionary`` asset: one sparse autoencoder per ``features`` layer, trained and cached."""

import dagster as dg
import polars as pl

from carto_assets.assets._metadata import frame_table
from carto_assets.assets.resources import StudyResource
from carto_assets.core.sae.layer import feature_layer_name
from carto_assets.stages.dictionary import prepare_dictionaries
from carto_assets.storage.quality import Figure

#: A dictionary that leaves more of its layer's variance unexplained reconstructs it poorly.
MAX_FVU = 0.2
#: Beyond this share of never-firing features, the dictionary is much smaller than it looks.
MAX_DEAD_SHARE = 0.1


def dictionary_figures(layers: list[dict]) -> list[Figure]:
    """Per feature pseudo-layer: FVU, L0 and the share of dead features."""
    out = []
    for row in layers:
        layer = feature_layer_name(row["layer"])
        out += [
            Figure(
                "fvu",
                row["fvu"],
                "fraction of the layer's activation variance the dictionary leaves unexplained",
                layer=layer,
            ),
            Figure("l0", row["l0"], "mean number of active features per position", layer=layer),
            Figure(
                "dead_share", row["dead_share"], "share of features that never fire", layer=layer
            ),
        ]
    return out


@dg.asset(
    group_name="model",
    kinds={"pytorch"},
    deps=["images", "model"],
    check_specs=[
        dg.AssetCheckSpec("fvu_at_most_0_2", asset="dictionary"),
        dg.AssetCheckSpec("few_dead_features", asset="dictionary"),
    ],
)
def dictionary(context: dg.AssetExecutionContext, study: StudyResource) -> dg.MaterializeResult:
    """Sparse-autoencoder dictionaries of the `features` layers; their features become units."""
    prepared = study.prepare()
    info = prepare_dictionaries(prepared, progress=context.log.info)
    figures = [] if info is None else dictionary_figures(info.layers)
    # No features: no figures, which clears those of an earlier study's dictionaries.
    prepared.store.replace_tables({}, figures=("dictionary", figures))
    if info is None:
        # Without features there is nothing to train; the checks have nothing to fail on.
        return dg.MaterializeResult(
            metadata={"features": "none: the study sets no `features` block"},
            check_results=[
                dg.AssetCheckResult(check_name=name, passed=True, metadata={"layers": 0})
                for name in ("fvu_at_most_0_2", "few_dead_features")
            ],
        )
    rows = pl.DataFrame(info.layers)
    worst_fvu = max(row["fvu"] for row in info.layers)
    worst_dead = max(row["dead_share"] for row in info.layers)
    by_layer = {
        row["layer"]: {
            key: row[key]
            for key in ("n_features", "fvu", "l0", "dead", "dead_share", "n_samples", "seconds")
        }
        for row in info.layers
    }
    return dg.MaterializeResult(
        metadata={
            "layers": frame_table(rows),
            "by_layer": dg.MetadataValue.json(by_layer),
            "n_features": int(rows["n_features"].sum()),
            "sample_images": info.sample_images,
            "sample_seconds": round(info.sample_seconds, 2),
            "sampling_memory_mib": round(info.sample_bytes / 2**20, 1),
            "reused_cached_dictionaries": info.cached,
            "fingerprint": info.fingerprint,
            "dictionary_dir": dg.MetadataValue.path(str(info.folder)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="fvu_at_most_0_2",
                passed=bool(worst_fvu <= MAX_FVU),
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"worst_fvu": worst_fvu, "bound": MAX_FVU},
            ),
            dg.AssetCheckResult(
                check_name="few_dead_features",
                passed=bool(worst_dead <= MAX_DEAD_SHARE),
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"worst_dead_share": worst_dead, "bound": MAX_DEAD_SHARE},
            ),
        ],
    )
