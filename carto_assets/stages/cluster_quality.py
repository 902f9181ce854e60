"""The ``cluster_quality`` stage: the same statistic for clusters, random same-size groups and
single units (concept and class gain), and how LSH clustering agrees with exact all-pairs.

No dagster imports."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from carto_assets.core.similarity.linkage import clustering_agreement
from carto_assets.core.similarity.pairs import (
    SimilarPairs,
    pair_agreement,
)
from carto_assets.core.similarity.sets import NeuronSets
from carto_assets.stages.clustering import ClusterSets, find_clusters, load_annotations
from carto_assets.storage.quality import Figure, per_layer
from carto_assets.storage.store import CartoStore
from carto_assets.study import ClusteringConfig


def group_images(sets: NeuronSets, group_ids: np.ndarray, units: np.ndarray) -> pl.DataFrame:
    """``(group_id, layer_index, image_id)``: the union of each group's units' top images.

    ``units`` are rows of ``sets``; row ``r`` of the arrays puts unit ``units[r]`` in group
    ``group_ids[r]``. A group's units all come from one layer.
    """
    starts = sets.indptr[units]
    lengths = sets.indptr[units + 1] - starts
    offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    return pl.DataFrame(
        {
            "group_id": np.repeat(group_ids, lengths).astype(np.int64),
            "layer_index": np.repeat(sets.layers[units], lengths).astype(np.int64),
            "image_id": sets.indices[offsets].astype(np.int64),
        }
    ).unique()


def layer_shares(sets: NeuronSets, annotations: pl.DataFrame) -> pl.DataFrame:
    """``(layer_index, concept, value, layer_share)``: each value's share among all top images
    of the layer (the union over its units)."""
    rows = np.arange(sets.n_neurons)
    images = group_images(sets, sets.layers[rows].astype(np.int64), rows)
    sizes = images.group_by("layer_index").agg(pl.len().alias("n"))
    return (
        images.join(annotations, on="image_id")
        .group_by("layer_index", "concept", "value")
        .agg(pl.len().alias("hits"))
        .join(sizes, on="layer_index")
        .select("layer_index", "concept", "value", layer_share=pl.col("hits") / pl.col("n"))
    )


def group_gains(
    images: pl.DataFrame, annotations: pl.DataFrame, shares: pl.DataFrame
) -> pl.DataFrame:
    """Each group's best concept value by gain over its layer.

    ``gain = (share - layer_share) / (1 - layer_share)``, maximized over every (concept, value):
    the fraction of the way from the layer's base rate to "all of the group's top images hold
    the value". A value the whole layer holds (``layer_share == 1``) says nothing and is
    skipped, so a binary concept cannot lift a random group to 0.5 the way raw purity does.

    Parameters
    ----------
    images
        ``(group_id, layer_index, image_id)`` from :func:`group_images`.
    annotations
        ``(image_id, concept, value)``.
    shares
        :func:`layer_shares` of the same annotations.

    Returns
    -------
    polars.DataFrame
        ``(group_id, concept, value, purity, layer_share, gain)``: ``purity`` is the value's
        share of the group's top images; ties go to the first concept and value by name.
        Groups without annotated top images are absent.
    """
    sizes = images.group_by("group_id").agg(pl.len().alias("n_images"))
    return (
        images.join(annotations, on="image_id")
        .group_by("group_id", "layer_index", "concept", "value")
        .agg(pl.len().alias("hits"))
        .join(sizes, on="group_id")
        .join(shares, on=["layer_index", "concept", "value"])
        .filter(pl.col("layer_share") < 1.0)
        .with_columns(purity=pl.col("hits") / pl.col("n_images"))
        .with_columns(
            gain=(pl.col("purity") - pl.col("layer_share")) / (1.0 - pl.col("layer_share"))
        )
        .sort(["group_id", "gain", "concept", "value"], descending=[False, True, False, False])
        .group_by("group_id", maintain_order=True)
        .first()
        .select("group_id", "concept", "value", "purity", "layer_share", "gain")
    )


def random_groups(
    sets: NeuronSets, labels: np.ndarray, clusters: np.ndarray, n_draws: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n_draws`` random groups per cluster: as many units as the cluster, drawn without
    replacement from the cluster's layer. Returns ``(group_ids, units, cluster_of_group)``;
    group ``g`` stands for cluster ``cluster_of_group[g]``."""
    rng = np.random.default_rng(seed)
    sizes = np.bincount(labels)
    group_ids, units, cluster_of = [], [], []
    for cid in clusters:
        pool = np.flatnonzero(sets.layers == sets.layers[np.flatnonzero(labels == cid)[0]])
        take = min(int(sizes[cid]), pool.size)
        for _ in range(n_draws):
            g = len(cluster_of)
            units.append(rng.choice(pool, size=take, replace=False))
            group_ids.append(np.full(take, g))
            cluster_of.append(cid)
    if not cluster_of:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    return (
        np.concatenate(group_ids).astype(np.int64),
        np.concatenate(units).astype(np.int64),
        np.asarray(cluster_of, np.int64),
    )


def _gains_of(gains: pl.DataFrame, n_groups: int) -> np.ndarray:
    """Gain per group id 0..n-1; a group without annotated images counts as 0."""
    out = np.zeros(n_groups)
    out[gains["group_id"].to_numpy()] = gains["gain"].to_numpy()
    return out


def stored_clustering(store: CartoStore, sets: NeuronSets) -> tuple[np.ndarray, SimilarPairs]:
    """The clusters and confirmed pairs ``neuron_clusters`` stored, as rows of ``sets``."""
    nc = store.query("SELECT neuron_id, cluster_id FROM neuron_clusters ORDER BY neuron_id")
    if not np.array_equal(nc["neuron_id"].to_numpy(), sets.neuron_ids):
        raise RuntimeError("neuron_clusters is out of date with top_images; re-materialize it")
    pairs = store.query("SELECT neuron_a, neuron_b, jaccard FROM neuron_pairs ORDER BY ALL")
    rows = np.searchsorted(sets.neuron_ids, pairs["neuron_a"].to_numpy())
    cols = np.searchsorted(sets.neuron_ids, pairs["neuron_b"].to_numpy())
    similar = SimilarPairs(
        i=rows.astype(np.int64),
        j=cols.astype(np.int64),
        jaccard=pairs["jaccard"].to_numpy().astype(np.float64),
        n_neurons=sets.n_neurons,
    )
    return nc["cluster_id"].to_numpy().astype(np.int64), similar


@dataclass(frozen=True)
class KindGains:
    """Gains of one annotation kind (``concept`` or ``class``), all with :func:`group_gains`."""

    #: mean gain of the multi-unit clusters (NaN without any)
    cluster_gain: float
    #: mean gain of random groups of the same sizes and layers
    random_gain: float
    #: mean gain of single units (units with top images)
    single_unit_gain: float
    #: layer name -> mean single-unit gain
    single_unit_gain_by_layer: dict[str, float]
    #: layer name -> share of units with gain >= 0.8
    units_gain_0_8_by_layer: dict[str, float]


@dataclass(frozen=True)
class QualityReport:
    """What ``cluster_quality`` measures: the table, gains per kind, LSH-vs-exact agreement."""

    #: one row per multi-unit cluster and kind (the ``cluster_quality`` table; may be empty)
    table: pl.DataFrame
    #: share of units in multi-unit clusters
    coverage: float
    n_multi_neuron_clusters: int
    #: ``concept`` (studies with ground truth) and ``class`` -> their gains
    gains: dict[str, KindGains]
    pair_recall: float
    pair_precision: float
    n_exact_pairs: int
    n_method_pairs: int
    adjusted_rand_index: float
    #: what the clustering measured Jaccard on (``clustering.sets``): ``sample`` or ``top_k``
    set_basis: str = "top_k"
    #: images in each unit's set, and the images they were chosen from (0: not given)
    set_size: int = 0
    set_images: int = 0

    def figures(self) -> list[Figure]:
        """The study-level figures ``cluster_quality`` writes to ``study_quality``.

        The headline ones (with a name) are what the page header and ``carto run`` show:
        cluster gain vs random groups and single-unit gain per annotation kind, coverage, LSH
        pair recall and ARI against the exact clustering.
        """
        out = [
            Figure(
                "coverage",
                self.coverage,
                "share of units in multi-unit clusters",
                name="units in multi-unit clusters",
                shown=f"{self.coverage:.0%}",
            ),
            Figure(
                "n_multi_neuron_clusters",
                self.n_multi_neuron_clusters,
                "clusters with two or more units",
            ),
        ]
        for kind, g in self.gains.items():
            basis = f"the best {kind} value of the group's top images"
            out += [
                Figure(
                    f"{kind}_cluster_gain",
                    g.cluster_gain,
                    f"mean gain of the multi-unit clusters over their layer ({basis})",
                    # No multi-unit cluster: nothing to show.
                    name=f"cluster gain ({kind})" if g.cluster_gain == g.cluster_gain else "",
                    shown=f"{g.cluster_gain:.2f} vs {g.random_gain:.2f} for random same-size "
                    "groups",
                ),
                Figure(
                    f"{kind}_random_gain",
                    g.random_gain,
                    f"mean gain of random groups of the clusters' sizes and layers ({basis})",
                ),
                Figure(
                    f"{kind}_single_unit_gain",
                    g.single_unit_gain,
                    f"mean gain of single units with top images ({basis})",
                    name=f"single-unit gain ({kind})",
                    shown=f"{g.single_unit_gain:.2f}",
                ),
                *per_layer(
                    f"{kind}_single_unit_gain_by_layer",
                    g.single_unit_gain_by_layer,
                    f"mean single-unit gain of the layer's units ({basis})",
                ),
                *per_layer(
                    f"{kind}_units_gain_0_8_by_layer",
                    g.units_gain_0_8_by_layer,
                    f"share of the layer's units with single-unit gain >= 0.8 ({basis})",
                ),
            ]
        if self.set_size:
            out += [
                Figure(
                    "cluster_set_size",
                    self.set_size,
                    f"images in each unit's set that the clustering measured Jaccard on "
                    f"(clustering.sets: {self.set_basis}), chosen among cluster_set_images",
                ),
                Figure(
                    "cluster_set_images",
                    self.set_images,
                    "images the clustering's sets were chosen from: the labels' sample "
                    "(sets: sample) or every image (sets: top_k)",
                ),
            ]
        out += [
            Figure(
                "pair_recall",
                self.pair_recall,
                "share of the exact all-pairs similar pairs that the study's method found",
                name="LSH pair recall vs exact all-pairs",
                shown=f"{self.pair_recall:.3f}",
            ),
            Figure(
                "pair_precision",
                self.pair_precision,
                "share of the method's pairs that the exact all-pairs search also finds",
            ),
            Figure("n_exact_pairs", self.n_exact_pairs, "similar pairs found by exact all-pairs"),
            Figure("n_method_pairs", self.n_method_pairs, "similar pairs the study's method found"),
            Figure(
                "adjusted_rand_index",
                self.adjusted_rand_index,
                "adjusted Rand index of the study's clustering against the exact clustering",
                name="LSH vs exact clustering (ARI)",
                shown=f"{self.adjusted_rand_index:.3f}",
            ),
        ]
        return out


def quality(
    sets: NeuronSets,
    labels: np.ndarray,
    pairs: SimilarPairs,
    store: CartoStore,
    cfg: ClusteringConfig,
    seed: int = 0,
    n_draws: int = 20,
    cluster_sets: ClusterSets | None = None,
) -> QualityReport:
    """How much more a cluster's top images share a concept than chance, and agreement of
    ``pairs``/``labels`` (the study's method) with the exact inverted-index pairs.

    Gains are measured on ``sets`` (the units' ``top_images``); the exact reference on
    ``cluster_sets``, the sets the clustering measured (default: ``sets``).

    One statistic, :func:`group_gains`, scores every multi-unit cluster, ``n_draws`` random
    groups of the same size and layer per cluster, and every single unit, per annotation kind
    (``concept`` on studies with ground truth, ``class`` on every study).

    The report's table has one row per multi-unit cluster and kind: its best value,
    ``purity`` (that value's share), ``layer_share``, ``gain`` and ``random_gain`` (mean gain
    of its random groups).
    """
    # Every figure joins the annotations with the units' top images: read only theirs.
    concepts, classes = load_annotations(store, sets.indices)
    sizes = np.bincount(labels)
    multi = np.flatnonzero(sizes >= 2)
    n_units = sets.n_neurons
    gains: dict[str, KindGains] = {}
    # Group ids: clusters keep their ids; random groups and single units get their own frames.
    in_multi = np.flatnonzero(np.isin(labels, multi))
    cluster_images = group_images(sets, labels[in_multi].astype(np.int64), in_multi)
    rand_ids, rand_units, rand_cluster = random_groups(sets, labels, multi, n_draws, seed)
    random_images = group_images(sets, rand_ids, rand_units)
    singles = np.arange(n_units, dtype=np.int64)
    single_images = group_images(sets, singles, singles)
    layer_names = dict(store.query("SELECT DISTINCT layer_index, layer FROM neurons").iter_rows())
    rows = []
    for kind, ann in (("concept", concepts), ("class", classes)):
        if ann is None:
            continue
        shares = layer_shares(sets, ann)
        clusters = group_gains(cluster_images, ann, shares).rename({"group_id": "cluster_id"})
        random_gain = _gains_of(group_gains(random_images, ann, shares), len(rand_cluster))
        per_cluster = pl.DataFrame({"cluster_id": rand_cluster, "random_gain": random_gain})
        per_cluster = per_cluster.group_by("cluster_id").agg(pl.col("random_gain").mean())
        unit_gain = _gains_of(group_gains(single_images, ann, shares), n_units)
        # Units with no top images (dead neurons) have nothing to score.
        alive = np.diff(sets.indptr) > 0
        by_layer = (
            pl.DataFrame(
                {"layer_index": sets.layers[alive].astype(np.int64), "gain": unit_gain[alive]}
            )
            .group_by("layer_index")
            .agg(mean=pl.col("gain").mean(), high=(pl.col("gain") >= 0.8).mean())
            .sort("layer_index")
        )
        names = [
            str(layer_names.get(int(sets.layer_values[code]), code))
            for code in by_layer["layer_index"].to_list()
        ]
        gains[kind] = KindGains(
            cluster_gain=float(clusters["gain"].mean()) if len(clusters) else float("nan"),
            random_gain=float(random_gain.mean()) if random_gain.size else 0.0,
            single_unit_gain=float(unit_gain[alive].mean()) if alive.any() else 0.0,
            single_unit_gain_by_layer=dict(
                zip(names, [round(v, 4) for v in by_layer["mean"].to_list()])
            ),
            units_gain_0_8_by_layer=dict(
                zip(names, [round(v, 4) for v in by_layer["high"].to_list()])
            ),
        )
        if len(clusters):
            rows.append(
                clusters.join(per_cluster, on="cluster_id", how="left").with_columns(
                    kind=pl.lit(kind),
                    size=pl.col("cluster_id").map_elements(
                        lambda c: int(sizes[c]), return_dtype=pl.Int32
                    ),
                )
            )
    measured = cluster_sets.sets if cluster_sets is not None else sets
    exact = find_clusters(measured, cfg, method="exact")
    agreement = pair_agreement(exact.pairs, pairs)
    table = pl.concat(rows) if rows else pl.DataFrame()
    if len(table):
        table = table.select(
            "cluster_id",
            "kind",
            "size",
            "concept",
            "value",
            "purity",
            "layer_share",
            "gain",
            "random_gain",
        ).sort("kind", "cluster_id")
    return QualityReport(
        table=table,
        coverage=float(np.isin(labels, multi).mean()) if n_units else 0.0,
        n_multi_neuron_clusters=int(multi.size),
        gains=gains,
        pair_recall=agreement.recall,
        pair_precision=agreement.precision,
        n_exact_pairs=agreement.n_reference,
        n_method_pairs=agreement.n_candidate,
        adjusted_rand_index=float(clustering_agreement(exact.clustering.labels, labels)),
        **(
            {}
            if cluster_sets is None
            else {
                "set_basis": cluster_sets.basis,
                "set_size": cluster_sets.set_size,
                "set_images": cluster_sets.n_images,
            }
        ),
    )
