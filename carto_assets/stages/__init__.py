"""Stage functions behind the assets, one module per asset (or asset group) and named after it,
in pipeline order (no dagster imports).

``images`` -> ``model`` -> ``dictionary`` -> ``activations`` (one shard) -> ``top_images`` ->
``class_importance``, ``clustering`` -> ``cluster_quality``, ``embedding``, ``example_patches``
-> ``concept_graph`` (its chunks, with ``explanation_chunk``) -> ``explanations``. Each takes
the step's :class:`~carto_assets.stages.prepared.PreparedStudy` (the study, its store and what
earlier steps stored, loaded once) or just what it needs of it, and returns a typed result, so
the same pipeline runs from a notebook or a test without Dagster. The asset modules only call
these and attach metadata.
"""
