"""Explanations measured on ground truth, and what they cost, on the demo and on digits.

For each study (the built-in shapes demo, and a digits study with the built-in model), run with
`carto run` into ``--folder`` (or read where it already ran), prints what the ``explanations``
asset measured and wrote to ``study_quality``:

- the pointing game at the last mapped layers: the share of the prediction's positive
  relevance inside the object (the shape's pixels, the digit's ink: ``image_masks``) for the
  whole explanation and for its top concept, against the object's share of the image;
- concept deletion (C-Deletion): the area under the predicted logit while the image's concepts
  are zeroed one by one, in relevance order, activation order and random order;
- the completeness gap per layer (median |logit - layer total| / |logit|);
- the cost per class: the forward pass and relevance pass the explanations share with the
  graph, plus the explanations' own work (maps, deletion rows, the misclassified images' own
  passes), against one forward + backward of the explained images, measured in this process.

    python benchmarks/explain.py --folder /tmp/explain           # runs both studies there
    python benchmarks/explain.py --folder /tmp/explain --no-run  # reads the runs already made
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DIGITS = {
    "name": "digits-explain",
    "model": "builtin",
    "dataset": {"kind": "digits", "image_size": 32},
    "layers": "auto",
    "batch_size": 128,
    "shards": 2,
    "top_k": 30,
    "seed": 0,
    "database": "digits.duckdb",
}


def run_study(folder: Path, study_file: str) -> None:
    env = dict(os.environ, DAGSTER_HOME=str(folder / ".dagster"))
    command = [sys.executable, "-m", "carto_assets.cli.main", "run"]
    if study_file:
        command += ["--study", study_file]
    subprocess.run(command, check=True, env=env, cwd=folder)


def forward_backward(study, image_ids: list[int]) -> float:
    """Best of 3 of one forward + backward (parameters requiring grad) of these images."""
    import torch

    from carto_assets.stages.prepared import PreparedStudy

    prepared = PreparedStudy.open(study)
    bundle = prepared.bundle
    model = bundle.module.eval()
    pixels, _ = prepared.source.load_many(image_ids, workers=4)
    x = bundle.normalize(torch.from_numpy(pixels))
    best = float("inf")
    for _ in range(3):
        xx = x.clone().requires_grad_(True)
        start = time.perf_counter()
        out = model(xx)
        (out.logits if hasattr(out, "logits") else out).sum().backward()
        best = min(best, time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return best


def report(folder: Path, study_file: str) -> None:
    os.chdir(folder)
    from carto_assets.stages.prepared import open_store
    from carto_assets.storage import quality
    from carto_assets.study import load_study

    study = load_study(study_file or None)
    store = open_store(study)
    values = quality.figures_of(store.figures(), "explanations")
    layers = sorted({layer for (_, layer) in values if layer is not None})
    print(f"\n== {study.name} ({study.dataset.kind}), {study.database_path}")
    images = store.query("SELECT why, count(*) AS n FROM explained_images GROUP BY why")
    print("explained images: " + ", ".join(f"{w} {n}" for w, n in images.iter_rows()))
    print(f"{'layer':<18}{'object':>8}{'top':>8}{'mask':>8}{'AUC rel':>9}{'AUC act':>9}"
          f"{'AUC rnd':>9}{'gap':>8}")  # fmt: skip
    for layer in layers:
        cells = [
            values.get((k, layer), float("nan"))
            for k in (
                "object_share",
                "top_concept_object_share",
                "mask_share",
                "deletion_auc_relevance",
                "deletion_auc_activation",
                "deletion_auc_random",
                "completeness_gap",
            )
        ]
        print(
            f"{layer:<18}" + "".join(f"{c:>{w}.3f}" for c, w in zip(cells, (8, 8, 8, 9, 9, 9, 8)))
        )
    print(
        "(object: share of the prediction's positive relevance inside the object; top: the top "
        "concept's; mask: the object's share of the image; AUC: mean logit / clean logit over "
        "the deletion steps, lower falls faster; gap: median |logit - total| / |logit|)"
    )
    chunks = [
        json.loads(p.read_text())
        for p in sorted((study.files_dir / "concept_graph").glob("*/summary.json"))
    ]
    classes = max(1, sum(c["n_classes_computed"] for c in chunks))
    steps = {
        k: sum(c["steps"].get(k, 0.0) for c in chunks) / classes
        for k in ("images", "forward", "relevance", "explanations", "misclassified")
    }
    explained = store.query(
        "SELECT image_id FROM explained_images e JOIN images i USING (image_id) "
        "WHERE i.label = 0 ORDER BY image_id"
    )["image_id"].to_list()
    per_class = store.query("SELECT count(*) AS n FROM explained_images")["n"][0] / classes
    fb = forward_backward(study, explained)
    cost = steps["forward"] + steps["relevance"] + steps["explanations"]
    print(
        f"cost per class ({per_class:.1f} images explained, class 0: {len(explained)}): shared "
        f"forward {steps['forward']:.3f} s + relevance {steps['relevance']:.3f} s + the "
        f"explanations' own {steps['explanations']:.3f} s = {cost:.3f} s against one "
        f"forward + backward of class 0's explained images {fb:.3f} s: {cost / fb:.2f}x; "
        f"besides, finding the misclassified images {steps['misclassified']:.3f} s "
        "(a forward pass over the class's images)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--no-run", action="store_true", help="read the runs already made")
    args = parser.parse_args()
    demo, digits = args.folder / "demo", args.folder / "digits"
    for folder in (demo, digits):
        folder.mkdir(parents=True, exist_ok=True)
    (digits / "digits.yaml").write_text(yaml.safe_dump(DIGITS))
    if not args.no_run:
        run_study(demo, "")
        run_study(digits, "digits.yaml")
    for folder, study_file in ((demo, ""), (digits, "digits.yaml")):
        report(folder, study_file)


if __name__ == "__main__":
    main()
