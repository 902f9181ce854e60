"""MinHash + LSH settings, declared once: a study's ``clustering`` block and a comparison file
both take ``num_perm``, ``bands`` and ``rows``, with these constraints and this rule."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

NumPerm = Annotated[int, Field(ge=2, le=4096, description="MinHash permutations.")]
Bands = Annotated[
    int | None,
    Field(
        ge=1,
        description="LSH bands; give bands and rows both or neither (neither: derived from "
        "the threshold, favouring recall).",
    ),
]
Rows = Annotated[int | None, Field(ge=1, description="LSH rows per band; see bands.")]


def banding_problem(num_perm: int, bands: int | None, rows: int | None) -> str | None:
    """What ``bands`` must be (the "must be ..." of a message), or None when it fits."""
    if (bands is None) != (rows is None):
        return "given together with rows (both or neither)"
    if bands is not None and rows is not None and bands * rows > num_perm:
        return (
            f"such that bands x rows <= num_perm ({bands} x {rows} = {bands * rows} > {num_perm})"
        )
    return None
