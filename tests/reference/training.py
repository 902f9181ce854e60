"""The built-in CNN's training as it was before it streamed: every image in memory first.

The oracle for :func:`carto_assets.core.network.training.train_builtin`, which loads each
batch from the source when it needs it: the same seed gives the same network, bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from carto_assets.core.network.training import split_holdout
from carto_assets.core.network.zoo import BuiltinCNN, ModelBundle


def train_in_memory(
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
) -> tuple[nn.Module, list[float]]:
    """The trained network (eval mode) and its epochs' mean losses, from uint8 (N, H, W, 3)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_idx, _ = split_holdout(len(images), holdout_fraction, seed)
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
    for _ in range(epochs):
        model.train()
        order = train_t[torch.randperm(len(train_t), generator=gen)]
        total, count = 0.0, 0
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            xb = bundle.normalize(x_all[idx])
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
    return model.eval(), losses
