"""The cluster-quality statistic (gain over the layer) against a plain reference, on
hand-built groups, and its behaviour where raw purity flatters."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from carto_assets.core.similarity.sets import build_neuron_sets
from carto_assets.stages.cluster_quality import (
    group_gains,
    group_images,
    layer_shares,
    random_groups,
)


def reference_gain(
    group_sets: list[set[int]], layer_sets: list[set[int]], values: dict[int, dict[str, str]]
) -> tuple[float, str, str]:
    """Gain of one group, written out: max over (concept, value) of
    (share in the group's images - share in the layer's images) / (1 - layer share)."""
    group = set().union(*group_sets)
    layer = set().union(*layer_sets)
    best = (-np.inf, "", "")
    pairs = sorted({(c, v) for i in layer for c, v in values.get(i, {}).items()})
    for concept, value in pairs:

        def share(images, concept=concept, value=value):
            return sum(values.get(i, {}).get(concept) == value for i in images) / len(images)

        base = share(layer)
        if base >= 1.0 or not any(values.get(i, {}).get(concept) == value for i in group):
            continue
        gain = (share(group) - base) / (1 - base)
        if gain > best[0]:
            best = (gain, concept, value)
    return best


def _world(seed: int = 0):
    """Two layers of 12 units over 60 images with a binary and a 4-valued concept."""
    rng = np.random.default_rng(seed)
    values = {
        i: {"background": ["light", "dark"][i % 2], "colour": "rgby"[(i // 2) % 4]}
        for i in range(60)
    }
    unit_sets = [set(rng.choice(60, size=8, replace=False).tolist()) for _ in range(24)]
    # Unit 0..2 detect red, whatever the background (hand-built concept neurons).
    reds = [i for i in range(60) if values[i]["colour"] == "r"]
    for u in range(3):
        unit_sets[u] = set(rng.choice(reds, size=8, replace=False).tolist())
    neuron = np.concatenate([np.full(len(s), u) for u, s in enumerate(unit_sets)])
    image = np.concatenate([sorted(s) for s in unit_sets])
    sets = build_neuron_sets(
        neuron, image, neurons_neuron_id=np.arange(24), neurons_layer=np.repeat([0, 1], 12)
    )
    annotations = pl.DataFrame(
        [(i, c, v) for i, cv in values.items() for c, v in cv.items()],
        schema={"image_id": pl.Int64, "concept": pl.Utf8, "value": pl.Utf8},
        orient="row",
    )
    return sets, unit_sets, values, annotations


def test_group_gains_match_the_reference():
    sets, unit_sets, values, annotations = _world()
    groups = [[0, 1, 2], [3, 4], [5], [12, 13, 14, 15], [20], [0]]
    group_ids = np.concatenate([np.full(len(g), k) for k, g in enumerate(groups)])
    units = np.concatenate(groups)
    got = group_gains(
        group_images(sets, group_ids, units), annotations, layer_shares(sets, annotations)
    ).sort("group_id")
    assert got["group_id"].to_list() == list(range(len(groups)))
    for k, group in enumerate(groups):
        layer = range(12) if group[0] < 12 else range(12, 24)
        gain, concept, value = reference_gain(
            [unit_sets[u] for u in group], [unit_sets[u] for u in layer], values
        )
        row = got.row(k, named=True)
        assert row["gain"] == pytest.approx(gain)
        assert (row["concept"], row["value"]) == (concept, value)
    # The red detectors: every top image is red, so the gain is 1 whatever red's base rate.
    assert got.row(0, named=True)["gain"] == pytest.approx(1.0)
    assert got.row(0, named=True)["value"] == "r"


def test_binary_concepts_do_not_flatter():
    """Raw purity credits any group of a binary concept with at least 0.5; gain gives chance ~0."""
    sets, _, _, annotations = _world(seed=1)
    binary = annotations.filter(pl.col("concept") == "background")
    labels = np.arange(24)
    labels[[3, 4]] = 3  # one two-unit cluster of non-detectors
    ids, units, _ = random_groups(sets, labels, np.array([3]), n_draws=200, seed=0)
    gains = group_gains(group_images(sets, ids, units), binary, layer_shares(sets, binary))
    raw = np.maximum(gains["purity"].to_numpy(), 1 - gains["purity"].to_numpy())
    assert raw.mean() > 0.55  # what raw purity credits chance with
    assert abs(float(gains["gain"].mean())) < 0.25


def test_random_groups_match_size_and_layer():
    sets, _, _, _ = _world()
    labels = np.arange(24)
    labels[[13, 14, 15]] = 13
    ids, units, cluster_of = random_groups(sets, labels, np.array([13]), n_draws=30, seed=4)
    assert cluster_of.tolist() == [13] * 30
    for g in range(30):
        members = units[ids == g]
        assert len(members) == 3 and len(set(members.tolist())) == 3
        assert set(sets.layers[members].tolist()) == {1}
    again = random_groups(sets, labels, np.array([13]), n_draws=30, seed=4)
    assert np.array_equal(again[1], units)
