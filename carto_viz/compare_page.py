"""The compare page: two (or more) studies' units in one map, matched side by side.

Everything is read from a comparison's database (``carto compare``):

- **One map**: every study's units in the joint projection, colour and shape by study; a
  click selects a unit;
- **Unit and match**: the selected unit's patches beside those of its best match in each
  other study (Jaccard, mutual or not), and its nearest units of the other studies;
- **Layer by layer**: the share of a layer's units with a mutual match in each layer of the
  other study (the shuffled null in the tooltip), and linear CKA beside it;
- **Only in one model**: the concepts with no counterpart in the other study (by words where
  both studies have them, else by images; a study without words is named in one line);
- **Concept graphs**: per class, the two studies' concept graphs side by side, each concept
  coloured by whether the other model has it, shared concepts linked by dashed lines.

The page is one offline ``index.html`` (Vega, Vega-Lite and vega-embed inline, patches as
sprite sheets in data URLs). Data reaches it as JSON inside ``<script type="application/json">``
and the page's script writes text with ``textContent`` only; Vega draws text itself.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import altair as alt
import polars as pl
import vl_convert

from carto_assets.core.cluster_labels import leading_term
from carto_assets.core.comparison.concepts import BY_FORMULA, canonical_formula
from carto_assets.storage import atomic
from carto_assets.storage.store import CartoStore
from carto_viz.export import javascript_bundle, page_asset, script_json
from carto_viz.sprites import pack_patches
from carto_viz.words import caption

#: neighbours from other studies listed per unit on the page.
NEIGHBORS_SHOWN = 5
#: graph geometry (Vega-Lite units): columns per node, gap between the two graphs.
GRAPH_GAP = 2.0
STATUS_COLOURS = {"shared": "#2b8cbe", "only": "#e6550d"}
#: a graph node's status where its cluster has no words (not a concept to match).
NO_WORDS = "no words"
#: widest concept name under a graph node (pixels).
COLUMN_TEXT = 70


@dataclass(frozen=True)
class CompareExport:
    html_path: Path
    png_bytes: bytes
    page_bytes: int
    n_units: int


def _pairs(n: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(n) for b in range(n) if a != b]


def _records(frame: pl.DataFrame) -> list[dict]:
    return frame.to_dicts()


def load_compare_tables(database_path: str | Path) -> dict[str, pl.DataFrame]:
    store = CartoStore(database_path)
    names = [
        "compare_studies",
        "compare_units",
        "compare_clusters",
        "compare_graph_nodes",
        "compare_graph_edges",
        "unit_matches",
        "layer_matches",
        "concept_matches",
        "compare_projection",
        "compare_neighbors",
    ]
    missing = [n for n in names if not store.table_exists(n)]
    if missing:
        raise ValueError(
            f"{database_path} lacks {missing}; materialize the comparison (`carto compare`)"
        )
    tables = {n: store.query(f'SELECT * FROM "{n}"') for n in names}
    # A comparison made before words: no words anywhere, concepts matched by images.
    for name, column, dtype in (
        ("compare_studies", "has_words", pl.Boolean),
        ("compare_clusters", "formula", pl.Utf8),
        ("compare_clusters", "auc", pl.Float64),
        ("concept_matches", "formula", pl.Utf8),
        ("concept_matches", "auc", pl.Float64),
        ("concept_matches", "matched_by", pl.Utf8),
    ):
        if column not in tables[name].columns:
            value = {"has_words": False, "matched_by": "images"}.get(column)
            tables[name] = tables[name].with_columns(pl.lit(value, dtype=dtype).alias(column))
    return tables


def concept_names(tables: dict[str, pl.DataFrame], *, whole_label: bool = False) -> dict:
    """``(study, cluster_id) -> name`` of every cluster: its words with their AUC
    (:func:`carto_viz.words.caption`, "no word fits" without) where the study has words, else
    its label's leading term (the whole label with ``whole_label``)."""
    words = dict(tables["compare_studies"].select("study", "has_words").iter_rows())
    names = {}
    for r in tables["compare_clusters"].iter_rows(named=True):
        if words.get(r["study"]):
            name = caption(r["formula"], r["auc"])
        else:
            name = (r["label"] or "") if whole_label else leading_term(r["label"])
        names[(r["study"], r["cluster_id"])] = name
    return names


def _graph_rows(tables: dict[str, pl.DataFrame], studies: list[str]) -> tuple[list, list]:
    """Nodes and segments (edges within a graph, links between shared concepts) of every
    class's two graphs for every ordered pair of studies, with positions."""
    nodes = tables["compare_graph_nodes"]
    edges = tables["compare_graph_edges"]
    concepts = tables["concept_matches"]
    if nodes.height == 0:
        return [], []
    name_of = concept_names(tables)
    status = {
        (r["study"], r["cluster_id"], r["other_study"]): (
            r["status"] or NO_WORDS,
            r["match_cluster_id"],
        )
        for r in concepts.iter_rows(named=True)
    }
    by_words = {
        (r["study"], r["other_study"])
        for r in concepts.filter(pl.col("matched_by") == BY_FORMULA)
        .select("study", "other_study")
        .unique()
        .iter_rows(named=True)
    }
    # Matched by words, a node is linked to the other graph's node of the same words: its
    # chosen match where that is in the graph, else the first of them.
    words_of = {
        (r["study"], r["cluster_id"]): canonical_formula(r["formula"])
        for r in tables["compare_clusters"].iter_rows(named=True)
        if r["formula"] is not None
    }
    # Rows: layers in forward order (the deepest of both studies sets the prediction's row).
    node_rows, segments = [], []
    for a, b in _pairs(len(studies)):
        sa, sb = studies[a], studies[b]
        pair = f"{a}|{b}"
        for label, group in nodes.filter(pl.col("study").is_in([sa, sb])).group_by(
            "label", maintain_order=True
        ):
            label = label[0]
            top_row = int(group["layer_index"].max()) + 1
            width = int(group.group_by("study", "layer").len()["len"].max())
            where: dict[tuple[str, int], tuple[float, float]] = {}
            for side, study in enumerate((sa, sb)):
                other = sb if side == 0 else sa
                mine = group.filter(pl.col("study") == study).sort(
                    ["layer_index", "importance"], descending=[False, True]
                )
                x0 = side * (width + GRAPH_GAP)
                for (_,), layer_nodes in mine.group_by("layer_index", maintain_order=True):
                    for i, r in enumerate(layer_nodes.iter_rows(named=True)):
                        state, match = status.get((study, r["cluster_id"], other), ("only", None))
                        where[(study, r["cluster_id"])] = (x0 + i, r["layer_index"])
                        node_rows.append(
                            {
                                "pair": pair,
                                "label": label,
                                "side": side,
                                "study": study,
                                "cluster_id": r["cluster_id"],
                                "layer": r["layer"],
                                "x": x0 + i,
                                "y": r["layer_index"],
                                "importance": r["importance"],
                                "concept": name_of.get((study, r["cluster_id"]), ""),
                                "status": state,
                                "match": match,
                            }
                        )
                where[(study, -1)] = (x0 + (width - 1) / 2, top_row)
                node_rows.append(
                    {
                        "pair": pair,
                        "label": label,
                        "side": side,
                        "study": study,
                        "cluster_id": -1,
                        "layer": "prediction",
                        "x": x0 + (width - 1) / 2,
                        "y": top_row,
                        "importance": None,
                        "concept": str(group["label_name"][0]),
                        "status": "prediction",
                        "match": None,
                    }
                )
                for r in edges.filter(
                    (pl.col("study") == study) & (pl.col("label") == label)
                ).iter_rows(named=True):
                    p, q = (
                        where.get((study, r["source_cluster"])),
                        where.get((study, r["target_cluster"])),
                    )
                    if p and q:
                        segments.append(
                            {
                                "pair": pair,
                                "label": label,
                                "kind": "edge",
                                "weight": r["weight"],
                                "x": p[0],
                                "y": p[1],
                                "x2": q[0],
                                "y2": q[1],
                            }
                        )
            for (study, cluster), p in where.items():
                if study != sa or cluster < 0:
                    continue
                state, match = status.get((sa, cluster, sb), ("only", None))
                q = where.get((sb, match)) if match is not None else None
                if state == "shared" and q is None and (sa, sb) in by_words:
                    words = words_of.get((sa, cluster))
                    q = next(
                        (
                            xy
                            for (s, c), xy in where.items()
                            if s == sb and c >= 0 and words_of.get((sb, c)) == words
                        ),
                        None,
                    )
                if state == "shared" and q:
                    segments.append(
                        {
                            "pair": pair,
                            "label": label,
                            "kind": "link",
                            "weight": None,
                            "x": p[0],
                            "y": p[1],
                            "x2": q[0],
                            "y2": q[1],
                        }
                    )
    return node_rows, segments


def _specs(data: dict, units: pl.DataFrame, matrix: list, graph: tuple[list, list]) -> dict:
    """The three Vega-Lite specs: map, layer matrices, graphs."""
    studies = data["studies"]
    names = [s["study"] for s in studies]
    pick = alt.selection_point(name="pick", fields=["unit_id"], on="click", empty=False)
    shapes = ["circle", "triangle-up", "square", "diamond", "cross", "triangle-down"]
    projection = (
        alt.Chart(alt.Data(values=_records(units)))
        .mark_point(filled=True, opacity=0.75)
        .encode(
            x=alt.X("x:Q", axis=None),
            y=alt.Y("y:Q", axis=None),
            color=alt.Color("study:N", scale=alt.Scale(domain=names), title="study"),
            shape=alt.Shape(
                "study:N", scale=alt.Scale(domain=names, range=shapes[: len(names)]), title="study"
            ),
            size=alt.condition(pick, alt.value(160), alt.value(30)),
            stroke=alt.condition(pick, alt.value("black"), alt.value(None)),
            tooltip=[
                alt.Tooltip("study:N"),
                alt.Tooltip("layer:N"),
                alt.Tooltip("channel:Q", title="channel / feature"),
                alt.Tooltip("concept:N"),
            ],
        )
        .add_params(pick)
        .properties(width=460, height=400, title="every study's units in one map")
    )
    pair = alt.param(name="pair", value="0|1")
    base = alt.Chart(alt.Data(values=matrix)).transform_filter("datum.pair == pair")
    cell = dict(
        x=alt.X(
            "other_layer:N", sort=alt.SortField("other_layer_index"), title="other study's layer"
        ),
        y=alt.Y("layer:N", sort=alt.SortField("layer_index", order="descending"), title="layer"),
        tooltip=[
            alt.Tooltip("layer:N"),
            alt.Tooltip("other_layer:N"),
            alt.Tooltip("units:Q"),
            alt.Tooltip("mutual:Q", title="mutual matches"),
            alt.Tooltip("share:Q", format=".3f"),
            alt.Tooltip("null_share:Q", format=".3f", title="share, shuffled null"),
            alt.Tooltip("cka:Q", format=".3f", title="linear CKA"),
        ],
    )
    share = base.mark_rect().encode(
        color=alt.Color("share:Q", scale=alt.Scale(domain=[0, 1], scheme="blues"), title="share"),
        **cell,
    ) + base.mark_text(fontSize=10).encode(text=alt.Text("share:Q", format=".2f"), **cell)
    cka = base.mark_rect().encode(
        color=alt.Color("cka:Q", scale=alt.Scale(domain=[0, 1], scheme="greens"), title="CKA"),
        **cell,
    ) + base.mark_text(fontSize=10).encode(text=alt.Text("cka:Q", format=".2f"), **cell)
    matrices = (
        alt.hconcat(
            share.properties(width=260, height=220, title="units with a mutual match"),
            cka.properties(width=260, height=220, title="linear CKA"),
        )
        .add_params(pair)
        .resolve_scale(color="independent")
    )
    nodes, segments = graph
    cls = alt.param(name="cls", value=data["classes"][0]["label"] if data["classes"] else -1)
    gpair = alt.param(name="pair", value="0|1")
    shown = "datum.pair == pair && datum.label == cls"
    scale_x = alt.X("x:Q", axis=None)
    scale_y = alt.Y("y:Q", axis=None)
    edges = (
        alt.Chart(alt.Data(values=segments))
        .transform_filter(shown)
        .mark_rule()
        .encode(
            x=scale_x,
            y=scale_y,
            x2="x2:Q",
            y2="y2:Q",
            strokeDash=alt.condition("datum.kind == 'link'", alt.value([4, 3]), alt.value([1, 0])),
            color=alt.condition(
                "datum.kind == 'link'", alt.value(STATUS_COLOURS["shared"]), alt.value("#bbb")
            ),
            strokeWidth=alt.condition("datum.kind == 'link'", alt.value(1.2), alt.value(1.5)),
        )
    )
    node_base = alt.Chart(alt.Data(values=nodes)).transform_filter(shown)
    points = node_base.mark_point(filled=True, size=220).encode(
        x=scale_x,
        y=scale_y,
        color=alt.Color(
            "status:N",
            scale=alt.Scale(
                domain=["shared", "only", NO_WORDS, "prediction"],
                range=[STATUS_COLOURS["shared"], STATUS_COLOURS["only"], "#bbb", "#555"],
            ),
            title="concept",
        ),
        tooltip=[
            alt.Tooltip("study:N"),
            alt.Tooltip("layer:N"),
            alt.Tooltip("cluster_id:Q", title="cluster"),
            alt.Tooltip("concept:N"),
            alt.Tooltip("status:N", title="in the other model"),
        ],
    )
    texts = node_base.mark_text(dy=16, fontSize=9, limit=COLUMN_TEXT).encode(
        x=scale_x, y=scale_y, text=alt.Text("concept:N")
    )
    graphs = (
        alt.layer(edges, points, texts)
        .add_params(cls, gpair)
        .properties(width=720, height=360, title="concept graphs of the class: A (left), B (right)")
    )
    with alt.data_transformers.disable_max_rows():
        return {
            "projection": projection.to_dict(),
            "matrix": matrices.to_dict(),
            "graph": graphs.to_dict(),
        }


def compare_page_data(tables: dict[str, pl.DataFrame], name: str) -> tuple[dict, dict]:
    """The page's JSON (studies, units, matches, concepts, classes) and its three specs."""
    studies = tables["compare_studies"].sort("position")
    names = studies["study"].to_list()
    position = {n: i for i, n in enumerate(names)}
    short, whole = concept_names(tables), concept_names(tables, whole_label=True)
    units = (
        tables["compare_units"]
        .join(tables["compare_projection"], on="unit_id")
        .with_columns(
            concept=pl.struct("study", "cluster_id").map_elements(
                lambda r: short.get((r["study"], r["cluster_id"]), ""), return_dtype=pl.Utf8
            ),
            label=pl.struct("study", "cluster_id").map_elements(
                lambda r: whole.get((r["study"], r["cluster_id"]), ""), return_dtype=pl.Utf8
            ),
        )
        .sort("unit_id")
    )
    matches = tables["unit_matches"].filter(pl.col("match_id").is_not_null())
    match_of: dict[int, list] = {}
    for r in matches.iter_rows(named=True):
        match_of.setdefault(r["unit_id"], []).append(
            [position[r["other_study"]], r["match_id"], round(r["jaccard"], 4), r["mutual"]]
        )
    neighbors: dict[int, list] = {}
    for r in (
        tables["compare_neighbors"]
        .filter(pl.col("rank") <= NEIGHBORS_SHOWN)
        .sort("unit_id", "rank")
        .iter_rows(named=True)
    ):
        neighbors.setdefault(r["unit_id"], []).append([r["neighbor_id"], round(r["similarity"], 3)])
    unit_rows = [
        [
            r["unit_id"],
            position[r["study"]],
            r["layer"],
            r["channel"],
            r["kind"],
            r["cluster_id"],
            r["label"] or "",
        ]
        for r in units.iter_rows(named=True)
    ]
    layer = tables["layer_matches"].with_columns(
        pair=pl.format(
            "{}|{}",
            pl.col("study").replace_strict(position, return_dtype=pl.Int64),
            pl.col("other_study").replace_strict(position, return_dtype=pl.Int64),
        )
    )
    concepts = (
        tables["concept_matches"]
        .filter(pl.col("status") == "only")
        .sort(["size", "cluster_id"], descending=[True, False])
    )
    only = [
        [
            position[r["study"]],
            position[r["other_study"]],
            r["cluster_id"],
            r["layer"],
            r["size"],
            whole.get((r["study"], r["cluster_id"]), ""),
            "yes" if r["same_label_elsewhere"] else "no",
            r["matched_by"],
        ]
        for r in concepts.iter_rows(named=True)
    ]
    changed = tables["concept_matches"].filter(pl.col("label_changed").fill_null(False))
    classes = (
        tables["compare_graph_nodes"]
        .select("label", "label_name")
        .unique()
        .sort("label")
        .to_dicts()
    )
    data = {
        "name": name,
        "studies": studies.to_dicts(),
        "units": unit_rows,
        "matches": {str(k): v for k, v in match_of.items()},
        "neighbors": {str(k): v for k, v in neighbors.items()},
        "only": only,
        "label_changed": [
            [
                position[r["study"]],
                position[r["other_study"]],
                r["cluster_id"],
                r["label"] or "",
                r["match_label"] or "",
            ]
            for r in changed.iter_rows(named=True)
        ],
        "classes": classes,
        "figures": _figures(tables, names),
        # Studies without words, named on the page in one line each.
        "no_words": [n for n, has in zip(names, studies["has_words"], strict=True) if not has],
    }
    projection_rows = units.select("unit_id", "study", "layer", "channel", "concept", "x", "y")
    graph = _graph_rows(tables, names)
    specs = _specs(data, projection_rows, _records(layer.fill_nan(None)), graph)
    return data, specs


def _figures(tables: dict[str, pl.DataFrame], names: list[str]) -> list[dict]:
    """Per ordered pair: units with a mutual match, its null, concepts shared and only."""
    out = []
    layer = tables["layer_matches"]
    concepts = tables["concept_matches"]
    for a, b in _pairs(len(names)):
        rows = layer.filter((pl.col("study") == names[a]) & (pl.col("other_study") == names[b]))
        units = rows.group_by("layer").agg(pl.col("units").first())["units"].sum()
        mutual = rows["mutual"].sum()
        null = (
            None
            if rows["null_share"].is_null().all()
            else rows.select((pl.col("null_share") * pl.col("units")).sum()).item()
        )
        c = concepts.filter((pl.col("study") == names[a]) & (pl.col("other_study") == names[b]))
        by_words = c.height > 0 and (c["matched_by"] == BY_FORMULA).all()
        out.append(
            {
                "pair": f"{a}|{b}",
                "mutual_share": mutual / units if units else None,
                "null_share": (null / units) if (units and null is not None) else None,
                "concepts": int(c["status"].is_not_null().sum()),
                "shared": int((c["status"] == "shared").sum()),
                "only": int((c["status"] == "only").sum()),
                "matched_by": BY_FORMULA if by_words else "images",
                "without_words": int(c["status"].is_null().sum()),
            }
        )
    return out


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Cartography comparison</title>
<style>{css}</style>
</head>
<body>
<header>
<h1 id="title"></h1>
<ul class="studies" id="studies"></ul>
<p class="figures" id="figures"></p>
<p class="figures" id="words-note"></p>
</header>
<div class="controls">
<label for="pair">Compare</label><select id="pair"></select>
<label for="class">Class</label><select id="class"></select>
</div>
<main>
<section class="map"><div id="projection"></div><div id="unit" class="unit"></div></section>
<section class="side">
<h2>Layer by layer</h2><div id="matrix"></div>
<h2>Concepts only one model has</h2><div id="only" class="only"></div>
<h2>Concepts whose label changed</h2><div id="changed" class="only"></div>
</section>
</main>
<section class="graphs"><div id="graph"></div></section>
<script type="application/json" id="compare-data">{data}</script>
<script type="application/json" id="compare-sheets">{sheets}</script>
<script type="application/json" id="compare-spec-projection">{projection}</script>
<script type="application/json" id="compare-spec-matrix">{matrix}</script>
<script type="application/json" id="compare-spec-graph">{graph}</script>
<script>{bundle}</script>
<script>{script}</script>
</body>
</html>
"""


def export_compare(
    database_path: str | Path, out_dir: str | Path, *, name: str = "comparison"
) -> CompareExport:
    """Write the compare page of a comparison database as ``out_dir/index.html``."""
    tables = load_compare_tables(database_path)
    data, specs = compare_page_data(tables, name)
    patches = CartoStore(database_path).query(
        "SELECT unit_id AS neuron_id, rank, png FROM compare_patches ORDER BY ALL"
    )
    atlas, _ = pack_patches(patches, workers=1) if patches.height else (None, None)
    sheets = {}
    if atlas is not None:
        data["patches"] = atlas.manifest()
        sheets = {
            s.name: "data:" + s.mime + ";base64," + base64.b64encode(s.data).decode("ascii")
            for s in atlas.sheets
        }
    else:
        data["patches"] = {"sheets": [], "slots": {}}
    html = _PAGE.format(
        css=page_asset("compare.css"),
        data=script_json(data),
        sheets=script_json(sheets),
        projection=script_json(specs["projection"]),
        matrix=script_json(specs["matrix"]),
        graph=script_json(specs["graph"]),
        bundle=javascript_bundle(),
        script=page_asset("compare.js"),
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec_dir = out / "specs"
    spec_dir.mkdir(exist_ok=True)
    for key, spec in specs.items():
        atomic.write_bytes(spec_dir / f"{key}.vl.json", json.dumps(spec).encode("utf-8"))
    atomic.write_bytes(out / "index.html", html.encode("utf-8"))
    png = vl_convert.vegalite_to_png(specs["projection"], scale=1)
    return CompareExport(out / "index.html", png, len(html.encode("utf-8")), len(data["units"]))
