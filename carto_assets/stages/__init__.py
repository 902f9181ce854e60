"""Stage functions behind the assets, in pipeline order (no dagster imports).

``manifest`` (images) -> ``model`` -> ``activations`` (one shard) -> ``merge`` (top images) ->
``clustering`` -> ``embedding`` -> ``graph`` (patches, concept graph). Each takes a
:class:`~carto_assets.study.Study` (and the study's store), reads and writes the study's files
and tables, and returns a typed result, so the same pipeline runs from a notebook or a test
without Dagster. The asset modules only call these and attach metadata.
"""
