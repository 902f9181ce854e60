"""The tables and views of a study's database, in the order the pipeline writes them."""

from __future__ import annotations

from carto_assets.schema.columns import Table
from carto_assets.schema.columns import declare as _table

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


#: The words' columns, the same for a unit's (`unit_labels`) and a cluster's (`cluster_labels`).
def _on_columns(subject: str) -> tuple[tuple[str, str, str], ...]:
    """``on_share`` and ``always_on`` of a unit (``subject`` "it is") or a cluster."""
    return (
        (
            "on_share",
            "DOUBLE",
            f"share of the labels' sample {subject} on for (at least half its largest "
            "activation over the sample)",
        ),
        (
            "always_on",
            "BOOLEAN",
            "`on_share` >= `labels.always_on` (0.9): it adds a fixed part to a logit whatever "
            "the image; explanations list it after the concepts that are not always on",
        ),
    )


_WORD_COLUMNS = (
    (
        "formula",
        "VARCHAR",
        "the words: a formula over annotation values (docs/words.md: `concept=value`, AND, OR, "
        "NOT, parentheses), the one that best separates the sampled images it fires on; NULL "
        "where no word fits (AUC below `labels.min_auc` or p-value above `labels.max_p`)",
    ),
    ("auc", "DOUBLE", "ROC AUC of the activation as a score for `candidate` on the sample"),
    (
        "p_value",
        "DOUBLE",
        "one-sided Mann-Whitney p-value of `candidate`, times the formulas scored (Bonferroni)",
    ),
    (
        "candidate",
        "VARCHAR",
        "the best formula found, kept or refused (NULL only for a constant activation)",
    ),
    (
        "single_term",
        "VARCHAR",
        "the best formula of one term (`t` or `NOT t`) holding on at most `labels.max_share` "
        "of the sample's images",
    ),
    ("single_auc", "DOUBLE", "its AUC on the sample"),
    (
        "n_terms_over_08",
        "INTEGER",
        "how many distinct terms alone reach AUC 0.8 (more than one: polysemantic)",
    ),
)

#: Every table and view of a study's database.
STUDY_TABLES: tuple[Table, ...] = (
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
        "image_annotations",
        "images",
        ("image_id", "BIGINT", "image"),
        (
            "concept",
            "VARCHAR",
            "`class` (every image), the world's ground-truth concepts (as in `image_concepts`) "
            "or a column of the study's `annotations` table",
        ),
        (
            "value",
            "VARCHAR",
            "one value of the concept in that image (the class's name for `class`); an image "
            "has one row per value, none for a concept it is not annotated with",
        ),
    ),
    _table(
        "annotation_counts",
        "images",
        ("label", "INTEGER", "class index"),
        ("concept", "VARCHAR", "as in `image_annotations`"),
        ("value", "VARCHAR", "as in `image_annotations`"),
        (
            "n_images",
            "BIGINT",
            "the class's images annotated with that value: counted once when the images are "
            "read, so the audit reads a few rows per class, not every annotation",
        ),
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
        "unit_maxima",
        "top_images",
        ("image_id", "BIGINT", "an image of the labels' sample (`labels.sample_images`)"),
        (
            "maxima",
            "FLOAT[]",
            "every unit's activation on the image (the spatial maximum, as in `top_images`), "
            "indexed by `neuron_id` (element i, 1-based in SQL, is neuron i - 1); in the "
            "shard's Parquet file a fixed-size list of as many values as `neurons` has rows",
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
            "sum of the neuron's activation over those images (divide by `n_images` for the mean)",
        ),
        kind="view",
    ),
    _table(
        "image_predictions",
        "top_images",
        ("image_id", "BIGINT", "an image the activation pass processed (one row each)"),
        (
            "predicted",
            "INTEGER",
            "the model's prediction: the index of its largest output (a class index where the "
            "outputs are the study's classes, else the head's index)",
        ),
        ("logit", "FLOAT", "the largest output (the predicted logit)"),
        (
            "label_logit",
            "FLOAT",
            "the output of the image's label; NULL where the model's outputs are not the "
            "study's classes (a head of another size)",
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
            "MinHash signature of the neuron's clustering set (`clustering.sets`: its top "
            "`top_fraction` of the labels' sample, or its top-k images): datasketch's scheme "
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
        (
            "jaccard",
            "DOUBLE",
            "Jaccard similarity of the two clustering sets (`clustering.sets`: each one's top "
            "`top_fraction` of the labels' sample, or its top-k images)",
        ),
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
        "unit_labels",
        "unit_labels",
        ("neuron_id", "BIGINT", "unit (neurons)"),
        ("layer", "VARCHAR", "its layer (or feature pseudo-layer)"),
        ("kind", "VARCHAR", "`channel` or `feature`"),
        *_WORD_COLUMNS,
        (
            "n_sharing_formula",
            "INTEGER",
            "how many other units have the same words (redundancy); NULL without words",
        ),
        *_on_columns("it is"),
        ("n_images", "INTEGER", "images of the labels' sample the words were chosen on"),
    ),
    _table(
        "cluster_labels",
        "unit_labels",
        ("cluster_id", "BIGINT", "cluster (neuron_clusters)"),
        ("layer", "VARCHAR", "its layer"),
        ("size", "INTEGER", "units in the cluster"),
        *_WORD_COLUMNS,
        *_on_columns("its pooled activation is"),
        ("n_images", "INTEGER", "images of the labels' sample the words were chosen on"),
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
        (
            "rank",
            "INTEGER",
            "1 = the concept with the largest share among those not always on "
            "(`cluster_labels.always_on`); the always-on concepts of the stored ones follow, "
            "each part by share",
        ),
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
        (
            "top_object_share",
            "DOUBLE",
            "`object_share` of the top concept alone (`explanation_concepts.rank` 1: the most "
            "relevant one that is not always on)",
        ),
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
        "class_audit",
        "class_audit",
        ("label", "INTEGER", "class"),
        ("class_name", "VARCHAR", "its name"),
        (
            "term",
            "VARCHAR",
            "`concept=value`: a term of some unit's words, the class's own, or a term that "
            "co-occurs with the class (`cooccurs`)",
        ),
        (
            "own",
            "BOOLEAN",
            "the class's own term: `class=<name>`, or a term that holds on exactly the class's "
            "images (`shape=<class>` in the shapes world)",
        ),
        ("rank", "INTEGER", "1 = the class's term with the largest `relevance_share`"),
        (
            "specific_rank",
            "INTEGER",
            "1 = the class's term with the largest `excess_share`: what it relies on more than "
            "the other classes do (every class's early layers use colour; this order puts "
            "first what sets the class apart)",
        ),
        (
            "relevance_share",
            "DOUBLE",
            "the share of the class's relevance its units carry, mean over the unit layers: "
            "per layer, the sum over the units whose words name the term (not under NOT) of "
            "the unit's `class_relevance.share` clipped at 0, divided among its words' terms",
        ),
        ("top_layer", "VARCHAR", "the layer where the term's share is largest"),
        ("top_layer_share", "DOUBLE", "its share there"),
        ("units", "INTEGER", "units of `top_layer` whose words name the term"),
        (
            "lift",
            "DOUBLE",
            "`relevance_share` over its mean over the other classes (how much more this class "
            "leans on the term than the rest do); infinite where no other class's units carry it",
        ),
        (
            "excess_share",
            "DOUBLE",
            "`relevance_share` minus its mean over the other classes",
        ),
        ("class_rate", "DOUBLE", "share of the class's images where the term holds"),
        ("other_rate", "DOUBLE", "share of the other classes' images where it holds"),
        (
            "cooccurrence_p",
            "DOUBLE",
            "one-sided Fisher's exact test (hypergeometric) that the term holds on the class's "
            "images more often than on as many images drawn at random from the study",
        ),
        (
            "cooccurs",
            "BOOLEAN",
            "a correlation in the data: not `own`, `class_rate` positive and at least "
            "`audit.min_cooccurrence` times `other_rate`, and `cooccurrence_p` below 0.01 over "
            "the number of (class, term) pairs (Bonferroni); listed even where no unit's words "
            "name the term",
        ),
        (
            "flagged",
            "BOOLEAN",
            "a candidate shortcut, by `flagged_by`: `relevance` where the term `cooccurs`, "
            "`top_layer_share` is at least `audit.min_share` and `lift` at least "
            "`audit.min_lift`; `counterfactual` where the term `cooccurs` and the "
            "counterfactual confirms that the model uses it (whatever its relevance)",
        ),
        ("flagged_by", "VARCHAR", "`relevance` or `counterfactual` (see `flagged`); else NULL"),
        (
            "checked",
            "BOOLEAN",
            "the causal checks ran: every term flagged by relevance (both checks) and every "
            "co-occurring term the source can render again (the counterfactual; the ablation "
            "too where it confirms); the check columns are NULL elsewhere",
        ),
        ("ablation_units", "INTEGER", "units zeroed: the term's units at `top_layer`"),
        (
            "ablation_images",
            "INTEGER",
            "the class's images measured (the concept graph's sample, `graph.images_per_class`; "
            "`audit.images_per_class` where set)",
        ),
        (
            "ablation_drop",
            "DOUBLE",
            "mean drop of the class's logit on them when the term's units are zeroed "
            "(feature layers: their decoder contribution subtracted)",
        ),
        (
            "ablation_other_drop",
            "DOUBLE",
            "mean drop of the other classes' logits on the same images",
        ),
        (
            "ablation_random_drop",
            "DOUBLE",
            "mean drop of the class's logit when as many random units of the layer are zeroed "
            "(mean of 5 seeded draws)",
        ),
        (
            "ablation_p_value",
            "DOUBLE",
            "per image, paired: one-sided Wilcoxon signed-rank p-value that the class logit's "
            "drop is above the random units' (mean of the draws) and above the other classes' "
            "logits' drop; the larger of the two",
        ),
        (
            "ablation_confirms",
            "BOOLEAN",
            "`ablation_drop` is positive, at least twice `ablation_random_drop`, and "
            "`ablation_p_value` is below 0.01",
        ),
        (
            "counterfactual_images",
            "INTEGER",
            "the class's images that carry the term (the checked ones that do, topped up with a "
            "seeded sample of its other carrying images to as many as `ablation_images`), "
            "rendered again with its concept changed (each to a seeded "
            "other value, all else the same); NULL where the source cannot render (image "
            "folders, `class=` terms)",
        ),
        ("accuracy", "DOUBLE", "the class's accuracy on those images as they are"),
        ("counterfactual_accuracy", "DOUBLE", "the same on the changed images"),
        ("logit", "DOUBLE", "mean class logit on those images as they are"),
        ("counterfactual_logit", "DOUBLE", "the same on the changed images"),
        (
            "counterfactual_p_value",
            "DOUBLE",
            "one-sided Wilcoxon signed-rank p-value that the class logit drops per image",
        ),
        (
            "counterfactual_confirms",
            "BOOLEAN",
            "`logit - counterfactual_logit` is at least `audit.min_counterfactual_drop` times "
            "`|logit|` and `counterfactual_p_value` is below 0.01; NULL where nothing was "
            "rendered",
        ),
        (
            "confirmed",
            "BOOLEAN",
            "the model uses the term, it does not only co-occur with the class: "
            "`counterfactual_confirms` where the counterfactual ran (it changes the term in the "
            "images and nothing else), else `ablation_confirms`; NULL where neither ran",
        ),
    ),
    _table(
        "class_audit_images",
        "class_audit",
        ("label", "INTEGER", "class"),
        ("term", "VARCHAR", "a checked term (`class_audit.checked`)"),
        ("rank", "INTEGER", "1 = the image whose class logit dropped most"),
        ("image_id", "BIGINT", "one of the class's measured images"),
        ("drop", "DOUBLE", "its class logit's drop when the term's units are zeroed"),
        ("thumb", "BLOB", "the image as the model saw it, at most 64 px a side, PNG"),
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
            "the asset that measured the figure and wrote the row (`images`, `model`, "
            "`dictionary`, `cluster_quality`, `neuron_embedding`, `concept_graph`); "
            "re-materializing it "
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
)
