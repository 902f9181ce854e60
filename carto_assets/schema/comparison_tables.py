"""The tables of a comparison's database (``carto compare``, :mod:`carto_assets.compare`)."""

from __future__ import annotations

from carto_assets.schema.columns import Table
from carto_assets.schema.columns import declare as _table

_STUDY = ("study", "VARCHAR", "the study (its `name`)")
_OTHER = ("other_study", "VARCHAR", "the other study")
_UNIT = ("unit_id", "BIGINT", "unit: dense id over the compared studies (`compare_units`)")


def _compared(name: str, asset: str, *columns: tuple[str, str, str]) -> Table:
    return _table(name, asset, *columns, database="comparison")


#: The tables of a comparison's database (``carto compare``, :mod:`carto_assets.compare`),
#: written from the studies' own tables.
COMPARISON_TABLES: tuple[Table, ...] = (
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
        (
            "has_words",
            "BOOLEAN",
            "the study has words (`cluster_labels`); false: mapped before words or with "
            "`labels.enabled: false`, and its concepts are matched by images",
        ),
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
        (
            "formula",
            "VARCHAR",
            "the cluster's words (`cluster_labels.formula` of the study); NULL: no word fits, "
            "or the study has no words",
        ),
        ("auc", "DOUBLE", "their AUC (`cluster_labels.auc`); NULL without words"),
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
        ("cluster_id", "BIGINT", "a cluster of `study`"),
        ("layer", "VARCHAR", "its layer"),
        ("size", "INTEGER", "its units"),
        ("label", "VARCHAR", "its label (what its top images have in common)"),
        ("formula", "VARCHAR", "its words (`compare_clusters.formula`); NULL: none"),
        ("auc", "DOUBLE", "their AUC"),
        _OTHER,
        (
            "matched_by",
            "VARCHAR",
            "`formula`: both studies have words, and a concept is a cluster's formula; "
            "`images`: one of them has none (`compare_studies.has_words`), and concepts are "
            "matched by their top images",
        ),
        (
            "match_cluster_id",
            "BIGINT",
            "`formula`: the cluster of `other_study` with the same formula (canonical text: "
            "operands of AND and OR in order), in the same layer first, then the higher AUC, "
            "then the smaller id; `images`: the one whose top images (the union of its "
            "members') are most similar, at or above `concept_threshold`; NULL: none",
        ),
        ("match_layer", "VARCHAR", "its layer"),
        ("match_label", "VARCHAR", "its label"),
        ("match_auc", "DOUBLE", "the AUC of its words (NULL: it has none)"),
        (
            "jaccard",
            "DOUBLE",
            "Jaccard similarity of the two concepts' top images (the union of their members'); "
            "NULL: no match",
        ),
        ("mutual", "BOOLEAN", "each is the other's match"),
        (
            "status",
            "VARCHAR",
            "`shared` (it has a match) or `only` (only in `study`); NULL: `formula`, and the "
            "cluster has no words (not a concept to match)",
        ),
        (
            "label_changed",
            "BOOLEAN",
            "`images`, shared concepts: neither label's leading term (what its cluster is most "
            "distinctive for) is among the other label's terms (`colour=red` against "
            "`shape=heart`); NULL otherwise (matched by `formula`, the words are the same)",
        ),
        (
            "same_label_elsewhere",
            "BOOLEAN",
            "for concepts only in `study`, a partial match: `formula`: `other_study` has a "
            "concept whose words share a term not under NOT with these (`shape=heart` against "
            "`shape=heart AND colour=red`); `images`: `other_study` has a concept (any layer) "
            "whose label leads with the same term, on other images; NULL for shared concepts "
            "and clusters without words",
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
