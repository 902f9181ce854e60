"""``carto compare``: check the studies, then materialize the comparison's assets in one run.

The run is recorded in the given Dagster instance, so the UI shows it; the comparison's
database is held by its writer lock for the whole run.
"""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

from carto_assets.assets.events import QUIET_RUN_CONFIG
from carto_assets.comparison_definitions import COMPARE_JOB, build_comparison_definitions
from carto_assets.stages.comparison_studies import check_studies
from carto_assets.stages.prepared import PreparedComparison
from carto_assets.storage.store import describe_writer, exclusive_writer
from carto_assets.study.comparison import Comparison, ComparisonError


def _first_error(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.event_specific_data is not None:
            error = event.event_specific_data.error  # type: ignore[union-attr]
            while error is not None and error.cause is not None:
                error = error.cause
            if error is not None:
                return f"{event.step_key}: {error.message.strip()}"
    return "see the run's logs in the Dagster UI"


def run_comparison(
    comparison_file: str,
    instance: dg.DagsterInstance,
    say: Callable[[str], None] = print,
    prepared: PreparedComparison | None = None,
) -> Comparison:
    """Materialize every asset of the comparison; raises :class:`ComparisonError` (studies
    missing, images differ, a step failed) with a one-line message.

    ``prepared``: the comparison file already read (``carto compare`` checks it first)."""
    prepared = prepared or PreparedComparison.load(comparison_file)
    comparison = prepared.comparison
    studies, _, images = check_studies(prepared)
    say(
        f"comparing {len(studies)} studies over {len(images[0])} images: "
        + ", ".join(f"'{s.name}'" for s in studies)
    )
    defs = build_comparison_definitions(comparison_file)
    owner = describe_writer(f"`carto compare` of '{comparison.name}'")
    with exclusive_writer(comparison.database_path, owner, wait_s=0.0):
        result = defs.resolve_job_def(COMPARE_JOB).execute_in_process(
            instance=instance, raise_on_error=False, run_config=QUIET_RUN_CONFIG
        )
    if not result.success:
        raise ComparisonError(f"the comparison failed in {_first_error(result)}")
    return comparison
