"""Browser tests of the exported page in headless Chromium (Playwright, file:// only).

Assertions are on what the page shows (marks, their images and texts, the DOM of the search
box and the hover card); timings are printed, never asserted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import duckdb
import pytest
from viz.pages import ARGS, CHROMIUM, Page

from carto_viz import export_views, load_tables, view_data
from carto_viz.charts import CLUSTER_STROKE, MEMBER_STROKE, NEIGHBOR_STROKE
from carto_viz.synthetic import HOSTILE_NAMES, make_database

if os.environ.get("CI") and not CHROMIUM.exists():
    # `make test` installs Debian's chromium; in CI a missing browser is a failed set-up.
    raise RuntimeError("/usr/bin/chromium is missing in CI: the Makefile's test set-up failed")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt-get install chromium)"
    ),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def _members(db: Path, cluster_id: int) -> set[int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT neuron_id FROM neuron_clusters WHERE cluster_id = ?", [cluster_id]
        ).fetchall()
    finally:
        con.close()
    return {int(r[0]) for r in rows}


def _check_node_click(page: Page, db: Path) -> float:
    """Click the largest node: its members are highlighted in the projection and listed."""
    frames = [n for n in page.items("graph", "frame") if n["cluster_id"] >= 0]
    assert frames
    # Only nodes in the window can be clicked (the graph scrolls at 25 layers).
    frames = [n for n in frames if 0 < n["py"] < 950] or frames
    sizes = {n["cluster_id"]: len(_members(db, n["cluster_id"])) for n in frames}
    node = max(frames, key=lambda n: (sizes[n["cluster_id"]], -n["cluster_id"]))
    elapsed = page.click(node)
    members = _members(db, node["cluster_id"])
    assert (
        page.page.evaluate("window.cartoViews.projection.signal('graph_node')")
        == (node["cluster_id"])
    )
    highlighted = {
        i["neuron_id"] for i in page.items("projection", "neuron") if i["stroke"] == MEMBER_STROKE
    }
    assert highlighted == members
    listed = {i["text"].split("#")[1].split()[0] for i in page.items("detail", "detail-text")}
    assert listed == {str(m) for m in members}
    return elapsed


def _check_decoded_graph(page: Page, db: Path, label: int) -> None:
    """The graph the page decoded from its compact chunk is carto_viz's records of the class:
    every node and edge field, cascades walked from the first steps included."""
    want = view_data(load_tables(db)).graphs.records(label)
    for dataset, key in (("graph_nodes", "nodes"), ("graph_edges", "edges")):
        got = page.page.evaluate(
            f"window.cartoViews.graph.data('{dataset}').map(d => {{ const o = {{}};"
            " for (const k in d) if (k !== 'Symbol(vega_id)') o[k] = d[k]; return o; })"
        )
        assert len(got) == len(want[key]) > 0
        for have, expected in zip(got, want[key], strict=True):
            for field, value in expected.items():
                if isinstance(value, float):
                    assert have[field] == pytest.approx(value, rel=1e-3, abs=1e-4), field
                else:
                    assert have[field] == value, (field, have, expected)
    neurons = page.page.evaluate("window.cartoViews.projection.signal('class_neurons')")
    assert neurons == want["neurons"]


def _check_page_shows_concepts(page: Page) -> None:
    """Every node is its concept's picture with its short label drawn as text; the
    prediction node pictures the class (its top patch)."""
    images = page.wait_images("graph", "node-image")
    frames = [f for f in page.items("graph", "frame") if f["cluster_id"] >= 0]
    assert images and len(images) == len(frames) + 1
    assert any(i["cluster_id"] == -1 for i in images)
    assert all(i["url"].startswith("thumb:") for i in images if i["cluster_id"] != -1)
    # The prediction node: the class's top patch, or one of its explained images.
    assert all(i["url"].startswith(("thumb:", "image:")) for i in images if i["cluster_id"] == -1)
    assert all(i["loaded"] for i in images)
    labels = [t["text"] for t in page.items("graph", "node-label")]
    assert len(labels) == len(frames) + 1  # + the prediction node
    assert all(isinstance(t, str) and t for t in labels)
    # Row labels sit in the gutter, left of every node.
    rows = [t for t in page.items("graph", "text") if t["text"]]
    assert rows and max(t["px"] for t in rows) < min(f["px"] for f in frames) - 20


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("viz")
    db = make_database(
        folder / "s.duckdb",
        n_neurons=48,
        class_names=("cat", "dog", "bird", *HOSTILE_NAMES),
        cluster_labels=("colour=red (0.9), size=large (0.6)", "shape=heart (0.8)"),
    )
    export_views(db, folder / "out", study_info={"name": "synthetic", "model": "builtin"})
    return db, folder / "out" / "index.html"


def test_page_before_a_selection(browser, synthetic):
    _, html = synthetic
    page = Page(browser, html)
    try:
        assert page.errors == [] and page.offline() == []
        assert page.page.inner_text("#study-title") == "synthetic"
        assert "cluster_quality" in page.page.inner_text("#study-quality")
        assert "concept_graph" in page.page.inner_text("#study-quality")
        # The header card: one line per figure, what it measures on hover.
        lines = page.page.eval_on_selector_all(
            "#study-quality li",
            "els => els.map(e => [e.getBoundingClientRect().height, e.title])",
        )
        assert lines and all(h < 20 and "\n" in title for h, title in lines), lines
        assert sorted(i["neuron_id"] for i in page.items("projection", "neuron")) == list(range(48))
        # The detail panel says what to do, and draws no axis and no patch yet.
        texts = [t["text"] for t in page.items("detail", "text")]
        assert any("Click a neuron" in str(t) for t in texts)
        assert page.items("detail", "detail-text") == []
        assert page.items("detail", "detail-image") == []
        for view in ("projection", "detail"):
            assert [i for i in page.items(view) if i["role"] == "axis"] == []
        _check_page_shows_concepts(page)
        assert page.items("graph", "node-label")[0]["text"] in {"colour=red", "shape=heart"}
        # A study without dictionary features offers no units toggle.
        assert page.page.is_hidden("#unit-kind")
    finally:
        page.close()


def test_graph_interactions(browser, synthetic, tmp_path):
    db, html = synthetic
    page = Page(browser, html)
    try:
        before = {n["cluster_id"] for n in page.items("graph", "frame")}
        assert page.search("do")[0] == "dog"  # prefix matches first, then inner ones
        page.choose(1)
        after = {n["cluster_id"] for n in page.items("graph", "frame")}
        assert before != after
        assert page.page.input_value("#class-search") == "dog"
        _check_decoded_graph(page, db, 1)
        _check_node_click(page, db)
        # Cascade mode lights up the picked node's cascade (orange frames, red edges).
        page.page.check("input[name=cascade]")
        page.settle()
        assert any(n["stroke"] == NEIGHBOR_STROKE for n in page.items("graph", "frame"))
        assert any(e["stroke"] == CLUSTER_STROKE for e in page.items("graph", "edge"))
        # The slider hides weak nodes.
        n_before = len(page.items("graph", "frame"))
        page.page.evaluate("window.cartoViews.graph.signal('min_strength', 0.9) && 0")
        page.settle()
        assert 0 < len(page.items("graph", "frame")) < n_before
        # "neurons of the graph concept" filters the projection to the node's members.
        page.page.check("input[name=proj_filter][value=concept]")
        page.settle()
        node = page.page.evaluate("window.cartoViews.projection.signal('graph_node')")
        shown = {i["neuron_id"] for i in page.items("projection", "neuron")}
        assert shown == _members(db, node)
        page.page.screenshot(path=str(tmp_path / "views.png"), full_page=True)
        assert page.errors == [] and page.offline() == []
    finally:
        page.close()


def test_neuron_click_hover_and_neighbours(browser, synthetic):
    db, html = synthetic
    page = Page(browser, html)
    try:
        neuron = next(i for i in page.items("projection", "neuron") if i["neuron_id"] == 7)
        card = page.hover(neuron)
        assert card["images"] == 3  # the synthetic study has 3 patches per neuron
        assert page.page.is_visible("#carto-card")
        assert "#7" in page.page.inner_text("#carto-card")
        srcs = page.page.eval_on_selector_all("#carto-card img", "els => els.map(e => e.src)")
        assert len(srcs) == 3 and all(s.startswith("data:image/png") for s in srcs)
        page.click(neuron)
        con = duckdb.connect(str(db), read_only=True)
        cluster = con.execute(
            "SELECT cluster_id FROM neuron_clusters WHERE neuron_id = 7"
        ).fetchall()[0][0]
        neighbours = [
            r[0]
            for r in con.execute(
                "SELECT neighbor_id FROM neuron_neighbors WHERE neuron_id = 7 ORDER BY rank"
            ).fetchall()
        ]
        con.close()
        strokes = {i["neuron_id"]: i["stroke"] for i in page.items("projection", "neuron")}
        members = _members(db, cluster)
        assert {n for n, s in strokes.items() if s == CLUSTER_STROKE} == members
        assert {n for n, s in strokes.items() if s == NEIGHBOR_STROKE} == set(neighbours) - members
        # Detail panel: the neuron, its cluster, its neighbours in rank order, with patches.
        lines = sorted(page.items("detail", "detail-text"), key=lambda t: t["py"])
        rows = [t["text"] for t in lines]
        assert rows[0].startswith("selected  #7")
        nearest = [int(r.split("#")[1].split()[0]) for r in rows if r.startswith("nearest")]
        assert nearest == neighbours
        images = page.wait_images("detail", "detail-image")
        assert len(images) == 3 * len(rows) and all(i["loaded"] for i in images)
        # The graph frames the node holding the picked neuron's cluster, if shown.
        assert page.page.evaluate("window.cartoViews.graph.signal('neuron_cluster')") == cluster
        # Wheel zooms the projection in around the pointer, double-click resets it.
        xs = [n["x"] for n in page.page.evaluate("window.cartoViews.projection.data('neurons')")]
        assert not page.page.evaluate("window.cartoViews.projection.signal('zoom').x")
        page.page.mouse.move(neuron["px"], neuron["py"])
        page.page.mouse.wheel(0, -600)
        page.settle()
        zoomed = page.page.evaluate("window.cartoViews.projection.signal('zoom')")
        assert zoomed["x"][1] - zoomed["x"][0] < 0.9 * (max(xs) - min(xs))
        page.page.mouse.dblclick(neuron["px"], neuron["py"])
        page.settle()
        assert not page.page.evaluate("window.cartoViews.projection.signal('zoom').x")
        # Hovering a graph node lists its members with their patches.
        frame = next(f for f in page.items("graph", "frame") if f["cluster_id"] >= 0)
        card = page.hover(frame)
        assert card["images"] == 3 * len(_members(db, frame["cluster_id"]))
        assert page.errors == []
    finally:
        page.close()


def test_sidecar_page_loads_chunks(browser, tmp_path):
    db = make_database(tmp_path / "s.duckdb", n_neurons=30)
    result = export_views(db, tmp_path / "out", max_inline_bytes=0)
    assert result.sidecar_dir is not None
    page = Page(browser, result.html_path)
    try:
        _check_page_shows_concepts(page)
        assert any("/index_files/graph-" in u for u in page.requests)
        assert any("/index_files/thumb-" in u for u in page.requests)
        assert page.offline() == [] and page.errors == []
    finally:
        page.close()


def test_hostile_text_stays_text(browser, tmp_path):
    db = make_database(
        tmp_path / "x.duckdb",
        n_neurons=30,
        class_names=HOSTILE_NAMES,
        cluster_labels=HOSTILE_NAMES,
        layers=("l<1>", 'l"2', "l</script>3"),
        feature_layers=("l</script>3",),
        features_per_layer=6,
    )
    result = export_views(db, tmp_path / "out", study_info={"name": HOSTILE_NAMES[0]})
    page = Page(browser, result.html_path)
    try:
        assert page.page.inner_text("#study-title") == HOSTILE_NAMES[0]
        # Type-ahead by a prefix of a hostile name finds it, shown as text.
        assert page.search("<img") == [HOSTILE_NAMES[1]]
        page.choose(1)
        labels = [t["text"] for t in page.items("graph", "node-label")]
        assert HOSTILE_NAMES[1] in labels  # the prediction node is named after the class
        assert page.search("zür") == [HOSTILE_NAMES[3]]
        page.choose(3)
        frame = next(f for f in page.items("graph", "frame") if f["cluster_id"] >= 0)
        page.hover(frame)
        assert page.page.query_selector("#carto-card script") is None
        assert page.page.query_selector("#carto-card b b") is None  # <b> stayed text
        assert any(name in page.page.inner_text("#carto-card") for name in HOSTILE_NAMES)
        neuron = page.items("projection", "neuron")[0]
        page.click(neuron)
        # A feature's label names its hostile pseudo-layer as text, in the card and the toggle.
        feature = max(page.items("projection", "neuron"), key=lambda n: n["neuron_id"])
        page.hover(feature)
        assert "feature 5 · l</script>3:features" in page.page.inner_text("#carto-card")
        assert page.page.query_selector("#carto-card script") is None
        _set_units(page, "feature")
        assert [t["text"] for t in page.items("graph", "text") if t["text"]] == [
            "l</script>3:features",
            "prediction",
        ]
        assert page.page.evaluate("window.__xss") is None
        assert page.dialogs == [] and page.errors == [] and page.offline() == []
    finally:
        page.close()


def _unit_kinds(db: Path) -> tuple[dict[int, str], dict[str, str]]:
    """Each neuron's kind and each layer's kind, from the database."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute("SELECT neuron_id, layer, kind FROM neurons").fetchall()
    finally:
        con.close()
    return {int(n): k for n, _, k in rows}, {layer: k for _, layer, k in rows}


def _set_units(page: Page, kind: str, *, key: str | None = None) -> float:
    """Choose ``kind`` with the toggle (a click on its label, or ``key`` pressed in the radio
    group); returns the switch time in ms as the page measured it."""
    page.page.evaluate("window.cartoUnits = undefined")
    if key:
        page.page.keyboard.press(key)
    else:
        page.page.click(f"#unit-kind input[value={kind}] + span")
    page.page.wait_for_function(
        f"window.cartoUnits && window.cartoUnits.kind === '{kind}'", timeout=20_000
    )
    page.settle()
    return page.page.evaluate("window.cartoUnits.ms")


def _check_units_shown(page: Page, kinds: dict[int, str], layers: dict[str, str], shown: str):
    """Only units, graph rows, nodes and edges of the kind ``shown`` are drawn (both: all)."""
    wanted = {n for n, k in kinds.items() if shown in ("both", k)}
    points = page.items("projection", "neuron")
    assert {p["neuron_id"] for p in points} == wanted
    rows = [t["text"] for t in page.items("graph", "text") if t["text"]]
    assert "prediction" in rows
    assert {r for r in rows if r != "prediction"} == {
        layer for layer, k in layers.items() if shown in ("both", k)
    }
    frames = [f for f in page.items("graph", "frame") if f["cluster_id"] >= 0]
    assert frames and all(shown in ("both", f["unit_kind"]) for f in frames)
    ends = {f["cluster_id"] for f in frames} | {-1}
    edges = page.items("graph", "edge")
    assert all(e["source"] in ends and e["target"] in ends for e in edges)
    # The rows shown close up: the graph is as tall as its rows.
    heights = page.page.evaluate("JSON.parse(document.getElementById('carto-page').textContent)")
    assert (
        page.page.evaluate("window.cartoViews.graph.height()") == (heights["graph_heights"][shown])
    )
    return points, frames, edges


@pytest.fixture(scope="module")
def with_features(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("kinds")
    db = make_database(
        folder / "k.duckdb",
        n_neurons=36,
        class_names=("cat", "dog", HOSTILE_NAMES[1]),
        feature_layers=("conv2", "conv3"),
        features_per_layer=10,
    )
    export_views(db, folder / "out", study_info={"name": "features"})
    return db, folder / "out" / "index.html"


def test_units_toggle(browser, with_features, tmp_path, capsys):
    db, html = with_features
    kinds, layers = _unit_kinds(db)
    features = {n for n, k in kinds.items() if k == "feature"}
    page = Page(browser, html)
    try:
        assert page.errors == [] and page.offline() == []
        assert "36 channels + 20 features" in page.page.inner_text("#study-facts")
        # The toggle shows, "both" chosen: everything drawn, features as diamonds.
        assert page.page.is_visible("#unit-kind")
        assert page.page.is_checked("#unit-kind input[value=both]")
        points, frames, _ = _check_units_shown(page, kinds, layers, "both")
        assert {p["shape"] for p in points if p["neuron_id"] in features} == {"diamond"}
        assert {p["shape"] for p in points if p["neuron_id"] not in features} == {"circle"}
        _check_page_shows_concepts(page)
        # Frames carry the kind; the prediction node keeps the class's name.
        captions = {t["cluster_id"]: t["text"] for t in page.items("graph", "node-label")}
        for frame in frames:
            assert captions[frame["cluster_id"]]
            assert (frame["dash"] == [5, 3]) == (frame["unit_kind"] == "feature")
        assert captions[-1] == "cat"
        # Hover a feature: its card names it by kind, index and pseudo-layer.
        feature = next(p for p in points if p["neuron_id"] == min(features))
        page.hover(feature)
        assert "feature 0 · conv2:features" in page.page.inner_text("#carto-card")
        # Pick a feature, then show features only: its detail rows stay, all features.
        page.click(feature)
        switch_ms = [_set_units(page, "feature")]
        _check_units_shown(page, kinds, layers, "feature")
        n_concepts = len([f for f in page.items("graph", "frame") if f["cluster_id"] >= 0])
        assert page.page.inner_text("#class-note") == f"{n_concepts} concepts in 2 layers"
        detail = [t["text"] for t in page.items("detail", "detail-text")]
        assert detail[0].startswith(f"selected  #{feature['neuron_id']}  feature 0 · ")
        assert all(" feature " in t and " channel " not in t for t in detail)
        assert {int(t.split("#")[1].split()[0]) for t in detail} <= features
        _check_page_shows_concepts(page)
        # Keyboard: the radio group moves to "channels"; the picked feature is let go.
        page.page.focus("#unit-kind input[value=feature]")
        switch_ms.append(_set_units(page, "channel", key="ArrowLeft"))
        assert page.page.is_checked("#unit-kind input[value=channel]")
        _check_units_shown(page, kinds, layers, "channel")
        assert page.items("detail", "detail-text") == []
        assert page.page.evaluate("window.cartoViews.detail.signal('picked_neuron')") == -1
        _check_node_click(page, db)
        page.page.screenshot(path=str(tmp_path / "channels.png"), full_page=True)
        # Back to both: the picked channel node stays picked.
        node = page.page.evaluate("window.cartoViews.projection.signal('graph_node')")
        switch_ms.append(_set_units(page, "both"))
        _check_units_shown(page, kinds, layers, "both")
        assert page.page.evaluate("window.cartoViews.projection.signal('graph_node')") == node
        assert page.errors == [] and page.offline() == [] and page.dialogs == []
        with capsys.disabled():
            print(
                f"\n[units toggle] {len(kinds)} units: switch "
                + "/".join(f"{ms:.0f}" for ms in switch_ms)
                + " ms (features/channels/both)"
            )
    finally:
        page.close()


def test_pipeline_output(browser, materialized, capsys):
    """The views the `views` asset exported from a materialized study, in a real browser."""
    study, _, _ = materialized
    html = study.views_path / "index.html"
    assert html.is_file(), "the views asset did not write index.html"
    db = study.database_path
    n_neurons = (
        duckdb.connect(str(db), read_only=True)
        .execute("SELECT count(*) FROM neurons")
        .fetchall()[0][0]
    )
    page = Page(browser, html)
    try:
        assert page.errors == [] and page.offline() == []
        assert len(page.items("projection", "neuron")) == n_neurons
        assert page.page.inner_text("#study-title") == study.name
        assert "builtin" in page.page.inner_text("#study-facts")
        _check_page_shows_concepts(page)
        click_ms = _check_node_click(page, db)
        with capsys.disabled():
            print(
                f"\n[pipeline] neurons={n_neurons} page={html.stat().st_size / 1e6:.2f} MB "
                f"ready={page.ready_ms:.0f}ms click={click_ms:.0f}ms"
            )
    finally:
        page.close()


#: The paper's scale: googlenet's 25 blocks (6,860 neurons), ImageNet's 1,000 classes; and
#: two blocks with a dictionary of 128 features each (the units toggle's timing).
PAPER_LAYERS = tuple(f"block{i:02d}" for i in range(25))
PAPER_FEATURES = ("block12", "block24")
PAPER_CLASSES = (*HOSTILE_NAMES, *(f"class {i:03d}" for i in range(1000 - len(HOSTILE_NAMES))))


@pytest.mark.slow
def test_paper_scale(browser, tmp_path, capsys):
    db = make_database(
        tmp_path / "paper.duckdb",
        n_neurons=6860,
        layers=PAPER_LAYERS,
        class_names=PAPER_CLASSES,
        patches_per_neuron=9,
        patch_size=64,
        neighbors=10,
        nodes_per_layer=5,
        distinct_patches=4096,
        feature_layers=PAPER_FEATURES,
        features_per_layer=128,
    )
    n_units = 6860 + 2 * 128
    start = time.perf_counter()
    result = export_views(db, tmp_path / "out")
    export_s = time.perf_counter() - start
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    spec_mb = max(p.stat().st_size for p in result.spec_paths) / 1e6
    assert result.page_bytes <= 30e6 and spec_mb <= 30
    # The classes' graphs, compact: at most 30 MB in all (88 MB as full records).
    graph_bytes = sum(p.stat().st_size for p in (tmp_path / "out").rglob("graph-*.js"))
    assert 0 < graph_bytes <= 30e6
    assert result.patch_bytes <= 80e6 and result.n_patches == n_units * 9
    assert len(files) == result.n_files <= 200
    page = Page(browser, result.html_path)
    try:
        assert page.errors == [] and page.offline() == []
        assert len(page.items("projection", "neuron")) == n_units
        _check_page_shows_concepts(page)
        rows = [t["text"] for t in page.items("graph", "text") if t["text"]]
        assert rows[:2] == ["block00", "block01"] and "prediction" in rows
        # A class by a prefix of its hostile name, and a class from another chunk.
        assert page.search("<scr") == [HOSTILE_NAMES[0]]
        first_switch = page.choose(0)
        page.search("class 987")
        switch_ms = page.choose(991)
        _check_page_shows_concepts(page)
        click_ms = _check_node_click(page, db)
        neuron = next(i for i in page.items("projection", "neuron") if i["neuron_id"] == 4321)
        cold = page.hover(neuron)
        assert cold["images"] == 9
        warm = page.hover(neuron)
        frame = next(
            f for f in page.items("graph", "frame") if f["cluster_id"] >= 0 and f["py"] < 950
        )
        node_card = page.hover(frame)
        assert node_card["images"] >= 9
        kinds, layers = _unit_kinds(db)
        units_ms = []
        for kind in ("feature", "channel", "both"):
            units_ms.append(_set_units(page, kind))
            _check_units_shown(page, kinds, layers, kind)
        assert page.page.evaluate("window.__xss") is None
        assert page.errors == [] and page.offline() == []
        with capsys.disabled():
            print(
                f"\n[paper scale] neurons=6860+256 features layers=25+2 classes=1000 "
                f"export={export_s:.1f}s "
                f"index.html={result.page_bytes / 1e6:.2f} MB spec={spec_mb:.2f} MB "
                f"patches={result.patch_bytes / 1e6:.1f} MB in {result.n_sheets} sheets, "
                f"files={len(files)} ready={page.ready_ms:.0f}ms "
                f"class switch={first_switch:.0f}/{switch_ms:.0f}ms click={click_ms:.0f}ms "
                f"hover neuron cold={cold['ms']:.0f}ms warm={warm['ms']:.0f}ms "
                f"hover node={node_card['ms']:.0f}ms "
                f"units switch={'/'.join(f'{ms:.0f}' for ms in units_ms)}ms"
            )
    finally:
        page.close()


def test_long_names_show_their_distinguishing_end(browser, tmp_path):
    """ViT layer names and long concept labels: rows, legend entries and captions show the
    end that tells them apart; hovering a row shows the full name."""
    layers = tuple(f"encoder.layers.encoder_layer_{i}" for i in (2, 5, 8, 11))
    db = make_database(
        tmp_path / "vit.duckdb",
        n_neurons=32,
        layers=layers,
        cluster_labels=("class=a_rather_long_class_name_0042 (0.6)",),
    )
    result = export_views(db, tmp_path / "out")
    page = Page(browser, result.html_path)
    try:
        rows = [t for t in page.items("graph", "text") if t["text"]]
        assert [t["text"] for t in rows] == [f"encoder_layer_{i}" for i in (2, 5, 8, 11)] + [
            "prediction"
        ]
        legend = {
            t["text"] for t in page.items("projection", "text") if t["role"] == "legend-label"
        }
        assert {f"encoder_layer_{i}" for i in (2, 5, 8, 11)} <= legend
        captions = [t["text"] for t in page.items("graph", "node-label") if t["cluster_id"] >= 0]
        assert captions and all(c.endswith("_0042") for c in captions)
        page.hover(rows[-2])
        assert "encoder.layers.encoder_layer_11" in page.page.inner_text("#carto-card")
        # Units in the detail panel are named by the short layer name too.
        page.click(page.items("projection", "neuron")[0])
        detail = [t["text"] for t in page.items("detail", "detail-text")]
        assert detail and "encoder_layer_2" in detail[0] and "encoder.layers" not in detail[0]
        assert page.errors == [] and page.offline() == []
    finally:
        page.close()


def test_images_panel_atlas_concepts_and_node_exemplars(browser, tmp_path):
    """The class's explained images (misclassified ones marked); clicking one shows it with its
    atlas and its top concepts per layer; a concept highlights its neurons and its node; a
    clicked node lists the images where it mattered most. Names stay text."""
    db = make_database(
        tmp_path / "x.duckdb",
        n_neurons=36,
        class_names=("cat", HOSTILE_NAMES[1], "bird"),
        explained_per_class=2,
    )
    result = export_views(db, tmp_path / "out")
    page = Page(browser, result.html_path)
    try:
        assert page.page.is_visible("#images")
        # The prediction node shows one of the class's images the model gets right.
        prediction = next(
            i for i in page.wait_images("graph", "node-image") if i["cluster_id"] == -1
        )
        assert prediction["url"].startswith("image:") and prediction["loaded"]
        buttons = page.page.query_selector_all("#image-strip button.image")
        assert len(buttons) == 2
        wrong = [b for b in buttons if "wrong" in (b.get_attribute("class") or "")]
        assert len(wrong) == 1 and "predicted " + HOSTILE_NAMES[1] in wrong[0].get_attribute(
            "title"
        )
        page.page.wait_for_function(
            "Array.from(document.querySelectorAll('#image-strip img'))"
            ".every(i => i.complete && i.naturalWidth > 0)"
        )
        wrong[0].click()
        page.page.wait_for_function("document.body.getAttribute('data-image') !== null")
        layers = page.page.query_selector_all("#image-card .layer")
        assert len(layers) == 3  # conv1..conv3
        concept = page.page.query_selector("#image-card .concept")
        cluster = int(concept.get_attribute("data-cluster"))
        concept.hover()
        page.settle()
        assert page.page.evaluate("window.cartoViews.projection.signal('graph_node')") == cluster
        assert page.page.evaluate("window.cartoViews.graph.signal('neuron_cluster')") == cluster
        highlighted = {
            i["neuron_id"]
            for i in page.items("projection", "neuron")
            if i["stroke"] == MEMBER_STROKE
        }
        assert highlighted == _members(db, cluster)
        # A node with exemplars lists them.
        con = duckdb.connect(str(db), read_only=True)
        with_exemplars = {
            r[0] for r in con.execute("SELECT cluster_id FROM relevance_exemplars").fetchall()
        }
        con.close()
        frame = next(
            f
            for f in page.items("graph", "frame")
            if f["cluster_id"] in with_exemplars and 0 < f["py"] < 950
        )
        page.click(frame)
        listed = page.page.query_selector_all("#node-images button.image")
        assert listed and page.page.inner_text("#node-images").startswith(
            f"Where cluster {frame['cluster_id']} mattered most"
        )
        assert page.page.query_selector("#images img[onerror], #images script") is None
        assert page.page.evaluate("window.__xss") is None
        assert page.errors == [] and page.offline() == []
    finally:
        page.close()
