"""A class's seeded sample of images, as the concept graph, its explanations and the class
audit's checks draw it. No dagster imports."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from carto_assets.study import Study


def class_images(
    study: Study, label: int, images: pl.DataFrame, source, bundle, count: int | None = None
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Up to ``count`` (default ``graph.images_per_class``) images of the class (seeded
    sample): their ids (those that loaded), their pixels (uint8) and the model's input
    (normalized)."""
    ids = images.filter(pl.col("label") == label)["image_id"].to_numpy()
    rng = np.random.default_rng([study.seed, label])
    count = study.graph.images_per_class if count is None else count
    pick = np.sort(rng.choice(ids, size=min(len(ids), count), replace=False))
    pixels, ok = source.load_many(pick.tolist(), workers=4)
    return pick[ok], pixels, bundle.normalize(torch.from_numpy(pixels))
