"""The activation pass: one forward pass per batch, every selected layer captured at once.

A neuron is one channel of one layer. An image's activation for a neuron is the maximum of the
channel's map over space (over tokens for token-shaped outputs), with the argmax position. Only
each neuron's top-k candidates are kept while streaming (:class:`StreamingTopK`), so memory is
O(neurons x k), never O(images). Per-class statistics for the concept graph are accumulated on
the way (:class:`ClassStats`). Units derived from a layer's output (a dictionary's features,
:class:`DerivedUnits`) are reduced in the same hook and flow through the same code as channels.

This module never imports dagster.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol

import numpy as np
import torch
from torch import nn

from carto_assets.core.network.hooks import capture
from carto_assets.core.network.layers import LayerInfo
from carto_assets.core.validate import check_choice, check_int


def spatial_max(
    output: torch.Tensor, floor: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel maximum over space and its position.

    Parameters
    ----------
    output
        (B, C, H, W) maps, (B, T, C) tokens or (B, C) vectors.
    floor
        (C,) values, or None: with them a position is found only where the maximum is at least
        its channel's ``floor`` (elsewhere ``y = x = -1``). On CPU an argmax costs many times a
        max (18x over a 16 x 16 map), and the activation pass needs positions only for the
        values that can enter a unit's top-k (:meth:`StreamingTopK.floor`).

    Returns
    -------
    values, y, x
        Each (B, C). For tokens, y is the token index and x is 0; for vectors both are 0.
        Among equal maxima the position is the first one (as ``torch.max`` and ``torch.argmax``
        document).
    """
    if output.ndim == 4:
        b, c, h, w = output.shape
        return max_and_position(output.reshape(b, c, h * w), 2, w, floor)
    if output.ndim == 3:
        return max_and_position(output, 1, 1, floor)
    if output.ndim == 2:
        zeros = torch.zeros(output.shape, dtype=torch.long, device=output.device)
        return output, zeros, zeros
    raise ValueError(f"cannot reduce an output of shape {tuple(output.shape)}")


def max_and_position(
    flat: torch.Tensor, dim: int, width: int, floor: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The maximum of ``flat`` over its positions and where it is, as (values, y, x), each
    (B, C): ``flat`` is (B, C, P) with ``dim`` 2 or (B, P, C) with ``dim`` 1, position ``p`` is
    ``y = p // width``, ``x = p % width`` (the first among equal maxima). With ``floor`` ((C,)),
    positions are found only where the maximum is at least its channel's floor; elsewhere
    ``y = x = -1`` (see :func:`spatial_max`)."""
    if floor is None:
        values, where = flat.max(dim=dim)
        return values, where // width, where % width
    values = flat.amax(dim=dim)
    ys = torch.full(values.shape, -1, dtype=torch.long, device=values.device)
    xs = ys.clone()
    # In the floor's dtype: the top-k compares (and keeps) values cast to it.
    bi, ci = torch.nonzero(values.to(floor.dtype) >= floor, as_tuple=True)
    if len(bi):
        rows = flat[bi, ci] if dim == 2 else flat[bi, :, ci]  # (found, P)
        where = rows.argmax(dim=1)
        ys[bi, ci] = where // width
        xs[bi, ci] = where % width
    return values, ys, xs


class DerivedUnits(Protocol):
    """Units computed from a captured layer's output in the same forward pass: the features of
    a dictionary trained on that layer (:class:`~carto_assets.core.sae.layer.FeatureLayer`
    is one), a pseudo-layer of ``channels`` units named ``name``.

    ``reduce(output, floor) -> (values, y, x)``, each ``(B, channels)``, is called inside the
    source layer's hook on the detached output, like the channels' :func:`spatial_max` (with
    its ``floor``: positions are needed only where the value is at least it).
    """

    @property
    def name(self) -> str: ...

    @property
    def source(self) -> str: ...

    @property
    def channels(self) -> int: ...

    def reduce(
        self, output: torch.Tensor, floor: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


def unit_blocks(
    layers: Sequence[LayerInfo], derived: Sequence[DerivedUnits] = ()
) -> list[LayerInfo | DerivedUnits]:
    """The blocks of units in neuron order: each layer, then the units derived from it.

    Raises ``ValueError`` for derived units whose source is not among ``layers``.
    """
    names = {info.name for info in layers}
    orphans = [d.name for d in derived if d.source not in names]
    if orphans:
        raise ValueError(
            f"derived units {orphans} come from layers that are not recorded; "
            f"recorded layers: {sorted(names)}"
        )
    blocks: list[LayerInfo | DerivedUnits] = []
    for info in layers:
        blocks.append(info)
        blocks.extend(d for d in derived if d.source == info.name)
    return blocks


class LayerRecorder:
    """Forward hooks that reduce each selected layer's output to (values, y, x) on the fly.

    Reducing inside the hook copies what is needed before anything downstream runs, which is
    what cloning would buy us: later in-place ops (``ReLU(inplace=True)``) cannot overwrite it,
    and full feature maps never pile up in memory. ``derived`` units (:class:`DerivedUnits`)
    are reduced from their source layer's output in the same hook. The hooks are in place from
    construction until :meth:`close` (or the end of the ``with`` block).

    :attr:`floor`, when set before a forward pass, is every unit's floor in neuron order: the
    positions of values below it are not looked for (``y = x = -1``, :func:`spatial_max`).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[LayerInfo],
        derived: Sequence[DerivedUnits] = (),
    ) -> None:
        self.layers = list(layers)
        self.blocks = unit_blocks(self.layers, derived)
        self._derived_of: dict[str, list[DerivedUnits]] = {}
        for d in derived:
            self._derived_of.setdefault(d.source, []).append(d)
        self._derived_values: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        bounds = np.cumsum([0, *[int(b.channels or 0) for b in self.blocks]])
        self._units_of = {
            b.name: (int(lo), int(hi)) for b, lo, hi in zip(self.blocks, bounds, bounds[1:])
        }
        #: (N,) floors in neuron order for the next forward pass, or None (every position)
        self.floor: torch.Tensor | None = None
        self._hooks = contextlib.ExitStack()
        self.captured = self._hooks.enter_context(
            capture(model, [info.name for info in self.layers], keep=self._keep)
        )

    def _floor_of(self, name: str) -> torch.Tensor | None:
        if self.floor is None:
            return None
        lo, hi = self._units_of[name]
        return self.floor[lo:hi]

    def _keep(self, name: str, output: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        reduced = _reduce(name, output, self._floor_of(name))
        for d in self._derived_of.get(name, ()):
            floor = self._floor_of(d.name)
            out = output.detach()  # type: ignore[union-attr]
            # Without a floor, called as before floors existed: reduce(output).
            values, ys, xs = d.reduce(out) if floor is None else d.reduce(out, floor)
            if values.shape[1] != d.channels:
                raise ValueError(
                    f"derived units {d.name!r} gave {values.shape[1]} units, expected {d.channels}"
                )
            self._derived_values[d.name] = (values, ys, xs)
        return reduced

    def collect(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Concatenate the captured blocks in neuron order: three (B, N) tensors."""
        missing = [i.name for i in self.layers if i.name not in self.captured]
        if missing:
            raise RuntimeError(f"layers did not run in the forward pass: {missing}")
        parts = [
            self.captured[b.name] if isinstance(b, LayerInfo) else self._derived_values[b.name]
            for b in self.blocks
        ]
        self.captured.clear()
        self._derived_values.clear()
        return (
            torch.cat([p[0].float() for p in parts], dim=1),
            torch.cat([p[1] for p in parts], dim=1),
            torch.cat([p[2] for p in parts], dim=1),
        )

    def close(self) -> None:
        self._hooks.close()

    def __enter__(self) -> LayerRecorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reduce(
    name: str, output: object, floor: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A captured layer's (values, y, x), each (B, C): see :func:`spatial_max`."""
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"layer {name!r} returned {type(output).__name__}, not a tensor; "
            "choose a module whose output is a tensor"
        )
    return spatial_max(output.detach(), floor)


class StreamingTopK:
    """Each neuron's k largest activations over a stream of batches.

    Order is by activation descending, then image id ascending, so the result equals a full
    sort with that key (ties included) whatever the batch boundaries.
    """

    def __init__(
        self, n_neurons: int, k: int, device: torch.device | str = "cpu", prefilter: bool = True
    ) -> None:
        self.k = check_int("k", k, minimum=1)
        #: on CPU, merge only the new values that can enter (see :meth:`update`); False sorts
        #: every new value with the kept ones (the reference the fast path is tested against)
        self.prefilter = prefilter
        self.values = torch.full((n_neurons, 0), float("-inf"), device=device)
        self.image_ids = torch.empty((n_neurons, 0), dtype=torch.long, device=device)
        self.ys = torch.empty((n_neurons, 0), dtype=torch.long, device=device)
        self.xs = torch.empty((n_neurons, 0), dtype=torch.long, device=device)
        self._max_id = -1
        #: batches the prefilter merged in part (some new values sorted) and skipped whole
        self.prefiltered = {"part": 0, "skipped": 0}

    def floor(self, image_ids: torch.Tensor | None = None) -> torch.Tensor | None:
        """The least value of each unit that can enter from the images ``image_ids`` (the next
        batch, on the host), once every unit keeps k; else None. Below its k-th kept value
        nothing enters; an equal value enters only from an image with a smaller id, so for a
        batch whose ids are ascending and above every id seen (a shard's stream) the least is
        the next float above it. A position below the floor is never needed
        (:func:`spatial_max`'s ``floor``)."""
        if self.values.shape[1] != self.k:
            return None
        kth = self.values[:, -1]
        if image_ids is not None and self._ascending(image_ids):
            return torch.nextafter(kth, torch.full_like(kth, float("inf")))
        return kth

    def _ascending(self, image_ids: torch.Tensor) -> bool:
        """Whether every id is above the ids merged so far, in ascending order."""
        return len(image_ids) > 0 and (
            bool((image_ids[1:] > image_ids[:-1]).all()) and int(image_ids[0]) > self._max_id
        )

    def update(
        self, values: torch.Tensor, image_ids: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor
    ) -> None:
        """Merge a batch: values/ys/xs are (B, N), image_ids is (B,). A position may be -1 where
        the value is below :meth:`floor` (it cannot enter)."""
        if values.shape[0] == 0:
            return
        n, dev = values.shape[1], self.values.device
        new = [
            values.T.to(dev),
            image_ids.to(dev).view(1, -1).expand(n, -1),
            ys.T.to(dev),
            xs.T.to(dev),
        ]
        ascending = self._ascending(image_ids)
        full = n > 0 and self.values.shape[1] == self.k
        if self.prefilter and ascending and dev.type == "cpu" and full:
            # Once a neuron keeps k candidates, only a new value above its k-th can enter (an
            # equal one ranks after it: its id is larger). Sort only each neuron's m largest
            # new values, m the most any neuron has above its k-th (late in a stream a few
            # of a batch's images), put back in id order. On CPU only: reading m waits for
            # the device, which a GPU's stream must not do once a batch.
            above = new[0] > self.values[:, -1:]
            m = int(above.sum(dim=1).max())
            if m == 0:
                self.prefiltered["skipped"] += 1
                self._max_id = max(self._max_id, int(image_ids.max()))
                return
            if m < new[0].shape[1]:
                self.prefiltered["part"] += 1
                masked = torch.where(above, new[0], torch.full_like(new[0], float("-inf")))
                pick = masked.topk(m, dim=1).indices.sort(dim=1).values
                new = [t.gather(1, pick) for t in new]
        vals, ids, yy, xx = (
            torch.cat([kept, more], dim=1)
            for kept, more in zip((self.values, self.image_ids, self.ys, self.xs), new)
        )
        if not ascending:
            # Ties must resolve by image id; put ids in ascending order first, then a stable
            # sort by value keeps that order among equal values.
            order = torch.argsort(ids, dim=1, stable=True)
            vals, ids, yy, xx = (t.gather(1, order) for t in (vals, ids, yy, xx))
        # Fast path: kept candidates are already (value desc, id asc) and every new id is larger,
        # so one stable sort by value yields the (value desc, id asc) order.
        order = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, : self.k]
        self.values, self.image_ids, self.ys, self.xs = (
            t.gather(1, order) for t in (vals, ids, yy, xx)
        )
        self._max_id = max(self._max_id, int(image_ids.max()))

    def result(self) -> dict[str, np.ndarray]:
        """Long-format arrays: neuron_id, rank (1-based), image_id, activation, y, x."""
        n, kk = self.values.shape
        valid = torch.isfinite(self.values)
        neuron = torch.arange(n, device=self.values.device).view(-1, 1).expand(n, kk)
        rank = torch.arange(1, kk + 1, device=self.values.device).view(1, -1).expand(n, kk)
        pick = lambda t: t[valid].cpu().numpy()  # noqa: E731 - one device-to-host copy each
        return {
            "neuron_id": pick(neuron).astype(np.int64),
            "rank": pick(rank).astype(np.int32),
            "image_id": pick(self.image_ids).astype(np.int64),
            "activation": pick(self.values).astype(np.float32),
            "y": pick(self.ys).astype(np.int32),
            "x": pick(self.xs).astype(np.int32),
        }


def top_mass_mask(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Channels carrying the top ``fraction`` of each image's normalized activation mass.

    Summit's rule: normalize an image's positive channel maxima in a layer to sum to 1, take
    channels in descending order until the running total reaches ``fraction`` (the channel that
    crosses it included). ``values`` is (B, C); returns a bool (B, C) mask.
    """
    return _take_by_share(_mass_shares(values), fraction)


def _mass_shares(values: torch.Tensor) -> torch.Tensor:
    """Each channel's share of its row's positive mass (0 where the row has none)."""
    pos = values.clamp(min=0)
    total = pos.sum(dim=1, keepdim=True)
    return torch.where(total > 0, pos / total.clamp(min=1e-30), torch.zeros_like(pos))


def _take_by_share(share: torch.Tensor, fraction: float) -> torch.Tensor:
    sorted_share, order = torch.sort(share, dim=1, descending=True, stable=True)
    before = torch.cumsum(sorted_share, dim=1) - sorted_share
    take_sorted = (before < fraction) & (sorted_share > 0)
    mask = torch.zeros_like(take_sorted)
    mask.scatter_(1, order, take_sorted)
    return mask


def top_mass_masks(
    values: torch.Tensor, bounds: Sequence[int], fraction: float, head: int
) -> tuple[torch.Tensor, int]:
    """:func:`top_mass_mask` within each block of columns ``bounds[j]:bounds[j + 1]``, exactly,
    ordering only each row's ``head`` largest shares of a block where the rule stops within
    them (Summit's 3% of a layer's mass is a few channels). A row of a block is sorted whole
    where the rule goes on, or where equal shares straddle the cut (the whole sort breaks
    their tie by channel). The blocks are ordered together, padded to the widest: on CPU a
    small batch's time goes to calls, not arithmetic. Returns the mask and how many rows of
    blocks were sorted whole because the rule went past ``head``.

    The same shares in the same order give the same running totals (a cumulative sum is a
    running one), so the cut falls where the whole sort puts it.
    """
    rows = values.shape[0]
    blocks = [(int(lo), int(hi)) for lo, hi in pairwise(bounds)]
    widths = [int(hi - lo) for lo, hi in blocks]
    width = max(widths, default=0)
    if 2 * head >= width:
        masks = [top_mass_mask(values[:, lo:hi], fraction) for lo, hi in blocks]
        every = torch.cat(masks, dim=1) if masks else values.new_zeros(values.shape, dtype=bool)
        return every, 0
    dev = values.device
    pos = values.clamp(min=0)
    # Each block's total as top_mass_mask sums it: over the block's own columns.
    totals = torch.stack([pos[:, lo:hi].sum(dim=1) for lo, hi in blocks], dim=1).unsqueeze(2)
    padded = values.new_zeros((rows, len(blocks), width))
    for j, (lo, hi) in enumerate(blocks):  # slices: on CPU a copy is cheaper than an index
        padded[:, j, : hi - lo] = pos[:, lo:hi]
    share = torch.where(totals > 0, padded / totals.clamp(min=1e-30), torch.zeros_like(padded))
    if min(widths) < width:  # below every share: never taken, never tied with one
        pad = torch.arange(width, device=dev) >= torch.tensor(widths, device=dev).view(-1, 1)
        share = share.masked_fill(pad, -1.0)
    top, index = torch.topk(share, head + 1, dim=2)  # descending, as the whole sort's first
    before = torch.cumsum(top, dim=2) - top
    take = (before < fraction) & (top > 0)
    past = take[:, :, -1]  # the rule may go on past the head
    # Taken last, tied with the first left: which of the equals is taken is the sort's to say.
    tied = (take[..., :-1] & ~take[..., 1:] & (top[..., :-1] == top[..., 1:])).any(dim=2)
    taken = torch.zeros(share.shape, dtype=torch.bool, device=dev).scatter_(2, index, take)
    mask = torch.cat([taken[:, j, : hi - lo] for j, (lo, hi) in enumerate(blocks)], dim=1)
    whole = torch.nonzero(past | tied)
    for j in torch.unique(whole[:, 1]).tolist():
        lo, hi = blocks[j]
        again = whole[whole[:, 1] == j, 0]
        mask[again, lo:hi] = _take_by_share(share[again, j, : hi - lo], fraction)
    return mask, int(past.sum())


#: The shares a block first orders per image (:func:`top_mass_masks`).
TOP_MASS_HEAD = 16


class ClassStats:
    """Per-class, per-neuron sums accumulated over the stream (O(classes x neurons) memory).

    ``layers`` are the blocks of units (:func:`unit_blocks`): the top-mass rule runs within
    each block, so a dictionary's features compete among themselves, not with channels.
    """

    def __init__(
        self,
        layers: Sequence[LayerInfo | DerivedUnits],
        n_classes: int,
        fraction: float,
        device: torch.device | str = "cpu",
    ) -> None:
        self.fraction = fraction
        widths = [int(i.channels or 0) for i in layers]
        #: the shares a block orders first (:func:`top_mass_masks`), doubled while the rule
        #: goes past them in more than an eighth of a batch's (row, block) pairs; on a GPU
        #: every block's whole (no waiting for the device)
        self.head = TOP_MASS_HEAD if torch.device(device).type == "cpu" else max(widths, default=0)
        self.bounds = np.cumsum([0, *widths])
        n = int(self.bounds[-1])
        self.images = torch.zeros(n_classes, dtype=torch.float64, device=device)
        self.top_mass = torch.zeros(n_classes, n, dtype=torch.float64, device=device)
        self.activation_sum = torch.zeros(n_classes, n, dtype=torch.float64, device=device)

    def update(self, values: torch.Tensor, labels: torch.Tensor) -> None:
        device = self.top_mass.device
        values = values.to(device)
        taken, past = top_mass_masks(values, self.bounds, self.fraction, self.head)
        mask = taken.float()
        if past * 8 > values.shape[0] * (len(self.bounds) - 1):
            self.head *= 2
        # One (classes x B) @ (B x N) product per statistic instead of scattered index_adds;
        # per-batch sums are exact in float32 (counts < 2^24), totals accumulate in float64.
        onehot = torch.zeros(self.images.shape[0], values.shape[0], device=device)
        onehot[labels.to(device), torch.arange(values.shape[0], device=device)] = 1.0
        self.images += onehot.sum(dim=1).double()
        self.top_mass += (onehot @ mask).double()
        self.activation_sum += (onehot @ values.float()).double()

    def result(self) -> dict[str, np.ndarray]:
        """Long format over classes that have images: label, neuron_id, n_images, sums."""
        present = torch.nonzero(self.images > 0).flatten()
        n = self.top_mass.shape[1]
        label = present.view(-1, 1).expand(-1, n).reshape(-1)
        neuron = torch.arange(n, device=present.device).repeat(len(present))
        return {
            "label": label.cpu().numpy().astype(np.int32),
            "neuron_id": neuron.cpu().numpy().astype(np.int64),
            "n_images": self.images[label].cpu().numpy().astype(np.int64),
            "top_mass_count": self.top_mass[present].reshape(-1).cpu().numpy().astype(np.int64),
            "activation_sum": self.activation_sum[present].reshape(-1).cpu().numpy(),
        }


class SampleMaxima:
    """Every unit's activation on a fixed sample of images, kept while streaming.

    Only the sampled images' rows are kept, in a buffer allocated once on the host (pinned
    when the pass runs on a GPU, so the copies do not wait for the device): memory is
    ``n_sampled x n_units x 4`` bytes whatever the number of images streamed.
    """

    def __init__(self, image_ids: np.ndarray, n_units: int, device: torch.device) -> None:
        self.wanted = np.unique(np.asarray(image_ids, dtype=np.int64))
        pin = device.type == "cuda"
        self.maxima = torch.empty((len(self.wanted), n_units), dtype=torch.float32, pin_memory=pin)
        self.image_ids = np.empty(len(self.wanted), dtype=np.int64)
        self.filled = 0

    def update(self, values: torch.Tensor, image_ids: torch.Tensor) -> None:
        """Keep the rows of ``values`` (B, N) whose ``image_ids`` (B,) (host) are sampled."""
        if not len(self.wanted):
            return
        ids = image_ids.numpy()
        pos = np.searchsorted(self.wanted, ids).clip(max=len(self.wanted) - 1)
        rows = np.flatnonzero(self.wanted[pos] == ids)
        if not len(rows):
            return
        lo, hi = self.filled, self.filled + len(rows)
        if hi > len(self.wanted):
            raise ValueError("an image was streamed twice: its sampled maxima are kept once")
        out = self.maxima[lo:hi]
        if len(rows) == len(ids):  # the whole batch is sampled (small studies): no gather
            out.copy_(values, non_blocking=True)
        elif values.device == out.device:  # gathered straight into the buffer: no temporary
            torch.index_select(values, 0, torch.from_numpy(rows), out=out)
        else:
            index = torch.from_numpy(rows).to(values.device)
            out.copy_(values.index_select(0, index), non_blocking=True)
        self.image_ids[lo:hi] = ids[rows]
        self.filled = hi

    def result(self) -> dict[str, np.ndarray]:
        """``image_id`` (n,) int64 and ``maxima`` (n, N) float32 of the sampled images streamed
        (a sampled image that never came, e.g. failed to decode, has no row), by image id."""
        if self.maxima.is_pinned():
            torch.cuda.synchronize()
        n = self.filled
        order = np.argsort(self.image_ids[:n], kind="stable")
        maxima = self.maxima[:n].numpy()
        if not np.array_equal(order, np.arange(n)):
            maxima = maxima[order]
        return {"image_id": self.image_ids[:n][order], "maxima": maxima}


class Predictions:
    """Each streamed image's prediction: the model's top output and its logit, and the logit
    of the image's label where the outputs are the study's classes (NaN elsewhere).

    Kept on the device batch by batch and copied to the host once: 16 bytes per image.
    """

    def __init__(self, n_classes: int) -> None:
        self.n_classes = n_classes
        self.parts: list[tuple[torch.Tensor, ...]] = []

    def update(self, output: object, labels: torch.Tensor, image_ids: torch.Tensor) -> None:
        """Record a batch from the model's ``output`` ((B, outputs) logits, or an object with
        ``.logits``); an output of another shape records nothing."""
        logits = getattr(output, "logits", output)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            return
        logits = logits.detach().float()
        logit, predicted = logits.max(dim=1)
        if logits.shape[1] == self.n_classes:
            label_logit = logits.gather(1, labels.view(-1, 1)).view(-1)
        else:
            label_logit = torch.full_like(logit, float("nan"))
        self.parts.append((image_ids, predicted, logit, label_logit))

    def result(self) -> dict[str, np.ndarray] | None:
        """``image_id`` int64, ``predicted`` int32, ``logit`` and ``label_logit`` float32, in
        the order streamed; None when the model's outputs were never logits."""
        if not self.parts:
            return None
        ids, predicted, logit, label_logit = (torch.cat(p).cpu().numpy() for p in zip(*self.parts))
        return {
            "image_id": ids.astype(np.int64),
            "predicted": predicted.astype(np.int32),
            "logit": logit.astype(np.float32),
            "label_logit": label_logit.astype(np.float32),
        }


@dataclass
class Batch:
    image_ids: torch.Tensor  # (B,) int64 on the host, ascending within a shard
    images: torch.Tensor  # (B, 3, H, W) model input, or raw images for `preprocess`
    labels: torch.Tensor  # (B,) int64


@dataclass
class PassResult:
    top_k: dict[str, np.ndarray]
    class_stats: dict[str, np.ndarray]
    n_images: int
    seconds: float
    #: ``image_id``, ``maxima`` of the sampled images (:class:`SampleMaxima`); None unasked
    unit_maxima: dict[str, np.ndarray] | None = None
    #: each image's prediction (:class:`Predictions`); None where the outputs are not logits
    predictions: dict[str, np.ndarray] | None = None


PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def activation_pass(
    model: nn.Module,
    layers: Sequence[LayerInfo],
    batches: Iterable[Batch],
    *,
    k: int,
    n_classes: int,
    mass_fraction: float,
    device: torch.device | str = "cpu",
    progress: Callable[[int, float], None] | None = None,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    derived: Sequence[DerivedUnits] = (),
    sample_ids: np.ndarray | None = None,
    all_positions: bool | None = None,
) -> PassResult:
    """Stream batches through ``model`` and keep each neuron's top-k and per-class statistics,
    and each image's prediction (:class:`Predictions`).

    Parameters
    ----------
    batches
        Batches in ascending image-id order within the stream (any order is correct, ascending
        is fastest). ``Batch.images`` are model inputs, or raw images that ``preprocess`` turns
        into model inputs on ``device`` (e.g. uint8 (B, H, W, 3): a quarter of the bytes to copy).
    progress
        ``progress(images_done, seconds)`` after every batch.
    precision
        ``fp32``, or ``bf16``/``fp16`` under :func:`torch.autocast`; activations are kept as
        float32 after the spatial max.
    channels_last
        Run the model and inputs in channels_last memory format.
    derived
        Units computed from a layer's output in the same pass (dictionary features); they
        follow their source layer's channels in neuron order (:func:`unit_blocks`).
    sample_ids
        Images whose every unit's activation is kept (:class:`SampleMaxima`), in
        ``PassResult.unit_maxima``; ids that are not streamed are ignored. None keeps none.
    all_positions
        Find the position of every image's maximum for every unit (True), or only of those that
        can enter the unit's top-k (False: :meth:`StreamingTopK.floor`; the same result, with
        an argmax for a few of a batch's values once the top-k fill up). None: all on a GPU,
        where finding them is cheap and the few would make the host wait for the device once
        a layer; the few elsewhere.

    Notes
    -----
    Everything per batch stays on ``device``: hooks reduce the maps there, the top-k merge and
    class statistics run there, and the non-finite check is accumulated there, so a GPU run
    copies results to the host once per shard, not once per batch.
    """
    return ActivationPass(
        model,
        layers,
        k=k,
        n_classes=n_classes,
        mass_fraction=mass_fraction,
        device=device,
        preprocess=preprocess,
        precision=precision,
        channels_last=channels_last,
        derived=derived,
        sample_ids=sample_ids,
        all_positions=all_positions,
    ).over(batches, progress)


class ActivationPass:
    """The activation pass one batch at a time: :meth:`step` each batch inside the ``with``
    block, then :meth:`result`. :func:`activation_pass` runs it over an iterable (its
    parameters are this one's).

    Inside the block the model carries the recorder's hooks and runs in inference mode under
    the precision's autocast, so a bare forward pass timed beside each step (what
    ``benchmarks/activations.py --study`` does, batch by batch) needs another copy of the model.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[LayerInfo],
        *,
        k: int,
        n_classes: int,
        mass_fraction: float,
        device: torch.device | str = "cpu",
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        precision: str = "fp32",
        channels_last: bool = False,
        derived: Sequence[DerivedUnits] = (),
        sample_ids: np.ndarray | None = None,
        all_positions: bool | None = None,
    ) -> None:
        check_choice("precision", precision, PRECISIONS)
        self.model, self.layers, self.derived = model, list(layers), list(derived)
        self.device = dev = torch.device(device)
        self.preprocess, self.channels_last = preprocess, channels_last
        self.dtype = PRECISIONS[precision]
        self.blocks = unit_blocks(self.layers, self.derived)
        n_neurons = sum(int(b.channels or 0) for b in self.blocks)
        self.topk = StreamingTopK(n_neurons, k, device=dev)
        self.stats = ClassStats(self.blocks, n_classes, mass_fraction, device=dev)
        self.non_finite = torch.zeros(n_neurons, dtype=torch.bool, device=dev)
        self.sample = None if sample_ids is None else SampleMaxima(sample_ids, n_neurons, dev)
        self.predictions = Predictions(n_classes)
        self.all_positions = dev.type != "cpu" if all_positions is None else all_positions
        #: images stepped through so far
        self.done = 0
        self.start = time.perf_counter()
        self._open = contextlib.ExitStack()
        self._recorder: LayerRecorder | None = None
        self._entered = False

    def __enter__(self) -> ActivationPass:
        if self._entered:
            raise RuntimeError("an ActivationPass runs once: make a new one for another pass")
        self._entered = True
        self.start = time.perf_counter()
        self.model.eval()
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # All or nothing: a failure while entering (an unsupported autocast device) leaves
        # neither hooks on the model nor inference mode on.
        with contextlib.ExitStack() as entering:
            recorder = entering.enter_context(LayerRecorder(self.model, self.layers, self.derived))
            entering.enter_context(torch.inference_mode())
            if self.dtype is not None:
                entering.enter_context(
                    torch.autocast(device_type=self.device.type, dtype=self.dtype)
                )
            self._open = entering.pop_all()
        self._recorder = recorder
        return self

    def __exit__(self, *exc) -> None:
        self._open.close()
        self._recorder = None

    @property
    def seconds(self) -> float:
        """Seconds since the block was entered."""
        return time.perf_counter() - self.start

    def step(self, batch: Batch) -> None:
        """One batch through the model, its units merged into the top-k, class statistics,
        predictions and sample."""
        recorder, dev = self._recorder, self.device
        if recorder is None:
            raise RuntimeError("ActivationPass.step runs inside its `with` block")
        recorder.floor = None if self.all_positions else self.topk.floor(batch.image_ids)
        x = batch.images.to(dev, non_blocking=True)
        if self.preprocess is not None:
            x = self.preprocess(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        output = self.model(x)
        values, ys, xs = recorder.collect()
        self.non_finite |= ~torch.isfinite(values).all(dim=0)
        # Image ids stay on the host for the order check (no device sync per batch).
        self.topk.update(values, batch.image_ids, ys, xs)
        labels = batch.labels.to(dev, non_blocking=True)
        self.stats.update(values, labels)
        self.predictions.update(output, labels, batch.image_ids)
        if self.sample is not None:
            self.sample.update(values, batch.image_ids)
        self.done += len(batch.image_ids)

    def over(
        self, batches: Iterable[Batch], progress: Callable[[int, float], None] | None = None
    ) -> PassResult:
        """Every batch of ``batches`` stepped through (``progress(images_done, seconds)``
        after each), then :meth:`result`."""
        with self:
            for batch in batches:
                self.step(batch)
                if progress is not None:
                    progress(self.done, self.seconds)
        return self.result()

    def result(self) -> PassResult:
        """What the steps kept; raises ``FloatingPointError`` naming the layers whose
        activations were not finite."""
        if bool(self.non_finite.any()):
            bad = sorted({self.blocks[j].name for j in _layer_of_bad(self.non_finite, self.blocks)})
            raise FloatingPointError(
                f"the model produced NaN or infinite activations in layer(s) {bad}; "
                "check the weights and the input normalization (or use precision: fp32)"
            )
        return PassResult(
            self.topk.result(),
            self.stats.result(),
            self.done,
            self.seconds,
            None if self.sample is None else self.sample.result(),
            self.predictions.result(),
        )


def _layer_of_bad(
    non_finite: torch.Tensor, layers: Sequence[LayerInfo | DerivedUnits]
) -> list[int]:
    bounds = np.cumsum([0, *[int(i.channels or 0) for i in layers]])
    bad_cols = torch.nonzero(non_finite).flatten().cpu().numpy()
    return [int(np.searchsorted(bounds, c, side="right") - 1) for c in bad_cols]
