"""The images stage's manifest of a shapes study with planted shortcuts: the same images and
labels as without them, and ground truth holding the values rendered."""

from __future__ import annotations

import polars as pl

from carto_assets.sources.datasets import open_source
from carto_assets.sources.shapes import Shortcut, render, sample_scene
from carto_assets.stages.images import build_manifest, unpack_mask
from carto_assets.study import study_from_dict

PLANTED = {"class": "heart", "concept": "texture", "value": "dots", "share": 1.0}


def _study(*shortcuts):
    dataset = {"kind": "shapes", "size": 200, "image_size": 32, "shortcuts": list(shortcuts)}
    return study_from_dict({"dataset": dataset, "top_k": 4, "shards": 2, "seed": 3})


def test_a_planted_study_s_manifest_holds_the_planted_values():
    planted, plain = build_manifest(_study(PLANTED)), build_manifest(_study())
    assert planted.images.equals(plain.images)  # ids, shards, sources and labels alike
    assert planted.concepts is not None and plain.concepts is not None
    textures = planted.concepts.filter(pl.col("concept") == "texture").join(
        planted.images.select("image_id", "label_name"), on="image_id"
    )
    hearts = textures.filter(pl.col("label_name") == "heart")
    assert len(hearts) > 0 and hearts["value"].unique().to_list() == ["dots"]
    assert not planted.concepts.equals(plain.concepts)
    source = open_source(_study(PLANTED))
    scene = sample_scene(3, 5, [Shortcut("heart", "texture", "dots", 1.0)])
    assert (source.load(5) == render(scene, 32)).all()


def test_the_masks_are_each_image_s_object_packed():
    manifest, source = build_manifest(_study()), open_source(_study())
    masks = manifest.masks
    assert masks is not None and masks["image_id"].to_list() == list(range(200))
    assert masks.schema == {
        "image_id": pl.Int64,
        "height": pl.Int32,
        "width": pl.Int32,
        "mask": pl.Binary,
    }
    for image_id, height, width, packed in masks.iter_rows():
        assert (height, width) == (32, 32)
        assert (unpack_mask(packed, height, width) == source.object_mask(image_id)).all()


def test_the_shapes_one_pass_scan_equals_the_per_call_reference():
    """ShapesSource.scan draws each scene once; ImageSource.scan (records, concept_rows and
    object_mask in turn) is the plain reference. Planted shortcuts, odd size."""
    from carto_assets.sources.datasets import ImageSource

    for study in (_study(PLANTED), _study()):
        source = open_source(study)
        fast, reference = source.scan(), ImageSource.scan(source)
        assert fast.sources == reference.sources
        assert fast.label_names == reference.label_names
        assert fast.labels.tolist() == reference.labels.tolist()
        for column in ("image_id", "concept", "value"):
            assert list(fast.concepts[column]) == list(reference.concepts[column]), column
        assert fast.masks[0].tolist() == reference.masks[0].tolist()
        assert fast.masks[1].tolist() == reference.masks[1].tolist()
        assert fast.masks[2] == reference.masks[2]
