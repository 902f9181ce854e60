"""The page names concepts by their words (unit_labels, cluster_labels), without a browser."""

from __future__ import annotations

import json

import duckdb
import pytest

from carto_viz import export_views, load_tables, view_data, views_spec
from carto_viz.class_graphs import decode_ids
from carto_viz.short_names import short_label
from carto_viz.synthetic import HOSTILE_NAMES, make_database
from carto_viz.words import NO_WORD, caption

FORMULAS = (
    "shape=heart OR shape=circle",
    None,
    "stripes=yes AND NOT colour=red",
    HOSTILE_NAMES[1],
)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return make_database(
        tmp_path_factory.mktemp("words") / "w.duckdb",
        n_neurons=40,
        class_names=("cat", "dog"),
        cluster_labels=("size=large (0.97), colour=blue (0.5)",),
        words=FORMULAS,
    )


def _altered(db, copy, *statements: str):
    """A copy of the synthetic database with ``statements`` run on it."""
    copy.write_bytes(db.read_bytes())
    con = duckdb.connect(str(copy))
    for statement in statements:
        con.execute(statement)
    con.close()
    return copy


def _rows(db, query: str) -> dict[int, tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {int(r[0]): r[1:] for r in con.execute(query).fetchall()}
    finally:
        con.close()


def test_caption():
    assert caption("shape=heart OR shape=circle", 0.934) == "shape=heart OR shape=circle · 0.93"
    assert caption(None, 0.71) == NO_WORD == "no word fits"
    assert caption("shape=heart", 0.93, True) == "shape=heart · 0.93 · always on"
    assert caption(None, None, True) == "no word fits · always on"


def test_neuron_records_carry_their_words(db):
    data = view_data(load_tables(db))
    units = _rows(
        db,
        "SELECT neuron_id, formula, auc, p_value, single_term, single_auc, n_terms_over_08, "
        "n_sharing_formula, on_share, always_on FROM unit_labels",
    )
    clusters = _rows(db, "SELECT cluster_id, formula, auc, always_on FROM cluster_labels")
    assert len(data.neurons) == len(units) == 40
    seen_none = seen_formula = False
    seen_on = set()
    for n in data.neurons:
        formula, auc, p, single, single_auc, over, sharing, on_share, on = units[n["neuron_id"]]
        assert n["words"] == formula
        assert n["words_auc"] == pytest.approx(auc, abs=1e-4)
        assert n["p_value"] == pytest.approx(p, rel=1e-2)
        assert n["single_term"] == single
        assert n["single_auc"] == pytest.approx(single_auc, abs=1e-4)
        assert n["n_terms_over_08"] == over and n["n_sharing_formula"] == sharing
        assert n["on_share"] == pytest.approx(on_share, abs=1e-3) and n["always_on"] is on
        cluster_formula, cluster_auc, cluster_on = clusters[n["cluster_id"]]
        seen_on.add(cluster_on)
        assert n["cluster_words"] == cluster_formula
        named = NO_WORD if cluster_formula is None else f"{cluster_formula} · {cluster_auc:.2f}"
        named += " · always on" if cluster_on else ""
        # The cluster is named by its words, never by its top images' leading term.
        assert n["cluster_short"] == n["cluster_label"] == named
        assert "size=large" not in n["cluster_short"]
        seen_none |= cluster_formula is None
        seen_formula |= cluster_formula is not None
    assert seen_none and seen_formula and seen_on == {True, False}
    # Units sharing a formula count each other.
    sharing = [n for n in data.neurons if n["words"] == FORMULAS[0]]
    assert {n["n_sharing_formula"] for n in sharing} == {len(sharing) - 1}


def test_graph_captions_are_the_words(db):
    data = view_data(load_tables(db))
    clusters = _rows(db, "SELECT cluster_id, formula, auc, always_on FROM cluster_labels")
    table = data.graph_clusters
    assert table["c"]
    for cluster_id, label, short in zip(table["c"], table["l"], table["h"], strict=True):
        formula, auc, on = clusters[cluster_id]
        assert short == label == caption(formula, auc, on)
        words = short.removesuffix(" · always on")
        assert words == NO_WORD or words.endswith(f" · {auc:.2f}")
        assert short.endswith(" · always on") == on
    shown = {short for short in table["h"]}
    assert NO_WORD in shown and f"{FORMULAS[0]} · " in " ".join(shown)
    for label in data.graphs:
        for node in data.graphs.records(label)["nodes"]:
            if node["cluster_id"] >= 0:
                formula, auc, on = clusters[node["cluster_id"]]
                assert node["short"] == node["cluster_label"] == caption(formula, auc, on)


def test_a_database_without_words_keeps_the_leading_term(db, tmp_path):
    copy = _altered(
        db, tmp_path / "old.duckdb", "DROP TABLE unit_labels", "DROP TABLE cluster_labels"
    )
    data = view_data(load_tables(copy))
    assert all("words" not in n and "cluster_words" not in n for n in data.neurons)
    assert {n["cluster_short"] for n in data.neurons} == {"size=large"}
    assert set(data.graph_clusters["h"]) == {short_label("size=large (0.97), colour=blue (0.5)")}
    assert not data.has_words


def test_words_reach_the_page_as_data_not_markup(db, tmp_path):
    html = export_views(db, tmp_path / "out").html_path.read_text(encoding="utf-8")
    assert HOSTILE_NAMES[1] not in html  # escaped inside the page's JSON
    start = html.index('id="carto-page">') + len('id="carto-page">')
    page = json.loads(html[start : html.index("</script>", start)])
    assert any(label.startswith(HOSTILE_NAMES[1]) for label in page["clusters"]["h"])
    # The scorecard (filled by the page from the neuron records) is offered with words only.
    assert page["words"] is True and '<div id="scorecard" aria-live="polite" hidden>' in html


def test_word_search_data_only_with_words(db, tmp_path):
    """With words: each node cluster's classes (for the search) and the views' word signals;
    without: neither, so older databases export the views they did."""
    data = view_data(load_tables(db))
    nodes = _rows(
        db,
        "SELECT cluster_id, list(DISTINCT label ORDER BY label) FROM concept_graph_nodes "
        "GROUP BY cluster_id",
    )
    assert {int(c): decode_ids(v) for c, v in data.cluster_classes.items()} == {
        c: list(labels) for c, (labels,) in nodes.items()
    }
    specs = views_spec(data)
    assert "word_units" in json.dumps(specs["projection"])
    assert "word_clusters" in json.dumps(specs["graph"])
    copy = _altered(
        db, tmp_path / "old.duckdb", "DROP TABLE unit_labels", "DROP TABLE cluster_labels"
    )
    old = view_data(load_tables(copy))
    assert old.cluster_classes == {}
    specs = views_spec(old)
    assert "word_" not in json.dumps(specs["projection"]) + json.dumps(specs["graph"])


def test_a_constant_units_nan_auc_reaches_the_page_as_null(db, tmp_path):
    """A constant (dead) unit or cluster has no AUC (NaN in `unit_labels`); the page's JSON,
    which has no NaN, gets null and the export does not fail."""
    copy = _altered(
        db,
        tmp_path / "dead.duckdb",
        "UPDATE unit_labels SET auc = 'NaN', single_auc = 'NaN', formula = NULL",
        "UPDATE cluster_labels SET auc = 'NaN', formula = NULL",
    )
    data = view_data(load_tables(copy))
    assert all(n["words_auc"] is None and n["cluster_words_auc"] is None for n in data.neurons)
    html = export_views(copy, tmp_path / "out").html_path.read_text(encoding="utf-8")
    assert "NaN" not in html.split('id="carto-page">', 1)[1].split("</script>", 1)[0]
