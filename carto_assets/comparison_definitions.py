"""The comparison's Dagster code location: its assets, one job, the comparison resource.

The comparison comes from ``CARTO_COMPARISON`` (a YAML path); without it the demo comparison
(``examples/compare/demo.yaml``: the built-in demo study after its first epoch against the
final one) is loaded. An invalid comparison file fails here, when the definitions load; the
studies' databases are only read when the assets run.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from carto_assets.assets.comparison import ASSETS, ComparisonResource
from carto_assets.assets.events import carto_events
from carto_assets.assets.hooks import with_release_memory
from carto_assets.runtime.environment import COMPARISON_ENV_VAR

COMPARE_JOB = "compare"
#: The demo comparison (``make compare-demo``), loaded when ``CARTO_COMPARISON`` is unset.
DEMO_COMPARISON = Path(__file__).resolve().parents[1] / "examples" / "compare" / "demo.yaml"


#: Every asset, each followed by the study's ``release_memory`` hook.
ALL_ASSETS = with_release_memory(ASSETS)


def build_comparison_definitions(comparison_file: str | Path) -> dg.Definitions:
    """Definitions for one comparison file; validates it (not its studies' results) first."""
    resource = ComparisonResource(comparison_file=str(comparison_file))
    resource.load()  # raises ComparisonError naming the bad field
    return dg.Definitions(
        assets=ALL_ASSETS,
        jobs=[
            dg.define_asset_job(
                COMPARE_JOB,
                selection=dg.AssetSelection.assets(*ASSETS),
                description="Compare the studies: matches, layers, concepts, the joint map, "
                "the page.",
            )
        ],
        resources={"comparison": resource},
        loggers={"carto_events": carto_events},
    )


defs = build_comparison_definitions(os.environ.get(COMPARISON_ENV_VAR) or DEMO_COMPARISON)
