"""Ablation: what zeroing units really does to the class logit and to the graph's clusters.

An *ablation row* is one image with some units of one unit layer removed: channels zeroed,
or features' decoder contribution ``W_dec[:, A] z_A`` subtracted from their source's output.
:func:`ablate` runs many rows at once and returns, per row, the logits and (optionally) one
cluster's activation (the sum of its members' spatial maxima) at a layer above.

Restarting. Rows are computed from the captured outputs of a forward pass already made
(:meth:`~carto_assets.core.attribution.forward.RetainedForward.detached`): the network runs on
one dummy image, and each captured layer's hook replaces what reaches it by the rows ablated
at that layer (the clean output with the units removed), appended to the rows ablated below.
So a row ablated at layer L costs the part of the network above L, not a whole forward pass.
This is right when everything after a captured layer depends on the input only through it
(a chain of blocks: torchvision's stage outputs, inception blocks, transformer blocks). A
clean copy of one image rides along from the first captured layer and is compared with the
forward pass at every later layer and at the logits; where it differs (a skip connection
around a captured layer, say), or the network cannot take the changing batch, the rows are
recomputed with whole forward passes, each image ablated in place.

Two checks use it: :func:`ablation_faithfulness` (an edge's weight against the drop of its
target when its source cluster is removed) and the concept graph's node check (the class logit
when a layer's graph nodes are removed, against the same number of units chosen otherwise).

This module never imports dagster.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from carto_assets.core.attribution.forward import (
    RetainedForward,
    as_clusters,
    channel_max,
    check_images,
    check_layers,
    device_of,
    evaluating,
    logits_of,
    members_of,
)
from carto_assets.core.attribution.influence import InfluenceResult, read_edges
from carto_assets.core.network.hooks import capture
from carto_assets.core.sae.layer import FeatureLayer
from carto_assets.schema import PREDICTION


@dataclass(frozen=True)
class Row:
    """One ablated copy of an image.

    ``image`` indexes the forward pass's images; ``layer`` is a unit layer and ``units`` the
    units of it to remove (none: a clean copy); ``measure`` optionally names a unit layer above
    (not below: the row does not exist there) and member units whose summed spatial maxima to
    record.
    """

    image: int
    layer: str
    units: np.ndarray
    measure: tuple[str, np.ndarray] | None = None


@dataclass(frozen=True)
class Ablated:
    """What :func:`ablate` measured: per row, the logits and the ``measure`` value (NaN
    without one); ``restarted`` says whether the rows were restarted at their layers."""

    logits: np.ndarray
    measured: np.ndarray
    restarted: bool


#: (network id, layers, feature layers, input shape) -> (the network, whether rows restart).
_RESTARTS: dict[tuple, tuple[weakref.ref, bool]] = {}


def _known_restart(key: tuple, model: nn.Module) -> bool | None:
    """What an earlier call found for this network (None: not checked yet, or another network
    that had the same id)."""
    found = _RESTARTS.get(key)
    return found[1] if found is not None and found[0]() is model else None


class _NotRestartable(Exception):
    """The network's output after a captured layer does not depend on it alone."""


@dataclass
class _Plan:
    """The rows of one :func:`ablate` call, grouped by the captured module they act at."""

    fwd_modules: list[str]
    features: dict[str, FeatureLayer]
    rows: list[Row]
    at: dict[str, list[int]] = field(default_factory=dict)  # module -> row indices
    measured_at: dict[str, list[int]] = field(default_factory=dict)  # module -> row indices

    def __post_init__(self) -> None:
        order = {m: i for i, m in enumerate(self.fwd_modules)}
        for i, row in enumerate(self.rows):
            module = self.source(row.layer)
            self.at.setdefault(module, []).append(i)
            if row.measure is not None:
                target = self.source(row.measure[0])
                if order[target] <= order[module]:
                    raise ValueError(
                        f"a row ablated at {row.layer!r} cannot measure {row.measure[0]!r}: "
                        "it is not above"
                    )
                self.measured_at.setdefault(target, []).append(i)

    def source(self, layer: str) -> str:
        return self.features[layer].source if layer in self.features else layer

    def removed(self, module: str, clean: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """``clean`` outputs of ``module`` (one per row, in order) with each row's units
        removed."""
        # Channels: one (rows x channels) mask multiplies every row at once.
        keep = torch.ones(len(rows), clean.shape[2 if clean.ndim == 3 else 1], dtype=clean.dtype)
        for j, i in enumerate(rows):
            row = self.rows[i]
            if row.layer not in self.features and len(row.units):
                keep[j, torch.as_tensor(row.units, dtype=torch.long)] = 0
        keep = keep.to(clean.device)
        if clean.ndim == 4:
            out = clean * keep[:, :, None, None]
        elif clean.ndim == 3:
            out = clean * keep[:, None, :]
        else:
            out = clean * keep
        # Rows of one image removing other features start from the same clean output: its
        # feature maps are encoded once (reused only where the output is bit for bit the same).
        encoded: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        for j, i in enumerate(rows):
            row = self.rows[i]
            if row.layer in self.features and len(row.units):
                feature = self.features[row.layer]
                one = clean[j : j + 1]
                known = encoded.get((row.layer, row.image))
                if known is None or not torch.equal(known[0], one):
                    known = encoded[(row.layer, row.image)] = (one, feature.maps(one))
                out[j : j + 1] = one - feature.decoded(known[1], row.units)
        return out

    def record(self, module: str, output: torch.Tensor, rows: list[int], into: np.ndarray):
        """The ``measure`` values of ``rows`` (whose copies are ``output``'s rows, in order)."""
        for j, i in enumerate(rows):
            layer, members = self.rows[i].measure  # type: ignore[misc]
            one = output[j : j + 1]
            if layer in self.features:
                one = self.features[layer].maps(one)
            idx = torch.as_tensor(members, dtype=torch.long, device=one.device)
            into[i] = float(channel_max(one)[0, idx].double().sum())


def ablate(
    model: nn.Module,
    fwd: RetainedForward,
    images: torch.Tensor,
    rows: Sequence[Row],
    *,
    batch_size: int = 1024,
    batch_bytes: int = 128 * 2**20,
    restart: bool = True,
) -> Ablated:
    """The logits (and measured activations) of ablated copies of ``fwd``'s images.

    Parameters
    ----------
    model
        The network ``fwd`` ran.
    fwd
        The forward pass over ``images`` (only its detached outputs are used).
    images
        The images of ``fwd`` (used by the whole-forward fallback).
    rows
        The ablated copies.
    batch_size, batch_bytes
        At most this many rows per forward pass, and rows whose outputs at their layer take at
        most this many bytes together (a row restarted late is small, an early one large; one
        forward pass per batch, each carrying the clean copy that checks the restart).
    restart
        Restart rows at their layer (see the module docstring); False always runs whole
        forward passes.
    """
    clean = fwd.detached()
    device = device_of(model)
    logits = np.full((len(rows), int(fwd.logits.shape[1])), np.nan)
    measured = np.full(len(rows), np.nan)
    sizes = {name: out[0].numel() * out.element_size() for name, out in clean.items() if len(out)}
    # Whether a network restarts at its captured layers does not change between calls: the
    # clean copy's comparisons run once per process for a (network, layers, input) triple.
    key = (id(model), tuple(fwd.modules), tuple(fwd.features), fwd.input_shape)
    restarted = restart and _known_restart(key, model) is not False
    source = {name: fwd.source(name) for name in fwd.layers}
    with evaluating(model), torch.no_grad():
        for lo, hi in _batches([sizes[source[r.layer]] for r in rows], batch_size, batch_bytes):
            part = list(rows[lo:hi])
            plan = _Plan(fwd.modules, fwd.features, part)
            out = np.full(len(part), np.nan)
            got = None
            if restarted:
                verify = _known_restart(key, model) is None
                try:
                    got = _restarted(
                        model,
                        plan,
                        clean,
                        fwd.logits.detach(),
                        out,
                        device,
                        fwd.input_shape,
                        verify=verify,
                    )
                except _NotRestartable:
                    restarted = False
                except RuntimeError:  # the network could not take the changing batch
                    restarted = False
                if restart:
                    _RESTARTS[key] = (weakref.ref(model), restarted)
            if got is None:
                out[:] = np.nan
                got = _whole(model, plan, images, out, device)
            logits[lo : lo + len(part)] = got
            measured[lo : lo + len(part)] = out
    return Ablated(logits, measured, restarted)


def _batches(sizes: Sequence[int], most: int, budget: int) -> list[tuple[int, int]]:
    """Consecutive (lo, hi) ranges of rows: at most ``most`` rows and ``budget`` bytes each
    (a row larger than the budget alone)."""
    out, lo, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > lo and (i - lo >= most or total + size > budget):
            out.append((lo, i))
            lo, total = i, 0
        total += size
    if lo < len(sizes):
        out.append((lo, len(sizes)))
    return out


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool(torch.allclose(a, b, rtol=1e-3, atol=1e-4 * max(scale, 1e-6)))


def _restarted(
    model: nn.Module,
    plan: _Plan,
    clean: Mapping[str, torch.Tensor],
    clean_logits: torch.Tensor,
    measured: np.ndarray,
    device: torch.device,
    input_shape: tuple[int, ...],
    *,
    verify: bool = True,
) -> np.ndarray:
    """:func:`ablate` by restarting rows at their layer; raises :class:`_NotRestartable`.

    With ``verify``, the clean copy is compared with the forward pass at every layer and at
    the logits; without, it only keeps the batch from being empty."""
    modules = plan.fwd_modules
    check = 0  # the image whose clean copy rides along
    order: list[int] = []  # row index of each row of the running batch (-1: the clean copy)
    # Without checking, the clean copy only keeps the batch from being empty until rows join.
    carry = verify or not plan.at.get(modules[0])

    def edit(name: str, output: torch.Tensor) -> torch.Tensor:
        if name == modules[0]:
            incoming = output[:0]  # the dummy image stops here
        else:
            if output.shape[0] != len(order):
                raise _NotRestartable
            incoming = output
            reference = clean[name][check : check + 1]
            if verify and not _close(incoming[0:1], reference.to(output.device)):
                raise _NotRestartable
        wanted = set(plan.measured_at.get(name, []))
        here = [j for j, i in enumerate(order) if i in wanted]
        if here:
            plan.record(name, incoming[here], [order[j] for j in here], measured)
        new = plan.at.get(name, [])
        pieces = [incoming]
        if name == modules[0] and carry:
            pieces.append(clean[name][check : check + 1].to(output.device))
            order.append(-1)
        if new:
            base = clean[name][[plan.rows[i].image for i in new]].to(output.device)
            pieces.append(plan.removed(name, base, new))
            order.extend(new)
        return torch.cat(pieces)

    with capture(model, modules, edit=edit):
        logits = logits_of(model(torch.zeros((1, *input_shape), device=device)))
    if logits.shape[0] != len(order) or (
        verify and not _close(logits[0:1], clean_logits[check : check + 1])
    ):
        raise _NotRestartable
    result = np.empty((len(plan.rows), logits.shape[1]))
    for j, i in enumerate(order):
        if i >= 0:
            result[i] = logits[j].double().cpu().numpy()
    return result


def _whole(
    model: nn.Module, plan: _Plan, images: torch.Tensor, measured: np.ndarray, device
) -> np.ndarray:
    """:func:`ablate` with whole forward passes: each row's image, its units removed in place."""
    x = images[[row.image for row in plan.rows]].to(device)

    def edit(name: str, output: torch.Tensor) -> torch.Tensor:
        rows = plan.measured_at.get(name, [])
        if rows:
            plan.record(name, output[rows], rows, measured)
        new = plan.at.get(name, [])
        if not new:
            return output
        out = output.clone()
        out[new] = plan.removed(name, output[new], new)
        return out

    with capture(model, plan.fwd_modules, edit=edit):
        logits = logits_of(model(x))
    return logits.double().cpu().numpy()


def sample_edges(
    edges: InfluenceResult | Mapping[str, Any], n: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Up to ``n`` edges drawn uniformly without replacement (seeded), in their original order."""
    table = read_edges(edges)
    total = len(table["weight"])
    if n >= total:
        return table
    rows = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    return {k: v[rows] for k, v in table.items()}


def edge_rows(
    table: Mapping[str, np.ndarray],
    members: Mapping[str, Mapping[int, np.ndarray]],
    images_of: Sequence[np.ndarray],
) -> list[Row]:
    """The ablation rows of edges: for edge e, one row per image of ``images_of[e]`` with its
    source cluster removed, measuring its target (the logit for prediction edges)."""
    rows = []
    for e in range(len(table["weight"])):
        source, target = str(table["source_layer"][e]), str(table["target_layer"][e])
        units = members[source][int(table["source_cluster"][e])]
        measure = None
        if target != PREDICTION:
            measure = (target, members[target][int(table["target_cluster"][e])])
        rows.extend(Row(int(i), source, units, measure) for i in images_of[e])
    return rows


def target_values(
    fwd: RetainedForward,
    layer: str,
    cluster_members: np.ndarray | None,
    class_index: int | None,
) -> np.ndarray:
    """(B,) an edge target's activation in ``fwd``: its members' summed spatial maxima, or
    the class logit (``layer`` = :data:`PREDICTION`)."""
    if layer == PREDICTION:
        return fwd.logits[:, int(class_index)].detach().double().cpu().numpy()  # type: ignore[arg-type]
    idx = torch.as_tensor(cluster_members, dtype=torch.long, device=fwd.logits.device)
    return channel_max(fwd.outputs[layer].detach())[:, idx].double().sum(dim=1).cpu().numpy()


def edge_effects(
    table: Mapping[str, np.ndarray],
    baseline: np.ndarray,
    after: np.ndarray,
) -> tuple[float, dict[str, np.ndarray]]:
    """Spearman rho of weight against drop, and the table with ``baseline``, ``ablated``,
    ``drop`` and ``relative_drop`` added (NaN relative drop at a zero baseline)."""
    drop = baseline - after
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(baseline != 0, drop / np.abs(baseline), np.nan)
    rho = float("nan")
    if len(drop) >= 3 and np.ptp(table["weight"]) > 0 and np.ptp(drop) > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rho = float(stats.spearmanr(table["weight"], drop).statistic)
    effects = dict(table)
    effects.update(baseline=baseline, ablated=after, drop=drop, relative_drop=relative)
    return rho, effects


def ablation_faithfulness(
    model: nn.Module,
    layers: Sequence[str],
    cluster_of: Mapping[str, Any] | Sequence[Any],
    images: torch.Tensor,
    edges_sample: InfluenceResult | Mapping[str, Any],
    *,
    features: Mapping[str, FeatureLayer] | None = None,
    class_index: int | None = None,
    batch_size: int = 32,
) -> tuple[float, dict[str, np.ndarray]]:
    """Check edge weights against what zeroing the source cluster really does.

    For each edge A -> B, A's channels are set to 0 at L's output and B's activation (sum of
    its members' spatial maxima, averaged over the images) is compared with the unablated
    pass. Gradient x activation is the first-order estimate of exactly this drop, in the same
    units, so the absolute drop is what the weights are ranked against; the relative drop is
    reported too. Rows restart at L (:func:`ablate`).

    A feature cluster A of a feature layer reading layer S is ablated by subtracting its
    members' decoder contribution ``W_dec[:, A] z_A`` from S's output at every position; a
    feature target's activation is the sum of its members' spatial maxima of the features,
    encoded from the output the network goes on with.

    Parameters
    ----------
    model, layers, cluster_of, images, features
        As for :func:`~carto_assets.core.attribution.influence.influence_edges`.
    edges_sample
        Edges to test (e.g. :func:`sample_edges` of an :class:`InfluenceResult`).
    class_index
        Needed when the sample holds prediction edges (their target is this logit).
    batch_size
        Images per forward pass.

    Returns
    -------
    spearman_rho, per_edge_effects
        The Spearman rank correlation between ``weight`` and ``drop`` (NaN with fewer than 3
        edges or constant values), and the sample's edge columns plus ``baseline``, ``ablated``,
        ``drop`` (baseline - ablated) and ``relative_drop`` (drop / |baseline|, NaN at 0).
    """
    features = dict(features or {})
    check_layers(model, layers, features)
    clusters = as_clusters(layers, cluster_of)
    check_images(images)
    table = read_edges(edges_sample)
    known = set(layers)
    for col, extra in (("source_layer", set()), ("target_layer", {PREDICTION})):
        bad = sorted({str(v) for v in table[col]} - known - extra)
        if bad:
            raise ValueError(f"edges name unknown {col} value(s) {bad}; layers are {layers}")
    if bool((table["target_layer"] == PREDICTION).any()) and class_index is None:
        raise ValueError("the sample holds prediction edges: pass class_index")
    members = {name: members_of(clusters[name]) for name in layers}
    for col_l, col_c in (("source_layer", "source_cluster"), ("target_layer", "target_cluster")):
        for layer, c in zip(table[col_l], table[col_c]):
            if layer != PREDICTION and int(c) not in members[layer]:
                raise ValueError(f"edges name cluster {int(c)} that layer {layer!r} lacks")
    n = len(table["weight"])
    baseline, after = np.zeros(n), np.zeros(n)
    for lo in range(0, images.shape[0], batch_size):
        chunk = images[lo : lo + batch_size]
        fwd = RetainedForward.run(model, layers, clusters, chunk, features)
        fwd.release()
        everyone = np.arange(chunk.shape[0])
        rows = edge_rows(table, members, [everyone] * n)
        got = ablate(model, fwd, chunk, rows, batch_size=max(batch_size, 1))
        for e in range(n):
            layer = str(table["target_layer"][e])
            target = int(table["target_cluster"][e])
            cluster = None if layer == PREDICTION else members[layer][target]
            baseline[e] += target_values(fwd, layer, cluster, class_index).sum()
            values = got.logits[e * len(everyone) : (e + 1) * len(everyone)]
            if layer == PREDICTION:
                after[e] += values[:, int(class_index)].sum()  # type: ignore[arg-type]
            else:
                after[e] += got.measured[e * len(everyone) : (e + 1) * len(everyone)].sum()
    return edge_effects(table, baseline / images.shape[0], after / images.shape[0])
