"""The per-class concept graph: nodes, influence edges, cascades and the ablation checks.

No dagster imports. Classes are processed in chunks (the ``concept_graph_chunk`` partitions);
each class costs one forward pass of its sampled images with the autograd graph kept, then:

1. the relevance pass: one backward pass from the class's logit to every mapped layer, giving
   every unit's relevance (:mod:`carto_assets.core.attribution.relevance`);
2. the nodes, by the study's rule (``graph.importance``: relevance, or Summit's activation
   rule from ``class_importance``), and the other rule's for comparison
   (:mod:`carto_assets.core.attribution.nodes`);
3. the edge passes into the nodes (:func:`~carto_assets.core.attribution.influence.edge_sums`,
   ``graph.edge_images`` images per edge; prediction edges from the relevance pass) and the
   cascades;
4. the checks, restarted at their layers (:func:`~carto_assets.core.attribution.ablation.ablate`):
   each layer's graph nodes zeroed against as many units chosen by the other rule and at
   random, and a sample of edges' source clusters zeroed against their weights.

The stages take the step's :class:`~carto_assets.stages.prepared.PreparedStudy` (its manifest,
network and units loaded once), and every class's work depends on the class alone (its seeded
images, edge images and samples), so any chunking gives the same tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import torch
from pydantic import BaseModel, ConfigDict
from scipy.stats import spearmanr

from carto_assets import schema
from carto_assets.core.attribution.cascades import concept_cascades
from carto_assets.core.attribution.features import graph_pairs
from carto_assets.core.attribution.forward import RetainedForward, members_of
from carto_assets.core.attribution.influence import (
    Carry,
    edge_sums,
    edge_table,
    prediction_sums,
)
from carto_assets.core.attribution.nodes import RULES, choose_nodes, class_checks
from carto_assets.core.attribution.relevance import relevance, shares
from carto_assets.runtime.memory import release_memory
from carto_assets.stages.audit_checks import TABLES as AUDIT_TABLES
from carto_assets.stages.audit_checks import Auditor
from carto_assets.stages.class_sample import class_images
from carto_assets.stages.concept_graph_checks import ablation_checks, seed_for
from carto_assets.stages.explanation_chunk import TABLES as EXPLANATION_TABLES
from carto_assets.stages.explanation_chunk import Explainer
from carto_assets.stages.units import Units
from carto_assets.storage.partition_folders import SUMMARY, PartitionLayout
from carto_assets.storage.sharding import chunk_labels, n_class_chunks
from carto_assets.study import Study

if TYPE_CHECKING:
    from carto_assets.stages.prepared import PreparedStudy

#: Return freed memory to the OS after this many classes (and at the chunk's end).
RELEASE_EVERY = 4
#: The steps of a class's work, in order, as the timing breakdown names them.
STEPS = (
    "images",
    "forward",
    "relevance",
    "nodes",
    "edges",
    "cascades",
    "checks",
    "explanations",
    "misclassified",
    "audit",
)


# ---- results --------------------------------------------------------------------------------
@dataclass(frozen=True)
class GraphTables:
    """The concept graph's tables: of one chunk's classes (:class:`GraphChunk`, each with its
    ``label``) or of every class merged (:class:`ConceptGraph`). Each field's ``table`` is the
    declared table its rows are (``None``: kept for the merge's metadata only)."""

    #: the study's rule's nodes
    nodes: pl.DataFrame = field(metadata={"table": "concept_graph_nodes"})
    #: the units that made the nodes
    units: pl.DataFrame = field(metadata={"table": "concept_graph_units"})
    relevance: pl.DataFrame = field(metadata={"table": "class_relevance"})
    edges: pl.DataFrame = field(metadata={"table": "concept_graph_edges"})
    cascades: pl.DataFrame = field(metadata={"table": "concept_cascades"})
    #: ablation effects of the sampled edges (with their ``label`` in a chunk)
    faithfulness: pl.DataFrame = field(metadata={"table": "concept_graph_faithfulness"})
    #: each layer's nodes zeroed vs other units
    ablation: pl.DataFrame = field(metadata={"table": "concept_graph_ablation"})
    #: per class, layer and rule: nodes, nodes of the class, top node of the class
    checks: pl.DataFrame = field(metadata={"table": None})


#: Each of :class:`GraphTables`' fields -> the declared table its rows are (``None``: not one).
GRAPH_TABLES: dict[str, str | None] = {f.name: f.metadata["table"] for f in fields(GraphTables)}


class ChunkSummary(BaseModel):
    """A chunk's facts that are not tables: its ``summary.json``."""

    # Summaries written before this record lost its ``key`` (the folder's name) still read.
    model_config = ConfigDict(frozen=True, extra="ignore")

    labels: list[int]
    #: (lower, upper) layer pairs where the upper layer does not depend on the lower one
    no_dependency: list[tuple[str, str]]
    prediction_edges: bool
    #: whose logit relevance is for: ``class`` (the class's logit) or ``predicted``
    relevance_target: str
    n_classes_computed: int
    seconds: float
    #: seconds per step of :data:`STEPS`, summed over the chunk's classes
    steps: dict[str, float] = {}
    #: whether the checks' rows restarted at their layers (False: whole forward passes)
    restarted: bool = True
    #: images explained beyond the classes' samples (misclassified, listed)
    other_images: int = 0


@dataclass(frozen=True)
class GraphChunk(GraphTables):
    """The concept graph's per-class work for one chunk of classes: its tables, its summary
    and the ``explanation_chunk``'s tables (empty without ``explain.enabled``)."""

    summary: ChunkSummary = field(kw_only=True)
    explanations: dict[str, pl.DataFrame] = field(default_factory=dict, kw_only=True)
    #: the class audit's checks of the chunk's classes (empty without the audit)
    audit: dict[str, pl.DataFrame] = field(default_factory=dict, kw_only=True)


#: A chunk's folder: the graph's tables, the explanations' where enabled, then its summary.
CHUNK_FOLDER = PartitionLayout(
    tables={
        **GRAPH_TABLES,
        **{name: name for name in EXPLANATION_TABLES},
        **{name: None for name in AUDIT_TABLES},
    },
    summary=ChunkSummary,
    optional=frozenset((*EXPLANATION_TABLES, *AUDIT_TABLES)),
)


def graph_chunk_dir(study: Study, key: str) -> Path:
    return study.files_dir / "concept_graph" / key


# ---- one chunk ------------------------------------------------------------------------------
@dataclass
class _Context:
    study: Study
    model: torch.nn.Module
    units: Units
    class_names: list[str]
    activation: pl.DataFrame  # label, neuron_id, score of the chunk's classes
    top_class: dict[int, str]
    members: dict[str, dict[int, np.ndarray]]
    steps: dict[str, float]
    predict: bool | None = None
    pairs: list[tuple[str, str]] = field(default_factory=list)
    restarted: bool = True
    explainer: Explainer | None = None
    auditor: Auditor | None = None

    def tick(self, step: str, since: float) -> float:
        now = time.perf_counter()
        self.steps[step] = self.steps.get(step, 0.0) + now - since
        return now


def concept_graph_chunk(
    prepared: PreparedStudy, labels: list[int], progress: Callable[[str], None] | None = None
) -> GraphChunk:
    """Nodes, influence edges, cascades and the ablation checks for the classes ``labels``.

    Reads the database only (``neurons``, ``neuron_clusters``, ``clusters``,
    ``class_importance``), so chunks run in parallel processes. With dictionary features their
    pseudo-layers are units beside the channel layers: the channel layers keep their chain
    (the graph of a study without features), the feature layers form a second one
    (:func:`~carto_assets.core.attribution.features.graph_pairs`), and cascades stay in their
    root's chain.
    """
    say = progress or (lambda m: None)
    start = time.perf_counter()
    study, store = prepared.study, prepared.store
    images, class_names = prepared.images, prepared.class_names
    bundle, source, units = prepared.bundle, prepared.source, prepared.units
    present = set(images["label"].to_list())
    todo = [label for label in labels if label in present]
    activation = store.query(
        "SELECT label, neuron_id, score FROM class_importance WHERE label IN "
        f"({', '.join(str(int(x)) for x in todo) or '-1'})"
    )
    clusters = store.query("SELECT cluster_id, top_class FROM clusters")
    ctx = _Context(
        study=study,
        model=bundle.module.eval(),
        units=units,
        class_names=class_names,
        activation=activation,
        top_class=dict(zip(clusters["cluster_id"].to_list(), clusters["top_class"].to_list())),
        members={name: members_of(units.cluster_of[name]) for name in units.layers},
        steps=dict.fromkeys(STEPS, 0.0),
    )
    if study.explain.enabled:
        ctx.explainer = Explainer.for_chunk(prepared, todo)
    t = time.perf_counter()
    ctx.auditor = Auditor.for_chunk(prepared, todo)
    ctx.tick("audit", t)
    share = max(1, study.graph.faithfulness_edges // max(1, len(present)))
    other_images = 0
    parts: dict[str, list[pl.DataFrame]] = {name: [] for name in GRAPH_TABLES}
    no_dependency: set[tuple[str, str]] = set()
    computed = 0
    for k, label in enumerate(todo):
        t = time.perf_counter()
        ids, pixels, x = class_images(study, label, images, source, bundle)
        t = ctx.tick("images", t)
        if len(x) == 0:
            continue
        n_faith = share if study.graph.faithfulness_edges else 0
        result = _class_graph(ctx, label, ids, pixels, x, n_faith, t)
        if ctx.explainer is not None:
            t, scanned = time.perf_counter(), ctx.explainer.scan_seconds
            other_images += ctx.explainer.others(label, ids, bool(ctx.predict))
            # Finding the misclassified images is timed apart from explaining them.
            scan = ctx.explainer.scan_seconds - scanned
            ctx.tick("explanations", t + scan)
            ctx.steps["misclassified"] += scan
        computed += 1
        no_dependency.update(result.pop("no_dependency"))
        for name, frame in result.items():
            if frame is not None and frame.height:
                parts[name].append(frame.with_columns(label=pl.lit(label, dtype=pl.Int32)))
        say(
            f"class {class_names[label]} ({k + 1}/{len(todo)}): {result['nodes'].height} nodes, "
            f"{result['edges'].height} edges"
        )
        # The classes' autograd graphs were freed into malloc's heap (tensors under its mmap
        # threshold); return them, or later classes' allocations fragment on top of them.
        # Every few classes: each return costs the next class its pages again (googlenet,
        # 16 images: 0.25 s a class when returned after every class).
        if computed % RELEASE_EVERY == 0 or k == len(todo) - 1:
            release_memory()
    return GraphChunk(
        nodes=_typed(parts["nodes"], "nodes"),
        units=_typed(parts["units"], "units"),
        relevance=_typed(parts["relevance"], "relevance"),
        edges=_edge_table(parts["edges"]),
        cascades=_cascade_table(parts["cascades"]),
        faithfulness=pl.concat(parts["faithfulness"], how="diagonal_relaxed")
        if parts["faithfulness"]
        else pl.DataFrame(),
        ablation=_typed(parts["ablation"], "ablation"),
        checks=pl.concat(parts["checks"]) if parts["checks"] else pl.DataFrame(),
        summary=ChunkSummary(
            labels=list(labels),
            no_dependency=sorted(no_dependency),
            prediction_edges=bool(ctx.predict),
            relevance_target="class" if ctx.predict or ctx.predict is None else "predicted",
            n_classes_computed=computed,
            seconds=time.perf_counter() - start,
            steps=ctx.steps,
            restarted=ctx.restarted,
            other_images=other_images,
        ),
        explanations=ctx.explainer.tables() if ctx.explainer else {},
        audit=ctx.auditor.tables() if ctx.auditor else {},
    )


def _class_graph(
    ctx: _Context,
    label: int,
    ids: np.ndarray,
    pixels: np.ndarray,
    x: torch.Tensor,
    n_faith: int,
    t: float,
) -> dict:
    """One class's tables (without ``label``), from one forward pass of its images ``x``."""
    study, units, g = ctx.study, ctx.units, ctx.study.graph
    fwd = RetainedForward.run(ctx.model, units.layers, units.cluster_of, x, units.features)
    if ctx.predict is None:
        # Prediction edges need the model's outputs to be the study's classes: true for the
        # built-in model trained on them; for other models only when the head has that many.
        ctx.predict = study.is_builtin_model or fwd.logits.shape[1] == len(ctx.class_names)
        ctx.pairs = graph_pairs(
            [n for n in units.layers if n not in units.features],
            units.features,
            prediction=ctx.predict,
        )
    t = ctx.tick("forward", t)
    # Relevance for the class's logit; where the model's outputs are not the study's classes,
    # for what the model predicts on each image (its top logit).
    target = label if ctx.predict else fwd.logits.detach().argmax(dim=1).cpu().numpy()
    # The explanations reuse the pass: its gradients give the concepts' maps.
    rel = relevance(fwd, target, keep_grads=ctx.explainer is not None)
    t = ctx.tick("relevance", t)

    scores = {rule: _scores(ctx, label, rule, rel) for rule in RULES}
    chosen = {
        rule: choose_nodes(scores[rule], g.top_neuron_fraction, g.nodes_per_layer) for rule in RULES
    }
    nodes = chosen[g.importance]
    checks = pl.concat(
        [
            class_checks(chosen[rule], ctx.top_class, ctx.class_names).with_columns(
                rule=pl.lit(rule)
            )
            for rule in RULES
        ]
    ).drop("label")
    counted = _counted_units(scores[g.importance], g.top_neuron_fraction)
    t = ctx.tick("nodes", t)

    node_keys = set(zip(nodes["layer"].to_list(), nodes["cluster_id"].to_list()))
    uppers = list(dict.fromkeys(u for _, u in ctx.pairs if u != schema.PREDICTION))
    targets = {
        upper: {
            int(c): ctx.members[upper][int(c)]
            for c in nodes.filter(pl.col("layer") == upper)["cluster_id"].to_list()
        }
        for upper in uppers
    }
    carry = Carry.split(targets, fwd.n_images, g.edge_images, seed=seed_for(study, label, 3))
    sums = edge_sums(fwd, ctx.pairs, carry)
    prediction_sums(rel, ctx.pairs, into=sums)
    edge_columns, no_dependency = edge_table(units.cluster_of, ctx.pairs, sums)
    keep = np.array(
        [
            (sl, int(sc)) in node_keys
            for sl, sc in zip(edge_columns["source_layer"], edge_columns["source_cluster"])
        ],
        dtype=bool,
    )
    edges = {k: v[keep] for k, v in edge_columns.items()}
    t = ctx.tick("edges", t)
    cascades = concept_cascades(
        list(zip(nodes["layer"].to_list(), nodes["cluster_id"].to_list())), edges, units.chains
    )
    t = ctx.tick("cascades", t)

    if ctx.explainer is not None:
        ctx.explainer.sample(label, ids, pixels, fwd, x, rel, bool(ctx.predict))
        t = ctx.tick("explanations", t)
    fwd.release()
    ablation, faithfulness = ablation_checks(
        ctx, label, fwd, x, chosen, scores, edges, carry, n_faith
    )
    t = ctx.tick("checks", t)
    relevance_rows = _relevance_rows(units, rel)
    if ctx.auditor is not None:
        # The class audit's checks of the class's co-occurring terms, on this pass.
        ctx.auditor.check(label, ids, pixels, x, fwd, relevance_rows)
        ctx.tick("audit", t)
    return {
        "nodes": nodes,
        "units": counted,
        "relevance": relevance_rows,
        "edges": pl.DataFrame({c: np.asarray(v) for c, v in edges.items()}),
        "cascades": pl.DataFrame({c: np.asarray(v) for c, v in cascades.items()}),
        "faithfulness": faithfulness,
        "ablation": ablation,
        "checks": checks,
        "no_dependency": no_dependency,
    }


def _scores(ctx: _Context, label: int, rule: str, rel) -> pl.DataFrame:
    """One row per unit of every unit layer: the class's score by ``rule``."""
    frames = []
    act = ctx.activation.filter(pl.col("label") == label)
    act_score = dict(zip(act["neuron_id"].to_list(), act["score"].to_list()))
    for name in ctx.units.layers:
        neurons = ctx.units.neuron_of[name]
        if rule == "relevance":
            score = shares(rel.units[name]).mean(axis=0)
        else:
            score = np.array([act_score.get(int(n), 0.0) for n in neurons], dtype=np.float64)
        ok = neurons >= 0
        frames.append(
            pl.DataFrame(
                {
                    "label": np.full(int(ok.sum()), label, dtype=np.int32),
                    "neuron_id": neurons[ok],
                    "layer": [name] * int(ok.sum()),
                    "layer_index": np.full(int(ok.sum()), ctx.units.layer_index[name], np.int32),
                    "cluster_id": ctx.units.cluster_of[name][ok],
                    "score": score[ok],
                    "unit": np.flatnonzero(ok),
                }
            )
        )
    return pl.concat(frames)


def _counted_units(scores: pl.DataFrame, fraction: float) -> pl.DataFrame:
    """The units the nodes were made from: the top ``fraction`` of each layer, score > 0."""
    group = ["label", "layer"]
    return (
        scores.sort(
            ["label", "layer", "score", "neuron_id"], descending=[False, False, True, False]
        )
        .with_columns(r=pl.int_range(1, pl.len() + 1).over(group), size=pl.len().over(group))
        .filter(
            (pl.col("r") <= (pl.col("size") * fraction).ceil().clip(lower_bound=1))
            & (pl.col("score") > 0)
        )
        .select("neuron_id", "cluster_id", "score")
        .sort("neuron_id")
    )


def _relevance_rows(units: Units, rel) -> pl.DataFrame:
    frames = []
    for name in units.layers:
        neurons = units.neuron_of[name]
        ok = neurons >= 0
        frames.append(
            pl.DataFrame(
                {
                    "neuron_id": neurons[ok],
                    "relevance": rel.units[name].mean(axis=0)[ok],
                    "share": shares(rel.units[name]).mean(axis=0)[ok],
                }
            )
        )
    return pl.concat(frames).sort("neuron_id")


# ---- chunk files ----------------------------------------------------------------------------
def write_graph_chunk(study: Study, key: str, chunk: GraphChunk) -> Path:
    """One chunk's folder (:data:`CHUNK_FOLDER`) under ``concept_graph/<key>/``, replacing the
    previous one whole."""
    tables = {name: getattr(chunk, name) for name in GRAPH_TABLES}
    return CHUNK_FOLDER.write(
        graph_chunk_dir(study, key), {**tables, **chunk.explanations, **chunk.audit}, chunk.summary
    )


def _complete_chunk(study: Study, key: str) -> Path:
    out = graph_chunk_dir(study, key)
    missing = CHUNK_FOLDER.missing(out)
    if SUMMARY in missing:
        raise FileNotFoundError(
            f"class chunk {key} has no results under {out}; materialize the "
            f"concept_graph_chunk partition {key} first"
        )
    if missing:
        raise FileNotFoundError(
            f"class chunk {key} was written by an older version (no {', '.join(missing)}); "
            f"re-materialize the concept_graph_chunk partition {key}"
        )
    return out


def read_chunk_tables(study: Study, key: str, names: Sequence[str]) -> dict[str, pl.DataFrame]:
    """The tables ``names`` of a chunk's folder (an explanation table the chunk did not write
    is left out)."""
    return CHUNK_FOLDER.read(_complete_chunk(study, key), names)


def read_graph_chunk(study: Study, key: str) -> GraphChunk:
    out = _complete_chunk(study, key)
    summary = CHUNK_FOLDER.read_summary(out)
    return GraphChunk(
        **CHUNK_FOLDER.read(out, GRAPH_TABLES),
        summary=summary,
        explanations=CHUNK_FOLDER.read(out, EXPLANATION_TABLES),
        audit=CHUNK_FOLDER.read(out, AUDIT_TABLES),
    )


# ---- the merge ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConceptGraph(GraphTables):
    """The concept graph's tables for every class, merged from the chunks."""

    #: Spearman rank correlation of edge weight with ablation drop (NaN under 3 edges)
    spearman_rho: float
    no_dependency: list[tuple[str, str]]
    prediction_edges: bool
    relevance_target: str
    rule: str
    seconds: float
    chunks: int
    seconds_per_class: float
    #: seconds per step of :data:`STEPS`, per class
    steps_per_class: dict[str, float]
    restarted: bool


def merge_graph_chunks(prepared: PreparedStudy, chunks: list[GraphChunk]) -> ConceptGraph:
    """The concept graph's tables from every chunk (each class's nodes were chosen in its
    chunk; the merge only stacks them)."""
    study = prepared.study
    n_classes = len(prepared.class_names)
    summaries = [c.summary for c in chunks]
    covered = sorted(label for c in summaries for label in c.labels)
    if covered != list(range(n_classes)):
        missing = sorted(set(range(n_classes)) - set(covered))
        raise ValueError(
            f"the class chunks do not cover the study's {n_classes} classes exactly "
            f"(missing {missing[:10]}, {len(covered)} labels in {len(chunks)} chunks); "
            "re-materialize every concept_graph_chunk partition"
        )

    def stacked(name: str) -> list[pl.DataFrame]:
        return [getattr(c, name) for c in chunks if getattr(c, name).height]

    faith = pl.DataFrame()
    if stacked("faithfulness"):
        faith = pl.concat(stacked("faithfulness"), how="diagonal_relaxed")
        faith = faith.sort("label", maintain_order=True).drop("label")
    rho = float("nan")
    if len(faith) >= 3:
        rho = float(spearmanr(faith["weight"].to_numpy(), faith["drop"].to_numpy()).statistic)
    seconds = float(sum(c.seconds for c in summaries))
    computed = max(1, sum(c.n_classes_computed for c in summaries))
    steps = {s: sum(c.steps.get(s, 0.0) for c in summaries) / computed for s in STEPS}
    targets = {c.relevance_target for c in summaries if c.n_classes_computed}
    return ConceptGraph(
        nodes=_typed(stacked("nodes"), "nodes").sort(
            ["label", "layer_index", "importance", "cluster_id"],
            descending=[False, False, True, False],
        ),
        units=_typed(stacked("units"), "units").sort("label", "neuron_id"),
        relevance=_typed(stacked("relevance"), "relevance").sort("label", "neuron_id"),
        edges=_edge_table(stacked("edges")),
        cascades=_cascade_table(stacked("cascades")),
        faithfulness=faith,
        ablation=_typed(stacked("ablation"), "ablation").sort("label", "layer", "chosen_by"),
        checks=pl.concat(stacked("checks")) if stacked("checks") else pl.DataFrame(),
        spearman_rho=rho,
        no_dependency=sorted({p for c in summaries for p in c.no_dependency}),
        prediction_edges=any(c.prediction_edges for c in summaries),
        relevance_target=targets.pop() if len(targets) == 1 else "class",
        rule=study.graph.importance,
        seconds=seconds,
        chunks=len(chunks),
        seconds_per_class=seconds / computed,
        steps_per_class=steps,
        restarted=all(c.restarted for c in summaries),
    )


def concept_graph(
    prepared: PreparedStudy,
    progress: Callable[[str], None] | None = None,
    classes_per_chunk: int | None = None,
) -> ConceptGraph:
    """Every class's graph and checks, all chunks in this process (what the partitioned
    assets compute across processes, each with its own preparation)."""
    n_classes = len(prepared.class_names)
    per = classes_per_chunk or prepared.study.graph.classes_per_chunk
    chunks = [
        concept_graph_chunk(prepared, chunk_labels(i, n_classes, per), progress)
        for i in range(n_class_chunks(n_classes, per))
    ]
    return merge_graph_chunks(prepared, chunks)


def _typed(parts: list[pl.DataFrame], name: str) -> pl.DataFrame:
    """Per-class frames stacked as the declared table of :class:`GraphTables`' field ``name``
    (an empty table keeps its columns)."""
    columns = schema.polars_schema(GRAPH_TABLES[name])
    if not parts:
        return pl.DataFrame(schema=columns)
    df = pl.concat(parts, how="diagonal_relaxed")
    return df.select([pl.col(c).cast(t) for c, t in columns.items()])


def _edge_table(parts: list[pl.DataFrame]) -> pl.DataFrame:
    return _typed(parts, "edges").sort(
        "label", "target_layer", "target_cluster", "weight", descending=[False, False, False, True]
    )


def _cascade_table(parts: list[pl.DataFrame]) -> pl.DataFrame:
    return _typed(parts, "cascades").sort("label", "root_cluster", "direction", "depth")
