"""Training the built-in CNN on a study's dataset (seeded, CPU-friendly).

The images are streamed: each batch is loaded when it is needed (the next one while the
current one trains), so memory holds two batches whatever the number of images. Loading an
image is the source's work (:class:`ImageRows`); an array of images in memory is one too.

This module never imports dagster.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from carto_assets.core.network.zoo import BuiltinCNN, ModelBundle


@dataclass(frozen=True)
class TrainingResult:
    bundle: ModelBundle
    holdout_accuracy: float
    train_accuracy: float
    epoch_losses: list[float]
    n_train: int
    n_holdout: int
    seconds: float


@runtime_checkable
class ImageRows(Protocol):
    """The training's images, loaded a batch at a time by position (0..len-1)."""

    @property
    def image_size(self) -> int: ...

    def __len__(self) -> int: ...

    def rows(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The images at ``positions``: uint8 (n_ok, H, W, 3) in that order, and the ok mask
        (len(positions),) of those that loaded (an image that fails to decode is left out)."""
        ...


@dataclass(frozen=True)
class ArrayRows:
    """Images already in memory: uint8 (N, H, W, 3)."""

    images: np.ndarray

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.images)

    def rows(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.images[positions], np.ones(len(positions), dtype=bool)


def _prefetched(
    images: ImageRows, batches: list[np.ndarray]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``images.rows`` of each batch in turn, the next one loading in a thread meanwhile."""
    if not batches:
        return
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(images.rows, batches[0])
        for nxt in batches[1:]:
            loaded = pending.result()
            pending = pool.submit(images.rows, nxt)
            yield loaded
        yield pending.result()


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/held-out split of image ids 0..n-1."""
    perm = np.random.default_rng(seed).permutation(n)
    n_hold = round(n * fraction)
    if n - n_hold < 1:
        raise ValueError(f"holdout_fraction {fraction} leaves no training image out of {n}")
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def train_builtin(
    images: ImageRows | np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    holdout_fraction: float,
    seed: int,
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
    std: tuple[float, float, float] = (0.25, 0.25, 0.25),
    progress: Callable[[int, float, float], None] | None = None,
    stop_after: int | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> TrainingResult:
    """Train :class:`BuiltinCNN` with Adam on uint8 images (N, H, W, 3), streamed batch by
    batch from ``images`` (an array is wrapped in :class:`ArrayRows`); returns it in eval mode.

    ``labels`` (N,) are the images' labels by position. Each epoch draws its order and each
    batch's flips from one seeded generator; an image that fails to load is left out of its
    batch (its flip is still drawn, so the others' draws do not move).

    ``progress(epoch, loss, seconds)`` is called after each epoch. ``on_epoch(epoch, model)``
    is called with the initial network (epoch 0) and after each epoch, e.g. to keep
    checkpoints. ``on_batch(done, total)`` is called after each batch with the batches done
    and the batches this call will go through (an epoch over 1.28M images takes half an hour
    here: its progress is told by batch). ``stop_after`` ends the training after that epoch
    (0: before any step) while the learning-rate schedule stays the one of all ``epochs``:
    with the same seed the network returned is the one the full training had at that epoch.
    """
    if not isinstance(images, ImageRows):
        images = ArrayRows(np.asarray(images))
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    last = epochs if stop_after is None else stop_after
    if not 0 <= last <= epochs:
        raise ValueError(f"stop_after must be in [0, epochs={epochs}], got {stop_after}")
    start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_idx, hold_idx = split_holdout(len(images), holdout_fraction, seed)
    model = BuiltinCNN(n_classes)
    bundle = ModelBundle(model, "builtin", images.image_size, mean, std)
    y_all = torch.from_numpy(np.asarray(labels).astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=learning_rate, total_steps=epochs * max(1, -(-len(train_idx) // batch_size))
    )
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    train_t = torch.from_numpy(train_idx)
    steps_total, steps_done = last * -(-len(train_idx) // batch_size), 0
    if on_epoch is not None:
        on_epoch(0, model)
    for epoch in range(last):
        model.train()
        order = train_t[torch.randperm(len(train_t), generator=gen)]
        batches = [order[lo : lo + batch_size] for lo in range(0, len(order), batch_size)]
        total, count = 0.0, 0
        loaded = _prefetched(images, [b.numpy() for b in batches])
        for idx, (pixels, ok) in zip(batches, loaded):
            steps_done += 1  # a batch of images that all failed to load counts as done
            # Random horizontal flips: the world's concepts are mirror-invariant.
            flip = torch.rand(len(idx), generator=gen) < 0.5
            if not ok.all():
                keep = torch.from_numpy(ok)
                idx, flip = idx[keep], flip[keep]
                if len(idx) == 0:
                    if on_batch is not None:
                        on_batch(steps_done, steps_total)
                    continue
            xb = bundle.normalize(torch.from_numpy(pixels))
            xb[flip] = xb[flip].flip(-1)
            loss = loss_fn(model(xb), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            count += len(idx)
            if on_batch is not None:
                on_batch(steps_done, steps_total)
        losses.append(total / max(count, 1))
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
        if progress is not None:
            progress(epoch + 1, losses[-1], time.perf_counter() - start)
    model.eval()
    return TrainingResult(
        bundle=bundle,
        holdout_accuracy=accuracy(bundle, images, labels, hold_idx),
        train_accuracy=accuracy(bundle, images, labels, train_idx[:2000]),
        epoch_losses=losses,
        n_train=len(train_idx),
        n_holdout=len(hold_idx),
        seconds=time.perf_counter() - start,
    )


def accuracy(
    bundle: ModelBundle, images: ImageRows | np.ndarray, labels: np.ndarray, idx: np.ndarray
) -> float:
    """The share of the images at positions ``idx`` (those that load) the model gets right,
    streamed 256 at a time."""
    if not isinstance(images, ImageRows):
        images = ArrayRows(np.asarray(images))
    labels = np.asarray(labels)
    correct = seen = 0
    batches = [idx[lo : lo + 256] for lo in range(0, len(idx), 256)]
    with torch.inference_mode():
        for sel, (pixels, ok) in zip(batches, _prefetched(images, batches)):
            if not ok.any():
                continue
            pred = bundle.module(bundle.normalize(torch.from_numpy(pixels))).argmax(1).numpy()
            correct += int((pred == labels[sel][ok]).sum())
            seen += int(ok.sum())
    return correct / seen if seen else float("nan")
