"""Partition keys: activation shards and concept-graph class chunks (no dagster).

Two kinds of partitioned work, each keyed by a zero-padded index:

- ``shard-0000``, ``shard-0001``, ...: the activation pass, one shard of images per key;
- ``classes-0000``, ``classes-0001``, ...: the concept graph's per-class work,
  ``graph.classes_per_chunk`` consecutive class labels per key.

The Dagster partition definitions that use these keys live in
:mod:`carto_assets.assets.partitions`; the ``images`` asset registers the study's keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SHARD_PREFIX = "shard-"
CHUNK_PREFIX = "classes-"


def _index(key: str, prefix: str, what: str) -> int:
    digits = key[len(prefix) :] if key.startswith(prefix) else ""
    if not digits.isdigit():
        raise ValueError(f"not a {what} key: {key!r} (expected e.g. {prefix}0000)")
    return int(digits)


# ---- activation shards -------------------------------------------------------------------
def shard_key(shard: int) -> str:
    return f"{SHARD_PREFIX}{shard:04d}"


def shard_index(key: str) -> int:
    return _index(key, SHARD_PREFIX, "shard partition")


def shard_of(
    image_ids: Sequence[int] | np.ndarray,
    n_images: int,
    n_shards: int,
    shard_size: int | None = None,
) -> np.ndarray:
    """Shard of each image id.

    With ``shard_size`` (fixed-size shards): ``image_id // shard_size``, so appending images only
    adds shards and never moves an image. Without it (compatibility): contiguous, balanced
    shards, shard s holds ids [s*N/S, (s+1)*N/S) (growing N moves every image).
    """
    ids = np.asarray(image_ids, dtype=np.int64)
    if shard_size is not None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        return ids // shard_size
    return (ids * n_shards) // max(n_images, 1)


# ---- concept-graph class chunks ------------------------------------------------------------
def chunk_key(index: int) -> str:
    return f"{CHUNK_PREFIX}{index:04d}"


def chunk_index(key: str) -> int:
    return _index(key, CHUNK_PREFIX, "class-chunk")


def n_class_chunks(n_classes: int, classes_per_chunk: int) -> int:
    """How many chunks of ``classes_per_chunk`` consecutive class labels cover the classes."""
    return max(1, -(-n_classes // classes_per_chunk))


def chunk_labels(index: int, n_classes: int, classes_per_chunk: int) -> list[int]:
    """The class labels of chunk ``index``: ``[index * per, (index + 1) * per)``."""
    lo = index * classes_per_chunk
    return list(range(lo, min(n_classes, lo + classes_per_chunk)))
