"""The comparison file: which studies, where the results go, and the matching's settings.

A comparison is a YAML file::

    name: epoch1-vs-final
    studies: [epoch1.yaml, final.yaml]   # two or more study files, or `demo` (the built-in one)
    database: compare.duckdb             # default: <name>.duckdb beside the file
    threshold: 0.3

Relative paths resolve against the comparison file's folder. Nothing here imports dagster or
torch.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from carto_assets.runtime.environment import COMPARISON_ENV_VAR
from carto_assets.study import (
    DEMO_STUDY,
    EmbeddingConfig,
    Study,
    StudyError,
    load_study,
    study_from_dict,
)
from carto_assets.study.banding import banding_problem
from carto_assets.study.loading import ConfigKind, config_from_dict, load_config
from carto_assets.study.messages import ConfigError
from carto_assets.study.types import (
    MAX_SEED,
    NAME_PATTERN,
    Allowed,
    Bands,
    BatchSize,
    Folder,
    InvalidField,
    NumPerm,
    OptionalDatabasePath,
    Rows,
    Seed,
    Threshold,
)

__all__ = ["COMPARISON_ENV_VAR", "DEMO_ENTRY", "Comparison", "ComparisonError"]

#: The study entry that names the built-in demo study (its paths resolve against the
#: current directory, as ``carto run`` without ``--study`` does).
DEMO_ENTRY = "demo"


class ComparisonError(ConfigError):
    """A comparison cannot be made; the message names the field, study or image at fault."""


class Comparison(BaseModel):
    """One validated comparison. Build it with :func:`load_comparison`."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: Annotated[str, Allowed("letters, digits, '_', '-' or '.'")] = Field(
        pattern=NAME_PATTERN, description="Names the comparison in the page and in messages."
    )
    studies: tuple[str, ...] = Field(
        description="Two or more study files (paths relative to the comparison file), or "
        "`demo` for the built-in demo study. The first is A, the second B on the page; every "
        "pair is compared in the tables.",
    )
    database: OptionalDatabasePath = Field(
        None,
        description="The comparison's DuckDB database; default <name>.duckdb beside the file.",
    )
    views_dir: Folder = Field(
        None,
        description="Folder of the compare page (index.html); default <database stem>_views "
        "beside the database.",
    )
    threshold: Threshold = Field(
        0.3,
        description="Jaccard similarity of two units' top-k image sets (one from each model) at "
        "which they count as a match; a unit's best match is its most similar unit of the "
        "other model at or above it.",
    )
    concept_threshold: Threshold = Field(
        0.3,
        description="The same for concepts (clusters) matched by images (where a study has "
        "no words; with words, concepts match by formula): Jaccard of the union of their "
        "members' top images; a concept with no counterpart at or above it is only in its model.",
    )
    num_perm: NumPerm = 128
    bands: Bands = None
    rows: Rows = None
    seed: Seed = Field(
        1,
        description="Seeds the MinHash permutations (the same for every study), the shuffled "
        "nulls (draw i matches with seed + i), the CKA image sample and the joint embedding.",
    )
    null_draws: int = Field(
        5,
        ge=0,
        le=1000,
        description="Shuffled-image null: each draw relabels the other study's images with a "
        "random permutation (every unit keeps its set size and its model's structure, the "
        "correspondence across models is lost) and matches again; layer_matches.null_share is "
        "the mean share over the draws. 0: no null.",
    )
    cka_images: int = Field(
        500,
        ge=0,
        le=100_000,
        description="Images (a seeded sample of the shared images) on which each study's "
        "prepared network is run to measure linear CKA between layers; 0: no CKA (then the "
        "studies' networks are not needed).",
    )
    batch_size: BatchSize = Field(128, description="Images per forward pass for CKA.")
    patches_per_unit: int = Field(
        6,
        ge=0,
        le=1000,
        description="Example patches per unit copied from the studies into the comparison "
        "(the page shows a unit's and its match's side by side).",
    )
    embedding: EmbeddingConfig = Field(
        default_factory=EmbeddingConfig,
        description="The joint embedding of every study's units and its 2-D map (the study's "
        "embedding block; `neighbors` is the number of neighbours from other studies listed).",
    )
    base_dir: str = Field(
        ".", description="Folder that relative paths resolve against (set by the loader)."
    )

    @field_validator("studies", mode="before")
    @classmethod
    def _two_or_more(cls, value: Any) -> Any:
        if (
            not isinstance(value, list | tuple)
            or len(value) < 2
            or not all(isinstance(v, str) and v for v in value)
        ):
            raise InvalidField(None, "a list of two or more study files", value)
        twice = [entry for entry, n in Counter(value).items() if n > 1]
        if twice:
            raise InvalidField(
                None, f"a list naming each study once ({', '.join(map(repr, twice))} twice)", value
            )
        return tuple(value)

    @field_validator("embedding", mode="before")
    @classmethod
    def _empty_means_defaults(cls, value: Any) -> Any:
        return {} if value is None else value

    @model_validator(mode="after")
    def _banding_and_null_seeds_fit(self) -> Comparison:
        problem = banding_problem(self.num_perm, self.bands, self.rows)
        if problem:
            raise InvalidField("bands", problem, self.bands)
        # The null's draw i matches with MinHash seed seed + i, which must stay a seed too.
        if self.null_draws and self.seed + self.null_draws - 1 > MAX_SEED:
            raise InvalidField(
                "seed",
                f"at most {MAX_SEED - self.null_draws + 1} with null_draws {self.null_draws} "
                f"(draw i matches with seed + i, at most {MAX_SEED})",
                self.seed,
            )
        return self

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    @property
    def database_path(self) -> Path:
        return self.resolve(self.database or f"{self.name}.duckdb")

    @property
    def views_path(self) -> Path:
        if self.views_dir is not None:
            return self.resolve(self.views_dir)
        db = self.database_path
        return db.parent / f"{db.stem}_views"

    def study_files(self) -> list[str]:
        """Each study entry as a path ('' for the built-in demo study)."""
        return ["" if s == DEMO_ENTRY else str(self.resolve(s)) for s in self.studies]

    def load_studies(self) -> list[Study]:
        """The studies, validated; raises :class:`ComparisonError` naming a bad one."""
        studies = []
        for entry, path in zip(self.studies, self.study_files(), strict=True):
            try:
                studies.append(
                    study_from_dict(DEMO_STUDY, base_dir=Path.cwd())
                    if not path
                    else load_study(path)
                )
            except StudyError as exc:
                raise ComparisonError(
                    f"comparison field 'studies': study {entry!r}: {exc}"
                ) from None
        names: dict[str, str] = {}
        for entry, study in zip(self.studies, studies, strict=True):
            if study.name in names:
                raise ComparisonError(
                    f"comparison field 'studies': {names[study.name]!r} and {entry!r} are both "
                    f"named {study.name!r}; give them distinct names (study field 'name'), "
                    "which label them in the tables"
                )
            names[study.name] = entry
        databases = [s.database_path for s in studies]
        if self.database_path in databases:
            raise ComparisonError(
                f"comparison field 'database': {self.database_path} is a study's database; "
                "the comparison needs its own"
            )
        return studies


#: Comparison files, for the loader they share with studies.
COMPARISON = ConfigKind("comparison", Comparison, ComparisonError)


def comparison_from_dict(raw: Any, base_dir: str | Path = ".") -> Comparison:
    """Validate a comparison mapping (as parsed from YAML)."""
    return config_from_dict(COMPARISON, raw, base_dir)


def load_comparison(path: str | Path) -> Comparison:
    """Load and validate the comparison file at ``path``."""
    return load_config(COMPARISON, path)
