"""The exported page in headless Chromium (Playwright, file:// only): the browser arguments and
a loaded page with what it logged, requested and showed. Shared by the view tests and the
README tier's check that a real study's page opens."""

from __future__ import annotations

import time
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

# Scenegraph walk of one view: every leaf item with its page position and what it shows.
ITEMS_JS = """(name) => {
  const view = window.cartoViews[name];
  const rect = view.container().querySelector('canvas').getBoundingClientRect();
  const origin = view.origin(), pad = view.padding();
  const out = [];
  function walk(mark, ox, oy) {
    for (const item of mark.items || []) {
      if (mark.marktype === 'group') {
        for (const child of item.items || []) walk(child, ox + (item.x || 0), oy + (item.y || 0));
        continue;
      }
      const d = item.datum || {};
      const image = mark.marktype === 'image';
      out.push({
        kind: mark.marktype === 'symbol' && 'neighbors' in d ? 'neuron'
          : mark.marktype === 'symbol' && 'strength' in d ? 'frame'
          : image && 'strength' in d ? 'node-image'
          : image ? 'detail-image'
          : mark.marktype === 'rule' && 'weight_rel' in d ? 'edge'
          : mark.marktype === 'text' && 'strength' in d ? 'node-label'
          : mark.marktype === 'text' && 'role' in d ? 'detail-text'
          : mark.marktype === 'text' ? 'text' : mark.role === 'axis' ? 'axis' : 'other',
        role: mark.role || null,
        neuron_id: d.neuron_id, cluster_id: d.cluster_id, text: item.text,
        unit_kind: d.kind, source: d.source_cluster, target: d.target_cluster,
        shape: item.shape || null, dash: item.strokeDash || null,
        url: item.url || null,
        loaded: !!(item.image && item.image.complete && item.image.naturalWidth > 0),
        stroke: item.stroke || null,
        px: rect.left + pad.left + origin[0] + ox + (item.x || 0)
          + (image ? (item.width || 0) / 2 : 0),
        py: rect.top + pad.top + origin[1] + oy + (item.y || 0)
          + (image ? (item.height || 0) / 2 : 0),
      });
    }
  }
  walk(view.scenegraph().root, 0, 0);
  return out;
}"""


class Page:
    """A loaded page plus what it logged and requested."""

    def __init__(self, browser, html: Path):
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        start = time.perf_counter()
        self.page.goto(html.resolve().as_uri())
        self.page.wait_for_function("window.cartoReady !== undefined", timeout=60_000)
        self.load_s = time.perf_counter() - start
        # Since navigation started: parsing the page and its inline data included.
        self.ready_ms = self.page.evaluate("window.cartoReady")

    def items(self, view: str, kind: str | None = None) -> list[dict]:
        items = self.page.evaluate(ITEMS_JS, view)
        return [i for i in items if kind is None or i["kind"] == kind]

    def settle(self) -> None:
        self.page.evaluate(
            "Promise.all(Object.values(window.cartoViews).map(v => v.runAsync())).then(() => 0)"
        )

    def click(self, item: dict) -> float:
        """Click an item; returns the click-to-both-views-updated round trip in ms."""
        self.page.evaluate("window.__clickAt = performance.now()")
        self.page.mouse.click(item["px"], item["py"])
        return self.page.evaluate(
            "Promise.all(Object.values(window.cartoViews).map(v => v.runAsync()))"
            ".then(() => performance.now() - window.__clickAt)"
        )

    def hover(self, item: dict) -> dict:
        """Hover an item until its card's patches are decoded; returns {ms, images}."""
        self.page.mouse.move(5, 5)
        self.page.evaluate("window.cartoHover = undefined")
        self.page.mouse.move(item["px"], item["py"])
        self.page.wait_for_function("window.cartoHover !== undefined", timeout=20_000)
        return self.page.evaluate("window.cartoHover")

    def search(self, text: str) -> list[str]:
        self.page.click("#class-search")
        self.page.fill("#class-search", "")
        self.page.keyboard.type(text)
        return self.page.eval_on_selector_all(
            "#class-options li", "els => els.map(e => e.firstChild.textContent)"
        )

    def choose(self, label: int) -> float:
        """Press Enter on the highlighted option; returns the class-switch time (ms)."""
        self.page.keyboard.press("Enter")
        self.page.wait_for_function(
            f"window.cartoClassSwitch && window.cartoClassSwitch.label === {label}",
            timeout=30_000,
        )
        return self.page.evaluate("window.cartoClassSwitch.ms")

    def wait_images(self, view: str, kind: str) -> list[dict]:
        """Wait until every image mark of ``kind`` has decoded; returns them."""
        deadline = time.time() + 20
        while True:
            images = self.items(view, kind)
            if all(i["loaded"] for i in images) or time.time() > deadline:
                return images
            self.page.wait_for_timeout(100)

    def offline(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(("file://", "data:"))]

    def close(self):
        self.page.close()
