"""The comparison's stages on study databases whose answer is known (a channel-permuted copy),
and the pieces they are built from (CKA, layer shares, labels)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from compare.known import HOSTILE, N_UNITS
from reference.compare import linear_cka

from carto_assets.core.comparison.cka import centered_gram, cka_matrix
from carto_assets.core.comparison.concepts import label_terms, labels_differ
from carto_assets.core.comparison.layer_shares import layer_shares
from carto_assets.stages import comparison as stage
from carto_viz.compare_page import export_compare


def test_a_permuted_copy_is_matched_unit_for_unit(permuted):
    _, perm, store = permuted
    matches = store.query(
        "SELECT unit_id, match_id, jaccard, mutual FROM unit_matches WHERE other_study = 'copy' "
        "ORDER BY unit_id"
    )
    assert matches["match_id"].to_list() == list(N_UNITS + perm)
    assert (matches["jaccard"] == 1.0).all() and matches["mutual"].all()
    layers = store.query(
        "SELECT layer, other_layer, share, null_share, cka FROM layer_matches "
        "WHERE study = 'orig' ORDER BY ALL"
    )
    assert layers.select("layer", "other_layer", "share").rows() == [
        ("conv1", "conv1", 1.0),
        ("conv1", "conv2", 0.0),
        ("conv2", "conv1", 0.0),
        ("conv2", "conv2", 1.0),
    ]
    assert layers["null_share"].max() < 0.2 and layers["cka"].is_null().all()
    concepts = store.query("SELECT status, label_changed, jaccard FROM concept_matches")
    assert (concepts["status"] == "shared").all() and not concepts["label_changed"].any()
    assert (concepts["jaccard"] == 1.0).all() and len(concepts) == 2 * 14


def test_the_joint_embedding_puts_a_unit_beside_its_copy(permuted):
    comparison, _, store = permuted
    figures = stage.embedding(comparison, store, progress=lambda m: None).figures
    assert figures["match_is_nearest_share"] > 0.9
    assert figures["matched_pair_cosine"] > figures["random_cross_pair_cosine"] + 0.3


def test_the_page_shows_data_text_only_as_text(permuted, tmp_path):
    comparison, _, _ = permuted
    result = export_compare(comparison.database_path, tmp_path / "views", name="cmp")
    page = result.html_path.read_text()
    assert result.n_units == 2 * N_UNITS and result.png_bytes.startswith(b"\x89PNG")
    assert HOSTILE not in page and "\\u003cscript\\u003ewindow.__xss=1" in page
    assert "fetch(" not in page.split("<script>")[-1]  # the page's own script loads nothing


def test_a_comparison_rerun_replaces_its_rows(permuted):
    comparison, _, store = permuted
    before = store.query("SELECT count(*) AS n FROM unit_matches")["n"][0]
    store.replace_tables(stage.matches(comparison, store).tables)
    assert store.query("SELECT count(*) AS n FROM unit_matches")["n"][0] == before == 2 * N_UNITS


def test_layer_shares_count_mutual_matches_per_layer_pair():
    units = pl.DataFrame(
        {
            "unit": [0, 1, 2, 3, 4, 5],
            "study": ["a", "a", "a", "b", "b", "b"],
            "layer": ["x", "x", "y", "x", "y", "y"],
            "layer_index": [0, 0, 1, 0, 1, 1],
        }
    )
    # a0 <-> b4 mutual (x -> y), a1 -> b4 not mutual, a2 none; b3 -> a1 not mutual.
    best = pl.DataFrame(
        {
            "unit": [0, 1, 2, 3, 4, 5],
            "match": [4, 4, -1, 1, 0, -1],
            "mutual": [True, False, False, False, True, False],
        }
    )
    shares = layer_shares(units, best)
    row = shares.filter(study="a", layer="x", other_layer="y").row(0, named=True)
    assert (row["units"], row["matched"], row["mutual"], row["share"]) == (2, 2, 1, 0.5)
    assert shares.filter(study="a", layer="x", other_layer="x")["matched"].item() == 0
    assert shares.filter(study="b", layer="x", other_layer="x").row(0, named=True)["matched"] == 1
    assert shares.filter(study="b", layer="y", other_layer="x")["share"].item() == 0.5
    assert shares.height == 2 * 2 * 2


def test_linear_cka_from_grams_equals_the_feature_space_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    y = x @ rng.normal(size=(8, 5)) + 0.5 * rng.normal(size=(50, 5))
    z = rng.normal(size=(50, 12))
    matrix = cka_matrix([centered_gram(x), centered_gram(y)], [centered_gram(y), centered_gram(z)])
    assert matrix[0, 0] == pytest.approx(linear_cka(x, y))
    assert matrix[0, 1] == pytest.approx(linear_cka(x, z))
    assert matrix[1, 0] == pytest.approx(1.0)
    # Permuting and rescaling a layer's units leaves CKA at 1; a constant layer has none.
    permuted = 3.0 * x[:, rng.permutation(8)]
    assert cka_matrix([centered_gram(x)], [centered_gram(permuted)])[0, 0] == pytest.approx(1.0)
    assert np.isnan(cka_matrix([centered_gram(np.ones((50, 3)))], [centered_gram(x)])[0, 0])


def test_labels_change_when_neither_leads_with_a_term_of_the_other():
    assert label_terms("colour=red (0.97), size=large (0.5)") == ["colour=red", "size=large"]
    assert label_terms("constant activation (dead neuron)") == ["constant activation (dead neuron)"]
    assert not labels_differ(
        "colour=red (0.9), size=large (0.5)", "size=large (0.8), colour=red (0.6)"
    )
    assert labels_differ("colour=red (0.9)", "shape=heart (0.7), colour=blue (0.5)")
    assert not labels_differ("colour=red (0.9)", "shape=heart (0.7), colour=red (0.5)")


def test_concepts_only_in_one_model_say_whether_the_other_names_them():
    from carto_assets.core.comparison.concepts import concept_frame
    from carto_assets.core.comparison.matching import BestMatches

    concepts = pl.DataFrame(
        {
            "row": [0, 1, 2, 3],
            "study": ["a", "a", "b", "b"],
            "cluster_id": [0, 1, 0, 1],
            "layer": ["x"] * 4,
            "size": [2, 1, 1, 1],
            "label": [
                "shape=heart (0.9)",
                "colour=red (0.8)",
                "shape=heart (0.7), size=large (0.5)",
                "colour=blue (0.6)",
            ],
        }
    )
    best = BestMatches(
        unit=np.array([0, 1, 2, 3]),
        other_study=np.array([1, 1, 0, 0]),
        match=np.array([-1, 3, -1, 1]),
        jaccard=np.array([0.0, 0.4, 0.0, 0.4]),
        mutual=np.array([False, True, False, True]),
        partners=np.array([0, 1, 0, 1]),
    )
    frame = concept_frame(concepts, best, ["a", "b"])
    rows = frame.select("study", "cluster_id", "status", "label_changed", "same_label_elsewhere")
    assert rows.rows() == [
        ("a", 0, "only", None, True),  # b has a heart detector of its own, on other images
        ("a", 1, "shared", True, None),  # red in a, blue in b
        ("b", 0, "only", None, True),
        ("b", 1, "shared", True, None),
    ]
