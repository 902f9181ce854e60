"""Reference implementations (test oracles): simple, slow, obviously right.

The product's fast paths are tested against these; nothing under ``carto_assets`` imports
them. ``tests`` is on pytest's ``pythonpath``, so tests import them as ``reference.<module>``;
benchmarks add ``tests`` to ``sys.path`` themselves.
"""
