"""Dictionary features: a fixed-memory sample of activation vectors and a top-k sparse
autoencoder trained on it (no dagster).

Channels are often polysemantic; a sparse autoencoder (SAE) rewrites a layer's activation
vector ``x`` (one per spatial position or token, channels as dimensions) as a sparse
non-negative combination of many more learned directions, its *features*, which are more often
single concepts. This module holds the two pure pieces a ``dictionary`` stage needs:

- :class:`ReservoirSampler`: a uniform sample of at most ``capacity`` vectors from a stream of
  any length (Vitter's algorithm R, a batch at a time), so the memory of the sampling pass is
  ``capacity x dim`` whatever the number of images;
- :func:`train_sae` / :func:`encode`: a top-k SAE (Gao et al., 2024, "Scaling and evaluating
  sparse autoencoders"): ``z = TopK(ReLU(W_enc (x - b_dec) + b_enc))``,
  ``x_hat = W_dec z + b_dec``, decoder columns kept at unit norm, features that stop firing
  re-initialized on the worst-reconstructed inputs. It reports the fraction of variance
  unexplained (FVU), the mean number of active features (L0) and the dead features.

Wiring these into the activation pass (features recorded beside channels, the ``neurons.kind``
column) is the job of the stage that uses them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


class ReservoirSampler:
    """A uniform random sample of at most ``capacity`` rows from a stream of row batches.

    After ``n`` rows have been offered, every row is in the sample with probability
    ``min(1, capacity / n)``, independently of the batch sizes; memory stays
    ``capacity x dim`` float32.

    Parameters
    ----------
    dim
        Length of each row.
    capacity
        Most rows kept.
    seed
        Seed of the sampler's own generator.
    """

    def __init__(self, dim: int, capacity: int, seed: int = 0) -> None:
        if dim < 1 or capacity < 1:
            raise ValueError(f"dim and capacity must be >= 1, got dim={dim}, capacity={capacity}")
        self.dim = dim
        self.capacity = capacity
        self.seen = 0
        self._rows = np.empty((capacity, dim), dtype=np.float32)
        self._rng = np.random.default_rng(seed)

    @property
    def nbytes(self) -> int:
        """Bytes held by the sample (fixed at construction)."""
        return self._rows.nbytes

    def offer(self, batch: np.ndarray) -> None:
        """Offer a ``(n, dim)`` batch of rows, in order."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise ValueError(f"expected rows of length {self.dim}, got shape {batch.shape}")
        n = batch.shape[0]
        position = self.seen + np.arange(n)
        fill = position < self.capacity
        self._rows[position[fill]] = batch[fill]
        later = np.flatnonzero(~fill)
        if later.size:
            # Row t (0-based) replaces a uniform slot of 0..t, kept if that slot is < capacity.
            slots = self._rng.integers(0, position[later] + 1)
            keep = slots < self.capacity
            # In one assignment with repeated slots the last row wins: the sequential order.
            self._rows[slots[keep]] = batch[later[keep]]
        self.seen += n

    def sample(self) -> np.ndarray:
        """The rows kept so far, ``(min(seen, capacity), dim)`` (a copy)."""
        return self._rows[: min(self.seen, self.capacity)].copy()


@dataclass(frozen=True)
class SparseAutoencoder:
    """Weights of a top-k SAE: ``W_enc (m, d)``, ``b_enc (m,)``, ``W_dec (d, m)`` with unit
    columns, ``b_dec (d,)``, and ``k`` active features per input."""

    W_enc: np.ndarray
    b_enc: np.ndarray
    W_dec: np.ndarray
    b_dec: np.ndarray
    k: int

    @property
    def n_features(self) -> int:
        return self.W_enc.shape[0]


@dataclass(frozen=True)
class SaeReport:
    """How well the SAE fits its training sample."""

    fvu: float
    """Fraction of variance unexplained: ``sum |x - x_hat|^2 / sum |x - mean(x)|^2``."""
    l0: float
    """Mean number of non-zero features per input."""
    dead: int
    """Features that fire on no input of the sample."""
    resampled: int
    """Features re-initialized during training because they had stopped firing."""
    losses: tuple[float, ...]
    """Mean reconstruction loss per epoch."""


def _topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    values, indices = torch.topk(pre, k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, indices, torch.relu(values))


def train_sae(
    samples: np.ndarray,
    n_features: int,
    k: int,
    *,
    epochs: int = 20,
    batch_size: int = 1024,
    learning_rate: float = 1e-3,
    dead_after: int = 2,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Callable[[int, float], None] | None = None,
) -> tuple[SparseAutoencoder, SaeReport]:
    """Train a top-k sparse autoencoder on ``samples``.

    Parameters
    ----------
    samples
        ``(n, d)`` activation vectors.
    n_features
        Dictionary size ``m`` (e.g. 8 x d).
    k
        Active features per input (``1 <= k <= m``).
    epochs, batch_size, learning_rate
        Adam on the mean squared reconstruction error.
    dead_after
        A feature that fired on no input for this many epochs is re-initialized on the inputs
        reconstructed worst (its decoder column the residual's direction).
    seed
        Initialization, batch order and resampling are seeded.
    device
        Where to train.
    progress
        Called with ``(epoch, mean loss)`` after each epoch.

    Returns
    -------
    (SparseAutoencoder, SaeReport)

    Raises
    ------
    ValueError
        For an empty sample or ``k`` outside ``1..n_features``.
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"samples must be a non-empty (n, d) array, got shape {x.shape}")
    if not 1 <= k <= n_features:
        raise ValueError(f"k must be in 1..n_features={n_features}, got {k}")
    generator = torch.Generator().manual_seed(seed)
    n, d = x.shape
    data = torch.from_numpy(x).to(device)
    w_dec = torch.randn(d, n_features, generator=generator).to(device)
    w_dec /= w_dec.norm(dim=0, keepdim=True)
    params = {
        # The encoder starts as the decoder's transpose (Gao et al.): fewer dead features. Not
        # divided by the data's spread: on small-valued layers that made the first
        # reconstructions overshoot by its inverse (FVU ~50 after a few epochs).
        "W_enc": torch.nn.Parameter(w_dec.T.clone()),
        "b_enc": torch.nn.Parameter(torch.zeros(n_features, device=device)),
        "W_dec": torch.nn.Parameter(w_dec),
        "b_dec": torch.nn.Parameter(data.mean(dim=0)),
    }
    optimizer = torch.optim.Adam(params.values(), lr=learning_rate)
    idle = torch.zeros(n_features, dtype=torch.long, device=device)
    resampled = 0
    losses = []
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=generator).to(device)
        fired = torch.zeros(n_features, dtype=torch.bool, device=device)
        total = 0.0
        for lo in range(0, n, batch_size):
            batch = data[order[lo : lo + batch_size]]
            z = _topk_relu((batch - params["b_dec"]) @ params["W_enc"].T + params["b_enc"], k)
            recon = z @ params["W_dec"].T + params["b_dec"]
            loss = ((recon - batch) ** 2).sum(dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                params["W_dec"] /= params["W_dec"].norm(dim=0, keepdim=True).clamp_min(1e-8)
            fired |= (z > 0).any(dim=0)
            total += float(loss.detach()) * batch.shape[0]
        losses.append(total / n)
        idle = torch.where(fired, torch.zeros_like(idle), idle + 1)
        dead = torch.nonzero(idle >= dead_after).flatten()
        if dead.numel() and epoch < epochs:
            resampled += _resample(params, data, dead, k, generator)
            idle[dead] = 0
        if progress:
            progress(epoch, losses[-1])
    sae = SparseAutoencoder(
        W_enc=params["W_enc"].detach().cpu().numpy(),
        b_enc=params["b_enc"].detach().cpu().numpy(),
        W_dec=params["W_dec"].detach().cpu().numpy(),
        b_dec=params["b_dec"].detach().cpu().numpy(),
        k=k,
    )
    return sae, _report(sae, x, resampled, losses)


def _resample(params, data: torch.Tensor, dead: torch.Tensor, k: int, generator) -> int:
    """Point dead features at inputs the SAE reconstructs worst (Anthropic's resampling,
    simplified): decoder column = the residual's direction, encoder row = it scaled."""
    with torch.no_grad():
        probe = data[torch.randperm(data.shape[0], generator=generator)[:8192].to(data.device)]
        z = _topk_relu((probe - params["b_dec"]) @ params["W_enc"].T + params["b_enc"], k)
        residual = probe - (z @ params["W_dec"].T + params["b_dec"])
        worst = torch.argsort(residual.norm(dim=1), descending=True)[: dead.numel()]
        directions = residual[worst]
        directions /= directions.norm(dim=1, keepdim=True).clamp_min(1e-8)
        take = directions.shape[0]
        params["W_dec"][:, dead[:take]] = directions.T
        params["W_enc"][dead[:take]] = directions * 0.2
        params["b_enc"][dead[:take]] = 0.0
    return int(take)


def encode(sae: SparseAutoencoder, x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Feature activations ``(..., m)`` of activation vectors ``(..., d)`` (top-k, >= 0)."""
    t = torch.as_tensor(x, dtype=torch.float32)
    w_enc = torch.as_tensor(sae.W_enc, device=t.device)
    b_enc = torch.as_tensor(sae.b_enc, device=t.device)
    b_dec = torch.as_tensor(sae.b_dec, device=t.device)
    return _topk_relu((t - b_dec) @ w_enc.T + b_enc, sae.k)


def _report(
    sae: SparseAutoencoder, x: np.ndarray, resampled: int, losses: list[float]
) -> SaeReport:
    z = encode(sae, x)
    recon = z.numpy() @ sae.W_dec.T + sae.b_dec
    variance = float(((x - x.mean(axis=0)) ** 2).sum())
    fvu = float(((x - recon) ** 2).sum()) / variance if variance > 0 else 0.0
    active = (z > 0).numpy()
    return SaeReport(
        fvu=fvu,
        l0=float(active.sum(axis=1).mean()),
        dead=int((~active.any(axis=0)).sum()),
        resampled=resampled,
        losses=tuple(losses),
    )
