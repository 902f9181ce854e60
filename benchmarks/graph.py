"""The concept graph's node rules side by side, from a study's own tables.

For a materialized study (by default the built-in demo in the current folder), prints what the
``concept_graph`` asset measured and wrote to ``study_quality`` in one run (both rules' nodes
are chosen for every class; the graph uses ``graph.importance``):

- per layer and rule (``relevance``: what the class's logit uses; ``activation``: Summit's
  rule), the share of the classes' nodes that are concepts of their class (their cluster's
  top images are mostly of the class, ``clusters.top_class``) and for how many classes the
  most important node is one;
- per layer, the mean drop of the class logit when the layer's graph nodes are zeroed, when as
  many units chosen by the other rule are, and as many random units;
- the edges' faithfulness (Spearman rho of weight vs ablation drop);
- from the chunks' records, the seconds per class and per step.

    python benchmarks/graph.py                        # the demo study's database in ./data
    python benchmarks/graph.py --run --folder /tmp/g  # carto run the demo there first
    python benchmarks/graph.py --study my_study.yaml
    # the cost per class, interleaved with one forward + backward of the same classes' images
    python benchmarks/graph.py --study /tmp/reh/study.yaml --cost --classes 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def figures(store) -> dict[tuple[str, str | None], float]:
    from carto_assets.storage import quality

    return quality.figures_of(store.figures(), "concept_graph")


def cost(study_file: str, n_classes: int, per_round: int) -> None:
    """The graph's cost per class against one forward + backward of the class's images, the
    two interleaved in this process (rounds of ``per_round`` classes: their forward +
    backward, the graph chunk of those classes, their forward + backward again), so both see
    the same machine. Prints the per-step breakdown."""
    import time

    import numpy as np

    from carto_assets.stages import concept_graph as stage
    from carto_assets.stages.prepared import PreparedStudy

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from paper_scale import class_forward_backward_of

    prepared = PreparedStudy.load(study_file)
    study = prepared.study
    images, class_names = prepared.images, prepared.class_names
    bundle, source = prepared.bundle, prepared.source
    labels = list(range(min(n_classes, len(class_names))))
    fb = {"params": [], "frozen": [], "params_first": [], "frozen_first": []}
    steps: dict[str, float] = {}
    seconds = 0.0
    for lo in range(0, len(labels), per_round):
        part = labels[lo : lo + per_round]
        before = class_forward_backward_of(study, part, images, source, bundle)
        start = time.perf_counter()
        chunk = stage.concept_graph_chunk(prepared, part)
        seconds += time.perf_counter() - start
        after = class_forward_backward_of(study, part, images, source, bundle)
        for mode in fb:
            fb[mode].append((before[mode] + after[mode]) / 2)
        for k, v in chunk.summary.steps.items():
            steps[k] = steps.get(k, 0.0) + v
    n = len(labels)
    per = {k: v / n for k, v in steps.items()}
    ref = {k: float(np.mean(v)) for k, v in fb.items()}
    explaining = per.pop("explanations", 0.0)
    scan = per.pop("misclassified", 0.0)
    graph = seconds / n - explaining - scan
    print(
        f"\n{study.name}: {n} classes in rounds of {per_round}, interleaved with one forward + "
        "backward of each class's images (F+B: parameters requiring grad, as a training step; "
        "frozen: gradients to the input only), each class's first run (as the graph's work "
        f"runs once) and the best of 3: F+B {ref['params_first']:.3f} / "
        f"{ref['params']:.3f} s, frozen {ref['frozen_first']:.3f} / {ref['frozen']:.3f} s"
    )
    print(f"  {'step':<30}{'s/class':>9}{'x F+B':>8}{'x best':>8}{'x frozen':>10}")
    rows = [*per.items(), ("other (load, read, setup)", graph - sum(per.values()))]
    rows += [("= the graph, everything", graph), ("explanations (issue 22)", explaining)]
    rows += [("finding misclassified images", scan)]
    for name, value in rows:
        print(
            f"  {name:<30}{value:>9.3f}{value / ref['params_first']:>8.2f}"
            f"{value / ref['params']:>8.2f}{value / ref['frozen_first']:>10.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="", help="study YAML ('': the built-in demo)")
    parser.add_argument("--folder", type=Path, default=Path.cwd(), help="where the demo runs")
    parser.add_argument("--run", action="store_true", help="`carto run` the study first")
    parser.add_argument("--cost", action="store_true", help="measure the cost per class")
    parser.add_argument("--classes", type=int, default=16, help="classes --cost measures")
    parser.add_argument("--per-round", type=int, default=4, help="classes per --cost round")
    args = parser.parse_args()
    if args.cost:
        cost(args.study, args.classes, args.per_round)
        return
    args.folder.mkdir(parents=True, exist_ok=True)
    os.chdir(args.folder)
    if args.run:
        env = dict(os.environ, DAGSTER_HOME=str(args.folder / ".dagster"))
        command = [sys.executable, "-m", "carto_assets.cli.main", "run"]
        if args.study:
            command += ["--study", args.study]
        subprocess.run(command, check=True, env=env)

    from carto_assets.core.attribution.nodes import RULES
    from carto_assets.stages.prepared import open_store
    from carto_assets.study import load_study

    study = load_study(args.study or None)
    store = open_store(study)
    values = figures(store)
    layers = store.query("SELECT DISTINCT layer, layer_index FROM neurons ORDER BY layer_index")[
        "layer"
    ].to_list()
    rule = study.graph.importance
    print(f"study {study.name!r}: the graph's rule is {rule!r}; {study.database_path}")
    rows = []
    for layer in layers:
        row = {"layer": layer}
        for r in RULES:
            share = values.get((f"nodes_of_class_{r}", layer))
            top = values.get((f"top_node_of_class_{r}", layer))
            row[f"{r}: share of nodes of the class"] = None if share is None else round(share, 2)
            row[f"{r}: top node of the class"] = None if top is None else int(top)
        for s in (*RULES, "random"):
            drop = values.get((f"node_ablation_drop_{s}", layer))
            row[f"logit drop, {s} units"] = None if drop is None else round(drop, 2)
        rows.append(row)
    n_classes = store.query("SELECT count(DISTINCT label) AS n FROM concept_graph_nodes")["n"][0]
    with pl.Config(tbl_cols=20, tbl_rows=60, tbl_width_chars=220, fmt_str_lengths=40):
        print(pl.DataFrame(rows))
    print(f"(top node: classes out of {n_classes}; chance for 'of the class' is 1 / classes)")
    rho = values.get(("faithfulness_spearman_rho", None))
    n = values.get(("faithfulness_edges_ablated", None))
    print(f"edge faithfulness: Spearman rho {rho:.3f} over {n:.0f} ablated edges")
    summaries = sorted((study.files_dir / "concept_graph").glob("*/summary.json"))
    chunks = [json.loads(p.read_text()) for p in summaries]
    classes = max(1, sum(c["n_classes_computed"] for c in chunks))
    steps: dict[str, float] = {}
    for c in chunks:
        for k, v in c.get("steps", {}).items():
            steps[k] = steps.get(k, 0.0) + v / classes
    seconds = sum(c["seconds"] for c in chunks) / classes
    print(
        f"seconds per class {seconds:.3f} ("
        + ", ".join(f"{k} {v:.3f}" for k, v in steps.items())
        + f"; other {seconds - sum(steps.values()):.3f})"
    )


if __name__ == "__main__":
    main()
