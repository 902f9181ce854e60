"""Export the linked views as one offline HTML page (+ specs, PNG).

Layout of an export::

    index.html             header, class search, the Vega views, everything needed to start
    index_files/*.js       only for large studies: sprite sheets and per-class graph chunks,
                           loaded lazily by <script> (works from file://, no server, no fetch)
    specs/{projection,detail,graph}.vl.json   the Vega-Lite specs

What loads lazily (a class's graph, a sheet of patches) is a *chunk*. Small studies keep their
chunks inline in ``index.html`` (one file to share); above ``max_inline_bytes`` they go to
``index_files/``. Either way the page reads them the same way and only when needed, so the page
is ready as soon as the projection and the first class's graph are drawn.
"""

from __future__ import annotations

import base64
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import vl_convert

from carto_assets.storage import atomic
from carto_assets.storage.store import DEFAULT_MEMORY_LIMIT
from carto_viz import audit as class_audit
from carto_viz.charts import graph_heights, views_spec
from carto_viz.data import ViewData, load_tables, patch_pngs, view_data
from carto_viz.explained_images import thumbnails
from carto_viz.sprites import SpriteAtlas, pack_patches

#: characters escaped in JSON embedded in a <script> element (keeps "</script", "<!--",
#: "]]>" and the JS line separators from ever being read as markup or breaking the script).
_SCRIPT_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
#: folder of lazily loaded chunks beside index.html.
DATA_DIR = "index_files"
#: target size of one class-graph chunk (JSON bytes).
GRAPH_CHUNK_BYTES = 1_500_000


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_views` wrote."""

    html_path: Path
    spec_paths: tuple[Path, ...]
    png_bytes: bytes
    n_neurons: int
    page_bytes: int
    #: ``index_files/`` when chunks were written beside the page, else None (all inline).
    sidecar_dir: Path | None
    n_files: int
    #: bytes of the sprite sheets (patches and thumbnails), patches they hold, sheets.
    patch_bytes: int
    n_patches: int
    n_sheets: int


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


def page_asset(name: str) -> str:
    """A file of the page's own (``carto_viz/page/``: scripts, styles, templates) as text."""
    return resources.files("carto_viz").joinpath("page", name).read_text(encoding="utf-8")


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Cartography views</title>
<style>{css}</style>{audit_css}
</head>
<body>
<header>
<h1 id="study-title"></h1>
<p class="facts" id="study-facts"></p>
<ul class="quality" id="study-quality"></ul>
</header>
<div class="controls">
<div class="search">
<label for="class-search">Class</label><input id="class-search" type="search" autocomplete="off"
 spellcheck="false" placeholder="type a class name or id" role="combobox" aria-expanded="false"
 aria-controls="class-options"><ul id="class-options" role="listbox" hidden></ul>
</div>
<span id="class-note"></span>
<div class="search" id="word-box" hidden>
<label for="word-search">Words</label><input id="word-search" type="search" autocomplete="off"
 spellcheck="false" placeholder="search the words, e.g. stripes" aria-controls="word-results">
</div>
<div id="unit-kind" class="units" role="radiogroup" aria-labelledby="unit-kind-label" hidden>
<span id="unit-kind-label">Units</span>
<label><input type="radio" name="unit-kind" value="channel"><span>channels</span></label>
<label><input type="radio" name="unit-kind" value="feature"><span>features</span></label>
<label><input type="radio" name="unit-kind" value="both" checked><span>both</span></label>
</div>
</div>
<div id="word-results" aria-live="polite" hidden></div>
<main>
<section id="left"><div id="projection"></div>
<div id="scorecard" aria-live="polite" hidden></div><div id="detail"></div></section>
<section id="right">
<div id="images" hidden><h2>Explained images of the class</h2>
<div id="image-strip"></div><div id="node-images"></div><div id="image-card"></div></div>
{audit_section}<h2>Concept graph of the class</h2><div id="graph"></div></section>
</main>
<div id="carto-card" role="tooltip" hidden></div>
<script type="application/json" id="carto-page">{page}</script>
<script type="application/json" id="carto-spec-projection">{projection}</script>
<script type="application/json" id="carto-spec-detail">{detail}</script>
<script type="application/json" id="carto-spec-graph">{graph}</script>
{chunks}
<script>{bundle}</script>
<script>{script}</script>{audit_script}
</body>
</html>
"""


def explain_page(data_json: str) -> str:
    """``carto explain --html``'s page around its data (already :func:`script_json` text): the
    image, its concept atlas and legend, drawn with ``textContent`` and a canvas only."""
    return page_asset("explain.html").replace("{{DATA}}", data_json)


#: the audit's section (:mod:`carto_viz.audit`), in the page only where the study has an audit.
_AUDIT_SECTION = """<div id="audit" hidden><h2>What the class relies on</h2>
<div id="audit-legend"></div><div id="audit-chart"></div><div id="audit-term" hidden></div></div>
"""


def render_page(
    specs: dict[str, dict], page: dict, inline_chunks: dict[str, str], *, audit: bool = False
) -> str:
    """The HTML page: specs, page data and inline chunks (already :func:`script_json` text)
    as escaped JSON, then the scripts. With ``audit``, the "relies on" section, its style and
    its script (``page/audit.*``); without, the page is exactly the one before the audit.

    Data never reaches the DOM as markup: every JSON block sits in a
    ``<script type="application/json">`` element read with ``JSON.parse``, the page's script
    writes text with ``textContent`` and Vega draws text on a canvas.
    """
    chunk_tags = "\n".join(
        f'<script type="application/json" id="carto-chunk-{name}">{text}</script>'
        for name, text in inline_chunks.items()
    )
    return _PAGE.format(
        css=page_asset("page.css"),
        page=script_json(page),
        projection=script_json(specs["projection"]),
        detail=script_json(specs["detail"]),
        graph=script_json(specs["graph"]),
        chunks=chunk_tags,
        bundle=javascript_bundle(),
        script=page_asset("page.js"),
        audit_css=f"\n<style>{page_asset('audit.css')}</style>" if audit else "",
        audit_section=_AUDIT_SECTION if audit else "",
        audit_script=f"\n<script>{page_asset('audit.js')}</script>" if audit else "",
    )


def _graph_chunks(data: ViewData) -> tuple[dict[str, str], dict[int, int]]:
    """The classes' graphs as chunks of about :data:`GRAPH_CHUNK_BYTES`, already encoded
    (:func:`script_json` of ``{label: graph}``), and each class's chunk index."""
    chunks: dict[str, str] = {}
    chunk_of: dict[int, int] = {}
    parts: list[str] = []
    size = 0

    def close() -> None:
        chunks[f"graph-{len(chunks):04d}"] = "{" + ",".join(parts) + "}"

    explained = data.explained.classes if data.explained else {}
    for label in sorted(set(data.graphs) | set(explained)):
        graph = dict(data.graphs[label]) if label in data.graphs else {}
        if label in explained:
            graph["x"] = explained[label]  # the class's explained images
        text = f'"{label}":{script_json(graph)}'
        parts.append(text)
        chunk_of[label] = len(chunks)
        size += len(text)
        if size >= GRAPH_CHUNK_BYTES:
            close()
            parts, size = [], 0
    if parts:
        close()
    return chunks, chunk_of


def _page_data(
    data: ViewData,
    atlas: SpriteAtlas,
    thumbs: SpriteAtlas,
    graph_names: list[str],
    chunk_of,
    images: SpriteAtlas | None = None,
    audit_thumbs: SpriteAtlas | None = None,
) -> dict:
    explained = data.explained
    nodes = set(data.graph_clusters.get("c", []))
    return {
        "summary": data.summary,
        "classes": [{**c, "chunk": chunk_of.get(c["label"], -1)} for c in data.classes],
        "graph_chunks": graph_names,
        "patches": atlas.manifest(),
        "thumbs": thumbs.manifest(),
        "data_dir": DATA_DIR,
        # The toggle shows when the study has features; the graph's height per choice.
        "unit_kinds": list(data.kinds),
        # Every graph node's cluster once (row, size, labels); the chunks name them by id.
        "clusters": dict(data.graph_clusters),
        # The explained images: their thumbnails, and each node's relevance exemplars.
        "images": images.manifest() if images else None,
        "exemplars": {
            str(c): v for c, v in (explained.exemplars.items() if explained else []) if c in nodes
        },
        "graph_heights": graph_heights(data.graph_rows),
        # Whether the neurons carry words (the scorecard, the word search), and with words
        # each node cluster's classes (the search names the classes that use what it found).
        "words": data.has_words,
        **({"cluster_classes": dict(data.cluster_classes)} if data.has_words else {}),
        # What each class relies on (carto_viz/audit.py), where the study has an audit.
        **({"audit": data.audit.page(audit_thumbs)} if data.audit else {}),
    }


def _png(spec: dict) -> bytes:
    """A PNG of the projection in its initial state (no selection, so no image is loaded)."""
    return vl_convert.vegalite_to_png(spec, scale=1)


def export_views(
    database_path: str | Path,
    out_dir: str | Path,
    *,
    study_info: dict | None = None,
    max_inline_bytes: int = 8_000_000,
    patch_format: str = "jpeg",
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
) -> ExportResult:
    """Write the linked views of a study as an offline page.

    Parameters
    ----------
    database_path
        The study's DuckDB database.
    out_dir
        Folder for ``index.html``, ``specs/`` and, for large studies, ``index_files/``.
    study_info
        What the header shows beyond the tables: ``name``, ``model``, ``weights``,
        ``dataset`` and extra ``quality`` figures (see :func:`carto_viz.data.study_summary`).
    max_inline_bytes
        Largest total size of the lazily loaded chunks (patch sheets + class graphs) kept
        inline in ``index.html``; above it they are written to ``index_files/``.
    patch_format
        Sprite sheet encoding: ``jpeg`` (default), ``webp`` or ``png``.
    memory_limit
        DuckDB's memory limit for reading the tables (the study's ``database_memory_limit``);
        the patches are read a sheet at a time (:func:`carto_viz.data.patch_pngs`).

    Returns
    -------
    ExportResult

    Raises
    ------
    ValueError
        If a table is missing (the message names the asset to materialize),
        ``max_inline_bytes`` is negative or ``patch_format`` unknown.
    """
    if max_inline_bytes < 0:
        raise ValueError(f"max_inline_bytes must be >= 0, got {max_inline_bytes}")
    tables = load_tables(database_path, memory_limit)

    def pack() -> tuple[SpriteAtlas, SpriteAtlas]:
        with patch_pngs(database_path) as load_pngs:
            return pack_patches(tables["example_patches"], fmt=patch_format, load_pngs=load_pngs)

    # Packing the patches runs in worker processes: do everything else meanwhile.
    with ThreadPoolExecutor(max_workers=1) as background:
        packing = background.submit(pack)
        data = view_data(tables, study_info)
        graph_chunks, chunk_of = _graph_chunks(data)
        specs = views_spec(data)
        picture = _png(specs["projection"])
        javascript_bundle()  # cached for render_page
        atlas, thumbs = packing.result()
    images = thumbnails(database_path, patch_format) if data.explained else None
    audit_thumbs = (
        class_audit.thumbnails(database_path, data.audit.image_ids, patch_format)
        if data.audit
        else None
    )
    # Every chunk as the JSON text the page parses: sheets as data: URL strings.
    encoded: dict[str, str] = {
        sheet.name: script_json(
            "data:" + sheet.mime + ";base64," + base64.b64encode(sheet.data).decode("ascii")
        )
        for sheet in (
            *atlas.sheets,
            *thumbs.sheets,
            *(images.sheets if images else ()),
            *(audit_thumbs.sheets if audit_thumbs else ()),
        )
    }
    encoded.update(graph_chunks)
    page = _page_data(data, atlas, thumbs, list(graph_chunks), chunk_of, images, audit_thumbs)
    sidecar = sum(len(text) for text in encoded.values()) > max_inline_bytes

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Build the chunk folder beside the old one and swap it in just before the page, so a
    # killed export leaves the previous views whole.
    target = out / DATA_DIR
    with atomic.replacing(target) as staging:
        staging.mkdir()
        if sidecar:
            for name, text in encoded.items():
                (staging / f"{name}.js").write_text(
                    f'cartoChunk("{name}",{text});\n', encoding="utf-8"
                )
        html = render_page(
            specs, page, {} if sidecar else encoded, audit=data.audit is not None
        ).encode("utf-8")
        spec_dir = out / "specs"
        spec_dir.mkdir(exist_ok=True)
        spec_paths = []
        for name, spec in specs.items():
            path = spec_dir / f"{name}.vl.json"
            atomic.write_bytes(path, json.dumps(spec, ensure_ascii=False).encode("utf-8"))
            spec_paths.append(path)
        (spec_dir / "views.vl.json").unlink(missing_ok=True)  # the single spec of earlier exports
    if not sidecar:
        shutil.rmtree(target)  # everything is inline: no chunk folder
    atomic.write_bytes(out / "index.html", html)
    shutil.rmtree(out / f".{DATA_DIR}.old", ignore_errors=True)  # left by earlier exports
    shutil.rmtree(out / "patches", ignore_errors=True)  # per-PNG folder of earlier exports
    n_files = 1 + len(spec_paths) + (len(encoded) if sidecar else 0)
    return ExportResult(
        html_path=out / "index.html",
        spec_paths=tuple(spec_paths),
        png_bytes=picture,
        n_neurons=len(data.neurons),
        page_bytes=len(html),
        sidecar_dir=out / DATA_DIR if sidecar else None,
        n_files=n_files,
        patch_bytes=atlas.n_bytes + thumbs.n_bytes,
        n_patches=atlas.n_patches,
        n_sheets=len(atlas.sheets) + len(thumbs.sheets),
    )
