import itertools

import numpy as np
import pytest
from reference.clustering import exact_pairs_dense, neuron_sets_from_lists

from carto_assets.core.similarity.linkage import (
    agglomerate,
    cluster_neurons,
    cluster_size_distribution,
    clustering_agreement,
    group_neurons,
)
from carto_assets.core.similarity.lsh import MinHashLsh
from carto_assets.core.similarity.minhash import minhash_signatures
from carto_assets.core.similarity.pairs import (
    SimilarPairs,
    confirm_pairs,
    exact_pairs_inverted_index,
    identical_set_groups,
    lsh_pairs,
    pair_agreement,
    similar_pairs,
)
from carto_assets.core.similarity.sets import build_neuron_sets

THRESHOLD = 0.5


def _brute_force_pairs(sets, threshold):
    rows = [
        set(sets.indices[sets.indptr[r] : sets.indptr[r + 1]].tolist())
        for r in range(len(sets.neuron_ids))
    ]
    out = []
    for a, b in itertools.combinations(range(len(rows)), 2):
        union = len(rows[a] | rows[b])
        if sets.layers[a] == sets.layers[b] and union:
            jac = len(rows[a] & rows[b]) / union
            if jac >= threshold:
                out.append((a, b, jac))
    return out


def _as_list(pairs):
    return list(zip(pairs.i.tolist(), pairs.j.tolist(), pairs.jaccard.tolist()))


def _mixed_sets(seed, n_per_layer=60, n_layers=3):
    """Sets whose pairwise similarities spread over [0, 1], plus edge cases."""
    rng = np.random.default_rng(seed)
    sets, layers = [], []
    for layer in range(n_layers):
        parents = [rng.choice(3000, 40, replace=False) for _ in range(8)]
        for _ in range(n_per_layer):
            parent = parents[int(rng.integers(len(parents)))]
            keep = parent[rng.random(40) < rng.uniform(0.4, 1.0)]
            sets.append(np.concatenate([keep, rng.choice(3000, int(rng.integers(0, 15)))]))
            layers.append(layer)
        sets += [[], [], [1], [1], [2], list(range(100, 140)), list(range(100, 140))]
        layers += [layer] * 7
    sets.append([5, 6])  # a layer holding a single neuron
    layers.append(n_layers)
    return neuron_sets_from_lists(sets, layers=layers, neuron_ids=np.arange(len(sets)) * 3 + 1)


def _planted(seed, n_layers=3, groups_per_layer=8, n_noise=20):
    rng = np.random.default_rng(seed)
    sets, layers, truth = [], [], []
    label = 0
    for layer in range(n_layers):
        for _ in range(groups_per_layer):
            base = rng.choice(100_000, 50, replace=False)
            for _ in range(int(rng.integers(3, 7))):
                keep = base[rng.random(50) < 0.95]
                sets.append(np.concatenate([keep, rng.choice(100_000, 50 - keep.size)]))
                layers.append(layer)
                truth.append(label)
            label += 1
        for _ in range(n_noise):
            sets.append(rng.choice(100_000, 50, replace=False))
            layers.append(layer)
            truth.append(label)
            label += 1
    order = rng.permutation(len(sets))
    sets = [sets[k] for k in order]
    return neuron_sets_from_lists(sets, layers=np.array(layers)[order]), np.array(truth)[order]


# ----------------------------------------------------------------------------- inputs


def test_build_neuron_sets_dedupes_and_orders():
    sets = build_neuron_sets(
        np.array([30, 10, 10, 10, 30]),
        np.array([5, 9, 2, 9, 1]),
        neurons_neuron_id=np.array([30, 20, 10]),
        neurons_layer=np.array([1, 0, 1]),
    )
    assert sets.neuron_ids.tolist() == [10, 20, 30]
    assert sets.layers.tolist() == [1, 0, 1]
    assert sets.layer_values.tolist() == [0, 1]
    assert sets.indptr.tolist() == [0, 2, 2, 4]  # neuron 20 has no top images
    assert sets.indices.tolist() == [2, 9, 1, 5]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"neuron_id": np.array([1, 4])}, "neuron_id 4 in top_images is not in neurons_neuron_id"),
        ({"neuron_id": np.array([1])}, "same length, got 1 and 2"),
        ({"image_id": np.array([1, -2])}, "image_id must be non-negative, got minimum -2"),
        ({"neurons_neuron_id": np.array([1, 1])}, "neurons_neuron_id must be unique, 1 repeats"),
        ({"neurons_layer": np.array([0])}, "neurons_layer must have the same shape"),
        ({"image_id": np.array([1.0, 2.0])}, "image_id must hold integers"),
    ],
)
def test_build_neuron_sets_bad_input(kwargs, message):
    args = {
        "neuron_id": np.array([1, 2]),
        "image_id": np.array([7, 8]),
        "neurons_neuron_id": np.array([1, 2]),
        "neurons_layer": np.array([0, 0]),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        build_neuron_sets(
            args["neuron_id"],
            args["image_id"],
            neurons_neuron_id=args["neurons_neuron_id"],
            neurons_layer=args["neurons_layer"],
        )


# ------------------------------------------------------------------------------ pairs


@pytest.mark.parametrize("threshold", [0.3, 0.5, 1.0])
def test_exact_methods_match_brute_force(threshold):
    sets = _mixed_sets(0)
    expected = _brute_force_pairs(sets, threshold)
    assert len(expected) >= {0.3: 400, 0.5: 100, 1.0: 6}[threshold]
    assert _as_list(exact_pairs_inverted_index(sets, threshold=threshold, block_rows=7)) == expected
    assert _as_list(exact_pairs_dense(sets, threshold=threshold, block_entries=100)) == expected
    all_pairs = np.array(list(itertools.combinations(range(sets.n_neurons), 2)))
    same_layer = sets.layers[all_pairs[:, 0]] == sets.layers[all_pairs[:, 1]]
    confirmed = confirm_pairs(
        sets, all_pairs[same_layer, 1], all_pairs[same_layer, 0], threshold=threshold
    )
    assert _as_list(confirmed) == expected


def test_lsh_pairs_are_exact_subset_with_high_recall():
    sets = _mixed_sets(1)
    exact = exact_pairs_inverted_index(sets, threshold=THRESHOLD)
    result = lsh_pairs(sets, threshold=THRESHOLD, minhash=MinHashLsh(seed=3))
    agreement = pair_agreement(exact, result.pairs)
    assert exact.n_pairs > 100
    assert agreement.precision == 1.0
    assert agreement.recall >= 0.95
    exact_jaccard = dict(((i, j), s) for i, j, s in _as_list(exact))
    assert all(exact_jaccard[(i, j)] == s for i, j, s in _as_list(result.pairs))


def test_lsh_pairs_with_explicit_banding():
    sets = _mixed_sets(2)
    exact = exact_pairs_inverted_index(sets, threshold=0.7)
    result = lsh_pairs(sets, threshold=0.7, minhash=MinHashLsh(num_perm=80, bands=20, rows=4))
    assert (result.bands, result.rows) == (20, 4)
    assert pair_agreement(exact, result.pairs).recall >= 0.95


def test_identical_sets_do_not_make_giant_buckets():
    base = list(range(1000, 1030))
    sets = [base] * 300 + [list(range(k * 50, k * 50 + 30)) for k in range(20)] + [[], []]
    layers = [0] * 150 + [1] * 150 + [0] * 22
    ns = neuron_sets_from_lists(sets, layers=layers)
    rep = identical_set_groups(ns)
    assert rep[:150].tolist() == [0] * 150 and rep[150:300].tolist() == [150] * 150
    assert rep[-2:].tolist() == [-1, -1]
    result = lsh_pairs(ns, threshold=THRESHOLD)
    assert result.n_unique_sets == 22 and result.largest_bucket == 1
    assert result.pairs.n_pairs == 2 * (150 * 149 // 2)
    assert np.all(result.pairs.jaccard == 1.0)
    assert _as_list(result.pairs) == _as_list(exact_pairs_inverted_index(ns, threshold=THRESHOLD))


def test_tiny_empty_and_single_neuron_layers():
    ns = neuron_sets_from_lists([[1], [1], [2], [], [], [9]], layers=[0, 0, 0, 0, 0, 1])
    for method in ("lsh", "inverted_index"):
        pairs = similar_pairs(ns, threshold=1.0, method=method)
        assert _as_list(pairs) == [(0, 1, 1.0)], method
    assert _as_list(exact_pairs_dense(ns, threshold=1.0)) == [(0, 1, 1.0)]
    clustering = cluster_neurons(ns, threshold=1.0)
    assert clustering.labels.tolist() == [0, 0, 1, 2, 3, 4]
    empty = neuron_sets_from_lists([[], []])
    assert lsh_pairs(empty, threshold=0.5).pairs.n_pairs == 0
    assert cluster_neurons(empty, threshold=0.5).labels.tolist() == [0, 1]


# --------------------------------------------------------------------------- grouping


def test_planted_clusters_recovered():
    sets, truth = _planted(4)
    for method in ("lsh", "inverted_index"):
        clustering = cluster_neurons(sets, threshold=THRESHOLD, method=method)
        assert clustering_agreement(truth, clustering.labels) == 1.0, method
    dense = group_neurons(sets, exact_pairs_dense(sets, threshold=THRESHOLD), threshold=THRESHOLD)
    assert clustering_agreement(truth, dense.labels) == 1.0


def _chain_sets():
    # Consecutive sets share 20 of 30 ids (J = 0.5), sets two apart share 10 (J = 0.2).
    return neuron_sets_from_lists([range(10 * k, 10 * k + 30) for k in range(5)])


def test_no_chaining_on_a_chain_of_similar_pairs():
    sets = _chain_sets()
    pairs = exact_pairs_inverted_index(sets, threshold=0.4)
    assert [(i, j) for i, j, _ in _as_list(pairs)] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    for linkage in ("average", "complete"):
        clustering = group_neurons(sets, pairs, threshold=0.4, linkage=linkage)
        assert clustering.labels.tolist() == [0, 0, 1, 1, 2], linkage
    chained = group_neurons(sets, pairs, threshold=0.4, linkage="single")
    assert chained.labels.tolist() == [0, 0, 0, 0, 0]


def _naive_agglomerate(n, edges, threshold, linkage):
    clusters = [[v] for v in range(n)]
    while True:
        best = None
        for a, b in itertools.combinations(range(len(clusters)), 2):
            sims = [
                edges.get((min(u, v), max(u, v)), 0.0) for u in clusters[a] for v in clusters[b]
            ]
            value = sum(sims) / len(sims) if linkage == "average" else min(sims)
            lo, hi = sorted((min(clusters[a]), min(clusters[b])))
            key = (-value, lo, hi)
            if value >= threshold and (best is None or key < best[0]):
                best = (key, a, b)
        if best is None:
            break
        _, a, b = best
        clusters[a] = clusters[a] + clusters[b]
        del clusters[b]
    out = np.empty(n, dtype=np.int64)
    for members in clusters:
        out[members] = min(members)
    return out


@pytest.mark.parametrize("linkage", ["average", "complete"])
def test_agglomerate_matches_naive_reference(linkage):
    rng = np.random.default_rng(5)
    for _ in range(40):
        n = 10
        # Dyadic similarities keep float sums exact, so tie-breaking is comparable.
        edges = {
            (a, b): float(rng.choice([0.25, 0.5, 0.625, 0.75, 0.875, 1.0]))
            for a, b in itertools.combinations(range(n), 2)
            if rng.random() < 0.45
        }
        i, j = (np.array(x, dtype=np.int64) for x in zip(*edges)) if edges else ([], [])
        got = agglomerate(n, i, j, np.array(list(edges.values())), threshold=0.5, linkage=linkage)
        np.testing.assert_array_equal(got, _naive_agglomerate(n, edges, 0.5, linkage))


def test_clusters_numbered_by_layer_then_smallest_neuron_id():
    ns = neuron_sets_from_lists(
        [[1, 2], [50], [1, 2], [7, 8], [7, 8], [9]],
        layers=[5, 5, 5, 2, 2, 2],
        neuron_ids=[40, 10, 30, 90, 20, 60],
    )
    clustering = cluster_neurons(ns, threshold=THRESHOLD)
    by_id = dict(zip(clustering.neuron_ids.tolist(), clustering.labels.tolist()))
    # layer 2: {20, 90} then {60}; layer 5: {10} then {30, 40}.
    assert by_id == {20: 0, 90: 0, 60: 1, 10: 2, 30: 3, 40: 3}
    assert clustering.cluster_sizes.tolist() == [2, 1, 1, 2]
    assert clustering.cluster_layers.tolist() == [0, 0, 1, 1]
    assert cluster_size_distribution(clustering.labels) == {1: 2, 2: 2}


def test_deterministic_and_independent_of_row_order():
    rng = np.random.default_rng(6)
    sets, _ = _planted(7)
    owner = np.repeat(sets.neuron_ids, sets.sizes)
    perm_rows = rng.permutation(owner.size)
    perm_neurons = rng.permutation(sets.n_neurons)
    shuffled = build_neuron_sets(
        owner[perm_rows],
        sets.indices[perm_rows],
        neurons_neuron_id=sets.neuron_ids[perm_neurons],
        neurons_layer=sets.layers[perm_neurons],
    )
    first = cluster_neurons(sets, threshold=THRESHOLD, minhash=MinHashLsh(seed=11))
    again = cluster_neurons(sets, threshold=THRESHOLD, minhash=MinHashLsh(seed=11))
    other = cluster_neurons(shuffled, threshold=THRESHOLD, minhash=MinHashLsh(seed=11))
    np.testing.assert_array_equal(first.labels, again.labels)
    np.testing.assert_array_equal(first.labels, other.labels)
    np.testing.assert_array_equal(
        lsh_pairs(sets, threshold=THRESHOLD, minhash=MinHashLsh(seed=11)).pairs.i,
        lsh_pairs(shuffled, threshold=THRESHOLD, minhash=MinHashLsh(seed=11)).pairs.i,
    )


# ----------------------------------------------------------------------- agreement


def test_pair_and_clustering_agreement():
    ref = SimilarPairs(np.array([0, 0, 1]), np.array([1, 2, 2]), np.ones(3), 4)
    cand = SimilarPairs(np.array([0, 2]), np.array([1, 3]), np.ones(2), 4)
    agreement = pair_agreement(ref, cand)
    assert (agreement.n_common, agreement.recall, agreement.precision) == (1, 1 / 3, 0.5)
    assert clustering_agreement([0, 0, 1, 1], [5, 5, 2, 2]) == 1.0
    assert clustering_agreement([0, 0, 1, 1], [0, 1, 0, 1]) < 0


# -------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("threshold", "error"),
    [
        (0, ValueError),
        (-0.5, ValueError),
        (1.01, ValueError),
        (float("nan"), ValueError),
        (None, TypeError),
    ],
)
def test_bad_threshold_is_refused_everywhere(threshold, error):
    sets = _chain_sets()
    calls = [
        lambda: lsh_pairs(sets, threshold=threshold),
        lambda: exact_pairs_inverted_index(sets, threshold=threshold),
        lambda: exact_pairs_dense(sets, threshold=threshold),
        lambda: confirm_pairs(sets, [0], [1], threshold=threshold),
        lambda: agglomerate(3, [0], [1], [1.0], threshold=threshold),
        lambda: cluster_neurons(sets, threshold=threshold, method="inverted_index"),
    ]
    for call in calls:
        with pytest.raises(error, match=r"threshold must be a number in \(0, 1\], got"):
            call()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bands": 40, "rows": 4}, r"bands \* rows must be <= num_perm \(128\), got bands=40"),
        ({"bands": 0, "rows": 4}, "bands must be an integer >= 1, got 0"),
        ({"bands": 4, "rows": -2}, "rows must be an integer >= 1, got -2"),
        ({"bands": 4}, "give both bands and rows or neither, got bands=4, rows=None"),
        ({"num_perm": 0}, "num_perm must be an integer >= 1, got 0"),
        ({"seed": -5}, "seed must be an integer"),
    ],
)
def test_lsh_pairs_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lsh_pairs(_chain_sets(), threshold=0.5, minhash=MinHashLsh(**kwargs))


def test_grouping_bad_input():
    sets = _chain_sets()
    with pytest.raises(ValueError, match="linkage must be one of"):
        agglomerate(3, [0], [1], [1.0], threshold=0.5, linkage="ward")
    with pytest.raises(ValueError, match="each unordered pair may appear only once"):
        agglomerate(3, [0, 1], [1, 0], [1.0, 1.0], threshold=0.5)
    with pytest.raises(ValueError, match=r"i != j"):
        agglomerate(3, [1], [1], [1.0], threshold=0.5)
    with pytest.raises(ValueError, match=r"edge endpoints must be in \[0, 3\)"):
        agglomerate(3, [0], [3], [1.0], threshold=0.5)
    two_layers = neuron_sets_from_lists([[1], [1]], layers=[0, 1])
    cross = SimilarPairs(np.array([0]), np.array([1]), np.array([1.0]), 2)
    with pytest.raises(ValueError, match="pairs must join neurons of the same layer"):
        group_neurons(two_layers, cross, threshold=0.5)
    with pytest.raises(ValueError, match="pairs refer to 2 neurons but sets have 5"):
        group_neurons(sets, cross, threshold=0.5)
    with pytest.raises(ValueError, match="method must be one of"):
        similar_pairs(sets, threshold=0.5, method="bruteforce")


def test_lsh_pairs_accepts_precomputed_signatures_and_matches():
    rng = np.random.default_rng(11)
    base = [rng.choice(500, 40, replace=False) for _ in range(6)]
    sets_list = [np.union1d(b[:36], rng.choice(500, 4)) for b in base for _ in range(3)]
    sets = neuron_sets_from_lists(sets_list, layers=[0] * len(sets_list))
    sigs = minhash_signatures(sets.indptr, sets.indices, num_perm=128, seed=1)
    a = lsh_pairs(sets, threshold=0.5, signatures=sigs).pairs
    b = lsh_pairs(sets, threshold=0.5).pairs
    assert a.n_pairs == b.n_pairs > 0
    assert np.array_equal(a.i, b.i) and np.array_equal(a.j, b.j)
    with pytest.raises(ValueError, match="signatures have shape"):
        lsh_pairs(sets, threshold=0.5, signatures=sigs[:3])


def test_derived_banding_fills_every_permutation_and_loses_no_pair_the_search_found():
    rng = np.random.default_rng(5)
    base = rng.choice(10_000, size=60, replace=False)
    # 40 units around one base set, each keeping a random 62-75% of it: Jaccards near 0.3.
    lists = []
    for _ in range(40):
        keep = base[rng.random(60) < rng.uniform(0.62, 0.75)]
        lists.append(np.concatenate([keep, rng.choice(10_000, 60 - keep.size) + 10_000]))
    sets = neuron_sets_from_lists(lists)
    exact = exact_pairs_inverted_index(sets, threshold=0.3)
    filled = lsh_pairs(sets, threshold=0.3)
    searched = lsh_pairs(sets, threshold=0.3, minhash=MinHashLsh(bands=41, rows=2))
    assert (filled.bands, filled.rows) == (64, 2)
    found = set(zip(filled.pairs.i.tolist(), filled.pairs.j.tolist()))
    assert set(zip(searched.pairs.i.tolist(), searched.pairs.j.tolist())) <= found
    recall = pair_agreement(exact, filled.pairs).recall
    assert recall >= pair_agreement(exact, searched.pairs).recall
    assert exact.n_pairs > 50
