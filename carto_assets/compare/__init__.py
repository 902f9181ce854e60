"""Comparing studies: two (or more) networks or checkpoints mapped over the same images.

A comparison file names the studies; ``carto compare`` materializes the comparison's assets
(:mod:`carto_assets.compare.definitions`) into its own DuckDB database from the studies' stored
results, without re-running them:

- :mod:`~carto_assets.compare.config`: the comparison file (frozen pydantic models);
- :mod:`~carto_assets.compare.images`: the refusal of studies whose images differ;
- :mod:`~carto_assets.compare.matching`: units matched across models (MinHash + one LSH index,
  exact Jaccard confirmation, best and mutual matches);
- :mod:`~carto_assets.compare.layers`: match shares per pair of layers against a
  shuffled-image null; :mod:`~carto_assets.compare.cka`: linear CKA;
- :mod:`~carto_assets.compare.concepts`: clusters shared by both, or only in one;
- :mod:`~carto_assets.compare.embedding`: one embedding and map of every model's units;
- :mod:`~carto_assets.compare.stage`: reading the studies and writing the tables.

Only ``assets`` and ``definitions`` import dagster.
"""
