"""Concepts matched by words (``cluster_labels.formula``): the same formula in both studies is
a shared concept whatever images each cluster prefers; the same leading top-image term with
other words is not; a study without words falls back to matching by images, and says so."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from carto_assets.core.comparison.concepts import (
    canonical_formula,
    concept_sets,
    formula_frame,
    positive_terms,
    set_jaccard,
)
from carto_assets.core.comparison.matching import unit_sets
from carto_assets.stages import comparison as stage
from carto_viz.compare_page import compare_page_data, export_compare, load_compare_tables


def test_a_formula_is_compared_in_canonical_form():
    assert canonical_formula("shape=star AND colour=red") == "colour=red AND shape=star"
    assert canonical_formula("(b=2 OR a=1) AND c=3") == canonical_formula("c=3 AND (a=1 OR b=2)")
    assert canonical_formula("a=1 OR b=2") != canonical_formula("a=1 AND b=2")
    assert canonical_formula(None) is None
    assert positive_terms("shape=heart AND NOT colour=red") == {"shape=heart"}
    assert positive_terms("NOT (a=1 OR b=2)") == frozenset()


def _concepts(rows):
    return pl.DataFrame(
        rows,
        schema={
            "row": pl.Int64,
            "study": pl.Utf8,
            "cluster_id": pl.Int64,
            "layer": pl.Utf8,
            "size": pl.Int64,
            "label": pl.Utf8,
            "formula": pl.Utf8,
            "auc": pl.Float64,
        },
        orient="row",
    )


def test_concepts_match_by_formula_not_by_leading_term():
    concepts = _concepts(
        [
            (0, "a", 0, "x", 1, "shape=heart (0.9)", "colour=red AND shape=star", 0.9),
            (1, "a", 1, "x", 1, "shape=heart (0.7)", "shape=heart", 0.8),
            (2, "a", 2, "x", 1, "shape=heart (0.6)", None, 0.6),
            (3, "b", 0, "x", 1, "colour=blue (0.8)", "shape=star AND colour=red", 0.7),
            (4, "b", 1, "x", 1, "shape=heart (0.9)", "shape=heart OR shape=circle", 0.9),
        ]
    )
    # Concepts a0 and b0 share no image: matched by words all the same.
    sets = unit_sets(
        np.arange(5), np.array([0, 1, 2, 3, 4]), np.ones(5, dtype=np.int64), [0, 0, 0, 1, 1]
    )
    frame = formula_frame(concepts, sets, ["a", "b"])
    rows = frame.select(
        "study", "cluster_id", "status", "match_cluster_id", "jaccard", "same_label_elsewhere"
    ).rows()
    assert rows == [
        ("a", 0, "shared", 0, 0.0, None),  # other leading terms, the same words
        ("a", 1, "only", None, None, True),  # the same leading term, other words (partial)
        ("a", 2, None, None, None, None),  # no words: not a concept to match
        ("b", 0, "shared", 0, 0.0, None),
        ("b", 1, "only", None, None, True),
    ]
    assert (frame["matched_by"] == "formula").all() and frame["label_changed"].is_null().all()
    assert frame.filter(status="shared")["mutual"].all()
    assert frame.filter(study="a", cluster_id=0)["match_auc"].item() == 0.7


def test_the_match_is_in_the_same_layer_first_then_the_best_auc(trio):
    _, sets_a, sets_b, store = trio
    rows = store.query(
        "SELECT study, cluster_id, match_cluster_id, mutual, jaccard FROM concept_matches "
        "WHERE other_study IN ('a', 'b') AND study IN ('a', 'b') AND status = 'shared' "
        "ORDER BY study, cluster_id"
    )
    found = {(s, c): (m, mutual) for s, c, m, mutual, _ in rows.rows()}
    # a3 (conv2, size=large): b2 has the best AUC but is in conv1; of conv2's, b3 beats b4.
    assert found[("a", 3)] == (3, True)
    assert found[("b", 2)] == (3, False) and found[("b", 3)] == (3, True)
    assert found[("b", 4)] == (3, False)
    assert found[("a", 0)] == (0, True) == found[("b", 0)]
    union = {
        (name, c): set().union(*(sets[2 * c], sets[2 * c + 1]))
        for name, sets in (("a", sets_a), ("b", sets_b))
        for c in range(6)
    }
    for study, cluster, match, _, jaccard in rows.rows():
        other = "b" if study == "a" else "a"
        x, y = union[(study, cluster)], union[(other, match)]
        assert jaccard == pytest.approx(len(x & y) / len(x | y))
    assert rows.filter(study="a", cluster_id=0)["jaccard"].item() == 1.0


def test_a_study_without_words_is_matched_by_images_and_said_so(trio):
    comparison, _, _, store = trio
    table = store.query("SELECT * FROM concept_matches")
    by = dict(
        table.group_by("study", "other_study")
        .agg(pl.col("matched_by").unique())
        .select(pl.concat_str("study", "other_study"), pl.col("matched_by").list.first())
        .iter_rows()
    )
    assert by == {
        "ab": "formula",
        "ba": "formula",
        "ac": "images",
        "ca": "images",
        "bc": "images",
        "cb": "images",
    }
    # 'c' has the top images of 'a': every concept shared by images, words or none.
    assert (table.filter(study="c", other_study="a")["status"] == "shared").all()
    words = table.filter(study="a", other_study="b")
    assert words.sort("cluster_id")["status"].to_list() == [
        "shared",
        "only",
        None,
        "shared",
        "only",
        None,
    ]
    assert words.sort("cluster_id")["same_label_elsewhere"].to_list() == [
        None,
        True,  # shape=heart is a term of b1's words
        None,
        None,
        False,  # NOT colour=red: a term under NOT is no partial match
        None,
    ]
    studies = store.query("SELECT study, has_words FROM compare_studies ORDER BY position")
    assert studies.rows() == [("a", True), ("b", True), ("c", False)]
    lines = stage.summary_lines(comparison)
    assert lines[0] == (
        "study 'c' has no words (no cluster_labels: mapped before words, or with "
        "labels.enabled: false): its concepts are matched by their top images, not by words"
    )
    assert lines[1].endswith(
        "concepts 2 shared, 2 only in 'a' (matched by words; 2 clusters without words)"
    )
    assert lines[3].endswith(
        "concepts 4 shared, 2 only in 'b' (matched by words; 0 clusters without words)"
    )
    assert lines[2].endswith("concepts 6 shared, 0 only in 'a' (matched by top images)")


def test_the_page_names_concepts_by_their_words(trio, tmp_path):
    comparison, _, _, _ = trio
    data, _ = compare_page_data(load_compare_tables(comparison.database_path), "trio")
    only = {(r[0], r[1], r[2]): r for r in data["only"]}
    assert only[(0, 1, 1)][5:] == ["shape=heart · 0.80", "yes", "formula"]
    assert only[(0, 1, 4)][5:] == ["NOT colour=red · 0.80", "no", "formula"]
    assert only[(1, 0, 5)][5:] == ["colour=red · 0.80", "yes", "formula"]
    units = {u[0]: u for u in data["units"]}
    assert units[0][6] == "colour=red AND shape=star · 0.90"  # a's unit 0: its cluster's words
    assert units[4][6] == "no word fits"
    assert units[24][6] == "shape=heart (0.9)"  # c's unit 0: c has no words, its label
    assert data["no_words"] == ["c"]
    figures = {f["pair"]: f for f in data["figures"]}
    assert figures["0|1"]["matched_by"] == "formula" and figures["0|2"]["matched_by"] == "images"
    assert (figures["0|1"]["shared"], figures["0|1"]["only"]) == (2, 2)
    assert figures["0|1"]["without_words"] == 2
    page = export_compare(comparison.database_path, tmp_path / "views", name="trio")
    html = page.html_path.read_text()
    assert 'id="words-note"' in html and "colour=red AND shape=star · 0.90" in html


def test_concept_sets_pool_the_members_top_images():
    units = unit_sets(
        np.array([0, 0, 1, 2]), np.array([5, 6, 6, 9]), np.array([1, 2, 1, 1]), [0, 0, 1]
    )
    sets = concept_sets(units, np.array([0, 0, 1]), np.array([0, 1]))
    assert set_jaccard(sets, 0, 1) == 0.0
    assert sets.images[sets.indptr[0] : sets.indptr[1]].tolist() == [5, 6]


def test_graph_nodes_are_named_by_words_and_linked_to_the_same_words(trio):
    from carto_assets import schema
    from carto_viz.compare_page import NO_WORDS

    comparison, _, _, _ = trio
    tables = load_compare_tables(comparison.database_path)
    # Class 0's graphs: a's clusters 2 (no words) and 3 (size=large, conv2); b's cluster 4
    # (size=large, conv2), not a3's chosen match (b3, not in this graph).
    nodes = [("a", 2, "conv1", 0), ("a", 3, "conv2", 1), ("b", 4, "conv2", 1)]
    tables["compare_graph_nodes"] = schema.frame(
        "compare_graph_nodes",
        {
            "study": [n[0] for n in nodes],
            "label": [0] * 3,
            "label_name": ["circle"] * 3,
            "cluster_id": [n[1] for n in nodes],
            "layer": [n[2] for n in nodes],
            "layer_index": [n[3] for n in nodes],
            "importance": [1.0] * 3,
        },
    )
    tables["compare_graph_edges"] = schema.empty_frame("compare_graph_edges")
    _, specs = compare_page_data(tables, "trio")
    rows: list[dict] = []

    def walk(node) -> None:  # every inline data row of the graphs' spec
        if isinstance(node, dict):
            if isinstance(node.get("values"), list):
                rows.extend(r for r in node["values"] if r.get("pair") == "0|1")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(specs["graph"])
    drawn = {(r["study"], r["cluster_id"]): r for r in rows if "status" in r}
    assert drawn[("a", 2)]["status"] == NO_WORDS and drawn[("a", 2)]["concept"] == "no word fits"
    assert drawn[("a", 3)]["status"] == "shared"
    assert drawn[("a", 3)]["concept"] == "size=large · 0.95"
    links = [r for r in rows if r.get("kind") == "link"]
    a3, b4 = drawn[("a", 3)], drawn[("b", 4)]
    assert [(r["x"], r["y"], r["x2"], r["y2"]) for r in links] == [
        (a3["x"], a3["y"], b4["x"], b4["y"])
    ]
