"""Every table and view a study's database holds: columns, types, meanings, and the asset that
writes it. This is the one place a table's columns are written out.

It feeds:

- the writers: :meth:`carto_assets.storage.CartoStore.replace_tables` checks every declared
  table it writes against its declaration, so a stage that drifts fails loudly, inside the
  transaction, before anything is published;
- the Dagster UI: the column schema (with descriptions) of every table asset's metadata;
- ``docs/schema.md``: its column tables are generated from here (``python -m
  carto_assets.schema docs/schema.md`` rewrites them in place) and a test checks they agree;
- empty frames and frames built from columns (:func:`empty_frame`, :func:`frame`), used by
  stages and by the synthetic view data.

Types are DuckDB's. ``FLOAT[dim]`` and ``UINTEGER[num_perm]`` are fixed-size arrays whose size is
a study setting. No dagster or torch here: ``carto check`` and the views import it.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

#: ``target_layer`` of edges into the class prediction (the class's logit).
PREDICTION = "prediction"
#: ``target_cluster`` of edges into the class prediction.
PREDICTION_CLUSTER = -1


class SchemaError(ValueError):
    """A table written (or found) does not have the columns its declaration names."""


@dataclass(frozen=True)
class Column:
    name: str
    #: DuckDB type; ``[name]`` stands for a fixed array size given by a setting.
    type: str
    description: str


@dataclass(frozen=True)
class Table:
    name: str
    #: The asset that writes it.
    asset: str
    columns: tuple[Column, ...]
    #: ``table``, or ``view`` (over the per-shard Parquet files).
    kind: str = "table"
    #: ``study`` (a study's database) or ``comparison`` (a comparison's, ``carto compare``).
    database: str = "study"

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def _table(
    name: str,
    asset: str,
    *columns: tuple[str, str, str],
    kind: str = "table",
    database: str = "study",
) -> Table:
    return Table(name, asset, tuple(Column(*c) for c in columns), kind, database)


_TOP_K_COLUMNS = (
    ("neuron_id", "BIGINT", "neuron"),
    ("rank", "INTEGER", "1 = strongest, up to k"),
    ("image_id", "BIGINT", "image"),
    (
        "activation",
        "FLOAT",
        "maximum of the channel's map over space (over tokens for token outputs)",
    ),
    ("y", "INTEGER", "row of the maximum in the layer's map (token index for token outputs)"),
    ("x", "INTEGER", "column of the maximum in the layer's map (0 for token outputs)"),
)

_EDGE_COLUMNS = (
    ("source_layer", "VARCHAR", "layer of the lower cluster (a node of the class)"),
    ("source_cluster", "BIGINT", "the lower cluster"),
    (
        "target_layer",
        "VARCHAR",
        "layer of the upper cluster: the next mapped layer of its chain (channels, or feature "
        "pseudo-layers, see the concept graph's topology below); `prediction` for edges into the "
        "class's logit",
    ),
    ("target_cluster", "BIGINT", "the upper cluster; -1 for edges into the class's logit"),
    (
        "weight",
        "DOUBLE",
        "influence: gradient × activation of the target's activation (sum of its members' "
        "spatial maxima; the class logit for prediction edges) with respect to the source "
        "layer's output, summed over space and over the source's member channels, averaged "
        "over the class's sampled images that measured the target (`graph.edge_images` of "
        "them; all of them for prediction edges, whose weight is the source's relevance), "
        "clipped at 0",
    ),
)

_STUDY = ("study", "VARCHAR", "the study (its `name`)")
_OTHER = ("other_study", "VARCHAR", "the other study")
_UNIT = ("unit_id", "BIGINT", "unit: dense id over the compared studies (`compare_units`)")


def _compared(name: str, asset: str, *columns: tuple[str, str, str]) -> Table:
    return _table(name, asset, *columns, database="comparison")


#: The tables of a comparison's database (``carto compare``, :mod:`carto_assets.compare`),
#: written from the studies' own tables.
COMPARISON_TABLES = (
    _compared(
        "compare_studies",
        "compare_units",
        _STUDY,
        ("position", "INTEGER", "0 = A, 1 = B, ... in the comparison file's order"),
        ("study_file", "VARCHAR", "the study file (empty for the built-in demo study)"),
        ("database", "VARCHAR", "the study's database the units were read from"),
        ("model", "VARCHAR", "`builtin` or `torchvision:<name>`"),
        ("weights", "VARCHAR", "the study's `weights`"),
        (
            "training_seed",
            "INTEGER",
            "the built-in model's training seed (`training.seed`, else the study's); NULL for "
            "torchvision models",
        ),
        (
            "checkpoint_epoch",
            "INTEGER",
            "the epoch of its training the built-in network is (`training.checkpoint_epoch`; "
            "0 = untrained); NULL: the final network",
        ),
        ("n_units", "BIGINT", "the study's units (channels and features)"),
        ("n_images", "BIGINT", "images, the same in every study of the comparison"),
        ("top_k", "INTEGER", "the study's `top_k`"),
    ),
    _compared(
        "compare_units",
        "compare_units",
        _UNIT,
        _STUDY,
        ("neuron_id", "BIGINT", "the unit's `neuron_id` in its study"),
        ("layer", "VARCHAR", "its layer (`<layer>:features` for dictionary features)"),
        ("layer_index", "INTEGER", "the layer's position in forward order in its study"),
        ("channel", "INTEGER", "channel (features: feature index)"),
        ("kind", "VARCHAR", "`channel` or `feature`"),
        ("cluster_id", "BIGINT", "its cluster (concept) in its study"),
    ),
    _compared(
        "compare_top_images",
        "compare_units",
        _UNIT,
        ("rank", "INTEGER", "1 = strongest"),
        ("image_id", "BIGINT", "image (the same ids in every study)"),
    ),
    _compared(
        "compare_clusters",
        "compare_units",
        _STUDY,
        ("cluster_id", "BIGINT", "the cluster in its study"),
        ("layer", "VARCHAR", "layer"),
        ("size", "INTEGER", "units in it"),
        ("label", "VARCHAR", "the study's label (what its top images have in common)"),
    ),
    _compared(
        "compare_graph_nodes",
        "compare_units",
        _STUDY,
        ("label", "INTEGER", "class"),
        ("label_name", "VARCHAR", "class name"),
        ("cluster_id", "BIGINT", "a node of the study's concept graph of the class"),
        ("layer", "VARCHAR", "layer"),
        ("layer_index", "INTEGER", "layer position in forward order"),
        ("importance", "DOUBLE", "the node's importance for the class"),
    ),
    _compared(
        "compare_graph_edges",
        "compare_units",
        _STUDY,
        ("label", "INTEGER", "class"),
        ("source_cluster", "BIGINT", "the lower cluster"),
        ("target_cluster", "BIGINT", "the upper cluster; -1 for edges into the class's logit"),
        ("weight", "DOUBLE", "the edge's influence weight in the study"),
    ),
    _compared(
        "compare_patches",
        "compare_units",
        _UNIT,
        ("rank", "INTEGER", "the patch's rank (1..`patches_per_unit`)"),
        ("png", "BLOB", "the study's example patch"),
    ),
    _compared(
        "unit_matches",
        "unit_matches",
        _UNIT,
        _OTHER,
        (
            "match_id",
            "BIGINT",
            "the unit of `other_study` whose top-k image set is most similar (Jaccard), among "
            "those at or above `threshold`; ties: the smaller rank footrule over shared images, "
            "then the smaller id. NULL: none reaches the threshold",
        ),
        ("jaccard", "DOUBLE", "Jaccard similarity of the two top-k image sets; NULL: no match"),
        ("mutual", "BOOLEAN", "the match's own best match in this unit's study is this unit"),
        (
            "partners",
            "INTEGER",
            "units of `other_study` at or above the threshold (LSH candidates confirmed by "
            "exact Jaccard)",
        ),
    ),
    _compared(
        "layer_matches",
        "layer_matches",
        _STUDY,
        ("layer", "VARCHAR", "a layer of `study`"),
        ("layer_index", "INTEGER", "its position in forward order"),
        _OTHER,
        ("other_layer", "VARCHAR", "a layer of `other_study`"),
        ("other_layer_index", "INTEGER", "its position in forward order"),
        ("units", "BIGINT", "units of `layer`"),
        ("matched", "BIGINT", "of them, units whose best match lies in `other_layer`"),
        ("mutual", "BIGINT", "of them, units whose match there is mutual"),
        ("share", "DOUBLE", "`mutual / units`"),
        (
            "null_share",
            "DOUBLE",
            "the same share with `other_study`'s images relabelled by a random permutation "
            "(mean over `null_draws` draws): what chance gives; NULL without draws",
        ),
        (
            "cka",
            "DOUBLE",
            "linear CKA between the two layers' activations (spatial maxima) on `cka_images` "
            "sampled images; NULL without CKA or for a layer constant on them",
        ),
    ),
    _compared(
        "concept_matches",
        "concept_matches",
        _STUDY,
        ("cluster_id", "BIGINT", "a concept (cluster) of `study`"),
        ("layer", "VARCHAR", "its layer"),
        ("size", "INTEGER", "its units"),
        ("label", "VARCHAR", "its label"),
        _OTHER,
        (
            "match_cluster_id",
            "BIGINT",
            "the concept of `other_study` whose top images (the union of its members') are "
            "most similar, at or above `concept_threshold`; NULL: none",
        ),
        ("match_layer", "VARCHAR", "its layer"),
        ("match_label", "VARCHAR", "its label"),
        ("jaccard", "DOUBLE", "Jaccard similarity of the two concepts' top images"),
        ("mutual", "BOOLEAN", "each is the other's best match"),
        ("status", "VARCHAR", "`shared` (it has a match) or `only` (only in `study`)"),
        (
            "label_changed",
            "BOOLEAN",
            "for shared concepts: neither label's leading term (what its cluster is most "
            "distinctive for) is among the other label's terms (`colour=red` against "
            "`shape=heart`); NULL otherwise",
        ),
        (
            "same_label_elsewhere",
            "BOOLEAN",
            "for concepts only in `study`: `other_study` has a concept (any layer) whose label "
            "leads with the same term, on other images (matching is by images: two networks' "
            "detectors of one concept that prefer different images of it do not match); NULL "
            "for shared concepts",
        ),
    ),
    _compared(
        "compare_embedding",
        "compare_embedding",
        _UNIT,
        ("vector", "FLOAT[dim]", "the unit's vector in the one embedding of every study's units"),
        ("isolated", "BOOLEAN", "the unit shares no top image with any other unit"),
    ),
    _compared(
        "compare_projection",
        "compare_projection",
        _UNIT,
        ("x", "DOUBLE", "UMAP coordinate (one map of every study's units)"),
        ("y", "DOUBLE", "UMAP coordinate"),
    ),
    _compared(
        "compare_neighbors",
        "compare_projection",
        _UNIT,
        ("rank", "INTEGER", "1 = most similar"),
        ("neighbor_id", "BIGINT", "a unit of another study"),
        ("similarity", "DOUBLE", "cosine similarity in the joint embedding"),
    ),
)


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        _table(
            "images",
            "images",
            ("image_id", "BIGINT", "dense id, 0..N-1 in manifest order"),
            (
                "shard",
                "INTEGER",
                "activation partition (`shard-0000` is shard 0); contiguous id ranges",
            ),
            (
                "source",
                "VARCHAR",
                "`shapes:<i>`, `digits:<i>`, or the path relative to the image folder",
            ),
            ("label", "INTEGER", "class index (image folders: subfolders in sorted order)"),
            ("label_name", "VARCHAR", "class name"),
        ),
        _table(
            "image_concepts",
            "images",
            ("image_id", "BIGINT", "image"),
            (
                "concept",
                "VARCHAR",
                "`shape`, `colour`, `texture`, `background`, `size`, `position`, `outline`",
            ),
            ("value", "VARCHAR", "the concept's value in that image, e.g. `colour = red`"),
        ),
        _table(
            "image_masks",
            "images",
            ("image_id", "BIGINT", "image"),
            ("height", "INTEGER", "mask rows (the image's side)"),
            ("width", "INTEGER", "mask columns"),
            (
                "mask",
                "BLOB",
                "where the object is (shapes: the pixels the shape covers by more than half; "
                "digits: the ink), one bit per pixel, row-major, packed 8 to a byte, most "
                "significant bit first (`numpy.packbits`)",
            ),
        ),
        _table(
            "neurons",
            "top_images",
            ("neuron_id", "BIGINT", "dense id over all mapped layers and feature pseudo-layers"),
            (
                "layer",
                "VARCHAR",
                "module name from `model.named_modules()`; `<layer>:features` for the "
                "features of that layer's dictionary",
            ),
            (
                "layer_index",
                "INTEGER",
                "the layer's position in forward order (0 = closest to the input); a feature "
                "pseudo-layer comes right after its layer and shifts later ones by one",
            ),
            (
                "channel",
                "INTEGER",
                "channel within the layer (features: the feature's index in its dictionary)",
            ),
            (
                "map_height",
                "INTEGER",
                "height of the layer's output map (tokens: number of tokens)",
            ),
            ("map_width", "INTEGER", "width of the layer's output map (tokens: 1)"),
            (
                "kind",
                "VARCHAR",
                "`channel` (a channel of the layer's output) or `feature` (a unit of the "
                "layer's sparse-autoencoder dictionary, see the `dictionary` asset)",
            ),
        ),
        _table("top_images", "top_images", *_TOP_K_COLUMNS),
        _table(
            "activation_shard_top_k",
            "top_images",
            *(
                c if c[0] != "rank" else ("rank", "INTEGER", "rank within the shard")
                for c in _TOP_K_COLUMNS
            ),
            kind="view",
        ),
        _table(
            "activation_class_stats",
            "top_images",
            ("label", "INTEGER", "class index"),
            ("neuron_id", "BIGINT", "neuron"),
            ("n_images", "BIGINT", "images of the class in the shard"),
            (
                "top_mass_count",
                "BIGINT",
                "images of the class for which the neuron is among the channels carrying the "
                "top `mass_fraction` (default 3%) of the layer's normalized activation mass "
                "(Summit's rule: channel maxima clipped at 0 and normalized to sum to 1 per image "
                "and layer; channels taken in descending order until the running total reaches "
                "the fraction)",
            ),
            (
                "activation_sum",
                "DOUBLE",
                "sum of the neuron's activation over those images (divide by `n_images` for the "
                "mean)",
            ),
            kind="view",
        ),
        _table(
            "class_importance",
            "class_importance",
            ("label", "INTEGER", "class index"),
            ("neuron_id", "BIGINT", "neuron"),
            (
                "score",
                "DOUBLE",
                "share of the class's images for which the neuron is among the channels carrying "
                "the top `mass_fraction` of its layer's normalized activation mass (Summit's "
                "activation matrix, normalized by class size)",
            ),
            ("top_mass_count", "BIGINT", "the count behind `score`"),
            ("n_images", "BIGINT", "images of the class that were processed"),
            ("mean_activation", "DOUBLE", "mean activation of the neuron over the class's images"),
        ),
        _table(
            "minhash_signatures",
            "minhash_signatures",
            ("neuron_id", "BIGINT", "neuron"),
            (
                "signature",
                "UINTEGER[num_perm]",
                "MinHash signature of the neuron's top-k image-id set: datasketch's scheme "
                '(`MinHash(num_perm, seed)`, default "affine32"), each image id hashed as its '
                "8-byte little-endian int64 encoding. Computed vectorized; an asset check "
                "recomputes a sample with datasketch and compares bit for bit",
            ),
        ),
        _table(
            "neuron_clusters",
            "neuron_clusters",
            ("neuron_id", "BIGINT", "neuron"),
            (
                "cluster_id",
                "BIGINT",
                "cluster (ids are global; numbered by layer, then by smallest member)",
            ),
            ("layer", "VARCHAR", "the neuron's (and cluster's) layer; clusters never span layers"),
        ),
        _table(
            "clusters",
            "neuron_clusters",
            ("cluster_id", "BIGINT", "cluster"),
            ("layer", "VARCHAR", "layer"),
            ("size", "INTEGER", "number of neurons"),
            (
                "label",
                "VARCHAR",
                "what the members' top images have in common: up to three `concept=value "
                "(fraction)` terms (class labels appear as `class=...`), held by ≥ 40% of the "
                "union of the members' top images and over-represented vs. the layer (≥ 1.25× "
                "the layer's rate), most distinctive first; otherwise the dominant class",
            ),
            ("top_class", "VARCHAR", "the class most of the cluster's top images belong to"),
            ("top_class_fraction", "DOUBLE", "its share of the cluster's top images"),
            (
                "mean_jaccard",
                "DOUBLE",
                "mean Jaccard over the cluster's confirmed pairs (1 for singletons)",
            ),
            ("members", "BIGINT[]", "member neuron ids"),
        ),
        _table(
            "neuron_pairs",
            "neuron_clusters",
            ("neuron_a", "BIGINT", "neuron (always `neuron_a < neuron_b`)"),
            ("neuron_b", "BIGINT", "neuron of the same layer"),
            ("jaccard", "DOUBLE", "Jaccard similarity of the two top-k image sets"),
        ),
        _table(
            "cluster_quality",
            "cluster_quality",
            ("cluster_id", "BIGINT", "cluster"),
            ("kind", "VARCHAR", "`concept` (image_concepts) or `class` (class labels)"),
            ("size", "INTEGER", "neurons in the cluster"),
            ("concept", "VARCHAR", "the concept of the value with the largest gain (below)"),
            ("value", "VARCHAR", "the value with the largest gain (below)"),
            (
                "purity",
                "DOUBLE",
                "that value's share of the cluster's top images (the union of its members' top-k)",
            ),
            (
                "layer_share",
                "DOUBLE",
                "the value's share among all top images of the cluster's layer",
            ),
            (
                "gain",
                "DOUBLE",
                "`max over (concept, value) of (share - layer_share) / (1 - layer_share)`: how far "
                "the cluster's top images go from the layer's base rate toward all holding one "
                "value (values the whole layer holds are skipped)",
            ),
            (
                "random_gain",
                "DOUBLE",
                "the same statistic for random groups of the same size from the same layer, each "
                "scored on its own best value (mean of 20 seeded draws)",
            ),
        ),
        _table(
            "example_patches",
            "example_patches",
            ("neuron_id", "BIGINT", "neuron"),
            (
                "rank",
                "INTEGER",
                "rank of the image in the neuron's top images (1..`graph.patches_per_neuron`)",
            ),
            ("image_id", "BIGINT", "image"),
            ("top", "INTEGER", "top edge of the crop in input pixels"),
            ("left", "INTEGER", "left edge of the crop in input pixels"),
            ("bottom", "INTEGER", "bottom edge of the crop in input pixels (exclusive)"),
            ("right", "INTEGER", "right edge of the crop in input pixels (exclusive)"),
            ("png", "BLOB", "the crop resized to `graph.patch_size` px square, PNG"),
        ),
        _table(
            "concept_graph_nodes",
            "concept_graph",
            ("label", "INTEGER", "class"),
            ("cluster_id", "BIGINT", "cluster"),
            ("layer", "VARCHAR", "layer"),
            ("layer_index", "INTEGER", "layer position in forward order"),
            (
                "importance",
                "DOUBLE",
                "sum of the class's unit scores by the study's rule (`graph.importance`: "
                "`class_relevance.share`, or `class_importance.score` for `activation`) over the "
                "cluster's members that are among the top `graph.top_neuron_fraction` of the "
                "layer's units for the class (`concept_graph_units`)",
            ),
            ("important_members", "INTEGER", "how many such members"),
        ),
        _table(
            "concept_graph_units",
            "concept_graph",
            ("label", "INTEGER", "class"),
            (
                "neuron_id",
                "BIGINT",
                "a unit among the top `graph.top_neuron_fraction` of its "
                "layer for the class by the study's rule, with a positive score: the units the "
                "class's nodes are made of (the views' \"neurons of the class\")",
            ),
            ("cluster_id", "BIGINT", "its cluster"),
            (
                "score",
                "DOUBLE",
                "its score by the rule (`class_relevance.share` or `class_importance.score`)",
            ),
        ),
        _table(
            "class_relevance",
            "concept_graph",
            ("label", "INTEGER", "class"),
            ("neuron_id", "BIGINT", "unit (channel or feature)"),
            (
                "relevance",
                "DOUBLE",
                "gradient × activation of the class's logit (of each image's top logit when "
                "the model's outputs are not the study's classes) with respect to the unit, "
                "summed over space, averaged over the class's `graph.images_per_class` sampled "
                "images: the first-order estimate of the logit's drop if the unit were zeroed",
            ),
            (
                "share",
                "DOUBLE",
                "the same per image over its layer's total absolute relevance, averaged over "
                "the images (each image counts the same): the `relevance` rule's score",
            ),
        ),
        _table(
            "concept_graph_edges",
            "concept_graph",
            ("label", "INTEGER", "class"),
            *_EDGE_COLUMNS,
            ("signed_weight", "DOUBLE", "the same before clipping"),
            ("share", "DOUBLE", "the edge's share of all weight into its target"),
        ),
        _table(
            "concept_cascades",
            "concept_graph",
            ("label", "INTEGER", "class"),
            ("root_layer", "VARCHAR", "layer of the node the cascade starts from"),
            ("root_cluster", "BIGINT", "the node the cascade starts from"),
            ("member_layer", "VARCHAR", "layer of a cluster on the cascade"),
            ("member_cluster", "BIGINT", "a cluster on the cascade"),
            ("depth", "INTEGER", "steps from the root; 1 is the root's direct neighbour"),
            (
                "direction",
                "VARCHAR",
                "`down` (toward the input) or `up` (toward the prediction)",
            ),
            ("weight", "DOUBLE", "weight of the edge that reached the member"),
        ),
        _table(
            "concept_graph_faithfulness",
            "concept_graph",
            *_EDGE_COLUMNS,
            ("baseline", "DOUBLE", "the target's mean activation over the sampled images"),
            (
                "ablated",
                "DOUBLE",
                "the same with the source cluster's channels zeroed (a feature cluster: its "
                "decoder contribution subtracted)",
            ),
            ("drop", "DOUBLE", "`baseline - ablated`"),
            ("relative_drop", "DOUBLE", "`drop / |baseline|`"),
        ),
        _table(
            "concept_graph_ablation",
            "concept_graph",
            ("label", "INTEGER", "class"),
            (
                "layer",
                "VARCHAR",
                "layer whose units were zeroed (feature layers: decoder contributions subtracted)",
            ),
            (
                "chosen_by",
                "VARCHAR",
                "which units: `relevance` or `activation` (a rule's nodes' members, most "
                "important node first, then the layer's other units by the rule's score; the "
                "study's rule gives exactly the graph's nodes) or `random` (drawn uniformly)",
            ),
            ("units", "INTEGER", "how many units: all members of the graph's nodes in the layer"),
            ("images", "INTEGER", "the class's images measured (`graph.ablation_images`)"),
            (
                "baseline",
                "DOUBLE",
                "mean class logit over those images (each image's top "
                "logit when the model's outputs are not the study's classes)",
            ),
            ("ablated", "DOUBLE", "the same with the units zeroed"),
            ("drop", "DOUBLE", "`baseline - ablated`"),
        ),
        _table(
            "explained_images",
            "explanations",
            ("image_id", "BIGINT", "image"),
            ("label", "INTEGER", "its class"),
            (
                "predicted",
                "INTEGER",
                "the model's prediction (its top logit: a class index where the model's outputs "
                "are the study's classes, else the head's output index)",
            ),
            (
                "why",
                "VARCHAR",
                "`sample` (the concept graph's sampled images of the class), `misclassified` or "
                "`listed` (`explain.images`)",
            ),
            ("logit", "DOUBLE", "the predicted logit"),
            ("thumb", "BLOB", "the image as the model saw it, at most 64 px a side, PNG"),
        ),
        _table(
            "explanation_concepts",
            "explanations",
            ("image_id", "BIGINT", "image"),
            (
                "target",
                "INTEGER",
                "the logit explained: the predicted one, and the true class's where they differ",
            ),
            ("layer", "VARCHAR", "unit layer (channels or a feature pseudo-layer)"),
            ("rank", "INTEGER", "1 = the concept with the largest share"),
            ("cluster_id", "BIGINT", "the concept: a cluster of the layer's units"),
            (
                "relevance",
                "DOUBLE",
                "the sum over the cluster's members of gradient × activation of the target "
                "logit, summed over space",
            ),
            ("share", "DOUBLE", "`relevance` over the layer's total absolute relevance"),
            (
                "map",
                "BLOB",
                "where in the image the concept carries relevance: the same sum per position "
                "of the layer's output (`map_height` × `map_width` of `explanation_layers`; "
                "tokens for a ViT), row-major int8 codes",
            ),
            ("map_scale", "DOUBLE", "the map's values are its codes times this"),
        ),
        _table(
            "explanation_layers",
            "explanations",
            ("image_id", "BIGINT", "image"),
            ("target", "INTEGER", "the logit explained"),
            ("layer", "VARCHAR", "unit layer"),
            ("logit", "DOUBLE", "the target logit's value"),
            ("total", "DOUBLE", "the relevance of all the layer's units (gradient · activation)"),
            ("unclustered", "DOUBLE", "the part of `total` from units in no cluster"),
            (
                "other_concepts",
                "DOUBLE",
                "the part of `total` from concepts not stored (below the "
                "`explain.concepts_per_layer` most relevant)",
            ),
            (
                "gap",
                "DOUBLE",
                "the completeness gap, `logit - total`: what the layer's first-order "
                "decomposition does not account for (biases, nonlinearity, a dictionary's "
                "reconstruction error)",
            ),
            ("map_height", "INTEGER", "rows of the layer's maps (tokens for token outputs)"),
            ("map_width", "INTEGER", "columns of the layer's maps (1 for tokens)"),
            (
                "map",
                "BLOB",
                "all the layer's relevance per position, int8 codes as in `explanation_concepts`",
            ),
            ("map_scale", "DOUBLE", "the map's values are its codes times this"),
        ),
        _table(
            "explanation_checks",
            "explanations",
            ("image_id", "BIGINT", "image (its predicted logit)"),
            ("layer", "VARCHAR", "the last channel layer, or the last feature pseudo-layer"),
            (
                "object_share",
                "DOUBLE",
                "the share of the layer's positive relevance inside the object's mask "
                "(`image_masks`, reduced to the layer's cells by area); NULL without a mask",
            ),
            ("mask_share", "DOUBLE", "the mask's share of the image (what chance would give)"),
            ("top_object_share", "DOUBLE", "`object_share` of the most relevant concept alone"),
            (
                "auc_relevance",
                "DOUBLE",
                "concept deletion: the image's concepts zeroed one by one, most relevant first "
                "(`explain.deletion_steps`), the predicted logit relative to its clean value "
                "averaged over the steps (clean included); lower: it fell faster",
            ),
            ("auc_activation", "DOUBLE", "the same, most active concepts first"),
            ("auc_random", "DOUBLE", "the same in a seeded random order"),
        ),
        _table(
            "relevance_exemplars",
            "explanations",
            ("cluster_id", "BIGINT", "a concept"),
            ("layer", "VARCHAR", "its layer"),
            ("rank", "INTEGER", "1 = the image where it had the largest share"),
            ("image_id", "BIGINT", "an explained image"),
            (
                "share",
                "DOUBLE",
                "the concept's share of its layer's relevance for the image's own class "
                "(CRP's relevance maximization; among each image's stored concepts)",
            ),
            ("relevance", "DOUBLE", "its relevance"),
        ),
        _table(
            "cooccurrence",
            "cooccurrence",
            ("neuron_a", "BIGINT", "neuron (always `neuron_a < neuron_b`)"),
            ("neuron_b", "BIGINT", "neuron, any layer"),
            ("count", "BIGINT", "number of images in both neurons' top-k"),
        ),
        _table(
            "neuron_embedding",
            "neuron_embedding",
            ("neuron_id", "BIGINT", "neuron"),
            (
                "vector",
                "FLOAT[dim]",
                "the neuron's embedding (`embedding.dim`, default 30)",
            ),
            (
                "isolated",
                "BOOLEAN",
                "the neuron shares no top image with any other neuron (no training signal); its "
                "vector is its small seeded random initialisation, so it still gets a finite "
                "vector and a position",
            ),
        ),
        _table(
            "neuron_projection",
            "neuron_projection",
            ("neuron_id", "BIGINT", "neuron"),
            ("x", "DOUBLE", "UMAP coordinate"),
            ("y", "DOUBLE", "UMAP coordinate"),
        ),
        _table(
            "neuron_neighbors",
            "neuron_projection",
            ("neuron_id", "BIGINT", "neuron"),
            ("rank", "INTEGER", "1 = most similar"),
            ("neighbor_id", "BIGINT", "another neuron (never the neuron itself), any layer"),
            ("similarity", "DOUBLE", "cosine similarity in embedding space (not in 2-D)"),
        ),
        _table(
            "study_quality",
            "(each measuring asset)",
            (
                "asset",
                "VARCHAR",
                "the asset that measured the figure and wrote the row (`model`, `dictionary`, "
                "`cluster_quality`, `neuron_embedding`, `concept_graph`); re-materializing it "
                "replaces its rows, in the same snapshot as its tables",
            ),
            ("figure", "VARCHAR", "the figure's key, e.g. `pair_recall`, `concept_cluster_gain`"),
            ("layer", "VARCHAR", "the layer a per-layer figure is about; NULL for the study"),
            ("value", "DOUBLE", "the measured value (NaN where there was nothing to measure)"),
            (
                "name",
                "VARCHAR",
                "the page header's label; empty for figures that are only stored (the header "
                "and `carto run` show the rows with a name)",
            ),
            ("shown", "VARCHAR", "the value as the header and `carto run` show it"),
            ("definition", "VARCHAR", "what the figure measures, in one sentence"),
            ("position", "INTEGER", "order of the figure within its asset's rows"),
        ),
        # ---- a comparison's database (carto compare; carto_assets/compare) ------------------
        *COMPARISON_TABLES,
    )
}


def table(name: str) -> Table:
    """The declaration of ``name``; a clear error for a table that is not declared."""
    try:
        return TABLES[name]
    except KeyError:
        raise SchemaError(
            f"table {name!r} is not declared in carto_assets/schema.py; declared: "
            f"{', '.join(TABLES)}"
        ) from None


def column_names(name: str) -> list[str]:
    return table(name).column_names


# ---- polars --------------------------------------------------------------------------------
_POLARS_SCALARS: dict[str, pl.DataType] = {
    "BIGINT": pl.Int64(),
    "INTEGER": pl.Int32(),
    "UINTEGER": pl.UInt32(),
    "DOUBLE": pl.Float64(),
    "FLOAT": pl.Float32(),
    "VARCHAR": pl.Utf8(),
    "BOOLEAN": pl.Boolean(),
    "BLOB": pl.Binary(),
}
_ARRAY = re.compile(r"^([A-Z]+)\[(\w*)\]$")


def polars_type(duckdb_type: str, sizes: dict[str, int] | None = None) -> pl.DataType:
    """The polars dtype that DuckDB stores as ``duckdb_type``.

    ``X[]`` is a list; ``X[name]`` an array whose size ``sizes[name]`` gives (a list when it
    is not given).
    """
    match = _ARRAY.match(duckdb_type)
    if match is None:
        return _POLARS_SCALARS[duckdb_type]
    inner, size = _POLARS_SCALARS[match.group(1)], match.group(2)
    if size and sizes and size in sizes:
        return pl.Array(inner, sizes[size])
    return pl.List(inner)


def polars_schema(name: str, sizes: dict[str, int] | None = None) -> dict[str, pl.DataType]:
    return {c.name: polars_type(c.type, sizes) for c in table(name).columns}


def empty_frame(name: str, sizes: dict[str, int] | None = None) -> pl.DataFrame:
    """A frame with no rows and the table's columns and types."""
    return pl.DataFrame(schema=polars_schema(name, sizes))


def frame(name: str, data: dict[str, object], sizes: dict[str, int] | None = None) -> pl.DataFrame:
    """A frame of the table from column data (any order), cast to the declared types and order.

    Raises :class:`SchemaError` naming missing or unknown columns.
    """
    declared = column_names(name)
    missing = [c for c in declared if c not in data]
    unknown = [c for c in data if c not in declared]
    if missing or unknown:
        raise SchemaError(
            f"table {name!r}: missing columns {missing}, unknown columns {unknown}; "
            f"declared: {declared}"
        )
    schema = polars_schema(name, sizes)
    return pl.DataFrame({c: data[c] for c in declared}).cast(schema)


# ---- checking what was written -------------------------------------------------------------
def type_matches(declared: str, actual: str) -> bool:
    """Whether DuckDB's ``actual`` type is the ``declared`` one (array sizes are settings)."""
    pattern = re.escape(declared).replace(r"\[", "[").replace(r"\]", "]")
    pattern = re.sub(r"\[(\w+)\]", r"\\[\\d+\\]", pattern).replace("[]", r"\[\]")
    return re.fullmatch(pattern, actual) is not None


def describe(con: duckdb.DuckDBPyConnection, name: str) -> list[tuple[str, str]]:
    """(column, DuckDB type) pairs of table or view ``name`` as ``con`` sees it, in order."""
    return con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = ? ORDER BY ordinal_position",
        [name],
    ).fetchall()


def check_columns(name: str, actual: list[tuple[str, str]]) -> None:
    """Raise :class:`SchemaError` unless ``actual`` (name, DuckDB type) pairs are the declared
    columns, in order, with matching types."""
    expected = table(name).columns
    names = [n for n, _ in actual]
    if names != [c.name for c in expected]:
        raise SchemaError(
            f"table {name!r} has columns {names}; carto_assets/schema.py declares "
            f"{[c.name for c in expected]}"
        )
    for column, (_, got) in zip(expected, actual, strict=True):
        if not type_matches(column.type, got):
            raise SchemaError(
                f"table {name!r}, column {column.name!r}: type {got}, declared {column.type}"
            )


# ---- documentation -------------------------------------------------------------------------
_BLOCK = re.compile(r"<!-- columns: (\w+) -->\n.*?<!-- end columns -->", re.DOTALL)


def markdown(name: str) -> str:
    """The Markdown column table of ``name``, as docs/schema.md holds it."""
    rows = ["| column | type | meaning |", "|---|---|---|"]
    rows += [f"| {c.name} | {c.type} | {c.description} |" for c in table(name).columns]
    return "\n".join(rows)


def documented_blocks(doc: str) -> dict[str, str]:
    """The generated column tables in a document, by table name."""
    return {
        m.group(1): m.group(0).split("\n", 1)[1].rsplit("\n", 1)[0] for m in _BLOCK.finditer(doc)
    }


def render_doc(doc: str) -> str:
    """``doc`` with every ``<!-- columns: name -->`` block regenerated from :data:`TABLES`."""
    return _BLOCK.sub(
        lambda m: f"<!-- columns: {m.group(1)} -->\n{markdown(m.group(1))}\n<!-- end columns -->",
        doc,
    )


if __name__ == "__main__":  # python -m carto_assets.schema docs/schema.md
    for path in map(Path, sys.argv[1:]):
        path.write_text(render_doc(path.read_text()))
        print(f"regenerated the column tables of {path}")
