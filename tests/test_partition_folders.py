"""Partition folders: tables then the summary, written whole; read back only what is asked."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import polars as pl
import pytest
from pydantic import BaseModel

from carto_assets import schema
from carto_assets.storage.partition_folders import SUMMARY, IncompleteFolder, PartitionLayout


class Record(BaseModel):
    run: int


LAYOUT = PartitionLayout(
    tables={"top_k": "activation_shard_top_k", "notes": None, "extra": None},
    summary=Record,
    optional=frozenset({"extra"}),
)


def tables(run: int) -> dict[str, pl.DataFrame]:
    return {
        "top_k": schema.frame(
            "activation_shard_top_k",
            {
                "neuron_id": [run, run + 1],
                "rank": [1, 1],
                "image_id": [7, 8],
                "activation": [0.5, 0.25],
                "y": [0, 1],
                "x": [1, 0],
            },
        ),
        "notes": pl.DataFrame({"run": [run], "text": [f"run {run}"]}),
    }


def test_write_then_read_the_tables_asked_for(tmp_path):
    folder = tmp_path / "shard-0000"
    written = tables(1)
    assert LAYOUT.write(folder, written, Record(run=1)) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["notes.parquet", SUMMARY, "top_k.parquet"]
    assert LAYOUT.is_complete(folder) and LAYOUT.read_summary(folder) == Record(run=1)

    got = LAYOUT.read(folder, ["notes"])
    assert list(got) == ["notes"] and got["notes"].equals(written["notes"])
    # Every table by default; the optional one this folder lacks is left out.
    everything = LAYOUT.read(folder)
    assert list(everything) == ["top_k", "notes"]
    assert everything["top_k"].equals(written["top_k"])
    assert LAYOUT.path(folder, "top_k") == folder / "top_k.parquet"

    # Rewritten without the optional table's frame after writing it: the old file goes too.
    LAYOUT.write(folder, {**tables(2), "extra": pl.DataFrame({"a": [1]})}, Record(run=2))
    assert LAYOUT.read(folder, ["extra"])["extra"]["a"].to_list() == [1]
    LAYOUT.write(folder, tables(3), Record(run=3))
    assert LAYOUT.read(folder, ["extra"]) == {}
    assert LAYOUT.read(folder, ["notes"])["notes"]["run"].to_list() == [3]


def test_a_folder_without_its_summary_is_incomplete_and_not_read(tmp_path):
    folder = tmp_path / "chunk"
    LAYOUT.write(folder, tables(1), Record(run=1))
    (folder / SUMMARY).unlink()
    assert not LAYOUT.is_complete(folder)
    assert LAYOUT.missing(folder) == [SUMMARY]
    assert LAYOUT.read_summary(folder) is None
    with pytest.raises(IncompleteFolder, match=r"not a complete partition \(no summary.json\)"):
        LAYOUT.read(folder, ["top_k"])

    # A required table missing: incomplete too (a folder of another version's layout).
    LAYOUT.write(folder, tables(2), Record(run=2))
    (folder / "notes.parquet").unlink()
    assert LAYOUT.missing(folder) == ["notes"]
    with pytest.raises(IncompleteFolder, match=r"no notes"):
        LAYOUT.read(folder)
    assert LAYOUT.missing(tmp_path / "never") == [SUMMARY, "top_k", "notes"]


def test_a_failed_write_leaves_the_previous_folder_whole(tmp_path):
    folder = tmp_path / "shard-0001"
    LAYOUT.write(folder, tables(1), Record(run=1))

    class Broken(pl.DataFrame):
        def write_parquet(self, *args, **kwargs):
            raise OSError(28, "No space left on device")

    half = {**tables(2), "notes": Broken({"run": [2]})}  # top_k is written before it fails
    with pytest.raises(OSError, match="No space left"):
        LAYOUT.write(folder, half, Record(run=2))
    assert LAYOUT.read_summary(folder) == Record(run=1)
    assert LAYOUT.read(folder)["top_k"].equals(tables(1)["top_k"])
    assert [p.name for p in tmp_path.iterdir()] == ["shard-0001"]  # nothing left beside it


def test_a_killed_write_leaves_the_previous_folder_readable(tmp_path):
    """A writer killed after its first table (no exception handling runs) leaves the previous
    complete folder readable, and the next write replaces it."""
    folder = tmp_path / "chunk-0002"
    LAYOUT.write(folder, tables(1), Record(run=1))
    killed = textwrap.dedent(
        f"""
        import os
        import polars as pl
        from pydantic import BaseModel
        from carto_assets.storage.partition_folders import PartitionLayout

        class Record(BaseModel):
            run: int

        class Killed(pl.DataFrame):
            def write_parquet(self, *args, **kwargs):
                os._exit(9)

        layout = PartitionLayout(tables={{"top_k": None, "notes": None}}, summary=Record)
        frames = {{"top_k": pl.DataFrame({{"a": [2]}}), "notes": Killed({{"run": [2]}})}}
        layout.write({str(folder)!r}, frames, Record(run=2))
        """
    )
    run = subprocess.run([sys.executable, "-c", killed], capture_output=True, text=True)
    assert run.returncode == 9, run.stderr
    # Only the killed writer's temporary folder is left beside it (the next writer with that
    # pid, or the images asset for shards, removes it).
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left[1:] == ["chunk-0002"] and left[0].startswith(".chunk-0002.")
    assert LAYOUT.read_summary(folder) == Record(run=1)
    assert LAYOUT.read(folder)["notes"]["run"].to_list() == [1]

    LAYOUT.write(folder, tables(3), Record(run=3))
    assert LAYOUT.read(folder)["notes"]["run"].to_list() == [3]


def test_names_outside_the_layout_are_refused(tmp_path):
    folder = tmp_path / "shard"
    with pytest.raises(ValueError, match=r"\['top_images'\] are not tables of a Record folder"):
        LAYOUT.write(folder, {**tables(1), "top_images": pl.DataFrame()}, Record(run=1))
    with pytest.raises(ValueError, match=r"needs the tables \['notes'\]"):
        LAYOUT.write(folder, {"top_k": tables(1)["top_k"]}, Record(run=1))
    assert not folder.exists()
    LAYOUT.write(folder, tables(1), Record(run=1))
    with pytest.raises(ValueError, match=r"its tables: top_k, notes, extra"):
        LAYOUT.read(folder, ["top_k", "nodes"])
    with pytest.raises(ValueError, match="not tables"):
        LAYOUT.path(folder, "summary")
    # A layout's tables are declared ones (or None): a table the schema lacks is refused.
    with pytest.raises(schema.SchemaError, match="'top_kk' is not declared"):
        PartitionLayout(tables={"top_k": "top_kk"}, summary=Record)
