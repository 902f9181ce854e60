"""Training the built-in CNN on a study's dataset (seeded, CPU-friendly).

This module never imports dagster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

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


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/held-out split of image ids 0..n-1."""
    perm = np.random.default_rng(seed).permutation(n)
    n_hold = round(n * fraction)
    if n - n_hold < 1:
        raise ValueError(f"holdout_fraction {fraction} leaves no training image out of {n}")
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def train_builtin(
    images: np.ndarray,
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
) -> TrainingResult:
    """Train :class:`BuiltinCNN` with Adam on uint8 images (N, H, W, 3); returns it in eval mode.

    ``progress(epoch, loss, seconds)`` is called after each epoch. ``on_epoch(epoch, model)``
    is called with the initial network (epoch 0) and after each epoch, e.g. to keep
    checkpoints. ``stop_after`` ends the training after that epoch (0: before any step) while
    the learning-rate schedule stays the one of all ``epochs``: with the same seed the network
    returned is the one the full training had at that epoch.
    """
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
    bundle = ModelBundle(model, "builtin", images.shape[1], mean, std)
    x_all = torch.from_numpy(images)
    y_all = torch.from_numpy(labels.astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=learning_rate, total_steps=epochs * max(1, -(-len(train_idx) // batch_size))
    )
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    train_t = torch.from_numpy(train_idx)
    if on_epoch is not None:
        on_epoch(0, model)
    for epoch in range(last):
        model.train()
        order = train_t[torch.randperm(len(train_t), generator=gen)]
        total, count = 0.0, 0
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            xb = bundle.normalize(x_all[idx])
            # Random horizontal flips: the world's concepts are mirror-invariant.
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb[flip] = xb[flip].flip(-1)
            loss = loss_fn(model(xb), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            count += len(idx)
        losses.append(total / max(count, 1))
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
        if progress is not None:
            progress(epoch + 1, losses[-1], time.perf_counter() - start)
    model.eval()
    return TrainingResult(
        bundle=bundle,
        holdout_accuracy=accuracy(bundle, x_all, y_all, hold_idx),
        train_accuracy=accuracy(bundle, x_all, y_all, train_idx[:2000]),
        epoch_losses=losses,
        n_train=len(train_idx),
        n_holdout=len(hold_idx),
        seconds=time.perf_counter() - start,
    )


def accuracy(
    bundle: ModelBundle, x_all: torch.Tensor, y_all: torch.Tensor, idx: np.ndarray
) -> float:
    if len(idx) == 0:
        return float("nan")
    correct = 0
    with torch.inference_mode():
        for lo in range(0, len(idx), 256):
            sel = torch.from_numpy(idx[lo : lo + 256])
            pred = bundle.module(bundle.normalize(x_all[sel])).argmax(1)
            correct += int((pred == y_all[sel]).sum())
    return correct / len(idx)
