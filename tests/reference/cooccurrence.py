"""Oracle for the ``cooccurrence`` table (computed in SQL): co-occurrence counts with Python
sets."""

from __future__ import annotations

from itertools import combinations

import numpy as np


def cooccurrence_counts_bruteforce(
    neuron_ids: np.ndarray, image_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How many images every pair of neurons shares, for valid input.

    Compares the image sets of every pair of neurons with Python sets, which is quadratic in
    the number of neurons: int64 ``neuron_a < neuron_b`` and ``count >= 1``, sorted by
    ``(neuron_a, neuron_b)``, as the ``cooccurrence`` table holds them.
    """
    images_of: dict[int, set[int]] = {}
    for neuron, image in zip(
        np.asarray(neuron_ids).tolist(), np.asarray(image_ids).tolist(), strict=True
    ):
        images_of.setdefault(neuron, set()).add(image)
    rows = []
    for a, b in combinations(sorted(images_of), 2):
        shared = len(images_of[a] & images_of[b])
        if shared:
            rows.append((a, b, shared))
    if not rows:
        empty = np.empty(0, np.int64)
        return empty, empty.copy(), empty.copy()
    table = np.asarray(rows, dtype=np.int64)
    return table[:, 0], table[:, 1], table[:, 2]
