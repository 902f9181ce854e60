"""The concept graph assets: one class chunk's graph and explanations (partitioned), and the
merged ``concept_graph``."""

import dagster as dg
import polars as pl

from carto_assets.assets._metadata import frame_table
from carto_assets.assets.partitions import CLASS_CHUNKS
from carto_assets.assets.resources import StudyResource
from carto_assets.stages import concept_graph as stage
from carto_assets.stages import concept_graph_checks as graph_checks
from carto_assets.storage import quality
from carto_assets.storage.sharding import chunk_index, chunk_labels


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "concept_graph_chunk",
            group_name="graph",
            kinds={"pytorch", "parquet"},
            # unit_labels: the class audit's checks run in the chunk (its units' words).
            deps=["class_importance", "neuron_clusters", "unit_labels"],
            description="Nodes, influence edges, cascades and ablation checks for one chunk of "
            "classes (and the class audit's causal checks of their co-occurring terms), as "
            "Parquet.",
        ),
        dg.AssetSpec(
            "explanation_chunk",
            group_name="explanations",
            kinds={"pytorch", "parquet"},
            deps=["class_importance", "neuron_clusters"],
            description="Per-image concept relevance, maps and checks for one chunk of classes "
            "(sharing the graph's passes), as Parquet.",
        ),
    ],
    partitions_def=CLASS_CHUNKS,
)
def concept_graph_chunk(context: dg.AssetExecutionContext, study: StudyResource):
    """One class chunk's concept graph and explanations, from the same passes."""
    prepared = study.prepare()
    cfg = prepared.study
    index = chunk_index(context.partition_key)
    n_classes = len(prepared.class_names)
    labels = chunk_labels(index, n_classes, cfg.graph.classes_per_chunk)
    # Reads the database, writes only Parquet: chunks run in parallel processes.
    chunk = stage.concept_graph_chunk(prepared, labels, progress=context.log.info)
    out = stage.write_graph_chunk(cfg, context.partition_key, chunk)
    summary = chunk.summary
    computed = max(1, summary.n_classes_computed)
    yield dg.MaterializeResult(
        asset_key="concept_graph_chunk",
        metadata={
            "classes": dg.MetadataValue.json([labels[0], labels[-1]] if labels else []),
            "classes_computed": summary.n_classes_computed,
            "nodes": len(chunk.nodes),
            "edges": len(chunk.edges),
            "seconds": round(summary.seconds, 2),
            "seconds_per_class": round(summary.seconds / computed, 3),
            "seconds_per_class_by_step": dg.MetadataValue.json(
                {k: round(v / computed, 3) for k, v in summary.steps.items()}
            ),
            "checks_restarted_at_their_layers": summary.restarted,
            "chunk_dir": dg.MetadataValue.path(str(out)),
        },
    )
    explained = chunk.explanations.get("explained_images")
    yield dg.MaterializeResult(
        asset_key="explanation_chunk",
        metadata={
            "enabled": cfg.explain.enabled,
            "images": 0 if explained is None else len(explained),
            "beyond_the_samples": summary.other_images,
            "seconds_per_class": round(summary.steps.get("explanations", 0.0) / computed, 3),
            "chunk_dir": dg.MetadataValue.path(str(out)),
        },
    )


@dg.asset(
    group_name="graph",
    kinds={"duckdb"},
    deps=["concept_graph_chunk"],
    check_specs=[
        dg.AssetCheckSpec("edge_weights_track_ablation", asset="concept_graph"),
        dg.AssetCheckSpec("graph_nodes_matter_most", asset="concept_graph"),
    ],
)
def concept_graph(context: dg.AssetExecutionContext, study: StudyResource) -> dg.MaterializeResult:
    """Per class: the clusters its prediction uses per layer, influence edges up to the
    prediction, cascades, and ablation checks of nodes and edges."""
    prepared = study.prepare()
    cfg, store = prepared.study, prepared.store
    keys = context.instance.get_dynamic_partitions(CLASS_CHUNKS.name)
    chunks = [stage.read_graph_chunk(cfg, key) for key in sorted(keys)]
    g = stage.merge_graph_chunks(prepared, chunks)
    # No edges sampled for the checks: no faithfulness table rather than an empty one.
    drop = [] if len(g.faithfulness) else [stage.GRAPH_TABLES["faithfulness"]]
    tables = {
        table: getattr(g, name)
        for name, table in stage.GRAPH_TABLES.items()
        if table is not None and table not in drop
    }
    layer_order = store.query(
        "SELECT DISTINCT layer, layer_index FROM neurons ORDER BY layer_index"
    )["layer"].to_list()
    store.replace_tables(
        tables,
        drop=drop,
        figures=("concept_graph", graph_checks.graph_figures(g, layer_order)),
    )
    figures = quality.metadata(store.figures(), "concept_graph")
    rho = figures["faithfulness_spearman_rho"]
    drops = graph_checks.drop_table(g.ablation) if g.ablation.height else pl.DataFrame()
    matter = _nodes_matter_most(drops, g.rule)
    no_dep = [f"{a} -> {b}" for a, b in g.no_dependency]
    return dg.MaterializeResult(
        metadata={
            "node_rule": g.rule,
            "relevance_target": g.relevance_target,
            "nodes": len(g.nodes),
            "edges": len(g.edges),
            "cascade_rows": len(g.cascades),
            "seconds": round(g.seconds, 2),
            "class_chunks": g.chunks,
            "seconds_per_class": round(g.seconds_per_class, 3),
            "seconds_per_class_by_step": dg.MetadataValue.json(
                {k: round(v, 3) for k, v in g.steps_per_class.items()}
            ),
            "prediction_edges": g.prediction_edges,
            **figures,
            "nodes_of_class_by_rule": frame_table(graph_checks.rule_table(g.checks))
            if g.checks.height
            else "no nodes",
            "node_ablation_drops": frame_table(drops) if drops.height else "not measured",
            "layer_pairs_without_dependency": dg.MetadataValue.json(no_dep),
            "nodes_preview": frame_table(g.nodes.head(15)),
            "edges_preview": frame_table(g.edges.head(15)),
            "database": dg.MetadataValue.path(str(store.database_path)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="edge_weights_track_ablation",
                passed=bool(rho == rho and rho > 0),
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"spearman_rho": rho},
            ),
            dg.AssetCheckResult(
                check_name="graph_nodes_matter_most",
                passed=bool(matter["passed"]),
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"layers_where_they_do_not": dg.MetadataValue.json(matter["not"])},
            ),
        ],
    )


def _nodes_matter_most(drops: pl.DataFrame, rule: str) -> dict:
    """Whether, in every layer, zeroing the graph's nodes drops the logit more than as many
    units of the other rule or random ones; the layers where it does not."""
    if drops.height == 0:
        return {"passed": True, "not": []}
    wide = drops.pivot(on="chosen_by", index="layer", values="drop")
    others = [c for c in wide.columns if c not in ("layer", rule)]
    losing = wide.filter(pl.any_horizontal([pl.col(c) >= pl.col(rule) for c in others]))
    return {"passed": losing.height == 0, "not": losing["layer"].to_list()}
