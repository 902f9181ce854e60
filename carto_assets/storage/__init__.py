"""Where results live: the DuckDB store, atomic files, partition keys, fingerprints, quality
figures."""
