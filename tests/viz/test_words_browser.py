"""The page's words in headless Chromium: graph captions, the unit's scorecard, word search."""

from __future__ import annotations

import os

import duckdb
import pytest
from viz.pages import ARGS, CHROMIUM, Page

from carto_viz import export_views
from carto_viz.charts import WORD_STROKE
from carto_viz.synthetic import HOSTILE_NAMES, make_database
from carto_viz.words import NO_WORD, caption

if os.environ.get("CI") and not CHROMIUM.exists():
    raise RuntimeError("/usr/bin/chromium is missing in CI: the Makefile's test set-up failed")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt-get install chromium)"
    ),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

FORMULAS = ("stripes=yes AND NOT colour=red", None, "shape=heart OR shape=circle", HOSTILE_NAMES[0])


def _query(db, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_words_caption_scorecard_and_search(tmp_path):
    db = make_database(
        tmp_path / "w.duckdb",
        n_neurons=36,
        class_names=("cat", "dog", "bird"),
        cluster_labels=("size=large (0.97)",),
        words=FORMULAS,
    )
    result = export_views(db, tmp_path / "out")
    clusters = {
        c: (f, a, on)
        for c, f, a, on in _query(
            db, "SELECT cluster_id, formula, auc, always_on FROM cluster_labels"
        )
    }
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = Page(browser, result.html_path)
        try:
            # Graph nodes are captioned by their cluster's words with the AUC.
            labels = {
                t["cluster_id"]: t["text"]
                for t in page.items("graph", "node-label")
                if t["cluster_id"] >= 0
            }
            assert labels
            for cluster_id, text in labels.items():
                assert text == caption(*clusters[cluster_id])
            assert not any("size=large" in t for t in labels.values())
            # The scorecard of the selected unit.
            neuron = next(i for i in page.items("projection", "neuron") if i["neuron_id"] == 2)
            page.click(neuron)
            page.page.mouse.move(5, 5)
            (formula, auc, single, over, sharing, on_share, on) = _query(
                db,
                "SELECT formula, auc, single_term, n_terms_over_08, n_sharing_formula, "
                "on_share, always_on FROM unit_labels WHERE neuron_id = 2",
            )[0]
            card = page.page.inner_text("#scorecard")
            assert page.page.get_attribute("#scorecard", "data-neuron") == "2"
            assert (formula or NO_WORD) in card and f"{auc:.2f}" in card
            assert single in card
            assert f"polysemantic: {over} term" in card and "reach AUC 0.8" in card
            assert (f"shared by {sharing} other unit" if formula else "no words to share") in card
            assert f"on for {round(100 * on_share)}% of images" in card
            assert ("(always on:" in card) == on
            # Word search: typing "stripes" rings the units whose words hold it (a selection's
            # rings come first, so none is left).
            page.page.mouse.dblclick(neuron["px"], neuron["py"])
            page.settle()
            assert page.page.evaluate("window.cartoViews.projection.signal('pick')") in ({}, None)
            page.page.click("#word-search")
            page.page.keyboard.type("STRIPES")
            page.page.wait_for_function(
                "window.cartoWords && window.cartoWords.query === 'stripes'"
            )
            page.settle()
            expected = {
                n
                for n, f in _query(db, "SELECT neuron_id, formula FROM unit_labels")
                if f and "stripes" in f
            }
            found = page.page.evaluate("window.cartoWords")
            assert set(found["units"]) == expected and expected
            ringed = {
                i["neuron_id"]
                for i in page.items("projection", "neuron")
                if i["stroke"] == WORD_STROKE
            }
            assert ringed == expected
            striped = {c for c, (f, _, _) in clusters.items() if f and "stripes" in f}
            assert set(found["clusters"]) == striped
            classes = {
                int(label)
                for (label,) in _query(
                    db,
                    "SELECT DISTINCT label FROM concept_graph_nodes WHERE cluster_id IN "
                    f"({', '.join(map(str, striped))})",
                )
            }
            assert set(found["classes"]) == classes
            shown = page.page.eval_on_selector_all(
                "#word-results .unit", "els => els.map(e => +e.dataset.neuron)"
            )
            assert set(shown) == expected
            frames = {
                f["cluster_id"] for f in page.items("graph", "frame") if f["stroke"] == WORD_STROKE
            }
            assert frames == striped & set(labels) and frames
            # Hostile words stay text.
            page.page.fill("#word-search", "")
            page.page.keyboard.type("<script")
            page.settle()
            assert page.page.query_selector("#word-results script") is None
            assert HOSTILE_NAMES[0] in page.page.inner_text("#word-results")
            assert page.page.evaluate("window.__xss") is None
            assert page.errors == [] and page.offline() == []
        finally:
            page.close()
            browser.close()
