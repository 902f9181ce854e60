"""Study files: one model + one dataset + the layers to map + parameters.

A study is a YAML file chosen with the environment variable ``CARTO_STUDY``; without it the
built-in demo study (:data:`DEMO_STUDY`) runs. Everything is validated here, before any work,
with messages that name the bad field and what is allowed.

This module never imports dagster or torch, so a study can be checked anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

STUDY_ENV_VAR = "CARTO_STUDY"
DATASET_KINDS = ("shapes", "digits", "imagefolder")
DEVICES = ("auto", "cpu", "cuda")
WEIGHTS_KEYWORDS = ("none", "DEFAULT")
#: The built-in CNN's stage widths and design revision; part of the checkpoint cache key, so a
#: change to the architecture never loads an old checkpoint.
BUILTIN_WIDTHS = (32, 48, 64, 96)
BUILTIN_REVISION = "stride2-first-block"
#: Bump when the shapes renderer changes what it draws, so cached checkpoints are retrained.
SHAPES_REVISION = "filled-only-1"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class StudyError(ValueError):
    """A study file is invalid; the message names the field and what is allowed."""


@dataclass(frozen=True)
class DatasetConfig:
    """Where the images come from."""

    kind: str = "shapes"
    #: shapes: number of images to render. digits: optional cap on the 1,797 images.
    size: int | None = 4000
    #: Side of the square model input in pixels (shapes renders at this size; digits and
    #: folders are resized to it). ``None`` means the source's natural size (shapes: 64,
    #: digits: 32, imagefolder: 224).
    image_size: int | None = None
    #: imagefolder only: root folder in torchvision ImageFolder layout (one subfolder per class).
    path: str | None = None


@dataclass(frozen=True)
class TrainingConfig:
    """How the built-in CNN is trained (ignored for torchvision models)."""

    epochs: int = 5
    learning_rate: float = 0.003
    batch_size: int = 64
    holdout_fraction: float = 0.2


@dataclass(frozen=True)
class ClusteringConfig:
    """Neuron clustering (MinHash + LSH over top-image sets, or exact)."""

    #: ``lsh`` (MinHash + LSH, linear in neurons) or ``exact`` (inverted index image -> neurons).
    method: str = "lsh"
    #: Jaccard similarity of two neurons' top-k image sets at which they count as similar; a
    #: cluster's average pairwise Jaccard stays at or above it (average linkage, no chaining).
    threshold: float = 0.3
    num_perm: int = 128
    #: LSH banding; both or neither (derived from the threshold, favouring recall).
    bands: int | None = None
    rows: int | None = None
    #: MinHash seed (datasketch's scheme).
    seed: int = 1
    #: ``average`` or ``complete`` linkage for grouping confirmed pairs.
    linkage: str = "average"


@dataclass(frozen=True)
class EmbeddingConfig:
    """Neuron embedding (skip-gram with negative sampling) and its 2-D projection."""

    dim: int = 30
    #: Top-k data gives each neuron few examples per epoch; 10 epochs at 0.07 was the best
    #: setting against gensim in benchmarks/embedding.py (word2vec's 5 at 0.025 under-trains).
    epochs: int = 10
    learning_rate: float = 0.07
    negatives: int = 5
    batch_size: int = 16384
    #: word2vec's dynamic window over each image's shuffled list of neurons: the work per epoch
    #: is ~ (window + 1) examples per top-k entry, linear in neurons x k (all pairs of an
    #: image's list would be quadratic in the neurons per image). 5 is word2vec's default and
    #: kept the all-pairs trainer's neighbour precision in benchmarks/embedding.py.
    window: int = 5
    #: UMAP neighbourhood size (clamped for small studies) and minimum distance.
    n_neighbors: int = 15
    min_dist: float = 0.1
    #: Nearest neighbours per neuron stored in neuron_neighbors (cosine, embedding space).
    neighbors: int = 10


@dataclass(frozen=True)
class GraphConfig:
    """Example patches and the per-class concept graph."""

    #: Example patches per neuron (its top images, cropped around the argmax) and their size.
    patches_per_neuron: int = 9
    patch_size: int = 64
    #: Per class and layer: the share of the layer's neurons that count as the class's most
    #: important (Summit/the paper: 10%), and at most this many cluster nodes.
    top_neuron_fraction: float = 0.1
    nodes_per_layer: int = 5
    #: Images of the class sampled (seeded) to measure influence edges by attribution.
    images_per_class: int = 16
    #: Edges whose source cluster is ablated for the faithfulness check (0 = skip the check).
    faithfulness_edges: int = 40
    #: Classes per partition of the concept graph (``concept_graph_chunk``): chunks run in
    #: parallel processes (``carto run --jobs N``, a backfill, a cluster executor).
    classes_per_chunk: int = 16


@dataclass(frozen=True)
class Study:
    """One validated study. Build it with :func:`load_study` or :func:`study_from_dict`."""

    name: str = "shapes-demo"
    #: ``builtin`` or ``torchvision:<name>``.
    model: str = "builtin"
    #: torchvision only: ``none``, ``DEFAULT`` (or any weights enum member name), or a path to a
    #: local checkpoint (a state dict, loaded with ``weights_only=True``).
    weights: str = "none"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    #: ``auto`` or a list of module names from ``model.named_modules()``.
    layers: tuple[str, ...] | str = "auto"
    device: str = "auto"
    #: Forward-pass precision: ``fp32``, or ``bf16``/``fp16`` under torch.autocast (GPUs;
    #: top-k then holds values rounded to that precision, so near-ties may order differently).
    precision: str = "fp32"
    #: Run the model in channels_last memory format (faster convolutions on recent GPUs).
    channels_last: bool = False
    #: DataLoader worker processes that decode images for the activation pass (0 = the main
    #: process, right for the built-in sources; image folders on a GPU want several).
    loader_workers: int = 0
    batch_size: int = 128
    #: Number of activation partitions; images are split into contiguous shards.
    shards: int = 4
    #: Images per activation shard; when set it wins over ``shards``: image ``i`` goes to shard
    #: ``i // shard_size``, so images appended to a study land in new shards and the shards
    #: computed before stay valid. ``shards`` is then derived (ceil(dataset.size/shard_size)).
    shard_size: int | None = None
    top_k: int = 50
    #: Channels whose normalized activation mass adds up to this fraction of an image's layer
    #: total count as "carrying" the image (Summit's rule; the paper used 3%).
    mass_fraction: float = 0.03
    seed: int = 0
    training: TrainingConfig = field(default_factory=TrainingConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    #: DuckDB database file. Relative paths resolve against the study file's folder (or the
    #: current directory for the built-in study).
    database: str = "data/carto.duckdb"
    #: Folder for per-shard Parquet and checkpoints; default: ``<database stem>_files`` next to
    #: the database.
    data_dir: str | None = None
    #: Folder for the exported views (index.html); default: ``views`` next to the database.
    views_dir: str | None = None
    #: Folder that relative paths resolve against (set by :func:`load_study`).
    base_dir: str = "."

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
        return self.database_path.parent / "views"

    @property
    def is_builtin_model(self) -> bool:
        return self.model == "builtin"

    @property
    def torchvision_name(self) -> str | None:
        return self.model.split(":", 1)[1] if self.model.startswith("torchvision:") else None

    def model_fingerprint(self) -> str:
        """Hash of every setting the trained/loaded model depends on (cache key)."""
        relevant = {
            "model": self.model,
            "weights": self.weights,
            "dataset": asdict(self.dataset),
            "training": asdict(self.training) if self.is_builtin_model else None,
            "seed": self.seed if self.is_builtin_model or self.weights == "none" else None,
            "builtin": [list(BUILTIN_WIDTHS), BUILTIN_REVISION] if self.is_builtin_model else None,
            "shapes": SHAPES_REVISION if self.dataset.kind == "shapes" else None,
        }
        blob = json.dumps(relevant, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers) if isinstance(self.layers, tuple) else self.layers
        return d


DEMO_STUDY: dict[str, Any] = {
    "name": "shapes-demo",
    "model": "builtin",
    "dataset": {"kind": "shapes", "size": 4000, "image_size": 64},
    "layers": "auto",
    "device": "auto",
    "batch_size": 128,
    "shards": 4,
    "top_k": 50,
    "seed": 0,
    "database": "data/carto.duckdb",
}


def _fail(field_name: str, value: Any, allowed: str) -> StudyError:
    return StudyError(f"study field '{field_name}': got {value!r}; {allowed}")


def _check_int(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        return_msg = f"expected an integer >= {minimum}"
        raise _fail(name, value, return_msg)
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise _fail(name, value, f"expected an integer >= {minimum}{upper}")
    return value


def _check_float(name: str, value: Any, *, low: float, high: float, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(name, value, f"expected a number in {'(' if low_open else '['}{low}, {high}]")
    v = float(value)
    if (v <= low if low_open else v < low) or v > high:
        raise _fail(name, value, f"expected a number in {'(' if low_open else '['}{low}, {high}]")
    return v


def _check_keys(section: str, raw: dict[str, Any], cls: type) -> None:
    allowed = {f.name for f in fields(cls)} - {"base_dir"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        prefix = f"{section}." if section else ""
        raise StudyError(
            f"unknown study field '{prefix}{unknown[0]}'; "
            f"allowed fields: {', '.join(sorted(allowed))}"
        )


def _dataset_from_dict(raw: Any) -> DatasetConfig:
    if isinstance(raw, str):
        raw = {"kind": raw}
    if not isinstance(raw, dict):
        raise _fail("dataset", raw, "expected a mapping with 'kind' (and size/image_size/path)")
    _check_keys("dataset", raw, DatasetConfig)
    kind = raw.get("kind", "shapes")
    if kind not in DATASET_KINDS:
        raise _fail("dataset.kind", kind, f"allowed: {', '.join(DATASET_KINDS)}")
    default_size = 4000 if kind == "shapes" else None
    size = raw.get("size", default_size)
    if size is not None:
        size = _check_int("dataset.size", size, minimum=1)
    image_size = raw.get("image_size")
    if image_size is not None:
        image_size = _check_int("dataset.image_size", image_size, minimum=16, maximum=1024)
    path = raw.get("path")
    if kind == "imagefolder":
        if not path or not isinstance(path, str):
            raise _fail("dataset.path", path, "imagefolder needs the path of an image folder")
    elif path is not None:
        raise _fail(
            "dataset.path", path, f"only dataset kind 'imagefolder' takes a path, not {kind!r}"
        )
    return DatasetConfig(kind=kind, size=size, image_size=image_size, path=path)


def _training_from_dict(raw: Any) -> TrainingConfig:
    if raw is None:
        return TrainingConfig()
    if not isinstance(raw, dict):
        raise _fail("training", raw, "expected a mapping (epochs, learning_rate, batch_size, ...)")
    _check_keys("training", raw, TrainingConfig)
    d = TrainingConfig()
    return TrainingConfig(
        epochs=_check_int("training.epochs", raw.get("epochs", d.epochs), minimum=1),
        learning_rate=_check_float(
            "training.learning_rate",
            raw.get("learning_rate", d.learning_rate),
            low=0.0,
            high=10.0,
            low_open=True,
        ),
        batch_size=_check_int(
            "training.batch_size", raw.get("batch_size", d.batch_size), minimum=1
        ),
        holdout_fraction=_check_float(
            "training.holdout_fraction",
            raw.get("holdout_fraction", d.holdout_fraction),
            low=0.0,
            high=0.9,
            low_open=False,
        ),
    )


def _clustering_from_dict(raw: Any) -> ClusteringConfig:
    if raw is None:
        return ClusteringConfig()
    if not isinstance(raw, dict):
        raise _fail("clustering", raw, "expected a mapping (method, threshold, num_perm, ...)")
    _check_keys("clustering", raw, ClusteringConfig)
    d = ClusteringConfig()
    method = raw.get("method", d.method)
    if method not in ("lsh", "exact"):
        raise _fail("clustering.method", method, "allowed: lsh, exact")
    linkage = raw.get("linkage", d.linkage)
    if linkage not in ("average", "complete"):
        raise _fail("clustering.linkage", linkage, "allowed: average, complete")
    num_perm = _check_int(
        "clustering.num_perm", raw.get("num_perm", d.num_perm), minimum=2, maximum=4096
    )
    bands, rows = raw.get("bands"), raw.get("rows")
    if (bands is None) != (rows is None):
        raise _fail("clustering.bands", bands, "give both bands and rows, or neither")
    if bands is not None:
        bands = _check_int("clustering.bands", bands, minimum=1)
        rows = _check_int("clustering.rows", rows, minimum=1)
        if bands * rows > num_perm:
            raise _fail(
                "clustering.bands",
                bands,
                f"bands x rows = {bands * rows} must not exceed num_perm = {num_perm}",
            )
    return ClusteringConfig(
        method=method,
        threshold=_check_float(
            "clustering.threshold",
            raw.get("threshold", d.threshold),
            low=0.0,
            high=1.0,
            low_open=True,
        ),
        num_perm=num_perm,
        bands=bands,
        rows=rows,
        seed=_check_int("clustering.seed", raw.get("seed", d.seed), minimum=0),
        linkage=linkage,
    )


def _embedding_from_dict(raw: Any) -> EmbeddingConfig:
    if raw is None:
        return EmbeddingConfig()
    if not isinstance(raw, dict):
        raise _fail("embedding", raw, "expected a mapping (dim, epochs, learning_rate, ...)")
    _check_keys("embedding", raw, EmbeddingConfig)
    d = EmbeddingConfig()

    def get_int(name: str, minimum: int, maximum: int | None = None) -> int:
        return _check_int(
            f"embedding.{name}", raw.get(name, getattr(d, name)), minimum=minimum, maximum=maximum
        )

    return EmbeddingConfig(
        dim=get_int("dim", 2, 4096),
        epochs=get_int("epochs", 1),
        learning_rate=_check_float(
            "embedding.learning_rate",
            raw.get("learning_rate", d.learning_rate),
            low=0.0,
            high=10.0,
            low_open=True,
        ),
        negatives=get_int("negatives", 1, 100),
        batch_size=get_int("batch_size", 1),
        window=get_int("window", 1, 1000),
        n_neighbors=get_int("n_neighbors", 2, 500),
        min_dist=_check_float(
            "embedding.min_dist", raw.get("min_dist", d.min_dist), low=0.0, high=1.0, low_open=False
        ),
        neighbors=get_int("neighbors", 1, 1000),
    )


def _graph_from_dict(raw: Any) -> GraphConfig:
    if raw is None:
        return GraphConfig()
    if not isinstance(raw, dict):
        raise _fail("graph", raw, "expected a mapping (patches_per_neuron, nodes_per_layer, ...)")
    _check_keys("graph", raw, GraphConfig)
    d = GraphConfig()

    def get_int(name: str, minimum: int, maximum: int | None = None) -> int:
        return _check_int(
            f"graph.{name}", raw.get(name, getattr(d, name)), minimum=minimum, maximum=maximum
        )

    return GraphConfig(
        patches_per_neuron=get_int("patches_per_neuron", 1, 1000),
        patch_size=get_int("patch_size", 8, 512),
        top_neuron_fraction=_check_float(
            "graph.top_neuron_fraction",
            raw.get("top_neuron_fraction", d.top_neuron_fraction),
            low=0.0,
            high=1.0,
            low_open=True,
        ),
        nodes_per_layer=get_int("nodes_per_layer", 1, 1000),
        images_per_class=get_int("images_per_class", 1, 100_000),
        faithfulness_edges=get_int("faithfulness_edges", 0, 100_000),
        classes_per_chunk=get_int("classes_per_chunk", 1, 100_000),
    )


def study_from_dict(raw: dict[str, Any], base_dir: str | Path = ".") -> Study:
    """Validate a study mapping (as parsed from YAML) and return a :class:`Study`.

    Raises
    ------
    StudyError
        Naming the first bad field, its value and what is allowed.
    """
    if not isinstance(raw, dict):
        raise StudyError(f"a study must be a YAML mapping of fields, got {type(raw).__name__}")
    _check_keys("", raw, Study)
    d = Study()

    name = raw.get("name", d.name)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _fail("name", name, "expected letters, digits, '_', '-' or '.' (no spaces)")

    model = raw.get("model", d.model)
    if not isinstance(model, str) or not (
        model == "builtin" or re.match(r"^torchvision:[A-Za-z0-9_]+$", model)
    ):
        raise _fail(
            "model", model, "allowed: 'builtin' or 'torchvision:<name>', e.g. torchvision:resnet18"
        )

    weights = raw.get("weights", d.weights)
    if weights is None:
        weights = "none"
    if not isinstance(weights, str) or not weights:
        raise _fail(
            "weights", weights, "allowed: none, DEFAULT, a weights enum name or a checkpoint path"
        )
    if model == "builtin" and weights != "none":
        raise _fail(
            "weights", weights, "the builtin model is trained by the study; use weights: none"
        )
    base = Path(base_dir).resolve()
    if weights not in WEIGHTS_KEYWORDS and ("/" in weights or weights.endswith((".pt", ".pth"))):
        ckpt = Path(weights).expanduser()
        ckpt = ckpt if ckpt.is_absolute() else base / ckpt
        if not ckpt.is_file():
            raise _fail("weights", weights, f"checkpoint file not found at {ckpt}")
        weights = str(ckpt)

    dataset = _dataset_from_dict(raw.get("dataset", {"kind": "shapes"}))
    if dataset.kind == "imagefolder":
        folder = Path(dataset.path).expanduser()  # type: ignore[arg-type]
        folder = folder if folder.is_absolute() else base / folder
        if not folder.is_dir():
            raise _fail("dataset.path", dataset.path, f"no such folder: {folder}")
        dataset = DatasetConfig(
            kind=dataset.kind, size=dataset.size, image_size=dataset.image_size, path=str(folder)
        )

    layers = raw.get("layers", d.layers)
    if isinstance(layers, str):
        if layers != "auto":
            layers = (layers,)
    elif isinstance(layers, list) and layers and all(isinstance(x, str) and x for x in layers):
        if len(set(layers)) != len(layers):
            raise _fail("layers", layers, "layer names must be unique")
        layers = tuple(layers)
    else:
        raise _fail("layers", layers, "expected 'auto' or a non-empty list of module names")

    device = raw.get("device", d.device)
    if device not in DEVICES and not (isinstance(device, str) and re.match(r"^cuda:\d+$", device)):
        raise _fail("device", device, f"allowed: {', '.join(DEVICES)} or cuda:<index>")

    batch_size = _check_int("batch_size", raw.get("batch_size", d.batch_size), minimum=1)
    precision = raw.get("precision", d.precision)
    if precision not in ("fp32", "bf16", "fp16"):
        raise _fail("precision", precision, "allowed: fp32, bf16, fp16")
    channels_last = raw.get("channels_last", d.channels_last)
    if not isinstance(channels_last, bool):
        raise _fail("channels_last", channels_last, "expected true or false")
    loader_workers = _check_int(
        "loader_workers", raw.get("loader_workers", d.loader_workers), minimum=0, maximum=256
    )
    shards = _check_int("shards", raw.get("shards", d.shards), minimum=1, maximum=100_000)
    shard_size = raw.get("shard_size")
    if shard_size is not None:
        shard_size = _check_int("shard_size", shard_size, minimum=1)
        # shapes renders `size` images (default 4000); digits has 1,797; folders need `size`.
        n_known = {"shapes": dataset.size or 4000, "digits": min(dataset.size or 1797, 1797)}.get(
            dataset.kind, dataset.size
        )
        if n_known is None:
            raise _fail(
                "shard_size",
                shard_size,
                "needs a known image count: set dataset.size (the number of images to map)",
            )
        shards = _check_int("shards", -(-n_known // shard_size), minimum=1, maximum=100_000)
    top_k = _check_int("top_k", raw.get("top_k", d.top_k), minimum=1, maximum=100_000)
    mass_fraction = _check_float(
        "mass_fraction", raw.get("mass_fraction", d.mass_fraction), low=0.0, high=1.0, low_open=True
    )
    seed = _check_int("seed", raw.get("seed", d.seed), minimum=0)
    training = _training_from_dict(raw.get("training"))
    clustering = _clustering_from_dict(raw.get("clustering"))
    embedding = _embedding_from_dict(raw.get("embedding"))
    graph = _graph_from_dict(raw.get("graph"))

    database = raw.get("database", d.database)
    if not isinstance(database, str) or not database.endswith(".duckdb"):
        raise _fail("database", database, "expected a path ending in .duckdb")
    data_dir = raw.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise _fail("data_dir", data_dir, "expected a folder path")
    views_dir = raw.get("views_dir")
    if views_dir is not None and not isinstance(views_dir, str):
        raise _fail("views_dir", views_dir, "expected a folder path")

    if dataset.kind == "shapes" and dataset.size is not None and top_k > dataset.size:
        raise _fail("top_k", top_k, f"must not exceed the dataset size ({dataset.size} images)")
    if dataset.size is not None and shards > dataset.size:
        raise _fail("shards", shards, f"must not exceed the dataset size ({dataset.size} images)")

    return Study(
        name=name,
        model=model,
        weights=weights,
        dataset=dataset,
        layers=layers,
        device=device,
        precision=precision,
        channels_last=channels_last,
        loader_workers=loader_workers,
        batch_size=batch_size,
        shards=shards,
        shard_size=shard_size,
        top_k=top_k,
        mass_fraction=mass_fraction,
        seed=seed,
        training=training,
        clustering=clustering,
        embedding=embedding,
        graph=graph,
        database=database,
        data_dir=data_dir,
        views_dir=views_dir,
        base_dir=str(base),
    )


def load_study(path: str | Path | None = None) -> Study:
    """Load the study at ``path``, else at ``$CARTO_STUDY``, else the built-in demo study."""
    if path is None:
        path = os.environ.get(STUDY_ENV_VAR) or None
    if path is None:
        return study_from_dict(DEMO_STUDY, base_dir=Path.cwd())
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise StudyError(f"study file not found: {p} (from {STUDY_ENV_VAR} or --study)")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise StudyError(f"study file {p} is not valid YAML: {exc}") from exc
    try:
        return study_from_dict(raw, base_dir=p.parent)
    except StudyError as exc:
        raise StudyError(f"{p}: {exc}") from None
