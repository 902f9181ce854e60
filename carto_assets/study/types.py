"""The settings' field types, declared once: every config (a study's blocks, a comparison)
types a seed, a threshold, a batch size, ... with these, so a bound is the same everywhere and
is the one the run relies on.

A field adds its default and its own description (``seed: Seed = Field(1, description=...)``);
the type brings the range. :mod:`carto_assets.study.messages` words a bad value from it
(``... must be an integer in [0, 4294967295], got 1099511627776``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

#: The largest seed numpy's legacy ``RandomState`` takes, which datasketch's MinHash
#: permutations (a study's ``clustering.seed``, a comparison's matching) and UMAP's
#: ``random_state`` (the study's and the comparison's ``seed``) are drawn from; torch and
#: ``numpy.random.default_rng`` take more, but one bound holds for every seed.
MAX_SEED = 2**32 - 1
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


@dataclass(frozen=True)
class Allowed:
    """Field metadata: what the field accepts, in words (the error's "must be ...").

    Numbers and choices need none: their message is worded from the field's constraints.
    """

    text: str


Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
OptionalSeed = Annotated[int | None, Field(ge=0, le=MAX_SEED)]
#: Jaccard similarity of two top-k image sets at which they count as similar.
Threshold = Annotated[float, Field(gt=0.0, le=1.0)]
#: A share of something that must hold at least a little of it.
Share = Annotated[float, Field(gt=0.0, le=1.0)]
LearningRate = Annotated[float, Field(gt=0.0, le=10.0)]
BatchSize = Annotated[int, Field(ge=1)]
Epochs = Annotated[int, Field(ge=1)]
DatabasePath = Annotated[str, Allowed("a path ending in .duckdb"), Field(pattern=r"\.duckdb$")]
OptionalDatabasePath = Annotated[
    str | None, Allowed("a path ending in .duckdb"), Field(pattern=r"\.duckdb$")
]
Folder = Annotated[str | None, Allowed("a folder path")]

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


class InvalidField(ValueError):
    """A broken rule that a constraint cannot express, raised by the configs' validators.

    ``field`` is the dotted path relative to the model being validated (``None``: the field
    that a field validator checks); the error message adds the path of that model.
    """

    def __init__(self, field: str | None, must_be: str, value: Any) -> None:
        super().__init__(f"{field or 'value'} must be {must_be}, got {value!r}")
        self.field, self.must_be, self.value = field, must_be, value
