"""Altair builders for the two linked views of the page.

- **Projection view** (:func:`projection_spec`): the Neuron Projection View (zoom and pan).
- **Detail view** (:func:`detail_spec`): under it, the selection's patches, its cluster and its
  nearest neighbours.
- **Graph view** (:func:`graph_spec`): the concept graph of one class, every node drawn as its
  concept's best patch, layers as rows from the input (bottom) to the prediction (top).

Each is a Vega-Lite spec of its own so that the graph scrolls on its own and a class switch or
a patch loading re-renders only the view concerned. The page's script links them through
signals:

``pick``          click on a neuron (fields ``neuron_id``, ``cluster_id``, ``neighbors``)
``graph_node``    the cluster of the node clicked in the graph (-2: none), set by the page
``picked_*``      the projection's pick (neuron, cluster, neighbours), set in the detail view
``class_neurons`` the neurons of the chosen class as ``|id|id|``, set by the page
``node_pick``     click on a graph node (``cluster_id`` and its cascade), forwarded as
                  ``graph_node``
``neuron_cluster`` the cluster of the neuron picked in the projection, set by the page
``unit_kind``     which units the three views show: ``both``, ``channel`` or ``feature``
                  (dictionary features), set by the page's toggle; the graph derives from it
                  ``row_pos`` (each row's position, -1 when hidden) and ``rows_shown``

Images are named ``patch:<neuron>:<rank>`` (or ``thumb:<neuron>:1``, the small copy of a
neuron's first patch that graph nodes show); the page's loader cuts them out of sprite sheets.
No user text is ever spliced into an expression: expressions only reference fields and params.
"""

from __future__ import annotations

import json

import altair as alt

from carto_assets.schema import PREDICTION_CLUSTER
from carto_viz.data import ViewData
from carto_viz.short_names import layer_short_names

#: colours by role, read by the tests.
MEMBER_STROKE = "black"
CLUSTER_STROKE = "#d62728"
NEIGHBOR_STROKE = "#ff7f0e"
NEURON_CLUSTER_STROKE = "#1f77b4"
#: units and graph nodes whose words hold the word search's text (studies with words).
WORD_STROKE = "#2ca02c"
_WORD_UNIT = "indexof(word_units, '|' + datum.neuron_id + '|') >= 0"
_WORD_NODE = "datum.cluster_id >= 0 && indexof(word_clusters, '|' + datum.cluster_id + '|') >= 0"
#: patches shown per neuron (hover cards and detail panel), as in the original.
PATCHES_PER_NEURON = 9

_PICKED = "isValid(pick.neuron_id)"
_NEIGHBOR_TEST = f"{_PICKED} && indexof('' + pick.neighbors[0], '|' + datum.neuron_id + '|') >= 0"
_CLUSTER_TEST = f"{_PICKED} && datum.cluster_id == pick.cluster_id[0]"
_NODE_TEST = "graph_node >= 0 && datum.cluster_id == graph_node"
_CASCADE_NODE = (
    "cascade && isValid(node_pick.cluster_id) && "
    "indexof('' + node_pick.cascade[0], '|' + datum.cluster_id + '|') >= 0"
)
_CASCADE_EDGE = (
    "cascade && isValid(node_pick.cluster_id) && indexof('' + node_pick.cascade_edges[0], "
    "'|' + datum.source_cluster + '-' + datum.target_cluster + '|') >= 0"
)
_NOTHING_PICKED = f"!({_PICKED}) && graph_node < 0"
# The detail view gets the projection's pick as plain signals (set by the page).
_D_PICKED = "picked_neuron >= 0"
_D_NEIGHBOR = f"{_D_PICKED} && indexof(picked_neighbors, '|' + datum.neuron_id + '|') >= 0"
_D_CLUSTER = f"{_D_PICKED} && datum.cluster_id == picked_cluster"
_D_NOTHING = f"!({_D_PICKED}) && graph_node < 0"
#: a unit (projection point, detail row) of the kind the toggle shows.
_KIND_SHOWN = "unit_kind == 'both' || datum.kind == unit_kind"
#: the toggle's choices and the kind each one hides the other of.
UNIT_CHOICES = ("both", "channel", "feature")
#: feature units and nodes: a diamond point, a dashed frame, a purple row label.
FEATURE_SHAPE = "diamond"
FEATURE_COLOUR = "#7b4fa0"

#: Graph View geometry (pixels).
ROW_HEIGHT = 92
COLUMN_WIDTH = 104
GUTTER = 112
NODE_IMAGE = 46
NODE_FRAME = 52


def _named(name: str) -> alt.Data:
    return alt.Data(name=name)


def _patch_url(neuron_field: str, rank: str = "1", atlas: str = "patch") -> str:
    """Expression for the image key of a patch (``patch``) or of a neuron's thumbnail
    (``thumb``, its first patch, small), resolved by the page's loader."""
    return f"isValid({neuron_field}) ? '{atlas}:' + {neuron_field} + ':' + {rank} : null"


# ---- projection view -------------------------------------------------------------------------
def projection_chart(
    n_neurons: int, layers: list[str], has_features: bool = False, has_words: bool = False
) -> alt.Chart:
    """Neuron Projection View: one circle per neuron at its UMAP position, coloured by depth;
    with dictionary features, channels are circles and features diamonds; with words, the units
    the word search found (``word_units``) are ringed in green."""
    word = [{"test": _WORD_UNIT, "value": WORD_STROKE}] if has_words else []
    word_seen = [{"test": _WORD_UNIT, "value": 1}] if has_words else []
    pick = alt.selection_point(
        name="pick", fields=["neuron_id", "cluster_id", "neighbors"], on="click", clear="dblclick"
    )
    zoom = alt.selection_interval(name="zoom", bind="scales")
    size = 60 if n_neurons <= 2000 else 20
    chart = alt.Chart(_named("neurons"), title="Neuron projection", width=480, height=440)
    if has_features:
        chart = chart.mark_point(filled=True, size=size, cursor="pointer", strokeWidth=1.6).encode(
            shape=alt.Shape(
                "kind:N",
                scale=alt.Scale(domain=["channel", "feature"], range=["circle", FEATURE_SHAPE]),
                legend=alt.Legend(title="unit", orient="right"),
            )
        )
    else:
        chart = chart.mark_circle(size=size, cursor="pointer", strokeWidth=1.6)
    return (
        chart.transform_filter(_KIND_SHOWN)
        .transform_filter("layer_filter == '' || datum.layer == layer_filter")
        .transform_filter(
            "proj_filter == 'all' || (proj_filter == 'class' && "
            "indexof(class_neurons, '|' + datum.neuron_id + '|') >= 0) || "
            "(proj_filter == 'concept' && datum.cluster_id == graph_node)"
        )
        .encode(
            x=alt.X("x:Q", axis=None, scale=alt.Scale(zero=False)),
            y=alt.Y("y:Q", axis=None, scale=alt.Scale(zero=False)),
            color=alt.Color(
                "layer:O",
                sort=layers,
                # Every layer keeps its colour whatever the filters leave.
                scale=alt.Scale(scheme="viridis", domain=layers),
                # Entries name layers by their distinguishing end (``layer_short``).
                legend=alt.Legend(
                    title="layer (input → output)",
                    symbolLimit=0,
                    labelLimit=110,
                    labelExpr="layer_short[datum.label] || datum.label",
                ),
            ),
            stroke={
                "condition": [
                    {"test": _NODE_TEST, "value": MEMBER_STROKE},
                    {"test": _CLUSTER_TEST, "value": CLUSTER_STROKE},
                    {"test": _NEIGHBOR_TEST, "value": NEIGHBOR_STROKE},
                    *word,
                ],
                "value": None,
            },
            opacity={
                "condition": [
                    {"test": _NODE_TEST, "value": 1},
                    {"test": _CLUSTER_TEST, "value": 1},
                    {"test": _NEIGHBOR_TEST, "value": 1},
                    *word_seen,
                    {"test": _NOTHING_PICKED, "value": 0.8},
                ],
                "value": 0.15,
            },
            tooltip=[
                alt.Tooltip("unit:N"),
                alt.Tooltip("neuron_id:Q", title="neuron"),
                alt.Tooltip("layer:N"),
                alt.Tooltip("cluster_id:Q", title="cluster"),
                alt.Tooltip("cluster_label:N", title="concept"),
            ],
        )
        .add_params(pick, zoom)
    )


#: detail panel rows by role: (order, text colour, heading, most rows).
_ROLES = {
    "selected": (0, "black", "selected", 1),
    "cluster": (1, CLUSTER_STROKE, "same cluster", 8),
    "neighbour": (2, NEIGHBOR_STROKE, "nearest", 10),
    "concept": (3, MEMBER_STROKE, "graph concept", 12),
}
_DETAIL_STEP = 36
_DETAIL_PATCH = 32
_DETAIL_TEXT = 250


def detail_chart() -> alt.LayerChart:
    """Detail panel: the picked neuron's patches, its cluster's members and its 10 nearest
    neighbours (the paper's "most related neurons"), or the members of the picked graph node;
    one row per neuron (of the kinds shown), its text on the left ("#id  kind index · layer
    concept") and up to 9 patches on the right."""
    role = (
        f"{_D_PICKED} && datum.neuron_id == picked_neuron ? 'selected' : "
        f"({_D_NEIGHBOR}) ? 'neighbour' : "
        f"({_D_CLUSTER}) ? 'cluster' : "
        f"({_NODE_TEST}) ? 'concept' : ''"
    )
    order = " : ".join(f"datum.role == '{r}' ? {o}" for r, (o, _, _, _) in _ROLES.items())
    heading = " : ".join(f"datum.role == '{r}' ? '{h}'" for r, (_, _, h, _) in _ROLES.items())
    limit = " : ".join(f"datum.role == '{r}' ? {n}" for r, (_, _, _, n) in _ROLES.items())
    rows = (
        alt.Chart(_named("neurons"))
        .transform_filter(_KIND_SHOWN)
        .transform_calculate(role=role)
        .transform_filter("datum.role != ''")
        .transform_calculate(
            role_order=f"{order} : 9",
            # neighbours in rank order (their position in the picked neuron's list)
            within=(
                "datum.role == 'neighbour' ? "
                "indexof(picked_neighbors, '|' + datum.neuron_id + '|') : datum.neuron_id"
            ),
        )
        .transform_window(in_role="row_number()", groupby=["role"], sort=[alt.SortField("within")])
        .transform_filter(f"datum.in_role <= ({limit} : 0)")
        .transform_window(
            line="row_number()",
            sort=[alt.SortField("role_order"), alt.SortField("within")],
        )
        .transform_calculate(
            text=(
                f"({heading} : '') + '  #' + datum.neuron_id + '  ' + datum.unit"
                " + '  ' + datum.cluster_short"
                f" + (datum.role == 'neighbour' && ({_D_CLUSTER}) ? '  (same cluster)' : '')"
            )
        )
    )
    y = alt.Y("line:O", axis=None)
    colour = alt.Color(
        "role:N",
        scale=alt.Scale(domain=list(_ROLES), range=[colour for _, colour, _, _ in _ROLES.values()]),
        legend=None,
    )
    text = rows.mark_text(
        align="left", baseline="middle", fontSize=11, limit=_DETAIL_TEXT - 8
    ).encode(x=alt.value(0), y=y, text="text:N", color=colour)
    images = (
        rows.transform_calculate(
            rank=f"sequence(1, min(datum.n_patches, {PATCHES_PER_NEURON}) + 1)"
        )
        .transform_flatten(["rank"])
        .transform_calculate(
            px=f"{_DETAIL_TEXT + _DETAIL_PATCH // 2} + (datum.rank - 1) * {_DETAIL_PATCH + 2}",
            url=_patch_url("datum.neuron_id", "datum.rank"),
        )
        .mark_image(width=_DETAIL_PATCH, height=_DETAIL_PATCH)
        .encode(x=alt.X("px:Q", scale=None, axis=None), y=y, url="url:N")
    )
    return alt.layer(text, images).properties(
        width=_DETAIL_TEXT + PATCHES_PER_NEURON * (_DETAIL_PATCH + 2),
        height=alt.Step(_DETAIL_STEP),
    )


def hint_chart() -> alt.Chart:
    """What to do, shown while nothing is selected (instead of an empty panel)."""
    lines = [
        "Click a neuron in the map, or a concept in the graph, to see its image patches,",
        "its cluster and its nearest neighbours here. Hover anything for a preview.",
        "Map: wheel to zoom, drag to pan, double-click to reset.",
    ]
    return (
        alt.Chart(alt.Data(values=[{"i": i, "t": t} for i, t in enumerate(lines)]))
        .transform_filter(_D_NOTHING)
        .mark_text(align="left", baseline="top", fontSize=12, color="#555")
        .encode(x=alt.value(0), y=alt.Y("i:O", axis=None), text="t:N")
        .properties(width=480, height=alt.Step(18))
    )


def projection_params(data: ViewData) -> list[alt.Parameter]:
    """Widgets and page-set signals of the projection view."""
    return [
        alt.param(
            name="proj_filter",
            value="all",
            bind=alt.binding_radio(
                options=["all", "class", "concept"],
                labels=["all neurons", "neurons of the class", "neurons of the graph concept"],
                name="Show ",
            ),
        ),
        alt.param(
            name="layer_filter",
            value="",
            bind=alt.binding_select(
                options=["", *data.layers], labels=["all layers", *data.layers], name="Layer "
            ),
        ),
        alt.param(name="graph_node", value=-2),
        alt.param(name="class_neurons", value="|"),
        alt.param(name="unit_kind", value="both"),
        alt.param(name="layer_short", value=layer_short_names(data.layers)),
        *([alt.param(name="word_units", value="|")] if data.has_words else []),
    ]


def projection_spec(data: ViewData) -> dict:
    """The projection view's Vega-Lite spec, with the neurons stored once under ``datasets``."""
    chart = (
        projection_chart(len(data.neurons), data.layers, data.has_features, data.has_words)
        .add_params(*projection_params(data))
        .configure_view(stroke=None)
    )
    spec = chart.to_dict()
    spec["datasets"] = {"neurons": data.neurons}
    return spec


def detail_spec() -> dict:
    """The detail panel's spec: a view of its own, so that its patches loading never redraw
    the thousands of points of the projection. Its ``neurons`` come from the projection's
    dataset and its signals from the projection's pick, both set by the page."""
    chart = (
        alt.vconcat(hint_chart(), detail_chart())
        .add_params(
            alt.param(name="picked_neuron", value=-1),
            alt.param(name="picked_cluster", value=-2),
            alt.param(name="picked_neighbors", value="|"),
            alt.param(name="graph_node", value=-2),
            alt.param(name="unit_kind", value="both"),
        )
        .configure_view(stroke=None)
    )
    spec = chart.to_dict()
    # The panel grows and shrinks with the selection: re-layout on every update.
    spec["autosize"] = {"type": "pad", "resize": True}
    spec["datasets"] = {"neurons": []}
    return spec


# ---- graph view ------------------------------------------------------------------------------
def row_positions(rows: list[dict], shown: str) -> list[int]:
    """Where each graph row is drawn when the toggle shows ``shown`` units.

    ``rows`` are the graph's ``{row, name, kind}`` (:func:`carto_viz.data.graph_records`);
    returns a list indexed by ``row``: the row's position from the bottom, counting only the
    rows shown (the prediction row always is), or -1 for a row hidden (or absent).
    """
    if shown not in UNIT_CHOICES:
        raise ValueError(f"unknown unit choice {shown!r}; valid: {list(UNIT_CHOICES)}")
    positions = [-1] * (max((r["row"] for r in rows), default=-1) + 1)
    at = 0
    for r in sorted(rows, key=lambda r: r["row"]):
        if shown == "both" or r["kind"] in (shown, "prediction"):
            positions[r["row"]] = at
            at += 1
    return positions


def graph_heights(rows: list[dict]) -> dict[str, int]:
    """The Graph View's plot height (pixels) for each toggle choice: the rows shown."""
    return {
        choice: max(1, sum(p >= 0 for p in row_positions(rows, choice))) * ROW_HEIGHT
        for choice in UNIT_CHOICES
    }


def _by_choice(values: dict[str, object]) -> str:
    """A Vega expression picking ``values[unit_kind]`` (literals only, never user text)."""
    both = json.dumps(values["both"])
    return (
        f"unit_kind == 'channel' ? {json.dumps(values['channel'])} : "
        f"unit_kind == 'feature' ? {json.dumps(values['feature'])} : {both}"
    )


def graph_chart(
    rows: list[dict], max_columns: int, has_features: bool = False, has_words: bool = False
) -> alt.LayerChart:
    """Graph View: a row per layer (input at the bottom), each node its concept's best patch
    framed by its importance, its short label under it; edges behind the nodes.

    Rows are drawn at ``row_pos[row]``: the toggle hides the other kind's rows (and their
    nodes and edges) and the rows left close up. With dictionary features, a feature node's
    frame is dashed. Long row labels and captions keep their end (what tells them apart) and
    show the whole text on hover. The prediction node pictures the class (its top patch).
    With words, the nodes the word search found (``word_clusters``) are framed in green.
    """
    word = [{"test": _WORD_NODE, "value": WORD_STROKE}] if has_words else []
    node_pick = alt.selection_point(
        name="node_pick", fields=["cluster_id", "cascade", "cascade_edges"], on="click"
    )
    n_rows = len(rows)
    half = (max(max_columns, 1) - 1) / 2 + 0.5
    width = GUTTER + max(max_columns, 1) * COLUMN_WIDTH
    height = max(n_rows, 1) * ROW_HEIGHT
    x = alt.X("col:Q", axis=None, scale=alt.Scale(domain=[-half, half], range=[GUTTER, width]))
    # Domain and range follow the rows shown: the rows left keep their height, packed at the top.
    y = alt.Y(
        "pos:Q",
        axis=None,
        scale=alt.Scale(
            domain=[-0.5, alt.ExprRef("rows_shown - 0.5")],
            range=[alt.ExprRef(f"rows_shown * {ROW_HEIGHT}"), 0],
        ),
    )
    visible = "datum.pos >= 0 && datum.strength >= min_strength"
    edges = (
        alt.Chart(_named("graph_edges"))
        .mark_rule()
        .transform_calculate(pos="row_pos[datum.row]", pos2="row_pos[datum.row2]")
        .transform_filter(
            "datum.pos >= 0 && datum.pos2 >= 0 && "
            "datum.weight_rel >= min_strength && datum.min_strength >= min_strength"
        )
        .transform_calculate(
            source="row_kinds[datum.row] + ' cluster ' + datum.source_cluster",
            target=(
                f"datum.target_cluster == {PREDICTION_CLUSTER} ? 'prediction' : "
                "row_kinds[datum.row2] + ' cluster ' + datum.target_cluster"
            ),
        )
        .encode(
            x=x,
            y=y,
            x2="col2:Q",
            y2="pos2:Q",
            strokeWidth=alt.StrokeWidth(
                "weight_rel:Q", scale=alt.Scale(domain=[0, 1], range=[0.4, 6]), legend=None
            ),
            color={
                "condition": {"test": _CASCADE_EDGE, "value": CLUSTER_STROKE},
                "value": "#a0a0a0",
            },
            opacity={"condition": {"test": _CASCADE_EDGE, "value": 1}, "value": 0.5},
            tooltip=[
                alt.Tooltip("source:N", title="from"),
                alt.Tooltip("target:N", title="to"),
                alt.Tooltip("weight:Q", format=".3f"),
            ],
        )
    )
    # A long layer name shows its distinguishing end (``short``), cut on the left if it must
    # be; the full name is in the tooltip.
    row_labels = (
        alt.Chart(_named("graph_rows"))
        .transform_calculate(pos="row_pos[datum.row]")
        .transform_filter("datum.pos >= 0")
        .mark_text(align="left", baseline="middle", fontSize=11, limit=GUTTER - 10, dir="rtl")
        .encode(
            x=alt.value(4),
            y=y,
            text="short:N",
            tooltip=[alt.Tooltip("name:N", title="layer")],
            color={
                "condition": {"test": "datum.kind == 'feature'", "value": FEATURE_COLOUR},
                "value": "#555",
            },
        )
    )
    node_tooltip = [
        alt.Tooltip("cluster_label:N", title="concept"),
        alt.Tooltip("cluster_id:Q", title="cluster"),
        alt.Tooltip("layer:N"),
        alt.Tooltip("importance:Q", format=".3f"),
        alt.Tooltip("members:N", title="units"),
    ]
    nodes = (
        alt.Chart(_named("graph_nodes"))
        .transform_calculate(pos="row_pos[datum.row]")
        .transform_filter(visible)
        .transform_calculate(
            members=(
                "datum.kind == 'prediction' ? null : "
                "datum.size + ' ' + datum.kind + (datum.size == 1 ? '' : 's')"
            ),
        )
    )
    frames = (
        nodes.mark_point(shape="square", filled=True, size=NODE_FRAME**2, cursor="pointer")
        .encode(
            x=x,
            y=y,
            fill=alt.value("#f4f4f4"),
            strokeWidth=alt.StrokeWidth(
                "strength:Q", scale=alt.Scale(domain=[0, 1], range=[1, 6]), legend=None
            ),
            stroke={
                "condition": [
                    {"param": "node_pick", "empty": False, "value": CLUSTER_STROKE},
                    {"test": _CASCADE_NODE, "value": NEIGHBOR_STROKE},
                    {
                        "test": "datum.cluster_id >= 0 && datum.cluster_id == neuron_cluster",
                        "value": NEURON_CLUSTER_STROKE,
                    },
                    *word,
                ],
                "value": "#777",
            },
            tooltip=node_tooltip,
        )
        .add_params(node_pick)
    )
    if has_features:
        frames = frames.encode(
            strokeDash={
                "condition": {"test": "datum.kind == 'feature'", "value": [5, 3]},
                "value": [1, 0],
            }
        )
    # A node's picture: its patch's thumbnail; the prediction node's may be one of the class's
    # explained images (``picture``, an ``image:<id>:1`` key set by the page).
    images = (
        nodes.transform_filter("isValid(datum.patch) || isValid(datum.picture)")
        .transform_calculate(
            url="isValid(datum.picture) ? datum.picture : "
            + _patch_url("datum.patch", atlas="thumb")
        )
        .mark_image(width=NODE_IMAGE, height=NODE_IMAGE, cursor="pointer")
        .encode(x=x, y=y, url="url:N", tooltip=node_tooltip)
    )
    # The caption is the concept's leading term, cut on the left if it must be (its end tells
    # concepts apart: "class=class_0042"); the kind shows in the frame and the tooltip.
    labels = (
        nodes.transform_calculate(caption="datum.short")
        .mark_text(
            baseline="top",
            dy=NODE_FRAME / 2 + 3,
            fontSize=10,
            color="#222",
            limit=COLUMN_WIDTH - 6,
            dir="rtl",
        )
        .encode(x=x, y=y, text="caption:N")
    )
    return alt.layer(
        edges, row_labels, frames, images, labels, width=width, height=height
    ).resolve_scale(strokeWidth="independent")


def graph_params(rows: list[dict], has_words: bool = False) -> list[alt.Parameter]:
    """Widgets and page-set signals of the graph view; ``row_pos``, ``rows_shown`` and
    ``row_kinds`` (each row's kind, by ``row``) are derived from ``unit_kind`` and the rows."""
    positions = {choice: row_positions(rows, choice) for choice in UNIT_CHOICES}
    shown = {choice: sum(p >= 0 for p in positions[choice]) for choice in UNIT_CHOICES}
    kinds = [""] * len(positions["both"])
    for r in rows:
        kinds[r["row"]] = r["kind"]
    return [
        alt.param(
            name="min_strength",
            value=0,
            bind=alt.binding_range(min=0, max=1, step=0.05, name="Hide weaker than "),
        ),
        alt.param(name="cascade", value=False, bind=alt.binding_checkbox(name="Cascade mode ")),
        alt.param(name="graph_class", value=-1),
        alt.param(name="neuron_cluster", value=-2),
        alt.param(name="unit_kind", value="both"),
        alt.param(name="row_pos", expr=_by_choice(positions)),
        alt.param(name="rows_shown", expr=_by_choice(shown)),
        alt.param(name="row_kinds", value=kinds),
        *([alt.param(name="word_clusters", value="|")] if has_words else []),
    ]


def graph_spec(data: ViewData) -> dict:
    """The graph view's spec; its datasets start empty and the page fills them per class."""
    chart = (
        graph_chart(data.graph_rows, data.max_columns, data.has_features, data.has_words)
        .add_params(*graph_params(data.graph_rows, data.has_words))
        .configure_view(stroke=None)
    )
    spec = chart.to_dict()
    spec["datasets"] = {"graph_nodes": [], "graph_edges": [], "graph_rows": data.graph_rows}
    return spec


def views_spec(data: ViewData) -> dict[str, dict]:
    """The views' specs by name (``projection``, ``detail``, ``graph``)."""
    return {"projection": projection_spec(data), "detail": detail_spec(), "graph": graph_spec(data)}
