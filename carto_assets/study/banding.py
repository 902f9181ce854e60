"""MinHash + LSH settings: a study's ``clustering`` block and a comparison file both take
``num_perm``, ``bands`` and ``rows`` (typed in :mod:`carto_assets.study.types`) and this rule."""

from __future__ import annotations

from carto_assets.study.types import Bands, NumPerm, Rows

__all__ = ["Bands", "NumPerm", "Rows", "banding_problem"]


def banding_problem(num_perm: int, bands: int | None, rows: int | None) -> str | None:
    """What ``bands`` must be (the "must be ..." of a message), or None when it fits."""
    if (bands is None) != (rows is None):
        return "given together with rows (both or neither)"
    if bands is not None and rows is not None and bands * rows > num_perm:
        return (
            f"such that bands x rows <= num_perm ({bands} x {rows} = {bands * rows} > {num_perm})"
        )
    return None
