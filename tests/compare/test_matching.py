"""Cross-model unit matching: LSH matches against exact all pairs, and a permuted copy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference.compare import exact_best_matches, permute_builtin_channels

from carto_assets.core.comparison.matching import match_units, unit_sets
from carto_assets.core.network.layers import probe_layers, resolve_layers
from carto_assets.core.network.recorder import Batch, activation_pass
from carto_assets.core.network.zoo import BuiltinCNN
from carto_assets.core.similarity.lsh import MinHashLsh
from carto_assets.sources.shapes import ShapesWorld


def _planted(rng, n_units, n_images, k, copy_fraction):
    """Model 0's sets; model 1 holds noisy copies of them (in shuffled order) plus strays."""
    sets = [rng.choice(n_images, k, replace=False) for _ in range(n_units)]
    order = rng.permutation(n_units)
    copies = []
    for u in order:
        kept = rng.choice(sets[u], int(k * copy_fraction[u]), replace=False)
        fresh = rng.choice(np.setdiff1d(np.arange(n_images), kept), k - kept.size, replace=False)
        copies.append(np.concatenate([kept, fresh]))
    return sets + copies


def _as_rows(sets, rng):
    unit, image, rank = [], [], []
    for u, s in enumerate(sets):
        unit += [u] * len(s)
        image += list(s)
        rank += list(rng.permutation(len(s)) + 1)
    return np.array(unit), np.array(image), np.array(rank)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lsh_best_matches_equal_exact_all_pairs(seed):
    rng = np.random.default_rng(seed)
    n, k = 60, 20
    # Partners share 75% to 100% of their images (Jaccard >= 0.6): LSH at threshold 0.3 misses
    # such a pair with probability < 1e-7 (41 bands x 2 rows); near the threshold, see below.
    sets = _planted(rng, n, 400, k, rng.uniform(0.75, 1.0, n))
    sets[5] = sets[7].copy()  # a duplicate set inside model 0: a tie the footrule breaks
    sets.append(np.array([], dtype=np.int64))  # a unit of model 1 with no top images
    study = np.array([0] * n + [1] * (n + 1))
    unit, image, rank = _as_rows(sets, rng)
    # Three units of model 0 and two of model 1 with the same images in the same order (dead
    # units look like this): ties the footrule cannot break either.
    same = rank[unit == 11]
    for u in (12, 13, n + 20, n + 21):
        image[unit == u] = image[unit == 11]
        rank[unit == u] = same
    units = unit_sets(unit, image, rank, study)
    pairs, best = match_units(units, threshold=0.3, minhash=MinHashLsh(seed=seed))
    ranks = [
        dict(zip(units.images[a:b], units.ranks[a:b]))
        for a, b in zip(units.indptr, units.indptr[1:])
    ]
    exact = exact_best_matches(ranks, study, 0.3)
    # Every exact pair >= threshold is also an LSH pair (recall 1 at these similarities).
    n_exact_pairs = sum(
        1
        for u in range(len(ranks))
        for v in range(u + 1, len(ranks))
        if study[u] != study[v]
        and ranks[u]
        and ranks[v]
        and len(ranks[u].keys() & ranks[v].keys()) / len(ranks[u].keys() | ranks[v].keys()) >= 0.3
    )
    assert pairs.a.size == n_exact_pairs
    found = {
        (int(u), int(o)): (int(m), float(j), bool(mu))
        for u, o, m, j, mu in zip(
            best.unit, best.other_study, best.match, best.jaccard, best.mutual
        )
        if m >= 0
    }
    assert found.keys() == exact.keys()
    for key, (match, jaccard, mutual) in exact.items():
        assert found[key][0] == match, key
        assert found[key][1] == pytest.approx(jaccard)
        assert found[key][2] == mutual, key
    # Identical lists pair one to one: 11 <-> the first copy, 12 <-> the second.
    paired = {u: found[(u, 1)][0] for u in (11, 12)}
    assert paired == {11: n + 20, 12: n + 21} and found[(n + 20, 0)] == (11, 1.0, True)
    # Units with nothing above the threshold have no match, and say so.
    none = best.match < 0
    assert np.all(best.jaccard[none] == 0) and not best.mutual[none].any()


def test_lsh_misses_little_near_the_threshold():
    rng = np.random.default_rng(7)
    n, k = 300, 30
    sets = _planted(rng, n, 3000, k, rng.uniform(0.35, 0.6, n))
    study = np.array([0] * n + [1] * n)
    unit, image, rank = _as_rows(sets, rng)
    units = unit_sets(unit, image, rank, study)
    pairs, best = match_units(units, threshold=0.25, minhash=MinHashLsh(seed=3))
    ranks = [
        dict(zip(units.images[a:b], units.ranks[a:b]))
        for a, b in zip(units.indptr, units.indptr[1:])
    ]
    exact = exact_best_matches(ranks, study, 0.25)
    found = {
        (int(u), int(o)): int(m)
        for u, o, m in zip(best.unit, best.other_study, best.match)
        if m >= 0
    }
    assert set(found) <= set(exact)  # LSH never invents a match
    agree = sum(found.get(key) == value[0] for key, value in exact.items())
    assert agree / len(exact) >= 0.97, (agree, len(exact))
    assert np.all(pairs.jaccard >= 0.25)


def test_three_models_match_every_other_model():
    rng = np.random.default_rng(4)
    base = [rng.choice(500, 15, replace=False) for _ in range(10)]
    sets = base + base[::-1] + base[3:] + base[:3]
    study = np.repeat([0, 1, 2], 10)
    unit, image, rank = _as_rows(sets, rng)
    _, best = match_units(unit_sets(unit, image, rank, study), threshold=0.5)
    assert best.unit.size == 30 * 2
    frame = best.frame()
    b_of_a = dict(frame.filter(unit=3, other_study=1).select("unit", "match").rows())
    assert b_of_a == {3: 10 + 6}
    assert frame.filter(unit=3, other_study=2)["match"].item() == 20
    assert frame["mutual"].all() and (frame["jaccard"] == 1.0).all()


def _top_k(module, layers, pixels, k):
    result = activation_pass(
        module,
        layers,
        [Batch(torch.arange(len(pixels)), pixels, torch.zeros(len(pixels), dtype=torch.long))],
        k=k,
        n_classes=1,
        mass_fraction=0.03,
    )
    return result.top_k


def test_a_channel_permuted_copy_matches_every_unit_and_undoes_the_permutation(one_torch_thread):
    torch.manual_seed(0)
    original = BuiltinCNN(4).eval()
    world = ShapesWorld(n_images=200, image_size=32, seed=1)
    raw = torch.from_numpy(np.stack([world.image(i) for i in range(200)]))
    pixels = (raw.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    layers = resolve_layers(probe_layers(original, 32), "auto", "builtin")
    rng = np.random.default_rng(0)
    perms = {info.name: rng.permutation(info.channels) for info in layers}
    permuted = BuiltinCNN(4).eval()
    permuted.load_state_dict(permute_builtin_channels(original.state_dict(), perms))
    k = 16
    top = [_top_k(m, layers, pixels, k) for m in (original, permuted)]
    n = sum(info.channels for info in layers)
    offsets = np.cumsum([0] + [info.channels for info in layers])
    truth = np.concatenate([offsets[i] + perms[info.name] for i, info in enumerate(layers)])
    rows = [np.asarray(t["neuron_id"]) + i * n for i, t in enumerate(top)]
    units = unit_sets(
        np.concatenate(rows),
        np.concatenate([t["image_id"] for t in top]),
        np.concatenate([t["rank"] for t in top]),
        np.repeat([0, 1], n),
    )
    _, best = match_units(units, threshold=0.3)
    a = best.unit < n
    assert np.all(best.jaccard == 1.0) and best.mutual.all()
    # A unit whose top images and their order repeat another unit's of its own model cannot
    # be told apart from it (dead units: all-zero maps); every other unit is matched exactly.
    keys = [
        tuple(units.images[s:e]) + tuple(units.ranks[s:e])
        for s, e in zip(units.indptr[:n], units.indptr[1 : n + 1])
    ]
    unique = np.array([keys.count(key) == 1 for key in keys])
    assert unique.mean() > 0.95
    assert np.array_equal(best.match[a][unique] - n, truth[unique])
    assert np.array_equal(np.sort(best.match[a]) - n, np.arange(n))
