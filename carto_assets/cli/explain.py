"""``carto explain IMAGE``: which of the study's mapped concepts drove one image's prediction.

Any image file, not only the study's: the study's prepared model and its stored concepts
(clusters, their labels and patches) are reused, nothing is re-run. Prints the prediction, then
per layer the most relevant concepts with their share of the layer's relevance, label and
cluster id, and the completeness gap; ``--html OUT`` writes a small offline page with the
image, its concept atlas (the dominant concept of each region at a layer) and a legend of the
concepts' labels and patches. Registered in :func:`carto_assets.cli.main.main`.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from carto_assets.runtime.environment import STUDY_ENV_VAR

if TYPE_CHECKING:
    from carto_assets.stages.prepared import PreparedStudy

#: the tables the command reads from the study's database
NEEDED = ("neurons", "neuron_clusters", "clusters", "example_patches")


class ExplainError(Exception):
    """What the user must fix, in one line."""


def add_parser(sub) -> None:
    p = sub.add_parser("explain", help="which mapped concepts drove one image's prediction")
    p.add_argument("image", help="an image file (any format PIL reads), of the study's size")
    p.add_argument("--study", help=f"study YAML (default: ${STUDY_ENV_VAR}, else the demo study)")
    p.add_argument("--html", type=Path, help="also write a page with the concept atlas here")
    p.add_argument("--top", type=int, default=3, help="concepts shown per layer (default 3)")
    p.add_argument("--layer", help="the atlas's layer (default: the last mapped layer of channels)")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    from carto_assets.stages.prepared import PreparedStudy
    from carto_assets.study import StudyError

    try:
        prepared = PreparedStudy.load(args.study or os.environ.get(STUDY_ENV_VAR) or None)
    except StudyError as exc:
        print(f"carto: invalid study: {exc}", file=sys.stderr)
        return 2
    try:
        if args.top < 1:
            raise ExplainError(f"--top must be >= 1, got {args.top}")
        report = explain_file(prepared, Path(args.image), args.top, args.layer)
    except ExplainError as exc:
        print(f"carto: {exc}", file=sys.stderr)
        return 2
    print(report.text())
    if args.html:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(report.html(), encoding="utf-8")
        print(f"Page:     {args.html}")
    return 0


def read_image(path: Path, size: int) -> np.ndarray:
    """The file as uint8 (size, size, 3); :class:`ExplainError` for a missing or unreadable
    file or one of another size."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise ExplainError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            img.load()
            pixels = np.array(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ExplainError(f"{path}: not an image PIL can read ({type(exc).__name__})") from None
    if pixels.shape[:2] != (size, size):
        h, w = pixels.shape[:2]
        raise ExplainError(
            f"{path} is {w}x{h} px; the study's model takes {size}x{size} images "
            "(dataset.image_size): resize or crop it first"
        )
    return pixels


#: how :func:`~carto_assets.stages.unit_labels.cluster_words` ends an always-on concept's words
ALWAYS_ON = " · always on"


class Report:
    """One image's explanation: what the text and the page show."""

    def __init__(self, path, pixels, prediction, layers, atlas, legend, always_on=0.9):
        self.path, self.pixels, self.prediction = path, pixels, prediction
        self.layers, self.atlas, self.legend = layers, atlas, legend
        #: the study's ``labels.always_on``, said under the lines it marks
        self.always_on = always_on

    def text(self) -> str:
        p = self.prediction
        lines = [f"{self.path}: {p['name']} (logit {p['logit']:.3f}, probability {p['p']:.2f})"]
        for layer in self.layers:
            lines.append(
                f"  {layer['layer']}: relevance {layer['total']:.3f} of the logit "
                f"(gap {layer['gap']:+.3f})"
            )
            for c in layer["concepts"]:
                lines.append(
                    f"    {c['share']:+.0%}  cluster {c['cluster_id']}  {c['label'] or '-'}"
                )
        if any(c["label"].endswith(ALWAYS_ON) for layer in self.layers for c in layer["concepts"]):
            lines.append(
                f"(always on: on for at least {self.always_on:.0%} of the images, a fixed part "
                "of the logit whatever the image; listed after the others)"
            )
        return "\n".join(lines)

    def html(self) -> str:
        from carto_viz.export import explain_page, script_json

        data = {
            "title": f"{self.path.name}: {self.prediction['name']}",
            "image": _png_uri(self.pixels),
            "atlas": self.atlas,
            "legend": self.legend,
            "layers": self.layers,
        }
        return explain_page(script_json(data))


def _png_uri(pixels: np.ndarray) -> str:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def explain_file(prepared: PreparedStudy, path: Path, top: int, atlas_layer: str | None) -> Report:
    """Explain the image at ``path`` with the prepared study's model and stored concepts, by
    the pipeline's own explanation of an image
    (:func:`carto_assets.stages.explanation_chunk.explain_image`)."""
    import torch

    from carto_assets.core.attribution import explain as core
    from carto_assets.sources.datasets import study_image_size
    from carto_assets.stages.explanation_chunk import explain_image
    from carto_assets.stages.unit_labels import cluster_words

    study, store = prepared.study, prepared.store
    size = study_image_size(study)
    pixels = read_image(path, size)  # a bad file is named before the study is opened
    database = study.database_path
    if not database.is_file():
        raise ExplainError(
            f"study {study.name!r} has not been run (no database at {database}); run "
            "`carto run` first"
        )
    missing = [t for t in NEEDED if not store.table_exists(t)]
    if missing:
        raise ExplainError(
            f"study {study.name!r} has not been run (no {', '.join(missing)} in {database}); "
            "run `carto run` first"
        )
    try:
        class_names = prepared.class_names
        units = prepared.units  # the model built, the dictionaries loaded: else "not run"
    except (FileNotFoundError, ValueError) as exc:
        raise ExplainError(
            f"study {study.name!r} has not been run: {exc}; run `carto run` first"
        ) from None
    explained = explain_image(prepared, pixels, top)
    logits = torch.from_numpy(explained.logits)
    predicted = explained.predicted
    labels = cluster_words(store)
    matches = logits.shape[0] == len(class_names)
    prediction = {
        "index": predicted,
        "name": class_names[predicted] if matches else f"output {predicted}",
        "logit": float(logits[predicted]),
        "p": float(torch.softmax(logits, 0)[predicted]),
    }
    logit = explained.relevance.logits[0]
    report_layers, by_layer = [], {}
    for layer in explained.layers:
        concepts, order = layer.concepts, layer.top[0]
        report_layers.append(
            {
                "layer": layer.layer,
                "total": float(concepts.total[0]),
                "gap": float(logit - concepts.total[0]),
                "concepts": [
                    {
                        "cluster_id": int(concepts.clusters[j]),
                        "share": float(concepts.share[0, j]),
                        "label": labels.get(int(concepts.clusters[j]), ""),
                    }
                    for j in order
                ],
            }
        )
        by_layer[layer.layer] = layer
    channel_layers = [n for n in units.layers if n not in units.features]
    chosen = atlas_layer or channel_layers[-1]
    if chosen not in by_layer:
        raise ExplainError(f"--layer {chosen!r} is not a mapped layer; valid: {units.layers}")
    layer = by_layer[chosen]
    concepts, order = layer.concepts, layer.top[0]
    cells = core.dominant(layer.maps[0])
    patches = _patches(store, units, chosen, concepts.clusters[order])
    atlas = {"layer": chosen, "cells": cells.tolist()}
    legend = [
        {
            "index": k,
            "cluster_id": int(concepts.clusters[j]),
            "label": labels.get(int(concepts.clusters[j]), ""),
            "share": float(concepts.share[0, j]),
            "patch": patches.get(int(concepts.clusters[j])),
        }
        for k, j in enumerate(order)
    ]
    return Report(path, pixels, prediction, report_layers, atlas, legend, study.labels.always_on)


def _patches(store, units, layer: str, clusters) -> dict[int, str]:
    """Each cluster's picture: its first member's strongest patch, as a data URI."""
    wanted = {int(c) for c in clusters}
    first = {}
    for unit, cluster in enumerate(units.cluster_of[layer]):
        if int(cluster) in wanted and int(cluster) not in first:
            first[int(cluster)] = int(units.neuron_of[layer][unit])
    if not first:
        return {}
    ids = ", ".join(str(n) for n in first.values())
    rows = store.query(
        f"SELECT neuron_id, png FROM example_patches WHERE rank = 1 AND neuron_id IN ({ids})"
    )
    png = dict(rows.iter_rows())
    return {
        c: "data:image/png;base64," + base64.b64encode(png[n]).decode("ascii")
        for c, n in first.items()
        if n in png
    }
