"""Node choice against the SQL it replaced, a rule's unit order, and the class checks."""

import numpy as np
import polars as pl
import pytest
from reference.attribution import graph_nodes_sql

from carto_assets.core.attribution.nodes import choose_nodes, class_checks, ranked_units


def random_scores(seed: int, classes: int = 4) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    neuron = 0
    for index, (layer, width) in enumerate((("a", 23), ("b", 40), ("b:features", 9))):
        cluster_of = rng.integers(0, max(1, width // 3), width) + 100 * index
        for unit in range(width):
            for label in range(classes):
                # Ties and zeros on purpose: the order must break them alike.
                score = float(rng.choice([0.0, 0.25, 0.5, rng.random(), -rng.random()]))
                rows.append((label, neuron, layer, index, int(cluster_of[unit]), score))
            neuron += 1
    return pl.DataFrame(
        rows,
        schema=["label", "neuron_id", "layer", "layer_index", "cluster_id", "score"],
        orient="row",
    )


@pytest.mark.parametrize(
    ("seed", "fraction", "per_layer"), [(0, 0.1, 5), (1, 0.3, 2), (2, 1.0, 50)]
)
def test_nodes_equal_the_sql_they_replaced(seed, fraction, per_layer):
    scores = random_scores(seed)
    got = choose_nodes(scores, fraction, per_layer)
    want = graph_nodes_sql(scores, fraction, per_layer)
    assert got.columns == want.columns
    assert got.select(pl.exclude("importance")).equals(want.select(pl.exclude("importance")))
    np.testing.assert_allclose(got["importance"], want["importance"], rtol=1e-12)
    assert (got.group_by("label", "layer").len()["len"] <= per_layer).all()


def test_choose_nodes_validates():
    scores = random_scores(0)
    with pytest.raises(ValueError, match="fraction"):
        choose_nodes(scores, 0.0, 5)
    with pytest.raises(ValueError, match="nodes_per_layer"):
        choose_nodes(scores, 0.1, 0)
    with pytest.raises(ValueError, match=r"lack column\(s\) \['score'\]"):
        choose_nodes(scores.drop("score"), 0.1, 5)


def test_ranked_units_put_the_nodes_members_first():
    members = {7: np.array([0, 4]), 8: np.array([1, 2, 5])}
    scores = np.array([0.1, 0.9, 0.2, 0.3, 0.8, 0.2])
    order = ranked_units([8, 7], members, scores)
    # Node 8 first (its members by score: 1, 2/5 tie -> 2), then node 7 (4, 0), then unit 3.
    assert order.tolist() == [1, 2, 5, 4, 0, 3]
    assert ranked_units([], members, scores).tolist() == [1, 4, 3, 2, 5, 0]


def test_class_checks_count_concepts_of_the_class():
    nodes = pl.DataFrame(
        {
            "label": [0, 0, 0, 1],
            "layer": ["x", "x", "y", "x"],
            "cluster_id": [10, 11, 12, 10],
            "importance": [0.2, 0.5, 1.0, 0.3],
        }
    )
    top_class = {10: "cat", 11: "dog", 12: "cat"}
    checks = class_checks(nodes, top_class, ["cat", "dog"]).sort("label", "layer")
    assert checks.to_dicts() == [
        {"label": 0, "layer": "x", "nodes": 2, "nodes_of_class": 1, "top_of_class": 0},
        {"label": 0, "layer": "y", "nodes": 1, "nodes_of_class": 1, "top_of_class": 1},
        {"label": 1, "layer": "x", "nodes": 1, "nodes_of_class": 0, "top_of_class": 0},
    ]
    assert class_checks(nodes.head(0), top_class, ["cat"]).height == 0
