"""One embedding of every compared model's units, one 2-D map, and neighbours across models.

The studies see the same images, so each image's list of units (those having it among their
top-k) holds units of every model, and one skip-gram over those lists
(:func:`carto_assets.core.skipgram.trainer.train_skipgram_sentences`, as a study's embedding) places
units of different models that respond to the same images close together. ConceptEvo (Park et
al.) aligns other models to a base model's space through image embeddings; here the shared
images make one joint training enough.

Pure numpy; no dagster.
"""

from __future__ import annotations

import numpy as np

from carto_assets.core.projection.neighbors import check_vectors
from carto_assets.core.projection.umap2d import project_2d
from carto_assets.core.skipgram.trainer import SkipGramResult, train_skipgram_sentences
from carto_assets.study import EmbeddingConfig

__all__ = ["cross_neighbors", "joint_embedding", "match_closeness", "project_2d"]

_CHUNK_ELEMENTS = 8_000_000


def joint_embedding(
    unit_ids: np.ndarray,
    image_ids: np.ndarray,
    n_units: int,
    cfg: EmbeddingConfig,
    seed: int,
    progress=None,
) -> SkipGramResult:
    """Skip-gram over one list per image of every model's units (see the module docstring)."""
    return train_skipgram_sentences(
        unit_ids,
        image_ids,
        n_units,
        cfg,
        seed=seed,
        progress=progress,
    )


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    unit = check_vectors(vectors).astype(np.float64)
    norms = np.linalg.norm(unit, axis=1, keepdims=True)
    np.divide(unit, norms, out=unit, where=norms > 0)
    unit[norms[:, 0] == 0] = 0.0
    return unit


def cross_neighbors(
    vectors: np.ndarray, study: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each unit's ``k`` most similar units (cosine) among the *other* models' units.

    Returns ``(unit, rank, neighbor, similarity)`` arrays, ``k`` rows per unit (fewer where
    the other models have fewer units), most similar first, ties to the smaller id.
    """
    unit = _unit_rows(vectors)
    study = np.asarray(study)
    out_u, out_r, out_n, out_s = [], [], [], []
    for s in np.unique(study):
        rows = np.flatnonzero(study == s)
        others = np.flatnonzero(study != s)
        kk = min(k, others.size)
        if kk == 0:
            continue
        chunk = max(1, _CHUNK_ELEMENTS // max(others.size, 1))
        for start in range(0, rows.size, chunk):
            block = rows[start : start + chunk]
            sims = (unit[block] @ unit[others].T).astype(np.float32)
            # Sort by (-similarity, neighbour id): deterministic ties.
            order = np.lexsort((np.broadcast_to(others, sims.shape), -sims), axis=1)[:, :kk]
            out_u.append(np.repeat(block, kk))
            out_r.append(np.tile(np.arange(1, kk + 1), block.size))
            out_n.append(others[order].reshape(-1))
            out_s.append(np.take_along_axis(sims, order, axis=1).reshape(-1))
    if not out_u:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), empty.copy(), np.zeros(0, dtype=np.float32)
    return (
        np.concatenate(out_u).astype(np.int64),
        np.concatenate(out_r).astype(np.int64),
        np.concatenate(out_n).astype(np.int64),
        np.concatenate(out_s),
    )


def match_closeness(
    vectors: np.ndarray, a: np.ndarray, b: np.ndarray, study: np.ndarray, seed: int
) -> dict[str, float]:
    """How close the joint map puts matched units ``(a[i], b[i])``.

    ``match_is_nearest_share``: the share of ``a`` whose nearest unit of ``b``'s model (cosine)
    is its match; ``matched_pair_cosine`` against ``random_cross_pair_cosine``: the mean cosine
    similarity of the matched pairs and of random pairs of units of the same two models, on
    centred vectors (skip-gram vectors share a common direction that says nothing).
    """
    if a.size == 0:
        return {}
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    unit = _unit_rows(centred)
    matched = float(np.mean(np.sum(unit[a] * unit[b], axis=1)))
    rng = np.random.default_rng([seed, 3])
    ra, rb, nearest = [], [], 0
    for sa, sb in sorted({(int(x), int(y)) for x, y in zip(study[a], study[b], strict=True)}):
        pool_a, pool_b = np.flatnonzero(study == sa), np.flatnonzero(study == sb)
        ra.append(rng.choice(pool_a, 5000))
        rb.append(rng.choice(pool_b, 5000))
        pick = (study[a] == sa) & (study[b] == sb)
        sims = unit[a[pick]] @ unit[pool_b].T
        nearest += int(np.sum(pool_b[np.argmax(sims, axis=1)] == b[pick]))
    random = float(np.mean(np.sum(unit[np.concatenate(ra)] * unit[np.concatenate(rb)], axis=1)))
    return {
        "match_is_nearest_share": nearest / a.size,
        "matched_pair_cosine": matched,
        "random_cross_pair_cosine": random,
    }
