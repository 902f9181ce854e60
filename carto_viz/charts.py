"""Altair builders for the three linked views, concatenated into one Vega-Lite spec.

Every view reads named datasets (``neurons``, ``patches``, ``graph_nodes``, ``graph_edges``,
``graph_rows``) that the page stores once under the spec's top-level ``datasets``; images are
looked up by key from ``patches``. Linking is done with Vega-Lite params:

``node_pick``     click on a graph node (field ``cluster_id``)
``pick_neuron``   click on a neuron in the projection (field ``neuron_id``)
``pick_cluster``  the same click, projected on ``cluster_id`` (highlights the cluster)
``graph_class``   class of the graph (dropdown); ``min_strength`` slider; ``cascade`` checkbox
``layer_filter``, ``class_filter``, ``only_node``  the projection's filters

No user text is ever spliced into an expression: expressions only reference fields and params.
"""

from __future__ import annotations

import altair as alt

from carto_viz.data import ViewData

#: marks of the projection, by role (stroke colour), read by the tests.
MEMBER_STROKE = "black"
CLUSTER_STROKE = "#d62728"
NEIGHBOR_STROKE = "#ff7f0e"

_NEIGHBOR_TEST = (
    "isValid(pick_neuron.neuron_id) && "
    "indexof('' + datum.neighbor_of, '|' + pick_neuron.neuron_id[0] + '|') >= 0"
)
_CASCADE_TEST = (
    "cascade && isValid(node_pick.cluster_id) && "
    "indexof('' + datum.cascade, '|' + node_pick.cluster_id[0] + '|') >= 0"
)
_NOTHING_PICKED = "!length(data('node_pick_store')) && !length(data('pick_cluster_store'))"


def _named(name: str) -> alt.Data:
    return alt.Data(name=name)


def global_params(data: ViewData) -> dict[str, alt.Parameter]:
    """The widgets (bound params) shared by the views."""
    labels = [c["label"] for c in data.classes]
    names = [c["name"] for c in data.classes]
    graph_labels = sorted({n["label"] for n in data.graph_nodes}) or labels
    first = graph_labels[0] if graph_labels else 0
    return {
        "graph_class": alt.param(
            name="graph_class",
            value=first,
            bind=alt.binding_select(options=labels, labels=names, name="Graph class "),
        ),
        "min_strength": alt.param(
            name="min_strength",
            value=0,
            bind=alt.binding_range(min=0, max=1, step=0.05, name="Hide weaker than "),
        ),
        "cascade": alt.param(
            name="cascade", value=False, bind=alt.binding_checkbox(name="Cascade mode ")
        ),
        "layer_filter": alt.param(
            name="layer_filter",
            value="",
            bind=alt.binding_select(
                options=["", *data.layers], labels=["all layers", *data.layers], name="Layer "
            ),
        ),
        "class_filter": alt.param(
            name="class_filter",
            value=-1,
            bind=alt.binding_select(
                options=[-1, *labels], labels=["all classes", *names], name="Class "
            ),
        ),
        "only_node": alt.param(
            name="only_node",
            value=False,
            bind=alt.binding_checkbox(name="Only the selected graph node "),
        ),
    }


def projection_chart(n_neurons: int, layers: list[str]) -> alt.Chart:
    """Neuron Projection View: one circle per neuron at its UMAP position, coloured by layer."""
    pick_neuron = alt.selection_point(name="pick_neuron", fields=["neuron_id"], on="click")
    pick_cluster = alt.selection_point(name="pick_cluster", fields=["cluster_id"], on="click")
    size = 60 if n_neurons <= 2000 else 18
    return (
        alt.Chart(_named("neurons"), title="Neuron projection", width=460, height=420)
        .mark_circle(size=size, cursor="pointer", strokeWidth=1.5)
        .transform_filter("layer_filter == '' || datum.layer == layer_filter")
        .transform_filter(
            "toNumber(class_filter) < 0 || "
            "indexof('' + datum.classes, '|' + toNumber(class_filter) + '|') >= 0"
        )
        .transform_filter({"or": [{"not": {"param": "only_node"}}, {"param": "node_pick"}]})
        .transform_lookup(
            lookup="patch",
            from_=alt.LookupData(data=_named("patches"), key="key", fields=["url"]),
            as_=["image"],
        )
        .encode(
            x=alt.X("x:Q", axis=None, scale=alt.Scale(zero=False)),
            y=alt.Y("y:Q", axis=None, scale=alt.Scale(zero=False)),
            color=alt.Color("layer:N", sort=layers, title="layer"),
            stroke={
                "condition": [
                    {"param": "node_pick", "empty": False, "value": MEMBER_STROKE},
                    {"param": "pick_cluster", "empty": False, "value": CLUSTER_STROKE},
                    {"test": _NEIGHBOR_TEST, "value": NEIGHBOR_STROKE},
                ],
                "value": None,
            },
            opacity={
                "condition": [
                    {"param": "node_pick", "empty": False, "value": 1},
                    {"param": "pick_cluster", "empty": False, "value": 1},
                    {"test": _NEIGHBOR_TEST, "value": 1},
                    {"test": _NOTHING_PICKED, "value": 0.85},
                ],
                "value": 0.12,
            },
            tooltip=[
                alt.Tooltip("neuron_id:Q", title="neuron"),
                alt.Tooltip("layer:N"),
                alt.Tooltip("cluster_id:Q", title="cluster"),
                alt.Tooltip("cluster_label:N", title="label"),
                alt.Tooltip("image:N", title="image"),
            ],
        )
        .add_params(pick_neuron, pick_cluster)
    )


def graph_chart() -> alt.LayerChart:
    """Graph View: layers as rows (input at the bottom), nodes sized by importance."""
    node_pick = alt.selection_point(name="node_pick", fields=["cluster_id"], on="click")
    class_test = "datum.label == toNumber(graph_class)"
    base_x = alt.X("col:Q", axis=None, scale=alt.Scale(padding=20))
    base_y = alt.Y("row:Q", axis=None, scale=alt.Scale(padding=20))
    edges = (
        alt.Chart(_named("graph_edges"))
        .mark_rule()
        .transform_filter(class_test)
        .transform_filter("datum.weight_rel >= min_strength && datum.min_strength >= min_strength")
        .encode(
            x=base_x,
            y=base_y,
            x2="col2:Q",
            y2="row2:Q",
            strokeWidth=alt.StrokeWidth("weight:Q", scale=alt.Scale(range=[0.5, 6]), legend=None),
            color={
                "condition": {"test": _CASCADE_TEST, "value": CLUSTER_STROKE},
                "value": "#9a9a9a",
            },
            opacity={"condition": {"test": _CASCADE_TEST, "value": 1}, "value": 0.55},
            tooltip=[
                alt.Tooltip("source_cluster:Q", title="from"),
                alt.Tooltip("target_cluster:Q", title="to"),
                alt.Tooltip("weight:Q", format=".3f"),
            ],
        )
    )
    rows = (
        alt.Chart(_named("graph_rows"))
        .mark_text(align="left", dy=-14, color="#555", fontSize=11)
        .encode(x=alt.value(2), y=base_y, text="name:N")
    )
    nodes = (
        alt.Chart(_named("graph_nodes"))
        .mark_circle(cursor="pointer", stroke="white", strokeWidth=1)
        .transform_filter(class_test)
        .transform_filter("datum.strength >= min_strength")
        .transform_lookup(
            lookup="patch",
            from_=alt.LookupData(data=_named("patches"), key="key", fields=["url"]),
            as_=["image"],
        )
        .encode(
            x=base_x,
            y=base_y,
            size=alt.Size("strength:Q", scale=alt.Scale(range=[40, 700]), legend=None),
            color={
                "condition": [
                    {"param": "node_pick", "empty": False, "value": CLUSTER_STROKE},
                    {"test": _CASCADE_TEST, "value": NEIGHBOR_STROKE},
                ],
                "value": "#4c78a8",
            },
            tooltip=[
                alt.Tooltip("cluster_id:Q", title="cluster"),
                alt.Tooltip("layer:N"),
                alt.Tooltip("cluster_label:N", title="label"),
                alt.Tooltip("importance:Q", format=".3f"),
                alt.Tooltip("size:Q", title="neurons"),
                alt.Tooltip("image:N", title="image"),
            ],
        )
        .add_params(node_pick)
    )
    return alt.layer(edges, rows, nodes, title="Concept graph", width=460, height=420)


def patch_grid_chart() -> alt.Chart:
    """Detail: the selected neuron's patches, or the first three of each member of the node."""
    return (
        alt.Chart(_named("patches"), title="Patches")
        .transform_lookup(
            lookup="neuron_id",
            from_=alt.LookupData(data=_named("neurons"), key="neuron_id", fields=["cluster_id"]),
        )
        .transform_filter(
            {
                "or": [
                    {"param": "pick_neuron", "empty": False},
                    {"and": [{"param": "node_pick", "empty": False}, "datum.rank <= 3"]},
                ]
            }
        )
        .mark_image(width=40, height=40)
        .encode(
            x=alt.X("rank:O", title="rank"),
            y=alt.Y("neuron_id:O", title="neuron"),
            url="url:N",
        )
        .properties(width={"step": 46}, height={"step": 46})
    )


def info_chart() -> alt.Chart:
    """Detail: the selected neuron, its cluster's members and its nearest neighbours as text."""
    role = (
        "isValid(pick_neuron.neuron_id) && datum.neuron_id == pick_neuron.neuron_id[0]"
        " ? 'selected' : (" + _NEIGHBOR_TEST + " ? 'neighbour' : 'member')"
    )
    return (
        alt.Chart(_named("neurons"), title="Selection", width=520)
        .transform_filter(
            {
                "or": [
                    {"param": "pick_cluster", "empty": False},
                    {"param": "node_pick", "empty": False},
                    _NEIGHBOR_TEST,
                ]
            }
        )
        .transform_calculate(role=role)
        .transform_calculate(
            line="datum.role + '  #' + datum.neuron_id + '  ' + datum.layer + '  cluster '"
            " + datum.cluster_id + ': ' + datum.cluster_label"
        )
        .transform_window(order="row_number()")
        .transform_filter("datum.order <= 40")
        .mark_text(align="left", x=0, fontSize=11)
        .encode(
            y=alt.Y("order:O", axis=None),
            text="line:N",
            color=alt.Color(
                "role:N",
                scale=alt.Scale(
                    domain=["selected", "member", "neighbour"],
                    range=["black", CLUSTER_STROKE, NEIGHBOR_STROKE],
                ),
                legend=None,
            ),
        )
        .properties(height={"step": 15})
    )


def views_chart(data: ViewData) -> alt.VConcatChart:
    """The linked views as one concatenated chart (datasets are attached by the exporter)."""
    params = global_params(data)
    top = alt.hconcat(projection_chart(len(data.neurons), data.layers), graph_chart())
    bottom = alt.hconcat(patch_grid_chart(), info_chart())
    return (
        alt.vconcat(top, bottom)
        .add_params(*params.values())
        .resolve_scale(color="independent", size="independent")
        .configure_view(stroke=None)
    )


def views_spec(data: ViewData, patches: list[dict]) -> dict:
    """The complete Vega-Lite spec, with every dataset stored once under ``datasets``."""
    spec = views_chart(data).to_dict()
    spec["datasets"] = {
        "neurons": data.neurons,
        "patches": patches,
        "graph_nodes": data.graph_nodes,
        "graph_edges": data.graph_edges,
        "graph_rows": data.graph_rows,
    }
    spec["usermeta"] = {"carto": {"n_neurons": len(data.neurons)}}
    return spec
