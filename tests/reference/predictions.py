"""Predictions the slow, obvious way: the oracles for the activation pass's
``image_predictions`` and for the explanations' misclassified images read from it."""

from __future__ import annotations

import numpy as np
import torch


def forward_logits(bundle, pixels: np.ndarray, batch: int = 64) -> np.ndarray:
    """The model's outputs (N, outputs) float32 over uint8 images (N, H, W, 3), no hooks."""
    out = []
    model = bundle.module.eval()
    with torch.no_grad():
        for lo in range(0, len(pixels), batch):
            x = bundle.normalize(torch.from_numpy(pixels[lo : lo + batch]))
            out.append(model(x).float().numpy())
    return np.concatenate(out)


def misclassified_by_forward_pass(
    prepared, label: int, skip: set[int], limit: int, batch_size: int
) -> np.ndarray:
    """What the explanations did before the predictions were stored: a forward pass over the
    class's images, in manifest order, until ``limit`` images outside ``skip`` are wrong."""
    import polars as pl

    ids = prepared.images.filter(pl.col("label") == label)["image_id"].to_numpy()
    out: list[int] = []
    with torch.no_grad():
        for lo in range(0, len(ids), max(1, batch_size)):
            part = ids[lo : lo + batch_size]
            pixels, ok = prepared.source.load_many(part.tolist(), workers=4)
            if not ok.any():
                continue
            x = prepared.bundle.normalize(torch.from_numpy(pixels))
            logits = prepared.bundle.module(x)
            wrong = part[ok][logits.argmax(dim=1).numpy() != label]
            out.extend(int(i) for i in wrong if int(i) not in skip)
            if len(out) >= limit:
                break
    return np.asarray(out[:limit], dtype=np.int64)
