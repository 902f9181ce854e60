"""The study's own fields and the rules that span its blocks (:mod:`carto_assets.study.blocks`
holds the blocks), the one description of every field.

Each field carries its type, default, allowed range (``Field(ge=1)``, ``Literal``, a pattern)
and meaning (``description``); validators hold the rules that span fields. A field whose rule
is not a number or a choice says what it accepts with :class:`Allowed`, which
:mod:`carto_assets.study.messages` uses to word the error.

Nothing here imports dagster or torch, so a study can be checked anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from carto_assets.core.validate import check_int
from carto_assets.runtime.environment import DEFAULT_MEMORY_LIMIT
from carto_assets.study.blocks import (
    AuditConfig,
    ClusteringConfig,
    DatasetConfig,
    EmbeddingConfig,
    ExplainConfig,
    FeaturesConfig,
    GraphConfig,
    LabelsConfig,
    TrainingConfig,
)
from carto_assets.study.types import (
    NAME_PATTERN,
    Allowed,
    BatchSize,
    DatabasePath,
    Folder,
    InvalidField,
    Seed,
    Share,
)

DEVICES = ("auto", "cpu", "cuda")
WEIGHTS_KEYWORDS = ("none", "DEFAULT")
#: A study file may not set these: the loader does.
LOADER_FIELDS = ("base_dir",)
MAX_SHARDS = 100_000


class Study(BaseModel):
    """One validated study. Build it with :func:`load_study` or :func:`study_from_dict`."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: Annotated[str, Allowed("letters, digits, '_', '-' or '.' (no spaces)")] = Field(
        "shapes-demo",
        pattern=NAME_PATTERN,
        description="Names the study in the views and in messages.",
    )
    model: Annotated[
        str, Allowed("'builtin' or 'torchvision:<name>', e.g. torchvision:resnet18")
    ] = Field(
        "builtin",
        pattern=r"^(builtin|torchvision:[A-Za-z0-9_]+)$",
        description="builtin (a small CNN trained on the dataset) or torchvision:<name>.",
    )
    weights: Annotated[str, Allowed("none, DEFAULT, a weights enum name or a checkpoint path")] = (
        Field(
            "none",
            min_length=1,
            description="torchvision only: none, DEFAULT (or any weights enum member name), or a "
            "path to a local checkpoint (a state dict, loaded with weights_only=True).",
        )
    )
    dataset: Annotated[
        DatasetConfig,
        Allowed("a dataset kind or a mapping with 'kind' (and size/image_size/path)"),
    ] = Field(default_factory=DatasetConfig, description=DatasetConfig.__doc__)
    layers: tuple[str, ...] | str = Field(
        "auto", description="auto or a list of module names from model.named_modules()."
    )
    device: Annotated[str, Allowed("auto, cpu, cuda or cuda:<index>")] = Field(
        "auto", pattern=rf"^({'|'.join(DEVICES)}|cuda:\d+)$", description="Where the model runs."
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="Forward-pass precision: fp32, or bf16/fp16 under torch.autocast (GPUs; "
        "top-k then holds values rounded to that precision, so near-ties may order "
        "differently).",
    )
    channels_last: Annotated[bool, Allowed("true or false")] = Field(
        False,
        description="Run the model in channels_last memory format (faster convolutions on "
        "recent GPUs).",
    )
    loader_workers: int = Field(
        0,
        ge=0,
        le=256,
        description="DataLoader worker processes that decode images for the activation pass "
        "(0 = the main process, right for the built-in sources; image folders on a GPU want "
        "several).",
    )
    batch_size: BatchSize = Field(128, description="Images per forward pass.")
    shards: int = Field(
        4,
        ge=1,
        le=MAX_SHARDS,
        description="Number of activation partitions; images are split into contiguous shards.",
    )
    shard_size: int | None = Field(
        None,
        ge=1,
        description="Images per activation shard; when set it wins over shards: image i goes "
        "to shard i // shard_size, so images appended to a study land in new shards and the "
        "shards computed before stay valid. shards is then derived "
        "(ceil(dataset.size / shard_size)).",
    )
    top_k: int = Field(50, ge=1, le=100_000, description="Top images kept per neuron.")
    mass_fraction: Share = Field(
        0.03,
        description="Channels whose normalized activation mass adds up to this fraction of an "
        "image's layer total count as carrying the image (Summit's rule; the paper used 3%).",
    )
    seed: Seed = Field(
        0,
        description="Seeds the rendered images, the training (unless training.seed is set) and the "
        "sampling.",
    )
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, description=TrainingConfig.__doc__
    )
    clustering: ClusteringConfig = Field(
        default_factory=ClusteringConfig, description=ClusteringConfig.__doc__
    )
    embedding: EmbeddingConfig = Field(
        default_factory=EmbeddingConfig, description=EmbeddingConfig.__doc__
    )
    graph: GraphConfig = Field(default_factory=GraphConfig, description=GraphConfig.__doc__)
    explain: ExplainConfig = Field(default_factory=ExplainConfig, description=ExplainConfig.__doc__)
    features: FeaturesConfig | None = Field(
        None,
        description="Dictionary features (layers, expansion, k, samples, sample_images, "
        "epochs, batch_size, learning_rate); unset: channels only.",
    )
    labels: LabelsConfig = Field(default_factory=LabelsConfig, description=LabelsConfig.__doc__)
    audit: AuditConfig = Field(default_factory=AuditConfig, description=AuditConfig.__doc__)
    annotations: Annotated[str | None, Allowed("a path to a .csv or .parquet file")] = Field(
        None,
        pattern=r"(?i)\.(csv|parquet)$",
        description="Your own per-image annotations, a CSV (UTF-8) or Parquet table: a column "
        "`path` (the image's path inside the image folder, as images.source has it) and one "
        "column per concept; a cell may hold several values separated by `|`, an empty cell "
        "none. Relative paths resolve against the study file's folder. None: the world's "
        "ground truth and the class only.",
    )
    database: DatabasePath = Field(
        "data/carto.duckdb",
        description="DuckDB database file. Relative paths resolve against the study file's "
        "folder (or the current directory for the built-in study).",
    )
    database_memory_limit: Annotated[
        str, Allowed(f"a size such as {DEFAULT_MEMORY_LIMIT} or 2GB")
    ] = Field(
        DEFAULT_MEMORY_LIMIT,
        pattern=r"^\d+(\.\d+)?\s*([KMGT]i?B)$",
        description="DuckDB's memory limit for the summaries' queries (sorts, joins and "
        "aggregates beyond it spill to a temporary folder beside the database).",
    )
    data_dir: Folder = Field(
        None,
        description="Folder for per-shard Parquet and checkpoints; default: "
        "<database stem>_files next to the database.",
    )
    views_dir: Folder = Field(
        None,
        description="Folder for the exported views (index.html); default: <database "
        "stem>_views next to the database, so studies beside each other keep their own.",
    )
    base_dir: str = Field(
        ".",
        description="Folder that relative paths resolve against (set by load_study; not a "
        "study file field).",
    )

    @field_validator(
        "training",
        "clustering",
        "embedding",
        "graph",
        "explain",
        "labels",
        "audit",
        mode="before",
    )
    @classmethod
    def _empty_section_means_defaults(cls, value: Any) -> Any:
        # `training:` with nothing under it parses as None in YAML.
        return {} if value is None else value

    @field_validator("weights", mode="before")
    @classmethod
    def _weights_null_is_none(cls, value: Any) -> Any:
        return "none" if value is None else value

    @field_validator("weights")
    @classmethod
    def _builtin_takes_no_weights(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("model") == "builtin" and value != "none":
            raise InvalidField(None, "none: the builtin model is trained by the study", value)
        return value

    @field_validator("layers", mode="before")
    @classmethod
    def _layers_auto_or_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value if value == "auto" else (value,)
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(x, str) and x for x in value)
        ):
            raise InvalidField(None, "'auto' or a non-empty list of module names", value)
        if len(set(value)) != len(value):
            raise InvalidField(None, "a list of unique module names", value)
        return tuple(value)

    @model_validator(mode="after")
    def _complete(self) -> Study:
        """Resolve what depends on several fields: file paths, the derived shard count."""
        base = Path(self.base_dir)
        # The study is frozen; validation finishes it once, in place, before anyone sees it.
        set_once = object.__setattr__
        weights = self.weights
        if weights not in WEIGHTS_KEYWORDS and (
            "/" in weights or weights.endswith((".pt", ".pth"))
        ):
            ckpt = Path(weights).expanduser()
            ckpt = ckpt if ckpt.is_absolute() else base / ckpt
            if not ckpt.is_file():
                raise InvalidField(
                    "weights", f"an existing checkpoint file (not at {ckpt})", weights
                )
            set_once(self, "weights", str(ckpt))
        if self.annotations is not None:
            table = Path(self.annotations).expanduser()
            table = table if table.is_absolute() else base / table
            if not table.is_file():
                raise InvalidField(
                    "annotations", f"an existing file (no such file: {table})", self.annotations
                )
            set_once(self, "annotations", str(table))
        dataset = self.dataset
        if dataset.kind == "imagefolder":
            folder = Path(dataset.path).expanduser()  # type: ignore[arg-type]
            folder = folder if folder.is_absolute() else base / folder
            if not folder.is_dir():
                raise InvalidField(
                    "dataset.path", f"an existing folder (no such folder: {folder})", dataset.path
                )
            set_once(self, "dataset", dataset.model_copy(update={"path": str(folder)}))
        if self.shard_size is not None:
            n_images = dataset.image_count
            if n_images is None:
                raise InvalidField(
                    "shard_size",
                    "unset unless dataset.size gives the number of images to map",
                    self.shard_size,
                )
            shards = -(-n_images // self.shard_size)
            check_int(
                "study field 'shards' (derived from shard_size)",
                shards,
                minimum=1,
                maximum=MAX_SHARDS,
            )
            set_once(self, "shards", shards)
        if not self.is_builtin_model and (
            self.training.checkpoint_epoch is not None or self.training.seed is not None
        ):
            raise InvalidField(
                "training",
                "free of seed and checkpoint_epoch for a torchvision model (only the built-in "
                "model is trained by the study)",
                self.training.model_dump(include={"seed", "checkpoint_epoch"}),
            )
        if dataset.kind == "shapes" and dataset.size is not None and self.top_k > dataset.size:
            raise InvalidField(
                "top_k", f"at most the dataset size ({dataset.size} images)", self.top_k
            )
        if (
            self.features is not None
            and isinstance(self.layers, tuple)
            and (unknown := [n for n in self.features.layers if n not in self.layers])
        ):
            raise InvalidField(
                "features.layers",
                f"among the study's layers {list(self.layers)} (not {unknown})",
                list(self.features.layers),
            )
        if self.clustering.sets == "sample" and not self.labels.enabled:
            raise InvalidField(
                "clustering.sets",
                "top_k or auto while labels.enabled is false (the sample's sets are drawn from "
                "the labels' sample, which the study does not keep)",
                self.clustering.sets,
            )
        if dataset.size is not None and self.shards > dataset.size:
            raise InvalidField(
                "shards", f"at most the dataset size ({dataset.size} images)", self.shards
            )
        return self

    @property
    def cluster_sets(self) -> str:
        """``clustering.sets`` resolved: ``sample`` or ``top_k`` (``auto`` is ``sample`` where
        the study keeps the labels' sample)."""
        if self.clustering.sets == "auto":
            return "sample" if self.labels.enabled else "top_k"
        return self.clustering.sets

    # ---- derived paths -------------------------------------------------------------------
    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    @property
    def database_path(self) -> Path:
        return self.resolve(self.database)

    @property
    def files_dir(self) -> Path:
        if self.data_dir is not None:
            return self.resolve(self.data_dir)
        db = self.database_path
        return db.parent / f"{db.stem}_files"

    @property
    def views_path(self) -> Path:
        if self.views_dir is not None:
            return self.resolve(self.views_dir)
        db = self.database_path
        return db.parent / f"{db.stem}_views"

    @property
    def is_builtin_model(self) -> bool:
        return self.model == "builtin"

    @property
    def training_seed(self) -> int:
        """The seed of the built-in model's training: ``training.seed``, else the study's."""
        return self.seed if self.training.seed is None else self.training.seed

    @property
    def torchvision_name(self) -> str | None:
        return self.model.split(":", 1)[1] if self.model.startswith("torchvision:") else None

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(by_alias=True)
        if not self.dataset.shortcuts:  # a study without them reads as before they existed
            del d["dataset"]["shortcuts"]
        else:
            d["dataset"]["shortcuts"] = list(d["dataset"]["shortcuts"])
        d["layers"] = list(self.layers) if isinstance(self.layers, tuple) else self.layers
        if self.features is not None:
            d["features"]["layers"] = list(self.features.layers)
        return d
