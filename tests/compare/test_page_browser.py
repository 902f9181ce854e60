"""The compare page in headless Chromium (file://): it draws, a click on a unit shows its match,
and text from the data stays text."""

from __future__ import annotations

from pathlib import Path

import pytest
from compare.known import N_UNITS

from carto_viz.compare_page import export_compare

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

#: Page position of the projection's point of a unit.
POINT_JS = """(unit) => {
  const view = window.compareViews.projection;
  const rect = view.container().querySelector('canvas').getBoundingClientRect();
  const origin = view.origin(), pad = view.padding();
  let found = null;
  (function walk(mark, ox, oy) {
    for (const item of mark.items || []) {
      if (mark.marktype === 'group') {
        for (const child of item.items || []) walk(child, ox + (item.x || 0), oy + (item.y || 0));
      } else if (item.datum && item.datum.unit_id === unit && mark.marktype === 'symbol') {
        found = [rect.left + pad.left + origin[0] + ox + item.x,
                 rect.top + pad.top + origin[1] + oy + item.y];
      }
    }
  })(view.scenegraph().root, 0, 0);
  return found;
}"""


def test_a_click_on_a_unit_shows_its_match_and_text_stays_text(permuted, tmp_path):
    comparison, perm, _ = permuted
    page = export_compare(comparison.database_path, tmp_path / "views", name="cmp").html_path
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1400, "height": 1200})
        errors: list[str] = []
        tab.on("pageerror", lambda e: errors.append(str(e)))
        requests: list[str] = []
        tab.on("request", lambda r: requests.append(r.url))
        tab.goto(page.as_uri())
        tab.wait_for_selector("body[data-ready]", timeout=30_000)
        x, y = tab.evaluate(POINT_JS, 0)
        tab.mouse.click(x, y)
        tab.wait_for_function("document.getElementById('unit').textContent.length > 0")
        panel = tab.inner_text("#unit")
        assert "A · orig · channel 0 · conv1" in panel
        assert f"best match: B · copy · channel {perm[0]} · conv1" in panel
        assert "Jaccard 1.00, mutual" in panel and "no patches" in panel
        # Unit 0's cluster label is markup: shown as text, never run.
        assert "concept: <script>window.__xss=1</script> (0.9)" in panel
        assert tab.evaluate("window.__xss === undefined")
        # "select it" moves the selection to the match.
        tab.click("#unit button")
        assert tab.inner_text("#unit").startswith(f"B · copy · channel {perm[0]} · conv1")
        picked = tab.evaluate("compareViews.projection.signal('pick').unit_id")
        assert picked == [N_UNITS + int(perm[0])]  # the map's selection moved with it
        figures = tab.inner_text("#figures")
        assert "Units of A with a mutual match in B: 100.0%" in figures
        tab.select_option("#pair", "1|0")
        assert "100.0%" in tab.inner_text("#figures")
        assert "only in B · copy (0)" in tab.inner_text("#only")
        browser.close()
    assert errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests)


def test_concepts_matched_by_words_are_named_by_them(trio, tmp_path):
    comparison = trio[0]
    page = export_compare(comparison.database_path, tmp_path / "views", name="trio").html_path
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1400, "height": 1200})
        errors: list[str] = []
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.goto(page.as_uri())
        tab.wait_for_selector("body[data-ready]", timeout=30_000)
        assert tab.inner_text("#words-note") == (
            "Study c has no words (no cluster_labels): its concepts are matched by their top "
            "images, not by words."
        )
        assert "2 shared with B, 2 only in A (matched by words; 2 clusters of A without words)" in (
            tab.inner_text("#figures")
        )
        only = tab.inner_text("#only")
        assert "shape=heart · 0.80" in only and "words · AUC" in only and "a term in B" in only
        assert tab.inner_text("#changed").startswith("none: matched by words")
        tab.select_option("#pair", "0|2")
        assert "(matched by top images)" in tab.inner_text("#figures")
        browser.close()
    assert errors == []
