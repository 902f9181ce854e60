"""Concept clusters: similar pairs grouped without chaining (pure computation).

``group_neurons`` agglomerates the similar-pair graph of :mod:`carto_assets.core.similarity.pairs`:
the two clusters with the highest linkage merge while it is >= the threshold, and pairs absent from
the graph count as similarity 0. With average linkage (the default) every cluster's mean pairwise
Jaccard stays >= the threshold, so a chain of neurons, each similar to the next, cannot grow into
one cluster the way connected components (``"single"``) do.

Merges never cross connected components, so the merge heap runs per component, and a component
whose every node pair is a strong edge ends as one cluster without it. Clusters are numbered by
layer, then by their smallest member neuron id: the same pairs always give the same
``Clustering``.

``cluster_size_distribution`` and ``clustering_agreement`` (adjusted Rand index) describe and
compare clusterings; labels, purity and the gain over random groups are computed from tables in
:mod:`carto_assets.stages.clustering`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from carto_assets.core.similarity.lsh import check_threshold
from carto_assets.core.similarity.pairs import PairMethod, SimilarPairs, similar_pairs
from carto_assets.core.similarity.sets import NeuronSets
from carto_assets.core.validate import check_choice

Linkage = Literal["average", "complete", "single"]
LINKAGES: tuple[str, ...] = ("average", "complete", "single")


@dataclass(frozen=True, eq=False)
class Clustering:
    """Cluster assignment of neurons.

    Attributes
    ----------
    neuron_ids
        ``(n,)`` neuron id of each row.
    labels
        ``(n,)`` int64 cluster id of each row in ``0..n_clusters-1``; clusters are numbered
        by layer code, then by smallest member neuron id. Unclustered neurons are singleton
        clusters.
    cluster_layers
        ``(n_clusters,)`` layer code of each cluster.
    cluster_sizes
        ``(n_clusters,)`` number of neurons in each cluster.
    """

    neuron_ids: np.ndarray
    labels: np.ndarray
    cluster_layers: np.ndarray
    cluster_sizes: np.ndarray

    @property
    def n_clusters(self) -> int:
        """Number of clusters, singletons included."""
        return int(self.cluster_sizes.size)


def agglomerate(
    n: int,
    i: np.ndarray,
    j: np.ndarray,
    similarity: np.ndarray,
    *,
    threshold: float,
    linkage: Linkage = "average",
) -> np.ndarray:
    """Agglomerate a sparse similarity graph; absent edges have similarity 0.

    Repeatedly merges the two clusters with the highest linkage while it is >= threshold;
    ties go to the pair whose smallest members are smallest. Linkage between clusters
    ``A`` and ``B`` over edge similarities ``s`` (absent edges count as 0):

    * ``"average"``: ``sum(s) / (|A| * |B|)``; every cluster's mean pairwise similarity
      stays >= threshold, so a chain of weakly linked neurons cannot grow into one cluster.
    * ``"complete"``: ``min(s)`` if all ``|A| * |B|`` edges exist, else 0 (clusters are
      cliques of the graph).
    * ``"single"``: ``max(s)``; connected components, i.e. plain union-find. It chains and
      is provided only as a baseline.

    Parameters
    ----------
    n
        Number of nodes.
    i, j, similarity
        Edges (``i != j``, each unordered pair at most once) and their similarities.
    threshold
        Minimum linkage for a merge, in ``(0, 1]``.
    linkage
        One of ``LINKAGES``.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` int64: the smallest node of each node's cluster.
    """
    threshold = check_threshold(threshold)
    check_choice("linkage", linkage, LINKAGES)
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    similarity = np.asarray(similarity, dtype=np.float64)
    if not (i.shape == j.shape == similarity.shape) or i.ndim != 1:
        raise ValueError("i, j and similarity must be 1-D arrays of equal length")
    if i.size:
        if min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n:
            raise ValueError(f"edge endpoints must be in [0, {n})")
        if np.any(i == j):
            raise ValueError("edges must join distinct nodes (i != j)")
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        if np.unique(lo * np.int64(n) + hi).size != i.size:
            raise ValueError("each unordered pair may appear only once in the edges")

    node_min = np.arange(n, dtype=np.int64)
    if linkage == "single":
        strong = similarity >= threshold
        return _component_min(n, i[strong], j[strong])
    # Shortcut, exact for average and complete linkage: in a connected component whose
    # every node pair is an edge with similarity >= threshold, every possible merge has
    # linkage >= threshold, so the component always ends as one cluster. Components never
    # merge with each other (linkage 0), so the heap only needs the remaining components.
    comp = _component_min(n, i, j)
    comp_nodes = np.bincount(comp, minlength=n)
    comp_edges = np.bincount(comp[i], minlength=n)
    comp_min_sim = np.full(n, np.inf)
    np.minimum.at(comp_min_sim, comp[i], similarity)
    clique = (comp_edges * 2 == comp_nodes * (comp_nodes - 1)) & (comp_min_sim >= threshold)
    in_clique = clique[comp]
    node_min[in_clique] = comp[in_clique]
    rest = np.flatnonzero(~clique[comp[i]])
    if rest.size:
        # One small heap per component: merges never cross components, and small heaps
        # keep each pop cheap.
        rest = rest[np.argsort(comp[i[rest]], kind="stable")]
        bounds = np.flatnonzero(np.diff(comp[i[rest]])) + 1
        parent = np.arange(n, dtype=np.int64)
        for edges in np.split(rest, bounds):
            _heap_agglomerate(parent, i[edges], j[edges], similarity[edges], threshold, linkage)
        nodes = np.flatnonzero(~in_clique)
        node_min[nodes] = _smallest_member(parent)[nodes]
    return node_min


def _component_min(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Smallest node of each node's connected component."""
    graph = sp.coo_array((np.ones(i.size, dtype=np.int8), (i, j)), shape=(n, n)).tocsr()
    _, comp = connected_components(graph, directed=False)
    smallest = np.full(n, n, dtype=np.int64)
    np.minimum.at(smallest, comp, np.arange(n, dtype=np.int64))
    return smallest[comp]


def _smallest_member(parent: np.ndarray) -> np.ndarray:
    """Follow merge pointers to each node's final handle, then take the cluster minimum."""
    root = parent.copy()
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    smallest = np.full(parent.size, parent.size, dtype=np.int64)
    np.minimum.at(smallest, root, np.arange(parent.size, dtype=np.int64))
    return smallest[root]


def _heap_agglomerate(
    parent: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    similarity: np.ndarray,
    threshold: float,
    linkage: str,
) -> None:
    """Greedy best-linkage merging; records merge pointers ``parent[v] = absorber``."""
    # Cluster state is keyed by cluster handle; neighbour stats [sum, count, min, max] are
    # shared list objects between both endpoints so one in-place update serves both.
    size: dict[int, int] = {}
    smallest: dict[int, int] = {}
    version: dict[int, int] = {}
    nbr: dict[int, dict[int, list[float]]] = {}
    for a, b, s in zip(i.tolist(), j.tolist(), similarity.tolist()):
        for u in (a, b):
            if u not in nbr:
                nbr[u] = {}
                size[u] = 1
                smallest[u] = u
                version[u] = 0
        stat = [s, 1.0, s, s]
        nbr[a][b] = stat
        nbr[b][a] = stat

    def link(u: int, v: int, stat: list[float]) -> float:
        if linkage == "average":
            return stat[0] / (size[u] * size[v])
        if linkage == "complete":
            return stat[2] if stat[1] == size[u] * size[v] else 0.0
        return stat[3]

    def entry(u: int, v: int, value: float) -> tuple[float, int, int, int, int, int, int]:
        su, sv = smallest[u], smallest[v]
        if su > sv:
            u, v, su, sv = v, u, sv, su
        return (-value, su, sv, u, v, version[u], version[v])

    heap = []
    for u, neighbours in nbr.items():
        for v, stat in neighbours.items():
            if u < v:
                value = link(u, v, stat)
                if value >= threshold:
                    heap.append(entry(u, v, value))
    heapq.heapify(heap)

    while heap:
        _, _, _, u, v, vu, vv = heapq.heappop(heap)
        if version.get(u) != vu or version.get(v) != vv:
            continue
        # Keep the handle with more neighbours so only the smaller map is re-keyed.
        if len(nbr[u]) < len(nbr[v]):
            u, v = v, u
        keep, gone = nbr[u], nbr.pop(v)
        del keep[v]
        del gone[u]
        for c, stat in gone.items():
            other = nbr[c]
            del other[v]
            cur = keep.get(c)
            if cur is None:
                keep[c] = stat
                other[u] = stat
            else:
                cur[0] += stat[0]
                cur[1] += stat[1]
                cur[2] = min(cur[2], stat[2])
                cur[3] = max(cur[3], stat[3])
        parent[v] = u
        size[u] += size.pop(v)
        smallest[u] = min(smallest[u], smallest.pop(v))
        version[u] += 1
        del version[v]
        for c, stat in keep.items():
            value = link(u, c, stat)
            if value >= threshold:
                heapq.heappush(heap, entry(u, c, value))


def group_neurons(
    sets: NeuronSets,
    pairs: SimilarPairs,
    *,
    threshold: float,
    linkage: Linkage = "average",
) -> Clustering:
    """Cluster neurons from their similar pairs without chaining.

    Parameters
    ----------
    sets
        Neuron sets the pairs refer to.
    pairs
        Similar pairs (any method); all must lie within one layer.
    threshold
        Minimum linkage for a merge in ``(0, 1]``; normally the pair threshold.
    linkage
        ``"average"`` (default), ``"complete"`` or ``"single"`` (chaining baseline), see
        ``agglomerate``.

    Returns
    -------
    Clustering
        Deterministic cluster ids numbered by layer, then by smallest member neuron id.
    """
    if pairs.n_neurons != sets.n_neurons:
        raise ValueError(f"pairs refer to {pairs.n_neurons} neurons but sets have {sets.n_neurons}")
    if pairs.n_pairs and np.any(sets.layers[pairs.i] != sets.layers[pairs.j]):
        raise ValueError("pairs must join neurons of the same layer")
    root = agglomerate(
        sets.n_neurons, pairs.i, pairs.j, pairs.jaccard, threshold=threshold, linkage=linkage
    )
    return _number_clusters(sets, root)


def _number_clusters(sets: NeuronSets, root: np.ndarray) -> Clustering:
    roots = np.unique(root)
    # Rows ascend with neuron id, so the root row is the smallest member neuron id.
    order = np.lexsort((roots, sets.layers[roots]))
    cluster_of_root = np.empty(sets.n_neurons, dtype=np.int64)
    cluster_of_root[roots[order]] = np.arange(roots.size, dtype=np.int64)
    labels = cluster_of_root[root]
    return Clustering(
        neuron_ids=sets.neuron_ids,
        labels=labels,
        cluster_layers=sets.layers[roots[order]],
        cluster_sizes=np.bincount(labels, minlength=roots.size),
    )


def cluster_neurons(
    sets: NeuronSets,
    *,
    threshold: float,
    method: PairMethod = "lsh",
    linkage: Linkage = "average",
    **lsh_options: object,
) -> Clustering:
    """Similar pairs by ``method`` and then ``group_neurons`` at the same threshold."""
    pairs = similar_pairs(sets, threshold=threshold, method=method, **lsh_options)
    return group_neurons(sets, pairs, threshold=threshold, linkage=linkage)


def cluster_size_distribution(labels: np.ndarray) -> dict[int, int]:
    """Return ``{cluster size: number of clusters of that size}``, ascending by size."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return {}
    _, sizes = np.unique(labels, return_counts=True)
    values, counts = np.unique(sizes, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def clustering_agreement(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Adjusted Rand index between two clusterings of the same neurons (1 = identical)."""
    # Imported here: scikit-learn is slow to import and only needed for evaluation.
    from sklearn.metrics import adjusted_rand_score

    labels_a = np.asarray(labels_a)
    labels_b = np.asarray(labels_b)
    if labels_a.shape != labels_b.shape or labels_a.ndim != 1:
        raise ValueError(
            f"labels must be 1-D of equal length, got {labels_a.shape} and {labels_b.shape}"
        )
    return float(adjusted_rand_score(labels_a, labels_b))
