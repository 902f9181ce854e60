"""Are two study databases the same? Every table and view both hold: columns, row count, and
values (rows sorted by their non-float columns; floats and arrays to 1e-6).

For a refactor that must not change results: map the demo study before and after, then

    .venv/bin/python benchmarks/same_tables.py before/data/carto.duckdb after/data/carto.duckdb

prints the tables only one database holds, the equal ones and, per differing table, the first
column that differs. Exit code 1 when a shared table differs.
"""

from __future__ import annotations

import argparse
import sys

import duckdb
import numpy as np
import polars as pl

FLOATS = (pl.Float32, pl.Float64)
NESTED = (pl.List, pl.Array, pl.Struct, pl.Binary)


def _names(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
    ).fetchall()
    return {name for (name,) in rows}


def _close(x: np.ndarray, y: np.ndarray) -> bool:
    return x.shape == y.shape and np.allclose(x, y, atol=1e-6, rtol=1e-6, equal_nan=True)


def difference(a: pl.DataFrame, b: pl.DataFrame) -> str | None:
    """Why two tables differ, or None when they are the same."""
    if a.columns != b.columns:
        return f"columns {a.columns} vs {b.columns}"
    if a.height != b.height:
        return f"{a.height} rows vs {b.height}"
    keys = [c for c, t in a.schema.items() if not isinstance(t, NESTED) and t not in FLOATS]
    if keys:
        a, b = (f.sort(keys, nulls_last=True, maintain_order=True) for f in (a, b))
    for column, dtype in a.schema.items():
        x, y = a[column], b[column]
        if dtype in FLOATS:
            xs, ys = x.to_numpy().astype(float), y.to_numpy().astype(float)
            if not _close(xs, ys):
                return f"column {column}: largest difference {np.nanmax(np.abs(xs - ys)):.3g}"
        elif isinstance(dtype, (pl.List, pl.Array)):
            try:
                same = _close(np.array(x.to_list(), float), np.array(y.to_list(), float))
            except (TypeError, ValueError):  # ragged or not numbers
                same = x.to_list() == y.to_list()
            if not same:
                return f"column {column}"
        elif not x.equals(y):
            return f"column {column}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--skip", nargs="*", default=[], help="tables not to compare")
    args = parser.parse_args()
    a = duckdb.connect(args.a, read_only=True)
    b = duckdb.connect(args.b, read_only=True)
    names_a, names_b = _names(a), _names(b)
    print(f"only in {args.a}: {sorted(names_a - names_b)}")
    print(f"only in {args.b}: {sorted(names_b - names_a)}")
    equal, differ = [], []
    for name in sorted((names_a & names_b) - set(args.skip)):
        fa, fb = (con.sql(f'SELECT * FROM "{name}"').pl() for con in (a, b))
        why = difference(fa, fb)
        (differ if why else equal).append((name, why or f"{fa.height:,} rows"))
    print(f"equal ({len(equal)}): " + ", ".join(f"{n} ({w})" for n, w in equal))
    print(f"differ ({len(differ)}):")
    for name, why in differ:
        print(f"  {name}: {why}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
