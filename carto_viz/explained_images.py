"""The explained images in the page: per class, its explained images with their top concepts
per layer and their concept atlas; per concept, the images where it mattered most.

Read from the ``explanations`` asset's tables when the study has them (:func:`load`); the page
shows them in its images panel (``page/page.js``). Thumbnails are packed into sprite sheets
like the patches (``image-0000``, ...).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from carto_assets.core.attribution.explain import dequantize, dominant
from carto_viz.connection import attached_store
from carto_viz.sprites import pack_patches

#: ``explained_images.why`` as the page codes it.
WHY = {"sample": 0, "misclassified": 1, "listed": 2}
#: Concepts per layer shown in an image's card.
SHOWN = 3

QUERIES = {
    "explained_images": "SELECT image_id, label, predicted, why FROM explained_images",
    "explanation_concepts": "SELECT c.image_id, c.layer, c.rank, c.cluster_id, c.share, c.map, "
    "c.map_scale FROM explanation_concepts c JOIN explained_images e "
    "ON e.image_id = c.image_id AND e.predicted = c.target",
    "explanation_layers": "SELECT l.image_id, l.layer, l.map_height, l.map_width "
    "FROM explanation_layers l JOIN explained_images e "
    "ON e.image_id = l.image_id AND e.predicted = l.target",
    "relevance_exemplars": "SELECT cluster_id, rank, image_id FROM relevance_exemplars",
}


@dataclass(frozen=True)
class Explained:
    """What the page needs of the explanations: per class (lazy), and per concept."""

    classes: ClassImages
    #: cluster -> ``[[image_id, label], ...]`` in rank order (the images it mattered most in)
    exemplars: dict[int, list[list[int]]]
    #: the atlas's layer (the last layer of channels)
    atlas_layer: str


class ClassImages(Mapping[int, list]):
    """class label -> its explained images for the page, built when looked up: one entry per
    image ``{"i": id, "y": why code, "p": predicted, "l": [[row, [cluster, ...], [share,
    ...]], ...], "a": [height, width, cells]}`` (``cells`` row-major, an index into the atlas
    layer's concepts of ``l``, -1 where none is positive)."""

    def __init__(self, images, concepts, layers, rows: Mapping[str, int], atlas_layer: str):
        self._images, self._concepts, self._layers = images, concepts, layers
        self._rows, self._atlas = rows, atlas_layer
        self._labels = sorted(images)

    def __iter__(self) -> Iterator[int]:
        return iter(self._labels)

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, label: object) -> bool:
        # Mapping's own would build the class's entries (``self[label]``) only to drop them.
        return label in self._images

    def __getitem__(self, label: int) -> list:
        images = self._images[label]
        out = []
        for image_id, predicted, why in images.select("image_id", "predicted", "why").iter_rows():
            mine = self._concepts.get(image_id)
            shown, atlas = [], None
            if mine is not None:
                # Grouped in plain Python: an image has a few rows per layer, and a polars
                # filter per image and layer cost 25 ms an image at the paper's scale.
                # One read of the image's rows, its maps included (a polars gather per image
                # for the atlas's maps cost more than the rest of the image's entry).
                columns = mine.select(
                    "layer", "rank", "cluster_id", "share", "map", "map_scale"
                ).rows()
                by_layer: dict[str, list[tuple[int, int, int, float]]] = {}
                for i, (layer, rank, cluster, share, _, _) in enumerate(columns):
                    by_layer.setdefault(layer, []).append((rank, i, cluster, share))
                for layer, rows in by_layer.items():
                    rows.sort()
                    top = [r for r in rows if r[0] <= SHOWN]
                    shown.append(
                        [
                            self._rows.get(layer, -1),
                            [int(r[2]) for r in top],
                            [round(float(r[3]), 4) for r in top],
                        ]
                    )
                    if layer == self._atlas:
                        atlas = self._cells(image_id, [columns[r[1]][4:] for r in top])
            shown.sort(key=lambda entry: entry[0])
            out.append(
                {
                    "i": int(image_id),
                    "y": WHY.get(why, 0),
                    "p": int(predicted),
                    "l": shown,
                    "a": atlas,
                }
            )
        return out

    def _cells(self, image_id: int, shown: list[tuple[bytes, float]]):
        """The atlas: each cell's dominant concept among the shown ones (``shown``: their
        ``(map, map_scale)``, in rank order)."""
        dims = self._layers.get((image_id, self._atlas))
        if dims is None or not shown:
            return None
        height, width = dims
        maps = np.stack([dequantize(data, scale, height, width) for data, scale in shown])
        return [height, width, dominant(maps).ravel().tolist()]


def load(con, present: set[str]) -> dict[str, pl.DataFrame]:
    """The explanation tables the page reads, where the study has them (else none)."""
    if not set(QUERIES) <= present:
        return {}
    return {name: con.sql(query).pl() for name, query in QUERIES.items()}


def explained(tables: Mapping[str, pl.DataFrame], layer_rows: list[dict]) -> Explained | None:
    """The page's explanation data, or None where the study has no explanations."""
    if "explained_images" not in tables or tables["explained_images"].height == 0:
        return None
    rows = {r["name"]: r["row"] for r in layer_rows}
    channel = [r["name"] for r in layer_rows if r["kind"] == "channel"]
    atlas_layer = channel[-1] if channel else layer_rows[0]["name"]
    images = tables["explained_images"].sort("image_id")
    per_class = {
        int(key[0]): part
        for key, part in images.partition_by("label", as_dict=True, maintain_order=True).items()
    }
    concepts = {
        int(key[0]): part
        for key, part in tables["explanation_concepts"]
        .partition_by("image_id", as_dict=True)
        .items()
    }
    layers = {
        (int(i), layer): (int(h), int(w))
        for i, layer, h, w in tables["explanation_layers"]
        .select("image_id", "layer", "map_height", "map_width")
        .iter_rows()
    }
    label_of = dict(images.select("image_id", "label").iter_rows())
    exemplars: dict[int, list[list[int]]] = {}
    for cluster, image_id in (
        tables["relevance_exemplars"].sort("cluster_id", "rank").select("cluster_id", "image_id")
    ).iter_rows():
        exemplars.setdefault(int(cluster), []).append([int(image_id), int(label_of[image_id])])
    return Explained(
        ClassImages(per_class, concepts, layers, rows, atlas_layer), exemplars, atlas_layer
    )


def thumbnails(database_path, fmt: str = "jpeg"):
    """The explained images' thumbnails packed into sheets (``image-0000``, ...), keyed by
    image id: a :class:`carto_viz.sprites.SpriteAtlas`."""
    with attached_store(database_path) as con:
        frame = con.sql(
            "SELECT image_id AS neuron_id, 1 AS rank, thumb AS png FROM explained_images "
            "ORDER BY image_id"
        ).pl()
    atlas, _ = pack_patches(frame, fmt=fmt, prefix="image", workers=1)
    return atlas
