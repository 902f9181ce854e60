"""A user's annotations table: read into image_annotations rows, refused in one line."""

from __future__ import annotations

import polars as pl
import pytest

from carto_assets.sources.annotations import (
    AnnotationError,
    load_user_annotations,
    read_annotation_table,
)

SOURCES = ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]


def _csv(tmp_path, text: str, name: str = "notes.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_rows_split_values_skip_empty_cells_and_count_images_without_any(tmp_path):
    path = _csv(
        tmp_path,
        "path,weather,light\ncat/0.png,snow|fog,dark\n./dog/1.png, rain ,bright\ncat/1.png,,\n",
    )
    user = load_user_annotations(path, SOURCES)
    assert user.concepts == ("weather", "light")
    assert user.rows.to_dicts() == [
        {"image_id": 0, "concept": "light", "value": "dark"},
        {"image_id": 0, "concept": "weather", "value": "fog"},
        {"image_id": 0, "concept": "weather", "value": "snow"},
        {"image_id": 3, "concept": "light", "value": "bright"},
        {"image_id": 3, "concept": "weather", "value": "rain"},
    ]
    # cat/1.png is listed with empty cells only, dog/0.png is not listed: neither has a value.
    assert (user.n_unannotated, user.n_images) == (2, 4)


def test_a_parquet_table_reads_like_the_csv(tmp_path):
    path = tmp_path / "notes.parquet"
    pl.DataFrame(
        {"path": ["cat/0.png", "dog/0.png"], "weather": ["snow", "rain|fog"]}
    ).write_parquet(path)
    user = load_user_annotations(path, SOURCES)
    assert user.rows.to_dicts() == [
        {"image_id": 0, "concept": "weather", "value": "snow"},
        {"image_id": 2, "concept": "weather", "value": "fog"},
        {"image_id": 2, "concept": "weather", "value": "rain"},
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "path,weather\ncat/0.png,snow\ncat/9.png,rain\nbird/1.png,fog\n",
            "names 2 image(s) that are not among the study's 4 images, the first 'cat/9.png' "
            "(row 3); paths are relative to the image folder, e.g. 'cat/0.png'",
        ),
        (
            "path,weather\ncat/0.png,snow\ndog/0.png,rain\ncat/0.png,fog\n",
            "lists 1 path(s) more than once, the first 'cat/0.png' (rows 2, 4); give each image "
            "one row (several values go in one cell, separated by |)",
        ),
        ("path,weather\n", "has no rows; give one row per image"),
        ("", "has no rows; give one row per image"),
        (
            "path,weather,light\ncat/0.png,snow,dark\ndog/0.png,rain,dark\n",
            "column 'light' has one value ('dark') over all rows, which tells no images apart",
        ),
        ("path,weather\ncat/0.png,\ndog/0.png,\n", "column 'weather' has no values over all rows"),
        (
            "image,weather\ncat/0.png,snow\n",
            "has no `path` column (columns: image, weather); name the column that holds each "
            "image's path inside the image folder `path`",
        ),
        ("path\ncat/0.png\n", "has only a `path` column; add one column per concept"),
        (
            "path,class\ncat/0.png,a\ndog/0.png,b\n",
            "column 'class' is a concept the study already annotates",
        ),
    ],
)
def test_a_bad_table_is_refused_in_one_line(tmp_path, content, message):
    path = _csv(tmp_path, content)
    with pytest.raises(AnnotationError) as info:
        load_user_annotations(path, SOURCES)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"annotations file {path}")
    assert message in text


def test_a_file_that_is_not_utf8_is_refused_with_the_byte(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_bytes("path,weather\ncat/0.png,café\n".encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"is not UTF-8 text \(byte 0xe9 at offset 26\)"):
        read_annotation_table(path)


def test_a_column_named_after_a_ground_truth_concept_is_refused(tmp_path):
    path = _csv(tmp_path, "path,shape\ncat/0.png,round\ndog/0.png,square\n")
    with pytest.raises(AnnotationError, match="column 'shape' is a concept the study already"):
        load_user_annotations(path, SOURCES, reserved={"class", "shape"})


def test_a_parquet_list_column_holds_several_values_per_image(tmp_path):
    """The natural Parquet form of several values per cell: a list column."""
    path = tmp_path / "notes.parquet"
    pl.DataFrame(
        {"path": ["cat/0.png", "dog/0.png"], "weather": [["snow", "fog"], []]}
    ).write_parquet(path)
    user = load_user_annotations(path, SOURCES)
    assert user.rows.to_dicts() == [
        {"image_id": 0, "concept": "weather", "value": "fog"},
        {"image_id": 0, "concept": "weather", "value": "snow"},
    ]


def test_a_repeated_csv_header_is_refused(tmp_path):
    path = _csv(tmp_path, "path,weather,weather\ncat/0.png,snow,fog\n")
    with pytest.raises(
        AnnotationError, match=r"names the column\(s\) \['weather'\] more than once"
    ):
        read_annotation_table(path)


def test_a_parquet_tables_rows_are_numbered_from_one(tmp_path):
    """A CSV's rows are numbered by their line (the header is line 1); a Parquet file has no
    header row, so its first row is row 1."""
    path = tmp_path / "notes.parquet"
    pl.DataFrame(
        {"path": ["cat/0.png", "cat/9.png", "cat/0.png"], "weather": ["sun", "rain", "sun"]}
    ).write_parquet(path)
    with pytest.raises(AnnotationError, match=r"the first 'cat/0.png' \(rows 1, 3\)"):
        load_user_annotations(path, SOURCES)
    pl.DataFrame({"path": ["cat/0.png", "cat/9.png"], "weather": ["sun", "rain"]}).write_parquet(
        path
    )
    with pytest.raises(AnnotationError, match=r"the first 'cat/9.png' \(row 2\)"):
        load_user_annotations(path, SOURCES)
    pl.DataFrame({"path": ["cat/0.png", ""], "weather": ["sun", "rain"]}).write_parquet(path)
    with pytest.raises(AnnotationError, match=r"row 2 has an empty `path`"):
        load_user_annotations(path, SOURCES)


def test_a_tag_column_with_one_value_and_empty_cells_is_kept(tmp_path):
    """One value on some rows and none on the others tells the tagged images from the rest."""
    path = _csv(tmp_path, "path,weather,pet\ncat/0.png,sun,dog\ndog/0.png,rain,\n")
    user = load_user_annotations(path, SOURCES)
    assert ("pet", "dog") in set(zip(user.rows["concept"], user.rows["value"]))
