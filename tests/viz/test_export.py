"""Unit tests of carto_viz without a browser: specs, layout vs a reference, sprites, export."""

from __future__ import annotations

import io
import json

import duckdb
import numpy as np
import polars as pl
import pytest
from PIL import Image
from viz_reference import graph_nodes_and_edges

from carto_viz import export_views, load_tables, script_json, view_data, views_spec
from carto_viz.charts import ROW_HEIGHT, graph_heights, row_positions
from carto_viz.class_graphs import decode_ids, encode_ids
from carto_viz.data import layer_short_names, patch_pngs, short_label
from carto_viz.export import DATA_DIR, render_page
from carto_viz.sprites import FORMATS, cut_patch, pack_patches
from carto_viz.summary import study_summary
from carto_viz.synthetic import HOSTILE_NAMES, make_database


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return make_database(
        tmp_path_factory.mktemp("unit") / "s.duckdb",
        n_neurons=60,
        layers=("conv1", "conv2", "conv3", "conv4"),
        class_names=("cat", "dog", *HOSTILE_NAMES),
    )


@pytest.fixture(scope="module")
def tables(db):
    return load_tables(db)


@pytest.fixture(scope="module")
def feature_db(tmp_path_factory):
    """Channels in three layers, and a 12-feature dictionary of conv2 (conv2:features)."""
    return make_database(
        tmp_path_factory.mktemp("features") / "f.duckdb",
        n_neurons=40,
        class_names=("cat", "dog"),
        feature_layers=("conv2",),
        features_per_layer=12,
    )


@pytest.fixture(scope="module")
def feature_tables(feature_db):
    return load_tables(feature_db)


def test_specs_and_params(tables):
    data = view_data(tables)
    specs = views_spec(data)
    assert set(specs) == {"projection", "detail", "graph"}
    assert len(specs["projection"]["datasets"]["neurons"]) == 60
    params = {p["name"] for s in specs.values() for p in s.get("params", [])}
    assert {"pick", "zoom", "proj_filter", "layer_filter", "graph_node", "class_neurons"} <= params
    assert {"picked_neuron", "picked_cluster", "picked_neighbors"} <= params
    assert {"node_pick", "min_strength", "cascade", "graph_class", "neuron_cluster"} <= params
    for spec in specs.values():  # the page's units toggle drives all three views
        assert "unit_kind" in {p["name"] for p in spec["params"]}
    zoom = next(p for p in specs["projection"]["params"] if p["name"] == "zoom")
    assert zoom["bind"] == "scales"
    # The graph's data is swapped in per class by the page: the spec holds only the rows.
    assert specs["graph"]["datasets"]["graph_nodes"] == []
    assert [r["name"] for r in specs["graph"]["datasets"]["graph_rows"]] == [
        "conv1",
        "conv2",
        "conv3",
        "conv4",
        "prediction",
    ]
    # Row height grows with the number of layers.
    assert specs["graph"]["height"] >= 5 * 80


def full_cascades(database) -> pl.DataFrame:
    """Every depth of ``concept_cascades`` (the views load only each node's first steps)."""
    con = duckdb.connect(str(database), read_only=True)
    try:
        return con.sql("SELECT * FROM concept_cascades").pl()
    finally:
        con.close()


@pytest.mark.parametrize(
    ("study", "database"), [("tables", "db"), ("feature_tables", "feature_db")]
)
def test_graph_layout_matches_reference(study, database, request):
    tables = request.getfixturevalue(study)
    data = view_data(tables)
    nodes, edges = graph_nodes_and_edges(tables, full_cascades(request.getfixturevalue(database)))
    assert set(data.graphs) >= set(nodes)
    for label, expected in nodes.items():
        got = data.graphs.records(label)["nodes"]
        key = lambda r: (r["row"], r["col"])  # noqa: E731
        for want, have in zip(sorted(expected, key=key), sorted(got, key=key), strict=True):
            for field, value in want.items():
                if isinstance(value, float):
                    assert have[field] == pytest.approx(value, abs=1e-4), (label, field)
                else:
                    assert have[field] == value, (label, field, have)
    for label, expected in edges.items():
        got = data.graphs.records(label)["edges"]
        key = lambda r: (r["source_cluster"], r["target_cluster"])  # noqa: E731
        assert len(got) == len(expected)
        for want, have in zip(sorted(expected, key=key), sorted(got, key=key), strict=True):
            for field, value in want.items():
                if isinstance(value, float):
                    assert have[field] == pytest.approx(value, abs=1e-4), (label, field)
                else:
                    assert have[field] == value, (label, field)


def test_class_neurons_hold_the_graph_members(tables):
    data = view_data(tables)
    members = dict(
        tables["neuron_clusters"].group_by("cluster_id").agg(pl.col("neuron_id")).iter_rows()
    )
    units = dict(
        tables["concept_graph_units"].group_by("label").agg(pl.col("neuron_id")).iter_rows()
    )
    for label in data.graphs:
        graph = data.graphs.records(label)
        listed = {int(x) for x in graph["neurons"].strip("|").split("|") if x}
        # The class's units (what its nodes were made of) and every node's members.
        assert set(units.get(label, [])) <= listed
        for node in graph["nodes"]:
            if node["cluster_id"] >= 0:
                assert set(members[node["cluster_id"]]) <= listed
        assert decode_ids(data.graphs[label]["u"]) == sorted(listed)


def test_units_carry_their_kind(feature_tables):
    data = view_data(feature_tables)
    assert data.kinds == ("channel", "feature") and data.has_features
    units = {n["neuron_id"]: n for n in data.neurons}
    features = [n for n in data.neurons if n["kind"] == "feature"]
    assert len(features) == 12 and len(units) == 52
    assert {n["layer"] for n in features} == {"conv2:features"}
    assert sorted(n["unit"] for n in features)[:2] == [
        "feature 0 · conv2:features",
        "feature 1 · conv2:features",
    ]
    table = feature_tables["neurons"].select("neuron_id", "layer", "channel", "kind")
    assert {n: u["unit"] for n, u in units.items()} == {
        n: f"{kind} {channel} · {layer}" for n, layer, channel, kind in table.iter_rows()
    }
    # Graph rows and nodes: a node's kind is its layer's; the feature row sits after conv2.
    assert [(r["name"], r["kind"]) for r in data.graph_rows] == [
        ("conv1", "channel"),
        ("conv2", "channel"),
        ("conv2:features", "feature"),
        ("conv3", "channel"),
        ("prediction", "prediction"),
    ]
    kind_of = {
        **dict(table.select("layer", "kind").unique().iter_rows()),
        "prediction": "prediction",
    }
    for label in data.graphs:
        nodes = data.graphs.records(label)["nodes"]
        assert [n["kind"] for n in nodes] == [kind_of[n["layer"]] for n in nodes]
        assert "feature" in {n["kind"] for n in nodes}
    facts = dict(data.summary["facts"])
    assert facts["neurons"] == "40 channels + 12 features"
    assert facts["layers"] == "3 (conv1, conv2, conv3)"


def test_row_positions_close_up_the_rows_shown(feature_tables):
    rows = view_data(feature_tables).graph_rows
    assert row_positions(rows, "both") == [0, 1, 2, 3, 4]
    assert row_positions(rows, "channel") == [0, 1, -1, 2, 3]
    assert row_positions(rows, "feature") == [-1, -1, 0, -1, 1]
    assert graph_heights(rows) == {
        "both": 5 * ROW_HEIGHT,
        "channel": 4 * ROW_HEIGHT,
        "feature": 2 * ROW_HEIGHT,
    }
    with pytest.raises(ValueError, match="unknown unit choice 'features'"):
        row_positions(rows, "features")
    specs = views_spec(view_data(feature_tables))
    params = {p["name"]: p for p in specs["graph"]["params"]}
    assert params["row_pos"]["expr"].endswith("[0, 1, 2, 3, 4]")
    assert params["row_kinds"]["value"][2] == "feature"
    shape = specs["projection"]["encoding"]["shape"]
    assert shape["field"] == "kind" and shape["scale"]["range"] == ["circle", "diamond"]


def test_bad_kinds_are_refused(feature_tables):
    neurons = feature_tables["neurons"]
    odd = {**feature_tables, "neurons": neurons.with_columns(kind=pl.lit("latent"))}
    with pytest.raises(ValueError, match=r"neurons.kind holds \['latent'\]"):
        view_data(odd)
    mixed = neurons.with_columns(
        kind=pl.when(pl.col("neuron_id") == 0).then(pl.lit("feature")).otherwise("kind")
    )
    with pytest.raises(ValueError, match=r"layer\(s\) 'conv1' \(channel, feature\) mix"):
        view_data({**feature_tables, "neurons": mixed})


def test_short_label():
    assert short_label("colour=red (0.97), size=large (0.5)") == "colour=red"
    assert short_label("shape=heart (1.0)") == "shape=heart"
    assert short_label("cluster 7") == "cluster 7"
    assert short_label(None) == ""


def test_summary_names_the_assets(tables, db):
    summary = study_summary(
        tables,
        {
            "name": "pets",
            "model": "torchvision:resnet50",
            "weights": "DEFAULT",
            "dataset": "imagefolder",
        },
    )
    facts = dict(summary["facts"])
    assert summary["title"] == "pets"
    assert facts["model"] == "torchvision:resnet50 · DEFAULT"
    assert facts["neurons"] == "60"
    assert facts["classes"] == str(2 + len(HOSTILE_NAMES))
    # The headline rows of study_quality, in pipeline order, each with its asset.
    assets = [q["asset"] for q in summary["quality"]]
    assert assets == ["cluster_quality", "cluster_quality", "concept_graph"]
    gains = duckdb.connect(str(db), read_only=True).sql("FROM cluster_quality").pl()
    assert (
        f"{gains['gain'].mean():.2f} vs {gains['random_gain'].mean():.2f}"
        in (summary["quality"][0]["value"])
    )


def _pngs(n: int, size: int = 32, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.BOX))
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def test_sprites_round_trip():
    pngs = _pngs(7 * 3)
    frame = pl.DataFrame(
        {
            "neuron_id": np.repeat(np.arange(7), 3),
            "rank": np.tile([3, 1, 2], 7),  # out of order on purpose
            "png": pngs,
        }
    )
    atlas, thumbs = pack_patches(frame, fmt="png", per_sheet=3, thumb_size=16)
    assert len(atlas.sheets) == 3 and atlas.n_patches == 21
    for neuron in range(7):
        for rank in (1, 2, 3):
            row = frame.filter((pl.col("neuron_id") == neuron) & (pl.col("rank") == rank))
            want = np.asarray(Image.open(io.BytesIO(row["png"][0])).convert("RGB"))
            np.testing.assert_array_equal(cut_patch(atlas, neuron, rank), want)
    assert set(thumbs.slots) == set(range(7))
    assert cut_patch(thumbs, 4, 1).shape == (16, 16, 3)
    with pytest.raises(ValueError, match="rank 4"):
        cut_patch(atlas, 0, 4)
    with pytest.raises(ValueError, match="unknown patch format 'gif'"):
        pack_patches(frame, fmt="gif")
    with pytest.raises(ValueError, match="per_sheet"):
        pack_patches(frame, per_sheet=0)


def test_sprites_read_from_the_database_a_sheet_at_a_time(db):
    """What export_views does: the PNGs come from the database one sheet's neurons at a time,
    and the sheets are the same as from the whole table in memory."""
    whole = (
        duckdb.connect(str(db), read_only=True)
        .sql("SELECT neuron_id, rank, png FROM example_patches")
        .pl()
    )
    asked: list[list[int]] = []
    with patch_pngs(db) as load_pngs:

        def spy(neuron_ids: list[int]) -> pl.DataFrame:
            asked.append(list(neuron_ids))
            return load_pngs(neuron_ids)

        streamed = pack_patches(
            whole.select("neuron_id", "rank"), fmt="png", per_sheet=7, load_pngs=spy
        )
    assert streamed == pack_patches(whole, fmt="png", per_sheet=7)
    assert len(streamed[0].sheets) == 9 and max(len(ids) for ids in asked) == 7
    with pytest.raises(ValueError, match="no png column: pass load_pngs"):
        pack_patches(whole.select("neuron_id", "rank"))


def test_lossy_sheets_stay_close(db):
    patches = (
        duckdb.connect(str(db), read_only=True)
        .sql("SELECT neuron_id, rank, png FROM example_patches WHERE neuron_id < 20")
        .pl()
    )
    for fmt in ("webp", "jpeg"):
        atlas, _ = pack_patches(patches, fmt=fmt)
        assert atlas.sheets[0].mime == FORMATS[fmt][1]
        errors = []
        for neuron, rank, png in patches.iter_rows():
            want = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(float)
            got = cut_patch(atlas, neuron, rank).astype(float)
            errors.append(((want - got) ** 2).mean())
        psnr = 10 * np.log10(255**2 / np.mean(errors))
        assert psnr > 28, (fmt, psnr)


def test_export_inline_then_sidecar(db, tmp_path):
    result = export_views(db, tmp_path / "out")
    assert result.sidecar_dir is None and result.n_files == 4
    html = result.html_path.read_text(encoding="utf-8")
    assert 'id="carto-chunk-sheet-0000"' in html and 'id="carto-chunk-graph-0000"' in html
    assert result.png_bytes.startswith(b"\x89PNG")
    assert result.page_bytes == result.html_path.stat().st_size
    assert result.n_patches == 60 * 3
    # Above the inline limit the chunks move beside the page.
    side = export_views(db, tmp_path / "out", max_inline_bytes=100)
    files = sorted(p.name for p in (tmp_path / "out" / DATA_DIR).iterdir())
    assert side.sidecar_dir == tmp_path / "out" / DATA_DIR
    assert "sheet-0000.js" in files and "thumb-0000.js" in files and "graph-0000.js" in files
    assert side.n_files == 4 + len(files)
    assert 'id="carto-chunk-' not in side.html_path.read_text(encoding="utf-8")
    text = (tmp_path / "out" / DATA_DIR / "graph-0000.js").read_text(encoding="utf-8")
    assert text.startswith('cartoChunk("graph-0000",') and "<" not in text
    # Back under the limit: the folder is gone again.
    again = export_views(db, tmp_path / "out")
    assert again.sidecar_dir is None and not (tmp_path / "out" / DATA_DIR).exists()
    specs = {p.name for p in (tmp_path / "out" / "specs").iterdir()}
    assert specs == {"projection.vl.json", "detail.vl.json", "graph.vl.json"}


def test_a_failed_export_leaves_the_previous_views_whole(db, tmp_path, monkeypatch):
    """An export that fails before its page is written (here: rendering it) leaves the
    previous page, its chunk folder and its specs as they were, and nothing beside them."""
    import carto_viz.export as export

    out = tmp_path / "out"
    export_views(db, out, max_inline_bytes=100)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "render_page", broken)
    with pytest.raises(OSError, match="No space left"):
        export_views(db, out)  # would have put every chunk inline and removed the folder
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in out.iterdir()) == sorted([DATA_DIR, "index.html", "specs"])


def test_script_json_escaping():
    text = script_json({"a": "</script><!-- & \u2028 -->"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!-- & \u2028 -->"}
    hostile = "</SCRIPT><script>alert(1)</script>"
    specs = {"projection": {"datasets": {"x": [{"name": hostile}]}}, "detail": {}, "graph": {}}
    chunk = {"graph-0000": script_json({"0": hostile})}
    page = render_page(specs, {"summary": {"title": hostile}}, chunk)
    # Only the page's own script elements close: 4 JSON blocks, 1 chunk, bundle, script.
    assert page.lower().count("</script") == 7
    assert hostile not in page


def test_a_database_without_figures_shows_none(db, tmp_path):
    copy = tmp_path / "old.duckdb"
    copy.write_bytes(db.read_bytes())
    con = duckdb.connect(str(copy))
    con.execute("DROP TABLE study_quality")
    con.close()
    assert study_summary(load_tables(copy))["quality"] == []
    # The header shows what the measuring assets wrote; nothing is recomputed from tables.
    bare = tmp_path / "bare.duckdb"
    bare.write_bytes(db.read_bytes())
    con = duckdb.connect(str(bare))
    con.execute("DROP TABLE cluster_quality")
    con.execute("DROP TABLE concept_graph_faithfulness")
    con.close()
    assert study_summary(load_tables(bare)) == study_summary(load_tables(db))


def test_database_without_kind_holds_channels(db, tmp_path):
    """Databases written before neurons.kind still export: every unit is a channel."""
    copy = tmp_path / "old.duckdb"
    copy.write_bytes(db.read_bytes())
    con = duckdb.connect(str(copy))
    con.execute("ALTER TABLE neurons DROP COLUMN kind")
    con.close()
    tables = load_tables(copy)
    assert set(tables["neurons"]["kind"]) == {"channel"}
    data = view_data(tables)
    assert data.kinds == ("channel",) and not data.has_features
    assert {n["unit"].split()[0] for n in data.neurons} == {"channel"}
    result = export_views(copy, tmp_path / "out")
    html = result.html_path.read_text(encoding="utf-8")
    start = html.index('id="carto-page">') + len('id="carto-page">')
    page = json.loads(html[start : html.index("</script>", start)])
    assert page["unit_kinds"] == ["channel"]
    assert '<div id="unit-kind" class="units" role="radiogroup"' in html
    assert 'aria-labelledby="unit-kind-label" hidden>' in html


def test_missing_table_names_the_asset(db, tmp_path):
    copy = tmp_path / "c.duckdb"
    copy.write_bytes(db.read_bytes())
    con = duckdb.connect(str(copy))
    con.execute("DROP TABLE neuron_projection")
    con.execute("DROP TABLE cluster_quality")  # optional: the header just has less to say
    con.close()
    with pytest.raises(ValueError, match=r"neuron_projection.*materialize.*neuron_projection"):
        export_views(copy, tmp_path / "out")
    with pytest.raises(ValueError, match="does not exist"):
        export_views(tmp_path / "nope.duckdb", tmp_path / "out")
    with pytest.raises(ValueError, match="max_inline_bytes"):
        export_views(db, tmp_path / "out", max_inline_bytes=-1)


def test_no_dagster_import():
    import subprocess
    import sys

    code = "import sys, carto_viz; print('dagster' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_packing_in_a_daemonic_process(monkeypatch):
    """A Celery worker is daemonic and may not have children: it packs in a thread."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    from carto_viz import sprites

    with sprites._pool(2, 5) as pool:
        assert isinstance(pool, ProcessPoolExecutor)
    daemon = type("Daemon", (), {"daemon": True})()
    monkeypatch.setattr(multiprocessing, "current_process", lambda: daemon)
    with sprites._pool(2, 5) as pool:
        assert isinstance(pool, ThreadPoolExecutor)


def test_layer_short_names_keep_what_tells_layers_apart():
    vit = [f"encoder.layers.encoder_layer_{i}" for i in (2, 5, 11)]
    assert layer_short_names([*vit, vit[2] + ":features"]) == {
        **{name: name.rsplit(".", 1)[1] for name in vit},
        vit[2] + ":features": "encoder_layer_11:features",
    }
    branches = ["inception4a.branch2.1", "inception4b.branch2.1", "inception4a.branch3.1"]
    assert layer_short_names(branches) == {
        "inception4a.branch2.1": "inception4a.branch2.1",
        "inception4b.branch2.1": "inception4b.branch2.1",
        "inception4a.branch3.1": "branch3.1",
    }
    assert layer_short_names(["block1", "block1:features"]) == {
        "block1": "block1",
        "block1:features": "block1:features",
    }


def test_ids_round_trip_as_base36_gaps():
    assert encode_ids([40, 3, 5, 5]) == "3.2.z"
    assert decode_ids("3.2.z") == [3, 5, 40]
    assert encode_ids([]) == "" and decode_ids("") == []
    ids = np.random.default_rng(0).choice(100_000, size=700, replace=False)
    assert decode_ids(encode_ids(ids)) == sorted(ids.tolist())
    with pytest.raises(ValueError, match=">= 0"):
        encode_ids([-1, 2])
