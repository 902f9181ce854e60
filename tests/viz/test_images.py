"""The images panel's per-class data (carto_viz/explained_images.py) against a plain reference built
from the database's tables with SQL."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np

from carto_viz.data import load_tables, view_data
from carto_viz.synthetic import make_database

#: ``explained_images.why`` as the page codes it.
WHY = {"sample": 0, "misclassified": 1, "listed": 2}


def _plant(db: Path) -> int:
    """Rows the panel must leave out or code: a misclassified image (returned) also explained
    for its true class, and a fourth concept of every layer (the card shows three) whose map,
    ten times stronger, would win every cell of the atlas it were part of."""
    con = duckdb.connect(str(db))
    try:
        image_id, label = con.execute(
            "SELECT image_id, label FROM explained_images WHERE predicted <> label "
            "ORDER BY image_id LIMIT 1"
        ).fetchone()
        con.execute(
            "UPDATE explained_images SET why = 'misclassified' WHERE image_id = ?", [image_id]
        )
        con.execute(
            "INSERT INTO explanation_concepts SELECT * REPLACE (? AS target, "
            "cluster_id + 1000 AS cluster_id) FROM explanation_concepts WHERE image_id = ?",
            [label, image_id],
        )
        con.execute(
            "INSERT INTO explanation_concepts SELECT * REPLACE (4 AS rank, "
            "cluster_id + 2000 AS cluster_id, share / 10 AS share, map_scale * 10 AS map_scale) "
            "FROM explanation_concepts WHERE rank = 1"
        )
    finally:
        con.close()
    return image_id


def _reference(db: Path, label: int) -> list:
    """Per explained image of the class (by id): its why code, its prediction, per layer (in
    row order, a layer's row being its layer_index) the predicted class's three highest ranked
    concepts and shares, and for the last channel layer the atlas: per cell, which of those
    concepts' maps is largest there, -1 where none is positive."""
    con = duckdb.connect(str(db), read_only=True)
    row_of = dict(
        con.execute("SELECT layer, any_value(layer_index) FROM neurons GROUP BY 1").fetchall()
    )
    (atlas_layer,) = con.execute(
        "SELECT layer FROM neurons WHERE kind = 'channel' ORDER BY layer_index DESC LIMIT 1"
    ).fetchone()
    out = []
    for image_id, predicted, why in con.execute(
        "SELECT image_id, predicted, why FROM explained_images WHERE label = ? ORDER BY image_id",
        [label],
    ).fetchall():
        concepts = con.execute(
            "SELECT layer, cluster_id, share, map, map_scale FROM explanation_concepts "
            "WHERE image_id = ? AND target = ? AND rank <= 3 ORDER BY rank",
            [image_id, predicted],
        ).fetchall()
        shown, atlas = [], None
        for layer in sorted({c[0] for c in concepts}, key=row_of.get):
            mine = [c for c in concepts if c[0] == layer]
            shown.append([row_of[layer], [c[1] for c in mine], [round(c[2], 4) for c in mine]])
        dims = con.execute(
            "SELECT map_height, map_width FROM explanation_layers "
            "WHERE image_id = ? AND target = ? AND layer = ?",
            [image_id, predicted, atlas_layer],
        ).fetchone()
        maps = [
            np.frombuffer(data, np.int8).astype(np.float32) * np.float32(scale)
            for layer, _, _, data, scale in concepts
            if layer == atlas_layer
        ]
        if dims is not None and maps:
            maps = np.stack(maps)
            cells = np.where(maps.max(axis=0) > 0, maps.argmax(axis=0), -1)
            atlas = [*dims, cells.tolist()]
        out.append({"i": image_id, "y": WHY[why], "p": predicted, "l": shown, "a": atlas})
    con.close()
    return out


def test_class_images_match_the_reference(tmp_path):
    db = make_database(
        tmp_path / "x.duckdb",
        n_neurons=60,
        layers=("conv1", "conv2", "conv3"),
        class_names=("cat", "dog", "bird", "fish"),
        explained_per_class=2,
    )
    misclassified = _plant(db)
    explained = view_data(load_tables(db)).explained
    assert explained is not None and len(explained.classes) == 4
    assert explained.atlas_layer == "conv3"
    n_atlas, whys = 0, set()
    for label in explained.classes:
        got = explained.classes[label]
        assert got == _reference(db, label)
        assert got and all(entry["l"] for entry in got)
        n_atlas += sum(entry["a"] is not None for entry in got)
        whys |= {(entry["i"], entry["y"]) for entry in got}
    assert n_atlas > 0  # the atlas is compared too, not only None against None
    assert (misclassified, 1) in whys


def test_asking_whether_a_class_has_images_builds_none(tmp_path, monkeypatch):
    db = make_database(
        tmp_path / "x.duckdb",
        n_neurons=30,
        layers=("conv1", "conv2"),
        class_names=("cat", "dog"),
        explained_per_class=1,
    )
    classes = view_data(load_tables(db)).explained.classes
    built = []
    monkeypatch.setattr(type(classes), "__getitem__", lambda self, label: built.append(label))
    assert 0 in classes and 1 in classes and 2 not in classes and "0" not in classes
    assert built == []  # the export asks `label in classes` for every class, then builds it
