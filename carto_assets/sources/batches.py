"""The activation stage's loader: a source's images as batches of uint8 pixels, decoded in
DataLoader workers, images that fail to decode left out and counted.

It imports torch, numpy and the sources alone (not the store's packages), so
``benchmarks/gpu.py --no-graph`` runs on a machine that has PyTorch and pydantic only.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from carto_assets.core.network.recorder import Batch
from carto_assets.sources.datasets import ImageFolderSource, ImageSource


class ShardBatches(torch.utils.data.Dataset):
    """The images ``image_ids`` (in that order) as a dataset of batches (uint8 pixels), for a
    DataLoader with workers.

    Each item is (image_ids, pixels (b, H, W, 3) uint8, labels, failed_ids); images that fail to
    decode are dropped from the batch and reported in ``failed_ids``. ``threads`` decode each
    batch (image folders; PIL releases the GIL while decoding).
    """

    def __init__(
        self,
        source: ImageSource,
        image_ids: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        threads: int = 1,
    ) -> None:
        self.source = source
        self.image_ids = image_ids
        self.labels = labels
        self.batch_size = batch_size
        self.threads = threads

    def __len__(self) -> int:
        return -(-len(self.image_ids) // self.batch_size)

    def __getitem__(self, index: int):
        lo = index * self.batch_size
        ids = self.image_ids[lo : lo + self.batch_size]
        pixels, ok = self.source.load_many(ids.tolist(), workers=self.threads)
        return (
            torch.from_numpy(ids[ok].copy()),
            torch.from_numpy(pixels),
            torch.from_numpy(self.labels[lo : lo + self.batch_size][ok].astype(np.int64)),
            torch.from_numpy(ids[~ok].copy()),
        )


def load_batches(
    source: ImageSource,
    image_ids: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    workers: int = 0,
    pin_memory: bool = False,
    failures: list[tuple[int, str]] | None = None,
) -> Iterator[Batch]:
    """The images ``image_ids`` (with their ``labels``), in that order, as the activation stage
    reads them: :class:`ShardBatches` in a DataLoader with ``workers`` processes. Images that
    fail to decode are left out of their batch and appended to ``failures`` as
    ``(image_id, reason)``."""
    # Without DataLoader workers, image folders decode with a few threads; workers already
    # run in parallel (12 workers of 4 threads would be 48 decoders on 16 cores).
    threads = 4 if isinstance(source, ImageFolderSource) and workers == 0 else 1
    loader = torch.utils.data.DataLoader(
        ShardBatches(source, image_ids, labels, batch_size, threads),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
    )
    for ids, pixels, batch_labels, failed in loader:
        if failures is not None:
            failures.extend((int(i), "could not be decoded") for i in failed)
        if len(ids):
            yield Batch(image_ids=ids, images=pixels, labels=batch_labels)
