"""The ``carto`` command line: run, check, explain, compare."""
