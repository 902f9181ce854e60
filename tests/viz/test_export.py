"""Unit tests of carto_viz without a browser: spec structure, sidecar switch, escaping."""

from __future__ import annotations

import json

import duckdb
import pytest

from carto_viz import export_views, load_tables, script_json, view_data, views_spec
from carto_viz.export import render_page
from carto_viz.synthetic import make_database


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return make_database(tmp_path_factory.mktemp("unit") / "s.duckdb", n_neurons=36)


def test_spec_structure(db):
    data = view_data(load_tables(db))
    spec = views_spec(data, [])
    assert set(spec["datasets"]) == {
        "neurons",
        "patches",
        "graph_nodes",
        "graph_edges",
        "graph_rows",
    }
    assert len(spec["datasets"]["neurons"]) == 36
    names = {p["name"] for p in spec["params"]}
    assert {"node_pick", "pick_neuron", "pick_cluster", "graph_class", "min_strength"} <= names
    assert {"cascade", "layer_filter", "class_filter", "only_node"} <= names
    # One prediction node per class at the top row; every edge ends on a node of its class.
    nodes = spec["datasets"]["graph_nodes"]
    top = max(n["row"] for n in nodes)
    assert {n["label"] for n in nodes if n["cluster_id"] == -1 and n["row"] == top} == {0, 1, 2}
    keys = {(n["label"], n["col"], n["row"]) for n in nodes}
    for edge in spec["datasets"]["graph_edges"]:
        assert (edge["label"], edge["col"], edge["row"]) in keys
        assert (edge["label"], edge["col2"], edge["row2"]) in keys


def test_images_stored_once(db, tmp_path):
    result = export_views(db, tmp_path / "out")
    spec = json.loads(result.spec_paths[0].read_text())
    urls = [p["url"] for p in spec["datasets"]["patches"]]
    assert len(urls) == 36 * 3 and all(u.startswith("data:image/png;base64,") for u in urls)
    others = json.dumps({k: v for k, v in spec["datasets"].items() if k != "patches"})
    assert "data:image" not in others
    assert result.sidecar_dir is None and result.png_bytes.startswith(b"\x89PNG")
    assert result.page_bytes == result.html_path.stat().st_size


def test_sidecar_switch(db, tmp_path):
    result = export_views(db, tmp_path / "out", max_inline_patch_bytes=100)
    assert result.sidecar_dir == tmp_path / "out" / "patches"
    assert len(list(result.sidecar_dir.glob("*.png"))) == 36 * 3
    spec = json.loads(result.spec_paths[0].read_text())
    assert all(p["url"].startswith("patches/") for p in spec["datasets"]["patches"])
    assert "data:image/png;base64,iVBOR" not in result.html_path.read_text()
    # Going back under the limit removes the sidecar.
    again = export_views(db, tmp_path / "out")
    assert again.sidecar_dir is None and not (tmp_path / "out" / "patches").exists()


def test_script_json_escaping():
    text = script_json({"a": "</script><!-- & \u2028 -->"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!-- & \u2028 -->"}
    page = render_page({"datasets": {"x": [{"name": "</SCRIPT><script>alert(1)</script>"}]}})
    assert page.lower().count("</script") == 3  # spec, bundle and embed script only


def test_missing_table_names_the_asset(db, tmp_path):
    copy = tmp_path / "c.duckdb"
    copy.write_bytes(db.read_bytes())
    con = duckdb.connect(str(copy))
    con.execute("DROP TABLE neuron_projection")
    con.close()
    with pytest.raises(ValueError, match=r"neuron_projection.*materialize.*neuron_projection"):
        export_views(copy, tmp_path / "out")
    with pytest.raises(ValueError, match="does not exist"):
        export_views(tmp_path / "nope.duckdb", tmp_path / "out")
    with pytest.raises(ValueError, match="max_inline_patch_bytes"):
        export_views(db, tmp_path / "out", max_inline_patch_bytes=-1)


def test_no_dagster_import():
    import subprocess
    import sys

    code = "import sys, carto_viz; print('dagster' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
