"""The concept graph's checks: what zeroing the graph's nodes and edges' sources really does,
and the figures that compare the node rules.

No dagster imports. :func:`ablation_checks` runs inside a class's work
(:mod:`carto_assets.stages.concept_graph`); :func:`graph_figures` turns the merged tables into the
``study_quality`` rows of the ``concept_graph`` asset.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from carto_assets import schema
from carto_assets.core.attribution.ablation import (
    Row,
    ablate,
    edge_effects,
    edge_rows,
    sample_edges,
    target_values,
)
from carto_assets.core.attribution.nodes import RULES, ranked_units
from carto_assets.storage.quality import Figure

#: The node ablation check's unit sets besides the rules: as many units drawn at random.
RANDOM = "random"


def seed_for(study, label: int, *salt: int) -> int:
    """A seed drawn from the study's seed, the class and ``salt``: any chunking, same draws."""
    return int(np.random.default_rng([study.seed, label, *salt]).integers(2**31))


def ablation_checks(ctx, label: int, fwd, x, chosen, scores, edges, carry, n_faith: int):
    """One class's node ablation check and its sampled edges' ablation, in one restarted pass.

    Node check: for each layer with graph nodes, its nodes' members (``n`` units) are zeroed,
    and so are the ``n`` first units of the other rule's order (its nodes' members first,
    :func:`~carto_assets.core.attribution.nodes.ranked_units`) and ``n`` random units, each on
    the same ``graph.ablation_images`` images (a seeded rotation over the class's images, each
    layer its own); the drop of the target logit is averaged over them. Edge check: each
    sampled edge's source cluster is zeroed on the images its weight was measured on (every
    image for prediction edges) and its target measured.

    Returns ``(concept_graph_ablation rows, faithfulness rows)`` without ``label``.
    """
    g, units = ctx.study.graph, ctx.units
    n = fwd.n_images
    logits = fwd.logits.double().cpu().numpy()
    # The logit the class's relevance is for: the class's, or each image's top one.
    target = np.full(n, label) if ctx.predict else logits.argmax(axis=1)
    rows: list[Row] = []
    node_sets: list[tuple[str, str, int, np.ndarray]] = []  # layer, chosen_by, n_units, images
    order = np.random.default_rng(seed_for(ctx.study, label, 1)).permutation(n)
    a = min(g.ablation_images, n)
    graph_rule = g.importance
    for j, name in enumerate(units.layers if a else []):
        layer_nodes = chosen[graph_rule].filter(pl.col("layer") == name)
        size = int(sum(len(ctx.members[name][int(c)]) for c in layer_nodes["cluster_id"]))
        if size == 0:
            continue
        imgs = order[(np.arange(a) + j * a) % n]
        rng = np.random.default_rng(seed_for(ctx.study, label, 2, j))
        width = len(units.cluster_of[name])
        for rule in (*RULES, RANDOM):
            if rule == RANDOM:
                chosen_units = np.sort(rng.choice(width, size=size, replace=False))
            else:
                layer_scores = scores[rule].filter(pl.col("layer") == name)
                unit_score = np.zeros(width)
                unit_score[layer_scores["unit"].to_numpy()] = layer_scores["score"].to_numpy()
                rule_nodes = chosen[rule].filter(pl.col("layer") == name)["cluster_id"].to_list()
                chosen_units = ranked_units(rule_nodes, ctx.members[name], unit_score)[:size]
            node_sets.append((name, rule, size, imgs))
            rows.extend(Row(int(i), name, chosen_units) for i in imgs)
    faith_rows: list[Row] = []
    sample = {}
    if n_faith and len(edges["weight"]):
        sample = sample_edges(edges, n_faith, seed=seed_for(ctx.study, label))
        images_of = [
            np.arange(n) if layer == schema.PREDICTION else carry.carriers(str(layer), int(cluster))
            for layer, cluster in zip(sample["target_layer"], sample["target_cluster"])
        ]
        faith_rows = edge_rows(sample, ctx.members, images_of)
    got = ablate(ctx.model, fwd, x, rows + faith_rows, batch_size=max(ctx.study.batch_size, 1))
    ctx.restarted = ctx.restarted and got.restarted
    ablation_rows = []
    at = 0
    for name, rule, size, imgs in node_sets:
        mine = slice(at, at + len(imgs))
        after = got.logits[mine][np.arange(len(imgs)), target[imgs]]
        before = logits[imgs, target[imgs]]
        ablation_rows.append(
            (name, rule, size, len(imgs), float(before.mean()), float(after.mean()))
        )
        at += len(imgs)
    ablation = pl.DataFrame(
        ablation_rows,
        schema=["layer", "chosen_by", "units", "images", "baseline", "ablated"],
        orient="row",
    ).with_columns(drop=pl.col("baseline") - pl.col("ablated"))
    faithfulness = pl.DataFrame()
    if faith_rows:
        base, after = [], []
        for e in range(len(sample["weight"])):
            layer, imgs = str(sample["target_layer"][e]), images_of[e]
            mine = slice(at, at + len(imgs))
            if layer == schema.PREDICTION:
                base.append(logits[imgs, label].mean())
                after.append(got.logits[mine][:, label].mean())
            else:
                members = ctx.members[layer][int(sample["target_cluster"][e])]
                base.append(target_values(fwd, layer, members, None)[imgs].mean())
                after.append(got.measured[mine].mean())
            at += len(imgs)
        _, effects = edge_effects(sample, np.asarray(base), np.asarray(after))
        faithfulness = pl.DataFrame({c: np.asarray(v) for c, v in effects.items()})
    return ablation, faithfulness


# ---- figures ----------------------------------------------------------------------------------
def rule_table(checks: pl.DataFrame) -> pl.DataFrame:
    """Per layer and rule: the share of the classes' nodes that are concepts of their class
    (pooled over classes) and for how many classes the most important node is one.

    ``checks``: :func:`~carto_assets.core.attribution.nodes.class_checks` rows with ``rule``.
    Returns ``layer, rule, classes, nodes, share_of_class, top_of_class``.
    """
    return (
        checks.group_by("layer", "rule")
        .agg(
            pl.len().alias("classes"),
            pl.col("nodes").sum(),
            (pl.col("nodes_of_class").sum() / pl.col("nodes").sum()).alias("share_of_class"),
            pl.col("top_of_class").sum(),
        )
        .sort("layer", "rule")
    )


def drop_table(ablation: pl.DataFrame) -> pl.DataFrame:
    """Per layer and unit set (``chosen_by``): the mean drop of the class logit over classes,
    and the classes measured. Returns ``layer, chosen_by, classes, drop``."""
    return (
        ablation.group_by("layer", "chosen_by")
        .agg(pl.len().alias("classes"), pl.col("drop").mean())
        .sort("layer", "chosen_by")
    )


def last_layers(layer_order: list[str]) -> list[str]:
    """The last channel layer and the last feature layer (``<layer>:features``), if any."""
    channels = [n for n in layer_order if not n.endswith(schema.FEATURE_SUFFIX)]
    features = [n for n in layer_order if n.endswith(schema.FEATURE_SUFFIX)]
    return [x[-1] for x in (channels, features) if x]


def graph_figures(graph, layer_order: list[str]) -> list[Figure]:
    """The ``concept_graph`` asset's ``study_quality`` rows.

    Headline: edge faithfulness; at the last mapped layer (channels, and features), the share
    of nodes that are concepts of their class and the classes whose top node is one, by the
    study's rule beside the other; the class logit's drop when each layer's graph nodes are
    zeroed against the other rule's units and random ones. Per layer: every rule's node
    figures and every unit set's mean drop.
    """
    rule, other = graph.rule, next(r for r in RULES if r != graph.rule)
    rho, n = graph.spearman_rho, len(graph.faithfulness)
    figures = [
        Figure(
            "faithfulness_spearman_rho",
            rho,
            "Spearman rank correlation between the sampled edges' weights and the drop of their "
            "target when their source cluster is ablated",
            # Under 3 ablated edges there is no correlation to show.
            name="edge faithfulness" if rho == rho else "",
            shown=f"Spearman ρ {rho:.2f} between edge weight and ablation drop ({n} edges)",
        ),
        Figure("faithfulness_edges_ablated", n, "edges whose source cluster was ablated"),
    ]
    order = {name: i for i, name in enumerate(layer_order)}
    if graph.checks.height:
        table = rule_table(graph.checks)
        value = {(r["layer"], r["rule"]): r for r in table.iter_rows(named=True)}
        parts, lead = [], float("nan")
        for layer in last_layers([x for x in layer_order if (x, rule) in value]):
            mine, theirs = value[(layer, rule)], value[(layer, other)]
            if lead != lead:
                lead = mine["share_of_class"]
            parts.append(
                f"{layer}: {mine['share_of_class']:.2f} of nodes, top node for "
                f"{mine['top_of_class']}/{mine['classes']} classes ({other} rule: "
                f"{theirs['share_of_class']:.2f}, {theirs['top_of_class']}/{theirs['classes']})"
            )
        figures.append(
            Figure(
                "nodes_of_class_last_layer",
                lead,
                "at the last mapped layer, the share of the classes' nodes whose cluster's top "
                "images are mostly of the class (clusters.top_class), by the study's rule",
                name=f"nodes that are concepts of their class ({rule} rule)",
                shown="; ".join(parts) or "n/a",
            )
        )
        for r in RULES:
            part = table.filter(pl.col("rule") == r).sort(
                pl.col("layer").replace_strict(order, default=len(order))
            )
            rows = list(part.iter_rows(named=True))
            figures += [
                Figure(
                    f"nodes_of_class_{r}",
                    x["share_of_class"],
                    f"share of the classes' nodes (by the {r} rule) whose cluster's top images "
                    "are mostly of the class",
                    layer=x["layer"],
                )
                for x in rows
            ] + [
                Figure(
                    f"top_node_of_class_{r}",
                    x["top_of_class"],
                    f"classes whose most important node (by the {r} rule) is a concept of the "
                    "class",
                    layer=x["layer"],
                )
                for x in rows
            ]
    if graph.ablation.height:
        drops = drop_table(graph.ablation)
        value = {(r["layer"], r["chosen_by"]): r["drop"] for r in drops.iter_rows(named=True)}
        layers = sorted({x for x, _ in value}, key=lambda x: order.get(x, len(order)))
        sets = (rule, other, RANDOM)
        per_layer = [
            f"{x} " + "/".join(f"{value.get((x, s), float('nan')):.2f}" for s in sets)
            for x in layers
        ]
        mean = float(np.mean([value[(x, rule)] for x in layers if (x, rule) in value]))
        figures.append(
            Figure(
                "node_ablation_drop",
                mean,
                "mean drop of the class logit when a layer's graph nodes are zeroed, over "
                "classes and layers",
                name="logit drop when a layer's nodes are zeroed",
                shown=f"{rule} nodes / as many {other} units / random units: "
                + ", ".join(per_layer),
            )
        )
        for s in sets:
            figures += [
                Figure(
                    f"node_ablation_drop_{s}",
                    value[(x, s)],
                    f"mean drop of the class logit over classes when as many units as the "
                    f"layer's graph nodes hold, chosen by {s}, are zeroed",
                    layer=x,
                )
                for x in layers
                if (x, s) in value
            ]
    return figures
