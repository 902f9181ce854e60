"""A study's settings blocks (dataset, training, clustering, embedding, graph, explain,
features, labels): one typed, frozen model each, the one description of every field in them.

Each field carries its type, default, allowed range and meaning; validators hold the rules that
span a block's fields (:class:`~carto_assets.study.types.InvalidField` for those a constraint
cannot express). Nothing here imports dagster or torch."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from carto_assets.study.banding import banding_problem
from carto_assets.study.types import (
    Allowed,
    Bands,
    BatchSize,
    Epochs,
    InvalidField,
    LearningRate,
    NumPerm,
    OptionalSeed,
    Rows,
    Seed,
    Share,
    Threshold,
)

DatasetKind = Literal["shapes", "digits", "imagefolder"]


DATASET_KINDS: tuple[str, ...] = get_args(DatasetKind)


#: Images the shapes source renders unless ``dataset.size`` says otherwise.
SHAPES_DEFAULT_SIZE = 4000


#: scikit-learn's handwritten digits hold this many images.
DIGITS_COUNT = 1797


class _Section(BaseModel):
    """A nested block of a study: frozen, no unknown keys, no coercion ('4' is not 4)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class ShortcutConfig(_Section):
    """A concept value planted in a class's images of the shapes world, as a watermark or a
    snowy background is in real data (``dataset.shortcuts``; the sampling rule is in
    :mod:`carto_assets.sources.shapes`). The class, the concept and its value are checked
    against the world's by ``carto check`` (:func:`carto_assets.cli.check.preflight`)."""

    class_name: Annotated[str, Allowed("a shape class name (circle, square, heart, ...)")] = Field(
        alias="class", description="The planted class: a shape class name."
    )
    concept: Annotated[str, Allowed("a concept name (colour, texture, background, ...)")] = Field(
        description="The planted concept: colour, texture, background, size or position "
        "(shape is the class itself)."
    )
    value: Annotated[str, Allowed("a value of the concept (red, dots, sand, ...)")] = Field(
        description="The planted value, one of the concept's values."
    )
    share: float = Field(
        ge=0.0,
        le=1.0,
        description="Probability that an image of the class gets the value outright; the rest "
        "of its images, and the other classes' images, draw the concept with every value "
        "planted for another class a quarter as likely as uniform.",
    )


class DatasetConfig(_Section):
    """Where the images come from."""

    kind: DatasetKind = Field(
        "shapes",
        description="shapes (a rendered world with known concepts), digits (scikit-learn's "
        "handwritten digits) or imagefolder (your images).",
    )
    size: int | None = Field(
        SHAPES_DEFAULT_SIZE,
        ge=1,
        description="shapes: number of images to render (default 4000). digits: optional cap "
        "on the 1,797 images. imagefolder: optional cap on the images mapped.",
    )
    image_size: int | None = Field(
        None,
        ge=16,
        le=1024,
        description="Side of the square model input in pixels (shapes renders at this size; "
        "digits and folders are resized to it). None means the source's natural size "
        "(shapes: 64, digits: 32, imagefolder: 224).",
    )
    path: Annotated[str | None, Allowed("a folder path (imagefolder only)")] = Field(
        None,
        description="imagefolder only: root folder in torchvision ImageFolder layout (one "
        "subfolder per class).",
    )
    shortcuts: tuple[ShortcutConfig, ...] = Field(
        (),
        description="shapes only: concept values planted in classes, each a mapping {class, "
        "concept, value, share} (e.g. {class: heart, concept: texture, value: dots, share: "
        "0.95}), at most one per class and concept; none: every concept is drawn uniformly.",
    )

    @field_validator("shortcuts", mode="before")
    @classmethod
    def _shortcut_list(cls, value: Any) -> Any:
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            raise InvalidField(None, "a list of {class, concept, value, share} mappings", value)
        return tuple(value)

    @model_validator(mode="before")
    @classmethod
    def _kind_shorthand_and_size_default(cls, data: Any) -> Any:
        if isinstance(data, str):  # `dataset: digits`
            data = {"kind": data}
        if isinstance(data, dict) and "size" not in data:
            # Only shapes has a size of its own; the others map all their images by default.
            size = SHAPES_DEFAULT_SIZE if data.get("kind", "shapes") == "shapes" else None
            data = {**data, "size": size}
        return data

    @model_validator(mode="after")
    def _path_only_for_folders(self) -> DatasetConfig:
        if self.kind == "imagefolder" and not self.path:
            raise InvalidField(
                "path", "the path of an image folder for kind 'imagefolder'", self.path
            )
        if self.kind != "imagefolder" and self.path is not None:
            raise InvalidField(
                "path", f"unset for kind {self.kind!r} (only 'imagefolder' takes a path)", self.path
            )
        return self

    @model_validator(mode="after")
    def _shortcuts_in_shapes_once_each(self) -> DatasetConfig:
        if self.shortcuts and self.kind != "shapes":
            raise InvalidField(
                "shortcuts",
                f"unset for kind {self.kind!r} (only the 'shapes' world plants shortcuts)",
                [s.model_dump(by_alias=True) for s in self.shortcuts],
            )
        first: dict[tuple[str, str], int] = {}
        for i, shortcut in enumerate(self.shortcuts):
            key = (shortcut.class_name, shortcut.concept)
            if key in first:
                raise InvalidField(
                    f"shortcuts.{i}.concept",
                    f"another concept than shortcut {first[key]}'s for class "
                    f"{shortcut.class_name!r} (one shortcut per class and concept)",
                    shortcut.concept,
                )
            first[key] = i
        return self

    @property
    def image_count(self) -> int | None:
        """Images the study maps when the study alone says (None: count the image folder)."""
        if self.kind == "shapes":
            return self.size or SHAPES_DEFAULT_SIZE
        if self.kind == "digits":
            return min(self.size or DIGITS_COUNT, DIGITS_COUNT)
        return self.size


class TrainingConfig(_Section):
    """How the built-in CNN is trained (ignored for torchvision models)."""

    epochs: Epochs = Field(5, description="Training epochs.")
    learning_rate: LearningRate = Field(
        0.003, description="Adam's peak learning rate (one-cycle schedule)."
    )
    batch_size: BatchSize = Field(64, description="Training batch size.")
    holdout_fraction: float = Field(
        0.2, ge=0.0, le=0.9, description="Share of the images held out to measure accuracy."
    )
    seed: OptionalSeed = Field(
        None,
        description="Seeds the training alone (initial weights, batch order, flips); None: the "
        "study's seed, which also renders the images. Two studies that differ only here are "
        "two seeds of the network over the same images.",
    )
    checkpoint_epoch: int | None = Field(
        None,
        ge=0,
        description="Map the network as it was after this epoch of the training the other "
        "fields describe (its one-cycle schedule over all epochs; 0: the seeded initial, "
        "untrained weights) instead of the final one. The training keeps a checkpoint after "
        "every epoch; a study that maps one runs the same seeded training up to that epoch, "
        "so its network is that checkpoint. None: the final network.",
    )

    @model_validator(mode="after")
    def _checkpoint_within_training(self) -> TrainingConfig:
        if self.checkpoint_epoch is not None and self.checkpoint_epoch > self.epochs:
            raise InvalidField(
                "checkpoint_epoch",
                f"at most epochs ({self.epochs}): an epoch of the training",
                self.checkpoint_epoch,
            )
        return self


class ClusteringConfig(_Section):
    """Neuron clustering (MinHash + LSH over top-image sets, or exact)."""

    method: Literal["lsh", "exact"] = Field(
        "lsh",
        description="lsh (MinHash + LSH, linear in neurons) or exact (inverted index "
        "image -> neurons).",
    )
    threshold: Threshold = Field(
        0.3,
        description="Jaccard similarity of two neurons' top-k image sets at which they count "
        "as similar; a cluster's average pairwise Jaccard stays at or above it (average "
        "linkage, no chaining).",
    )
    sets: Literal["auto", "sample", "top_k"] = Field(
        "auto",
        description="Which image set of each unit the Jaccard similarity is measured on. "
        "sample: its top top_fraction of the labels' sample (labels.sample_images images drawn "
        "with the study's seed, every image in a smaller study), at least top_k images; the "
        "sets' size follows the sample, so two units' similarity does not fall as the dataset "
        "grows (benchmarks/cluster_growth.py). top_k: its top_k images over all images, as the "
        "original did; at a fixed top_k the sets of two detectors of one concept drift apart "
        "as the dataset grows and clusters thin out. auto: sample where the study keeps the "
        "labels' sample (labels.enabled), else top_k.",
    )
    top_fraction: Share = Field(
        0.0125,
        description="With sets: sample, the share of the sample's images in each unit's set "
        "(never fewer than top_k images). 0.0125 is the demo's top 50 of 4,000 images.",
    )
    num_perm: NumPerm = 128
    bands: Bands = None
    rows: Rows = None
    seed: Seed = Field(1, description="MinHash seed (datasketch's scheme).")
    linkage: Literal["average", "complete"] = Field(
        "average", description="average or complete linkage for grouping confirmed pairs."
    )

    @model_validator(mode="after")
    def _banding_fits(self) -> ClusteringConfig:
        problem = banding_problem(self.num_perm, self.bands, self.rows)
        if problem:
            raise InvalidField("bands", problem, self.bands)
        return self


class EmbeddingConfig(_Section):
    """Neuron embedding (skip-gram with negative sampling) and its 2-D projection."""

    dim: int = Field(30, ge=2, le=4096, description="Embedding dimensions.")
    epochs: Epochs = Field(
        10,
        description="Top-k data gives each neuron few examples per epoch; 10 epochs at 0.07 "
        "was the best setting against gensim in benchmarks/embedding.py (word2vec's 5 at "
        "0.025 under-trains).",
    )
    learning_rate: LearningRate = Field(
        0.07, description="Initial SGD step, decaying linearly; see epochs."
    )
    negatives: int = Field(5, ge=1, le=100, description="Negative samples per example.")
    batch_size: BatchSize = Field(16384, description="Training batch size.")
    window: int = Field(
        5,
        ge=1,
        le=1000,
        description="word2vec's dynamic window over each image's shuffled list of neurons: "
        "the work per epoch is ~ (window + 1) examples per top-k entry, linear in neurons x k "
        "(all pairs of an image's list would be quadratic in the neurons per image). 5 is "
        "word2vec's default and kept the all-pairs trainer's neighbour precision in "
        "benchmarks/embedding.py.",
    )
    n_neighbors: int = Field(
        15, ge=2, le=500, description="UMAP neighbourhood size (clamped for small studies)."
    )
    min_dist: float = Field(0.1, ge=0.0, le=1.0, description="UMAP minimum distance.")
    neighbors: int = Field(
        10,
        ge=1,
        le=1000,
        description="Nearest neighbours per neuron stored in neuron_neighbors (cosine, "
        "embedding space).",
    )


class GraphConfig(_Section):
    """Example patches and the per-class concept graph."""

    patches_per_neuron: int = Field(
        9,
        ge=1,
        le=1000,
        description="Example patches per neuron (its top images, cropped around the argmax).",
    )
    patch_size: int = Field(64, ge=8, le=512, description="Side of an example patch in pixels.")
    top_neuron_fraction: Share = Field(
        0.1,
        description="Per class and layer: the share of the layer's neurons that count as the "
        "class's most important (Summit/the paper: 10%).",
    )
    nodes_per_layer: int = Field(
        5, ge=1, le=1000, description="Per class and layer: at most this many cluster nodes."
    )
    images_per_class: int = Field(
        16,
        ge=1,
        le=100_000,
        description="Images of the class sampled (seeded) to measure influence edges by "
        "attribution.",
    )
    faithfulness_edges: int = Field(
        40,
        ge=0,
        le=100_000,
        description="Edges whose source cluster is ablated for the faithfulness check "
        "(0 = skip the check).",
    )
    classes_per_chunk: int = Field(
        16,
        ge=1,
        le=100_000,
        description="Classes per partition of the concept graph (concept_graph_chunk): chunks "
        "run in parallel processes (carto run --jobs N, a backfill, a cluster executor).",
    )
    # -- node rule and checks (issue 21) --
    importance: Literal["relevance", "activation"] = Field(
        "relevance",
        description="How a class's units are scored for its nodes: relevance (each unit's "
        "gradient x activation share of its layer for the class's logit: what the prediction "
        "uses) or activation (Summit's rule: how often the unit carries the top of its layer's "
        "activation mass on the class's images).",
    )
    edge_images: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Of the class's sampled images, how many each edge into a node is measured "
        "on; null: images_per_class / nodes per layer (at least 1), so that the edges of a "
        "class cost one backward pass; images_per_class measures every edge on every image.",
    )
    ablation_images: int = Field(
        1,
        ge=0,
        le=100_000,
        description="Images per class and layer on which the layer's graph nodes, as many "
        "units chosen by the other rule and as many random units are zeroed (the node "
        "ablation check); 0 skips the check.",
    )


class ExplainConfig(_Section):
    """Per-image explanations (the explanation_chunk asset): for each explained image, each
    concept's relevance for its predicted class (and its true class where they differ), per
    layer, with a coarse map, and the faithfulness checks."""

    enabled: Annotated[bool, Allowed("true or false")] = Field(
        True,
        description="Explain each class's sampled images (graph.images_per_class, sharing the "
        "concept graph's passes), misclassified ones and the listed ones.",
    )
    misclassified: int = Field(
        8,
        ge=0,
        le=100_000,
        description="Per class, up to this many misclassified images (beyond the sample) are "
        "explained, the first by image id the activation pass found wrong (image_predictions; "
        "only where the model's outputs are the study's classes); 0 skips it.",
    )
    images: tuple[str, ...] = Field(
        (),
        description="Images to explain besides, by their images.source (e.g. shapes:17, or a "
        "path relative to the image folder).",
    )
    concepts_per_layer: int = Field(
        8,
        ge=1,
        le=1000,
        description="Concepts stored (with their maps) per image, class and layer: the most "
        "relevant ones; the rest are summed in explanation_layers.",
    )
    deletion_steps: int = Field(
        8,
        ge=1,
        le=1000,
        description="Concept deletion (C-Deletion) curves: concepts zeroed one by one, this "
        "many, at the last mapped layers.",
    )

    @field_validator("images", mode="before")
    @classmethod
    def _sources(cls, value: Any) -> Any:
        if value is None:
            return ()
        if not isinstance(value, list | tuple) or not all(isinstance(x, str) and x for x in value):
            raise InvalidField(None, "a list of image sources (images.source)", value)
        return tuple(value)


class FeaturesConfig(_Section):
    """Dictionary features: a top-k sparse autoencoder per chosen layer, its features mapped as
    a second kind of unit (pseudo-layer ``<layer>:features``) beside the layer's channels."""

    layers: tuple[str, ...] = Field(
        description="Layers whose activation vectors get a dictionary; each must be one of the "
        "study's mapped layers.",
    )
    expansion: int = Field(
        2,
        ge=1,
        le=256,
        description="Features per channel: a layer with C channels gets expansion x C features.",
    )
    k: int = Field(
        8,
        ge=1,
        description="Active features per position (top-k SAE); at most expansion x channels.",
    )
    samples: int = Field(
        50_000,
        ge=1,
        description="Activation vectors (one per position) sampled per layer to train on; a "
        "reservoir keeps memory at samples x channels x 4 bytes whatever the images.",
    )
    sample_images: int | None = Field(
        10_000,
        ge=1,
        description="Images the sampling pass reads (a seeded subset); None reads them all.",
    )
    strongest_per_image: int | None = Field(
        4,
        ge=1,
        description="Each sampled image offers its strongest positions (largest activation "
        "norm: those that decide its spatial maxima) to the sample; None offers every position.",
    )
    random_per_image: int = Field(
        2,
        ge=0,
        description="And this many of its other positions, drawn uniformly, so the dictionary "
        "also reconstructs the weak positions (background) it encodes later.",
    )
    epochs: Epochs = Field(240, description="Training epochs of each dictionary.")
    batch_size: BatchSize = Field(1024, description="Activation vectors per training step.")
    learning_rate: LearningRate = Field(0.004, description="Adam's learning rate.")

    @field_validator("layers", mode="before")
    @classmethod
    def _layer_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if (
            not isinstance(value, list | tuple)
            or not value
            or not all(isinstance(x, str) and x for x in value)
        ):
            raise InvalidField(None, "a non-empty list of mapped layer names", value)
        if len(set(value)) != len(value):
            raise InvalidField(None, "a list of unique layer names", value)
        return tuple(value)


class LabelsConfig(_Section):
    """Words for units (the ``unit_labels`` asset): per unit, the formula over annotation values
    (``shape=heart OR shape=circle``) that best separates the images it fires on, scored by AUC
    over a seeded sample of images whose per-unit maxima the activation pass keeps."""

    enabled: Annotated[bool, Allowed("true or false")] = Field(
        True,
        description="Keep the sample's per-unit maxima in the activation pass and label the "
        "units; false: neither.",
    )
    sample_images: int | None = Field(
        20_000,
        ge=1,
        description="Images (a seeded subset of all, whatever the sharding) whose spatial "
        "maximum of every unit the activation pass keeps for the labels; None or at least the "
        "dataset's size: every image. Memory: sample x units x 4 bytes.",
    )
    max_terms: int = Field(
        3, ge=1, le=3, description="Terms of a formula at most (1: single terms only)."
    )
    beam: int = Field(
        5, ge=1, le=1000, description="Formulas kept per unit at each step of the beam search."
    )
    min_auc: Threshold = Field(
        0.75,
        description="A unit whose best formula's AUC is below this is labelled 'no word fits'.",
    )
    max_p: Share = Field(
        1e-3,
        description="A unit whose best formula's one-sided Mann-Whitney p-value (times the "
        "number of formulas scored for it) is above this is labelled 'no word fits'.",
    )
    min_gain: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="A formula of several terms is kept only where its AUC beats the unit's "
        "best single term by this much.",
    )
    max_share: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="A formula that holds on more of the sample's images than this share "
        "(NOT shape=arrow: 7 in 8) is never a label: it names what the unit does not respond "
        "to.",
    )
    always_on: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="A unit or cluster on (at least half its largest activation) for at least "
        "this share of the sample's images is always on: it adds a fixed part to a logit "
        "whatever the image, so explanations list it after the concepts that are not.",
    )


class AuditConfig(_Section):
    """What each class relies on (the ``class_audit`` asset): its relevance grouped by the
    terms of its units' words, terms that are not the class's own flagged as candidate
    shortcuts, and causal checks of the flags (docs/audit.md)."""

    enabled: Annotated[bool, Allowed("true or false")] = Field(
        True, description="Audit the classes after the concept graph; false: no audit tables."
    )
    min_share: Share = Field(
        0.05,
        description="A term is flagged only where it carries at least this share of the "
        "class's relevance at the layer where its share is largest (top_layer_share).",
    )
    min_lift: float = Field(
        2.0,
        ge=1.0,
        description="... and at least this many times its mean share over the other classes.",
    )
    min_cooccurrence: float = Field(
        1.5,
        ge=1.0,
        description="... and it holds on the class's images at least this many times as often "
        "as on the other classes' images.",
    )
    min_counterfactual_drop: Share = Field(
        0.1,
        description="The counterfactual confirms a flag when changing the term's value drops "
        "the class's mean logit by at least this share of it.",
    )
    images_per_class: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Images of the class (seeded) the causal checks use; null: the concept "
        "graph's sampled images (graph.images_per_class), checked on the graph's own forward "
        "pass at no extra pass; a number: a sample of its own and a pass of its own per class "
        "with a co-occurring term.",
    )
    images_shown: int = Field(
        6,
        ge=0,
        le=100,
        description="Per checked term, the class's images where it mattered most, kept for the "
        "page (class_audit_images).",
    )
