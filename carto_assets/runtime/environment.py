"""What a run takes from the machine it runs on, named once: the environment variables the
commands and definitions read, and DuckDB's default memory limit.

Nothing here imports anything heavy: the study models, the CLI and the storage all use it.
"""

from __future__ import annotations

#: The study file (a YAML path) of ``carto run``/``check``/``explain`` and the Dagster
#: definitions; unset: the built-in demo study.
STUDY_ENV_VAR = "CARTO_STUDY"
#: The comparison file of the comparison's Dagster definitions; unset: the demo comparison.
COMPARISON_ENV_VAR = "CARTO_COMPARISON"
#: Dagster's own instance folder (runs, event logs), which the ``carto`` commands default to
#: ``./.dagster``.
DAGSTER_HOME_ENV_VAR = "DAGSTER_HOME"
#: numba's compiled-function cache (UMAP's kernels), kept in the project folder.
NUMBA_CACHE_ENV_VAR = "NUMBA_CACHE_DIR"

#: DuckDB's memory limit for a store's connections unless the study sets
#: ``database_memory_limit``. DuckDB's own default is 80% of the machine's memory, which its
#: sorts, joins and aggregates then use: the ``cooccurrence`` join took 1.0 GB and sorting
#: ``example_patches``' PNGs 0.95 GB on googlenet's 5,488 neurons; under this limit they spill
#: to disk beside the database and took 0.5 GB each at the same speed (issue 12's rehearsal).
#: 256MB was too little for that sort (DuckDB's out-of-memory error).
DEFAULT_MEMORY_LIMIT = "512MB"
