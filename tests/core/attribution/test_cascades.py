"""Concept cascades on a hand-made graph."""

import numpy as np
import pytest

from carto_assets.core.attribution.cascades import concept_cascades
from carto_assets.schema import PREDICTION


def test_cascades_follow_the_strongest_links():
    edges = {
        "source_layer": ["A", "A", "A", "A", "B", "B", "C", "B", "A"],
        "source_cluster": [0, 1, 1, 0, 0, 1, 0, 1, 2],
        "target_layer": ["B", "B", "B", "B", "C", "C", PREDICTION, PREDICTION, "B"],
        "target_cluster": [0, 0, 1, 1, 0, 0, -1, -1, 1],
        "weight": [3.0, 3.0, 5.0, 1.0, 2.0, 4.0, 1.0, 0.0, 9.0],
    }
    # A2 is not a node: its strong edge into B1 is not followed.
    nodes = [("C", 0), ("A", 0), ("A", 1), ("B", 0), ("B", 1)]
    out = concept_cascades(nodes, edges)
    chains: dict[tuple, list] = {}
    for rl, rc, ml, mc, d, direction in zip(
        out["root_layer"],
        out["root_cluster"],
        out["member_layer"],
        out["member_cluster"],
        out["depth"],
        out["direction"],
    ):
        chains.setdefault((rl, int(rc), direction), []).append((int(d), ml, int(mc)))
    assert chains[("C", 0, "down")] == [(1, "B", 1), (2, "A", 1)]
    assert chains[("C", 0, "up")] == [(1, PREDICTION, -1)]
    assert chains[("A", 0, "up")] == [(1, "B", 0), (2, "C", 0), (3, PREDICTION, -1)]
    assert ("A", 0, "down") not in chains
    # Tie (A0 and A1 both 3.0 into B0): the smaller cluster id wins.
    assert chains[("B", 0, "down")] == [(1, "A", 0)]
    # B1 -> prediction has weight 0: not a link; B1 goes up through C0.
    assert chains[("B", 1, "up")] == [(1, "C", 0), (2, PREDICTION, -1)]
    # Without A1 among the nodes, B1's best remaining source is A0.
    fewer = concept_cascades([("B", 1), ("A", 0)], edges)
    assert list(fewer["member_cluster"][fewer["direction"] == "down"]) == [0]
    # Row order of the edges does not matter.
    perm = np.random.default_rng(0).permutation(len(edges["weight"]))
    shuffled = {k: [v[i] for i in perm] for k, v in edges.items()}
    again = concept_cascades(nodes, shuffled)
    for k in out:
        assert np.array_equal(out[k], again[k])


def test_cascades_stay_in_their_root_s_chain():
    """Channels A -> B -> prediction and features Af -> Bf -> prediction, with cross links
    A -> Bf (into the feature chain) stronger than the chain's own links."""
    edges = {
        "source_layer": ["A", "A", "B", "Af", "Bf", "A"],
        "source_cluster": [0, 0, 0, 0, 0, 1],
        "target_layer": ["B", "Bf", PREDICTION, "Bf", PREDICTION, "B"],
        "target_cluster": [0, 0, -1, 0, -1, 0],
        "weight": [1.0, 5.0, 1.0, 2.0, 1.0, 0.5],
    }
    nodes = [("A", 0), ("A", 1), ("B", 0), ("Af", 0), ("Bf", 0)]
    chains = {"A": "channels", "B": "channels", "Af": "features", "Bf": "features"}

    def chains_of(out) -> dict[tuple, list]:
        found: dict[tuple, list] = {}
        for rl, rc, ml, mc, direction in zip(
            out["root_layer"],
            out["root_cluster"],
            out["member_layer"],
            out["member_cluster"],
            out["direction"],
        ):
            found.setdefault((rl, int(rc), direction), []).append((ml, int(mc)))
        return found

    free = chains_of(concept_cascades(nodes, edges))
    assert free[("A", 0, "up")] == [("Bf", 0), (PREDICTION, -1)]  # crosses into the features
    assert free[("Bf", 0, "down")] == [("A", 0)]
    kept = chains_of(concept_cascades(nodes, edges, chains))
    assert kept[("A", 0, "up")] == [("B", 0), (PREDICTION, -1)]
    assert kept[("Bf", 0, "down")] == [("Af", 0)]
    assert kept[("B", 0, "down")] == [("A", 0)]
    assert ("Af", 0, "down") not in kept
    # The channels' cascades are those of the graph without the feature chain.
    features = ("Af", "Bf")
    keep = [
        s not in features and t not in features
        for s, t in zip(edges["source_layer"], edges["target_layer"])
    ]
    channels_only = {k: [x for x, y in zip(v, keep) if y] for k, v in edges.items()}
    alone = chains_of(concept_cascades(nodes[:3], channels_only))
    assert {k: v for k, v in kept.items() if k[0] in ("A", "B")} == alone
    with pytest.raises(ValueError, match=r"no entry for the nodes' layer\(s\) \['Bf'\]"):
        concept_cascades(nodes, edges, {"A": 0, "B": 0, "Af": 1})
