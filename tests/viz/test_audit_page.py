"""The page's "relies on" chart (class_audit, class_audit_images): its data, the exported page,
and one click in headless Chromium. The audit's tables are written by hand, following their
contract (one flagged term, one own term), into a synthetic study with words."""

from __future__ import annotations

import json
import os

import duckdb
import pytest

from carto_viz import audit, export_views, load_tables, view_data
from carto_viz.class_graphs import decode_ids
from carto_viz.synthetic import make_database

HOSTILE = "<img src=x onerror=window.__xss=1>"
#: unit words; the quoted value is a term named by data that must stay text
FORMULAS = (
    "texture=dots AND colour=red",
    "shape=heart",
    None,
    "NOT texture=dots",
    f'colour="{HOSTILE}"',
    "texture=dots OR shape=heart",
)
HOSTILE_TERM = f"colour={HOSTILE}"
HOSTILE_CLASS = "</script><script>window.__xss=1</script>"

#: the contract's columns (audit_design.md), in table order
_AUDIT_COLUMNS = {
    "label": "INTEGER", "class_name": "VARCHAR", "term": "VARCHAR", "own": "BOOLEAN",
    "rank": "INTEGER", "relevance_share": "DOUBLE", "top_layer": "VARCHAR",
    "top_layer_share": "DOUBLE", "units": "INTEGER", "lift": "DOUBLE", "class_rate": "DOUBLE",
    "other_rate": "DOUBLE", "cooccurs": "BOOLEAN", "flagged": "BOOLEAN",
    "flagged_by": "VARCHAR", "checked": "BOOLEAN",
    "ablation_units": "INTEGER", "ablation_images": "INTEGER", "ablation_drop": "DOUBLE",
    "ablation_other_drop": "DOUBLE", "ablation_random_drop": "DOUBLE",
    "ablation_confirms": "BOOLEAN", "counterfactual_images": "INTEGER", "accuracy": "DOUBLE",
    "counterfactual_accuracy": "DOUBLE", "logit": "DOUBLE", "counterfactual_logit": "DOUBLE",
    "counterfactual_confirms": "BOOLEAN", "confirmed": "BOOLEAN",
}  # fmt: skip
_SHARES = ("relevance_share", "top_layer", "top_layer_share", "units", "lift", "class_rate")
_AUDIT_ROWS = [
    # class 0 (heart) relies on dots, flagged and confirmed by both checks
    dict(
        label=0, class_name="heart", term="texture=dots", own=False, rank=1,
        **dict(zip(_SHARES, (0.41, "conv2", 0.55, 3, 4.2, 0.97), strict=True)),
        other_rate=0.05, flagged=True, flagged_by="relevance", checked=True, ablation_units=3,
        ablation_images=40,
        ablation_drop=2.5, ablation_other_drop=0.2, ablation_random_drop=0.3,
        ablation_confirms=True, counterfactual_images=40, accuracy=0.95,
        counterfactual_accuracy=0.2, logit=6.1, counterfactual_logit=1.4,
        counterfactual_confirms=True, confirmed=True,
    ),
    dict(
        label=0, class_name="heart", term="shape=heart", own=True, rank=2,
        **dict(zip(_SHARES, (0.3, "conv3", 0.4, 2, 3.0, 1.0), strict=True)),
        other_rate=0.0, flagged=False, checked=False,
    ),
    dict(
        label=0, class_name="heart", term=HOSTILE_TERM, own=False, rank=3,
        # an infinite lift: no other class's units carry the term (JSON has no Infinity)
        **dict(zip(_SHARES, (0.05, "conv1", 0.07, 1, float("inf"), 0.1), strict=True)),
        other_rate=0.1, flagged=False, checked=False,
    ),
    # class 1: flagged, not confirmed by the ablation; no counterfactuals; a NaN share
    dict(
        label=1, class_name=HOSTILE_CLASS, term="shape=heart", own=False, rank=1,
        **dict(zip(_SHARES, (float("nan"), "conv3", 0.2, 2, 1.0, 0.0), strict=True)),
        other_rate=0.5, flagged=True, flagged_by="relevance", checked=True, ablation_units=2,
        ablation_images=40,
        ablation_drop=0.1, ablation_other_drop=0.3, ablation_random_drop=0.2,
        ablation_confirms=False, confirmed=False,
    ),
    # class 1: a correlation no unit's words name, flagged by the counterfactual
    dict(
        label=1, class_name=HOSTILE_CLASS, term="texture=dots", own=False, rank=2,
        **dict(zip(_SHARES, (0.0, None, 0.0, 0, float("nan"), 0.6), strict=True)),
        other_rate=0.1, flagged=True, flagged_by="counterfactual", checked=True,
        counterfactual_images=20, accuracy=0.95, counterfactual_accuracy=0.25, logit=2.7,
        counterfactual_logit=0.4, counterfactual_confirms=True, confirmed=True,
    ),
]  # fmt: skip
#: (label, term, rank, image_id, drop): image 1 was explained (its thumbnail is known), 3 was
#: not explained for class 0 in this study but is another class's; 999 has no thumbnail at all
_IMAGE_ROWS = [
    (0, "texture=dots", 1, 1, 3.5),
    (0, "texture=dots", 2, 3, 2.0),
    (0, "texture=dots", 3, 999, 1.0),
]


def with_audit(db, copy, *statements: str):
    """A copy of ``db`` with the audit's tables written by hand (and ``statements`` run)."""
    copy.write_bytes(db.read_bytes())
    con = duckdb.connect(str(copy))
    con.execute(
        "CREATE TABLE class_audit ("
        + ", ".join(f"{name} {kind}" for name, kind in _AUDIT_COLUMNS.items())
        + ")"
    )
    con.executemany(
        f"INSERT INTO class_audit VALUES ({', '.join(['?'] * len(_AUDIT_COLUMNS))})",
        [[row.get(name) for name in _AUDIT_COLUMNS] for row in _AUDIT_ROWS],
    )
    con.execute(
        "CREATE TABLE class_audit_images (label INTEGER, term VARCHAR, rank INTEGER, "
        "image_id BIGINT, drop DOUBLE)"
    )
    con.executemany("INSERT INTO class_audit_images VALUES (?, ?, ?, ?, ?)", _IMAGE_ROWS)
    for statement in statements:
        con.execute(statement)
    con.close()
    return copy


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return make_database(
        tmp_path_factory.mktemp("audit") / "plain.duckdb",
        n_neurons=36,
        class_names=("heart", "arrow"),
        explained_per_class=2,
        words=FORMULAS,
    )


@pytest.fixture(scope="module")
def audited(db, tmp_path_factory):
    return with_audit(db, tmp_path_factory.mktemp("audit") / "audited.duckdb")


@pytest.fixture(scope="module")
def exported(audited, tmp_path_factory):
    return export_views(audited, tmp_path_factory.mktemp("audit") / "out")


def _page(html: str) -> dict:
    start = html.index('id="carto-page">') + len('id="carto-page">')
    return json.loads(html[start : html.index("</script>", start)])


def test_positive_terms():
    assert audit.positive_terms("NOT shape=heart OR colour=red") == ["colour=red"]
    assert audit.positive_terms('colour="light blue" AND NOT size=small') == [
        "colour=light blue",
        'colour="light blue"',
    ]
    assert audit.positive_terms("<b>not a formula") == []


def test_audit_data_per_class(audited):
    tables = load_tables(audited)
    data = view_data(tables).audit
    assert data is not None
    columns = list(audit.COLUMNS)
    heart = [dict(zip(columns, row, strict=True)) for row in data.classes["0"]]
    assert [r["term"] for r in heart] == ["texture=dots", "shape=heart", HOSTILE_TERM]
    dots, own = heart[0], heart[1]
    assert dots["flagged"] and not dots["own"] and dots["confirmed"]
    assert dots["ablation_drop"] == 2.5 and dots["counterfactual_logit"] == 1.4
    assert own["own"] and not own["flagged"] and own["ablation_drop"] is None
    # NaN (not JSON) reaches the page as null.
    assert dict(zip(columns, data.classes["1"][0], strict=True))["relevance_share"] is None
    # A term's units: the units whose words name it outside NOT.
    formulas = dict(tables["unit_labels"].select("neuron_id", "formula").iter_rows())
    named = {n for n, f in formulas.items() if f in (FORMULAS[0], FORMULAS[5])}
    assert named and set(decode_ids(data.units["texture=dots"])) == named
    assert set(decode_ids(data.units[HOSTILE_TERM])) == {
        n for n, f in formulas.items() if f == FORMULAS[4]
    }
    assert data.images == {"0": {"texture=dots": [[1, 3.5], [3, 2.0], [999, 1.0]]}}
    assert data.image_ids == [1, 3, 999]


def test_header_counts_the_flagged_classes(audited):
    summary = view_data(load_tables(audited)).summary
    line = [q for q in summary["quality"] if q["figure"] == audit.FLAGGED_FIGURE]
    assert len(line) == 1
    assert line[0]["value"] == f"2 of 2 (heart, {HOSTILE_CLASS})"
    assert line[0]["asset"] == "class_audit" and line[0]["definition"]


def test_the_page_carries_the_audit_as_data_not_markup(exported):
    html = exported.html_path.read_text(encoding="utf-8")
    page = _page(html)
    assert page["audit"]["columns"] == list(audit.COLUMNS)
    assert set(page["audit"]["classes"]) == {"0", "1"}
    # The thumbnails: the explained images' (1 and 3); 999 has none and is listed by id.
    assert set(page["audit"]["thumbs"]["slots"]) == {"1", "3"}
    assert page["audit"]["thumbs"]["sheets"][0]["name"] == "audit-0000"
    assert 'id="carto-chunk-audit-0000"' in html
    # The section and its script, once; data only inside the JSON blocks, escaped.
    assert html.count('<div id="audit" hidden>') == 1
    assert html.count("cartoAuditTerm") == 1
    assert HOSTILE not in html and HOSTILE_CLASS not in html
    # Only the page's own script elements close: the JSON blocks, the bundle and 2 scripts.
    assert html.lower().count("</script") == html.count('<script type="application/json" id=') + 3
    assert any(q["value"].endswith(f"{HOSTILE_CLASS})") for q in page["summary"]["quality"])


def test_without_the_audit_the_page_is_as_before(db, tmp_path):
    html = export_views(db, tmp_path / "out").html_path.read_text(encoding="utf-8")
    assert "audit" not in _page(html)
    assert 'id="audit"' not in html and "cartoAuditTerm" not in html
    assert "classes flagged" not in html


def test_thumbnails_from_the_audit_images_first(audited, tmp_path):
    """With a ``thumb`` column in class_audit_images, its thumbnails come first and reach the
    images no explanation has."""
    copy = tmp_path / "thumbs.duckdb"
    copy.write_bytes(audited.read_bytes())
    con = duckdb.connect(str(copy))
    png = con.execute("SELECT thumb FROM explained_images WHERE image_id = 1").fetchone()[0]
    con.execute("ALTER TABLE class_audit_images ADD COLUMN thumb BLOB")
    con.execute("UPDATE class_audit_images SET thumb = ? WHERE image_id = 999", [png])
    con.close()
    atlas = audit.thumbnails(copy, [1, 3, 999])
    assert set(atlas.slots) == {1, 3, 999}
    assert audit.thumbnails(copy, []) is None


@pytest.mark.browser
def test_clicking_a_term_rings_its_units_and_shows_its_images(exported, audited):
    from viz.pages import ARGS, CHROMIUM, Page

    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            raise RuntimeError("/usr/bin/chromium is missing in CI")
        pytest.skip("/usr/bin/chromium is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    expected = view_data(load_tables(audited)).audit
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = Page(browser, exported.html_path)
        try:
            bars = page.page.eval_on_selector_all(
                "#audit-chart button.term",
                "els => els.map(e => [e.getAttribute('data-term'), e.className])",
            )
            assert bars == [
                ["texture=dots", "term flagged"],
                ["shape=heart", "term own"],
                [HOSTILE_TERM, "term"],
            ]
            assert "lift: 4.20×" in page.page.get_attribute(
                '#audit-chart button[data-term="texture=dots"]', "title"
            )
            page.page.click('#audit-chart button[data-term="texture=dots"]')
            page.settle()
            ringed = page.page.evaluate("window.cartoViews.projection.signal('word_units')")
            assert set(decode_ids(expected.units["texture=dots"])) == {
                int(x) for x in ringed.strip("|").split("|")
            }
            page.page.wait_for_function(
                "document.querySelectorAll('#audit-term figure img[src^=\"data:\"]').length == 2"
            )
            shown = page.page.eval_on_selector_all(
                "#audit-term figure", "els => els.map(e => e.getAttribute('data-image'))"
            )
            assert shown == ["1", "3", "999"]
            page.page.click(f'#audit-chart button[data-term="{HOSTILE_TERM}"]')
            assert page.page.evaluate("window.__xss") is None
            assert page.errors == [] and page.dialogs == [] and page.offline() == []
            # Another class: its own chart, and the rings cleared.
            page.page.evaluate("window.cartoSetClass(1)")
            page.page.wait_for_function("document.body.getAttribute('data-class') === '1'")
            page.settle()
            assert page.page.evaluate("window.cartoViews.projection.signal('word_units')") == "|"
            assert page.page.eval_on_selector_all(
                "#audit-chart button.term", "els => els.map(e => e.getAttribute('data-term'))"
            ) == ["shape=heart", "texture=dots"]
            marks = page.page.eval_on_selector_all(
                "#audit-chart button.term .mark", "els => els.map(e => e.textContent)"
            )
            assert marks == [
                "⚑ flagged, not confirmed",
                "⚑ flagged by the counterfactual, confirmed",
            ]
            title = page.page.get_attribute(
                '#audit-chart button[data-term="texture=dots"]', "title"
            )
            assert "flagged by: the counterfactual" in title
            assert "relevance share: none: no unit's words name it" in title
        finally:
            page.close()
            browser.close()


@pytest.mark.browser
def test_thumbnails_load_from_sidecar_chunks(audited, tmp_path):
    """Above max_inline_bytes the audit's sheets are sidecar scripts like every chunk; the
    page's own chunks (graphs, patches) still reach page.js."""
    from viz.pages import ARGS, CHROMIUM, Page

    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    result = export_views(audited, tmp_path / "out", max_inline_bytes=0)
    assert (result.sidecar_dir / "audit-0000.js").exists()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = Page(browser, result.html_path)
        try:
            page.page.evaluate("window.cartoAuditTerm('texture=dots').then(() => 0)")
            page.page.wait_for_function(
                "document.querySelectorAll('#audit-term figure img[src^=\"data:\"]').length == 2"
            )
            assert page.wait_images("graph", "node-image")  # page.js's sheets still load
            assert all(i["loaded"] for i in page.items("graph", "node-image"))
            assert page.errors == [] and page.offline() == []
        finally:
            page.close()
            browser.close()
