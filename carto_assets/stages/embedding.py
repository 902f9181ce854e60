"""Neuron embedding stage: co-occurrence, skip-gram training, 2-D projection, neighbours.

No dagster imports. Charts for the asset metadata are drawn with Altair and rendered to PNG
with vl-convert (both offline).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from carto_assets.core.projection.neighbors import nearest_neighbors
from carto_assets.core.projection.umap2d import project_2d
from carto_assets.core.skipgram.trainer import train_skipgram_sentences
from carto_assets.runtime import progress as progress_of
from carto_assets.storage.quality import Figure
from carto_assets.storage.store import CartoStore
from carto_assets.study import EmbeddingConfig

#: The ``cooccurrence`` table computed inside DuckDB (``neuron_a < neuron_b``, how many top
#: images they share): the pairs (up to neurons^2 / 2, 15M for googlenet's 5,488) never pass
#: through Python, whose intermediate copies were the stage's memory peak.
#: Deduplicating the (small) top-k rows first lets the aggregate be a plain count: a
#: count(DISTINCT) keeps a set per pair (1.3 GB vs 0.75 GB peak, vs 1.0 GB for the scipy
#: path, on googlenet's 5,488 neurons x k=50 over 2,000 images; 10.9M pairs).
COOCCURRENCE_SELECT = """
    WITH t AS (SELECT DISTINCT neuron_id, image_id FROM top_images)
    SELECT a.neuron_id::BIGINT AS neuron_a, b.neuron_id::BIGINT AS neuron_b,
           count(*)::BIGINT AS count
    FROM t a JOIN t b ON a.image_id = b.image_id AND a.neuron_id < b.neuron_id
    GROUP BY ALL ORDER BY neuron_a, neuron_b
"""


@dataclass(frozen=True)
class EmbeddingResult:
    table: pl.DataFrame
    vectors: np.ndarray
    epoch_losses: list[float]
    n_isolated: int
    seconds: float


def train_embedding(
    store: CartoStore, cfg: EmbeddingConfig, seed: int, progress=None
) -> EmbeddingResult:
    """Skip-gram with negative sampling on one sentence of neurons per top image.

    Trained on ``top_images`` directly (word2vec's dynamic window over each image's shuffled
    neuron list), not on the ``cooccurrence`` table: the work is linear in the top-k entries.
    """
    n = int(store.query("SELECT count(*) AS n FROM neurons")["n"][0])
    top = store.query("SELECT neuron_id, image_id FROM top_images")
    start = time.perf_counter()
    progress_of.advance("embedding", 0, cfg.epochs, "epochs")
    result = train_skipgram_sentences(
        top["neuron_id"].to_numpy(),
        top["image_id"].to_numpy(),
        n,
        cfg,
        seed=seed,
        progress=lambda e, loss: (
            progress_of.advance("embedding", e, cfg.epochs, "epochs"),
            progress(f"epoch {e}/{cfg.epochs}: loss {loss:.4f}")
            if progress and (e == 1 or e % 5 == 0 or e == cfg.epochs)
            else None,
        ),
    )
    del top
    vectors = np.asarray(result.vectors, dtype=np.float32)
    table = pl.DataFrame(
        {
            "neuron_id": np.arange(n, dtype=np.int64),
            "vector": pl.Series(vectors, dtype=pl.Array(pl.Float32, vectors.shape[1])),
            "isolated": np.asarray(result.isolated, dtype=bool),
        }
    )
    return EmbeddingResult(
        table,
        vectors,
        list(result.epoch_losses),
        int(np.sum(result.isolated)),
        time.perf_counter() - start,
    )


def load_vectors(store: CartoStore) -> np.ndarray:
    df = store.query("SELECT neuron_id, vector FROM neuron_embedding ORDER BY neuron_id")
    return np.stack(df["vector"].to_numpy()).astype(np.float32)


def projection_frames(
    vectors: np.ndarray, cfg: EmbeddingConfig, seed: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``neuron_projection(neuron_id, x, y)`` and ``neuron_neighbors(neuron_id, rank,
    neighbor_id, similarity)`` (cosine, in embedding space)."""
    xy = project_2d(vectors, cfg, seed=seed)
    n = len(vectors)
    projection = pl.DataFrame(
        {
            "neuron_id": np.arange(n, dtype=np.int64),
            "x": xy[:, 0].astype(np.float64),
            "y": xy[:, 1].astype(np.float64),
        }
    )
    idx, sim = nearest_neighbors(vectors, k=min(cfg.neighbors, max(n - 1, 1)))
    k = idx.shape[1]
    neighbors = pl.DataFrame(
        {
            "neuron_id": np.repeat(np.arange(n, dtype=np.int64), k),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
            "neighbor_id": idx.reshape(-1).astype(np.int64),
            "similarity": sim.reshape(-1).astype(np.float64),
        }
    ).filter(pl.col("neighbor_id") >= 0)
    return projection, neighbors


def cluster_closeness(
    store: CartoStore, vectors: np.ndarray, seed: int = 0, n_random: int = 20000
) -> dict[str, float]:
    """Mean cosine distance between neurons of one cluster vs random pairs of the same layers.

    A ratio below 1 means the embedding puts neurons that share top images close together.
    """
    nc = store.query("SELECT neuron_id, cluster_id, layer FROM neuron_clusters ORDER BY neuron_id")
    if len(nc) != len(vectors):
        return {}
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    cid = nc["cluster_id"].to_numpy()
    layer = nc["layer"].to_numpy()
    same_a, same_b = [], []
    for c in np.unique(cid):
        members = np.flatnonzero(cid == c)
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                same_a.append(members[i])
                same_b.append(members[j])
    if not same_a:
        return {}
    same_a, same_b = np.array(same_a), np.array(same_b)
    rng = np.random.default_rng(seed)
    # Random pairs drawn with the same layer mix as the within-cluster pairs.
    ra = rng.choice(same_a, size=n_random)
    rb = np.empty_like(ra)
    for value in np.unique(layer[ra]):
        pool = np.flatnonzero(layer == value)
        picks = np.flatnonzero(layer[ra] == value)
        # A uniform partner other than itself: draw among the pool's other members.
        offset = rng.integers(1, len(pool), size=len(picks)) if len(pool) > 1 else 0
        pos = np.searchsorted(pool, ra[picks])
        rb[picks] = pool[(pos + offset) % len(pool)]
    d_same = float(np.mean(1 - np.sum(unit[same_a] * unit[same_b], axis=1)))
    d_rand = float(np.mean(1 - np.sum(unit[ra] * unit[rb], axis=1)))
    return {
        "within_cluster_cosine_distance": d_same,
        "random_same_layer_cosine_distance": d_rand,
        "closeness_ratio": d_same / max(d_rand, 1e-12),
        "within_cluster_pairs": len(same_a),
    }


#: What each of :func:`cluster_closeness`'s figures measures.
CLOSENESS_DEFINITIONS = {
    "within_cluster_cosine_distance": "mean cosine distance (embedding space) between neurons "
    "of one cluster",
    "random_same_layer_cosine_distance": "mean cosine distance between random pairs of neurons "
    "with the same layer mix",
    "closeness_ratio": "within-cluster over random-pair distance; below 1, the embedding puts "
    "neurons that share top images close together",
    "within_cluster_pairs": "pairs of neurons in one cluster that the closeness is measured on",
}


def closeness_figures(closeness: dict[str, float]) -> list[Figure]:
    """:func:`cluster_closeness`'s figures for ``study_quality`` (none without clusters)."""
    return [Figure(k, float(v), CLOSENESS_DEFINITIONS[k]) for k, v in closeness.items()]


def png_markdown(chart: Any, alt_text: str) -> str:
    """An Altair chart as an inline PNG in Markdown (for the Dagster UI)."""
    import altair as alt
    import vl_convert as vlc

    # Altair refuses inline data over 5,000 rows by default; a preview of every neuron of a
    # large model (googlenet: 5,488) is still a small picture.
    with alt.data_transformers.disable_max_rows():
        spec = chart.to_dict()
    png = vlc.vegalite_to_png(spec, scale=1)
    return f"![{alt_text}](data:image/png;base64,{base64.b64encode(png).decode()})"


def loss_chart(losses: list[float]) -> Any:
    import altair as alt

    df = pl.DataFrame({"epoch": np.arange(1, len(losses) + 1), "loss": losses})
    return (
        alt.Chart(df)
        .mark_line(point=True)
        .encode(x="epoch:Q", y="loss:Q")
        .properties(width=360, height=180, title="skip-gram loss per epoch")
    )


def projection_chart(projection: pl.DataFrame, neurons: pl.DataFrame) -> Any:
    import altair as alt

    df = projection.join(neurons.select("neuron_id", "layer", "layer_index"), on="neuron_id")
    return (
        alt.Chart(df)
        .mark_circle(size=18, opacity=0.8)
        .encode(
            x=alt.X("x:Q", axis=None),
            y=alt.Y("y:Q", axis=None),
            color=alt.Color("layer:N", sort=alt.SortField("layer_index")),
        )
        .properties(width=420, height=360, title="neuron projection (UMAP), coloured by layer")
    )
