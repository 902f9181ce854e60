"""Export the linked views as one self-contained offline HTML page (+ specs, PNG)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import vl_convert

from carto_viz.charts import views_spec
from carto_viz.data import load_tables, patch_bytes, patch_records, view_data

#: characters escaped in JSON embedded in a <script> element (keeps "</script", "<!--",
#: "]]>" and the JS line separators from ever being read as markup or breaking the script).
_SCRIPT_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_views` wrote."""

    html_path: Path
    spec_paths: tuple[Path, ...]
    png_bytes: bytes
    n_neurons: int
    page_bytes: int
    sidecar_dir: Path | None


def script_json(value: object) -> str:
    """JSON safe to place inside ``<script type="application/json">`` (no markup can close it)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escape in _SCRIPT_ESCAPES.items():
        text = text.replace(char, escape)
    return text


@lru_cache(maxsize=1)
def javascript_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one offline script (from vl-convert)."""
    bundle = vl_convert.javascript_bundle()
    lowered = bundle.lower()
    if "</script" in lowered or "<!--" in lowered:
        raise ValueError("the vl-convert JavaScript bundle contains '</script' or '<!--'")
    return bundle


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Cartography views</title>
<style>
body {{ font-family: sans-serif; margin: 12px; }}
.vega-bind {{ display: inline-block; margin-right: 14px; font-size: 12px; }}
</style>
</head>
<body>
<div id="vis"></div>
<script type="application/json" id="carto-spec">{spec}</script>
<script>{bundle}</script>
<script>
(function () {{
  "use strict";
  // Tooltip text is escaped completely (vega-tooltip's default only escapes & and <).
  function escapeText(value) {{
    return String(value).replace(/[&<>"'`]/g, function (c) {{
      return "&#" + c.charCodeAt(0) + ";";
    }});
  }}
  // All data is inline: the loader loads nothing and only lets through patch images
  // (data:image/png or the relative patches/ sidecar), without crossOrigin so that the
  // sidecar PNGs load from file:// pages.
  function refuse() {{ return Promise.reject(new Error("Cartography pages load no data")); }}
  var loader = {{
    options: {{}},
    load: refuse, file: refuse, http: refuse,
    sanitize: function (uri, options) {{
      var href = String(uri);
      var ok = href.indexOf("data:image/png;base64,") === 0 ||
        /^patches\\/[0-9]+_[0-9]+\\.png$/.test(href);
      if (!ok || !options || options.context !== "image") {{
        return Promise.reject(new Error("refused URL"));
      }}
      return Promise.resolve({{ href: href, crossOrigin: null }});
    }}
  }};
  var spec = JSON.parse(document.getElementById("carto-spec").textContent);
  window.cartoStart = performance.now();
  vegaEmbed("#vis", spec, {{
    renderer: "canvas",
    actions: false,
    loader: loader,
    tooltip: {{ sanitize: escapeText, maxDepth: 1 }}
  }}).then(function (result) {{
    window.cartoView = result.view;
    return result.view.runAsync();
  }}).then(function () {{
    window.cartoReady = performance.now();
    document.body.setAttribute("data-ready", "1");
  }}).catch(function (error) {{
    console.error(error);
  }});
}})();
</script>
</body>
</html>
"""


def render_page(spec: dict) -> str:
    """The HTML page: spec as escaped JSON, the JS bundle and a tiny embed script.

    Data never reaches the DOM as markup: the spec is parsed with ``JSON.parse`` from a
    ``<script type="application/json">`` element and Vega draws text on a canvas.
    """
    return _PAGE.format(spec=script_json(spec), bundle=javascript_bundle())


def _png(spec: dict) -> bytes:
    """A PNG of the views in their initial state (no selection, so no image is loaded)."""
    still = dict(spec)
    still["datasets"] = {**spec["datasets"], "patches": []}
    return vl_convert.vegalite_to_png(still, scale=1)


def export_views(
    database_path: str | Path,
    out_dir: str | Path,
    *,
    max_inline_patch_bytes: int = 8_000_000,
) -> ExportResult:
    """Write the linked views of a study as an offline page.

    Parameters
    ----------
    database_path
        The study's DuckDB database.
    out_dir
        Folder for ``index.html``, ``specs/views.vl.json`` and, when the patches' PNG bytes
        exceed ``max_inline_patch_bytes``, ``patches/<neuron>_<rank>.png`` loaded by relative
        URL (works from ``file://``).
    max_inline_patch_bytes
        Largest total PNG size embedded as ``data:`` URLs.

    Returns
    -------
    ExportResult

    Raises
    ------
    ValueError
        If a table is missing (the message names the asset to materialize) or
        ``max_inline_patch_bytes`` is negative.
    """
    if max_inline_patch_bytes < 0:
        raise ValueError(f"max_inline_patch_bytes must be >= 0, got {max_inline_patch_bytes}")
    tables = load_tables(database_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sidecar = out / "patches"
    if sidecar.exists():
        shutil.rmtree(sidecar)
    use_sidecar = patch_bytes(tables["example_patches"]) > max_inline_patch_bytes
    patches = patch_records(tables["example_patches"], sidecar if use_sidecar else None)
    data = view_data(tables)
    spec = views_spec(data, patches)

    specs = out / "specs"
    specs.mkdir(exist_ok=True)
    spec_path = specs / "views.vl.json"
    spec_path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    html = render_page(spec).encode("utf-8")
    html_path = out / "index.html"
    html_path.write_bytes(html)
    return ExportResult(
        html_path=html_path,
        spec_paths=(spec_path,),
        png_bytes=_png(spec),
        n_neurons=len(data.neurons),
        page_bytes=len(html),
        sidecar_dir=sidecar if use_sidecar else None,
    )
