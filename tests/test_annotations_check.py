"""`carto check` on an image folder study with its own annotations table, typed as a user
types it: every bad table is one line naming the field and the fix; a good one passes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from readme.walk import CARTO, run, write_study

#: Each test types `carto check` as a subprocess: the CLI tier (`make test`), not the unit tier.
pytestmark = pytest.mark.slow

IMAGES = ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png", "dog/2.png"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A study's folder: an image folder of two classes, three PNGs each."""
    root = tmp_path_factory.mktemp("annotated")
    rng = np.random.default_rng(0)
    for name in IMAGES:
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / name)
    return root


def _check(folder, table: bytes, suffix: str = "csv"):
    """Write the table and a study naming it, then type `carto check --study <study>`."""
    name = f"notes-{abs(hash(table))}.{suffix}"
    (folder / name).write_bytes(table)
    study = write_study(
        folder,
        "mine",
        {
            "dataset": {"kind": "imagefolder", "path": "images", "image_size": 16},
            "top_k": 2,
            "shards": 1,
            "annotations": name,
        },
    )
    out = run([CARTO, "check", "--study", study.name], cwd=folder)
    errors = [line for line in out.stderr.splitlines() if not line.startswith("carto: details")]
    return out, errors, folder / name


@pytest.mark.parametrize(
    ("table", "says"),
    [
        (
            b"path,weather\ncat/0.png,snow\ncat/7.png,rain\nbird/0.png,fog\n",
            "names 2 image(s) that are not among the study's 6 images, the first 'cat/7.png' "
            "(row 3); paths are relative to the image folder, e.g. 'cat/0.png'",
        ),
        (
            b"path,weather\ncat/0.png,snow\ndog/1.png,rain\ncat/0.png,fog\n",
            "lists 1 path(s) more than once, the first 'cat/0.png' (rows 2, 4); give each image "
            "one row (several values go in one cell, separated by |)",
        ),
        (
            b"path,weather\n",
            "has no rows; give one row per image: a `path` column and one column per concept",
        ),
        (
            b"path,weather,light\ncat/0.png,snow,dark\ndog/0.png,rain,dark\n",
            "column 'light' has one value ('dark') over all rows, which tells no images apart; "
            "drop the column or give it at least two values",
        ),
        (
            "path,weather\ncat/0.png,neige\ndog/0.png,pluie fine \u2014 l\u00e9g\u00e8re\n".encode(
                "cp1252"
            ),
            "is not UTF-8 text (byte 0x97 at offset 50); save it as UTF-8",
        ),
        (
            b"file,weather\ncat/0.png,snow\n",
            "has no `path` column (columns: file, weather); name the column that holds each "
            "image's path inside the image folder `path`",
        ),
    ],
    ids=["unknown-images", "duplicate-keys", "no-rows", "one-value", "not-utf8", "no-path"],
)
def test_carto_check_refuses_a_bad_annotations_table_in_one_line(folder, table, says):
    out, errors, path = _check(folder, table)
    assert out.returncode == 2, out.output
    (line,) = errors
    assert line.startswith(f"carto: study field 'annotations': annotations file {path}"), line
    assert line.endswith(says), line


def test_carto_check_accepts_a_good_table_with_several_values_and_gaps(folder):
    table = "path,weather,light\ncat/0.png,snow|fog,dark\ndog/2.png,rain,\ncat/1.png,,bright\n"
    out, errors, _ = _check(folder, table.encode())
    out.ok()
    assert errors == []
    assert "study 'mine' is valid" in out.stdout


def test_carto_check_names_a_table_that_does_not_exist(folder):
    study = write_study(
        folder,
        "missing",
        {
            "dataset": {"kind": "imagefolder", "path": "images", "image_size": 16},
            "top_k": 2,
            "shards": 1,
            "annotations": "nowhere.csv",
        },
    )
    out = run([CARTO, "check", "--study", study.name], cwd=folder)
    assert out.returncode == 2
    assert "study field 'annotations' must be an existing file (no such file: " in out.stderr
