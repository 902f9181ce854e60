"""The images panel's per-class data (carto_viz/images.py) against a plain reference."""

from __future__ import annotations

import numpy as np
import polars as pl

from carto_assets.core.attribution.explain import dequantize, dominant
from carto_viz import images
from carto_viz.data import load_tables, view_data
from carto_viz.synthetic import make_database


def _reference(explained: images.Explained, label: int) -> list:
    """One polars filter and sort per image and layer (what the page's data was built with
    first): each layer's concepts of rank <= SHOWN, and the atlas from their maps."""
    classes = explained.classes
    out = []
    for image_id, predicted, why in (
        classes._images[label].select("image_id", "predicted", "why").iter_rows()
    ):
        mine = classes._concepts.get(image_id)
        shown, atlas = [], None
        if mine is not None:
            for (layer,), part in mine.partition_by("layer", as_dict=True).items():
                top = part.filter(pl.col("rank") <= images.SHOWN).sort("rank")
                shown.append(
                    [
                        classes._rows.get(layer, -1),
                        top["cluster_id"].to_list(),
                        [round(float(v), 4) for v in top["share"]],
                    ]
                )
                dims = classes._layers.get((image_id, explained.atlas_layer))
                if layer == explained.atlas_layer and dims is not None and top.height:
                    maps = np.stack(
                        [
                            dequantize(data, scale, *dims)
                            for data, scale in part.sort("rank")
                            .head(top.height)
                            .select("map", "map_scale")
                            .iter_rows()
                        ]
                    )
                    atlas = [*dims, dominant(maps).ravel().tolist()]
        shown.sort(key=lambda entry: entry[0])
        out.append({"i": image_id, "y": images.WHY.get(why, 0), "p": predicted, "l": shown})
        out[-1]["a"] = atlas
    return out


def test_class_images_match_the_reference(tmp_path):
    db = make_database(
        tmp_path / "x.duckdb",
        n_neurons=60,
        layers=("conv1", "conv2", "conv3"),
        class_names=("cat", "dog", "bird", "fish"),
        explained_per_class=2,
    )
    explained = view_data(load_tables(db)).explained
    assert explained is not None and len(explained.classes) == 4
    n_atlas = 0
    for label in explained.classes:
        got = explained.classes[label]
        assert got == _reference(explained, label)
        assert got and all(entry["l"] for entry in got)
        n_atlas += sum(entry["a"] is not None for entry in got)
    assert n_atlas > 0  # the atlas is compared too, not only None against None
