"""Dictionary features as units of the concept graph: their maps, gradients and ablation.

A *feature layer* is a pseudo-layer: the latents ``z = encode(x)`` of a sparse autoencoder
(:mod:`carto_assets.core.sae.autoencoder`) read at every position of a captured layer S, its
*source*; ``x`` is S's channel vector at one position (a pixel of a (B, d, H, W) map, a token of
(B, T, d), or the whole (B, d) vector), and the decoder ``W_dec`` (d, m) writes
``x = W_dec z + b_dec + e``, ``e`` the reconstruction error. Feature maps have the layout of
channel maps, (B, m, H, W) / (B, T, m) / (B, m), so a feature's activation is the spatial
maximum of its map exactly as a channel's is. The features are computed beside the network,
from S's output, inside the autograd graph; they are never fed back, so the network's forward
pass (and every channel's value and gradient) is unchanged.

Concept-graph edges through the SAE, by the same gradient x activation as between channels
(:mod:`carto_assets.core.attribution.influence`):

* **into** a feature cluster B: the objective is the sum of B's members' spatial maxima of
  ``z``; its gradient with respect to the lower layer's output flows through the encoder and
  is multiplied by that output, summed over space and the source cluster's members, as for a
  channel target;
* **out of** a feature cluster A of source S: with ``g_x`` the objective's gradient with
  respect to S's output, the gradient with respect to the features is
  ``g_z = W_dec^T g_x`` at every position, i.e. the gradient with respect to ``z`` if S's output
  were written as ``W_dec z + b_dec + e`` with the error ``e`` held fixed; the contribution is
  ``g_z * z`` summed over space and over A's members. Summed over all features it is
  ``g_x . (W_dec z)``: the part of the channel attribution ``g_x . x`` that the SAE's
  reconstruction carries (the rest is ``g_x . (b_dec + e)``);
* **ablating** feature cluster A subtracts its members' decoder contribution
  ``W_dec[:, A] z_A`` from S's output at every position (``z`` from the unablated output), which
  is the change whose first-order estimate the edge weight is.

One type holds a feature layer everywhere, :class:`~carto_assets.core.sae.layer.FeatureLayer`:
its :meth:`~carto_assets.core.sae.layer.FeatureLayer.maps`,
:meth:`~carto_assets.core.sae.layer.FeatureLayer.project` and
:meth:`~carto_assets.core.sae.layer.FeatureLayer.decoded` are the three operations above. The
concept-graph code takes feature layers as a mapping from their names; :func:`check_features`
checks one, and the layer pairs of a graph with features (:func:`graph_pairs`) and the check
of explicit pairs (:func:`layer_pairs`) live here too.

This module never imports dagster.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch

from carto_assets.core.sae.layer import FeatureLayer
from carto_assets.schema import PREDICTION


def check_features(features: Mapping[str, FeatureLayer], captured: Sequence[str]) -> None:
    """Raise ``ValueError`` for a feature layer named like a module, whose source is not one of
    the ``captured`` layers or already has a feature layer, that is not keyed by its name, or
    whose decoder is not a (d, m) matrix."""
    read_by: dict[str, str] = {}
    for name, feature in features.items():
        if not isinstance(feature, FeatureLayer):
            raise ValueError(
                f"features[{name!r}] must be a FeatureLayer, got {type(feature).__name__}"
            )
        if name in captured:
            raise ValueError(f"feature layer {name!r} has the name of a captured layer")
        if feature.source not in captured:
            raise ValueError(
                f"feature layer {name!r} reads layer {feature.source!r}, which is not a captured "
                f"layer; captured layers are {list(captured)}"
            )
        if feature.source in read_by:
            raise ValueError(
                f"feature layers {read_by[feature.source]!r} and {name!r} both read layer "
                f"{feature.source!r}; give each layer at most one feature layer"
            )
        read_by[feature.source] = name
        if feature.name != name:
            raise ValueError(
                f"features[{name!r}] is the feature layer {feature.name!r}; key it by its name"
            )
        if not isinstance(feature.decoder, torch.Tensor) or feature.decoder.ndim != 2:
            shape = getattr(feature.decoder, "shape", type(feature.decoder).__name__)
            raise ValueError(
                f"feature layer {name!r}: the decoder must be a (d, n_features) tensor, got {shape}"
            )


def layer_pairs(
    layers: Sequence[str],
    modules: Sequence[str],
    features: Mapping[str, FeatureLayer],
    pairs: Sequence[tuple[str, str]] | None,
    include_prediction: bool,
) -> list[tuple[str, str]]:
    """The (lower, upper) pairs an influence computation covers, checked.

    ``pairs`` None gives consecutive ``layers`` and, with ``include_prediction``, the last one
    into :data:`PREDICTION`; given pairs lose those into :data:`PREDICTION` without
    ``include_prediction``. Each pair names known layers, its upper layer above its lower one
    in forward order (``modules``, the captured layers, are in forward order; a feature layer
    sits just above its source), and no pair repeats.
    """
    if pairs is None:
        chosen = list(itertools.pairwise(layers))
        if include_prediction:
            chosen.append((layers[-1], PREDICTION))
    else:
        chosen = [(str(lo), str(up)) for lo, up in pairs]
        chosen = [p for p in chosen if include_prediction or p[1] != PREDICTION]
    rank = {name: (i, 0) for i, name in enumerate(modules)}
    rank.update({name: (rank[feature.source][0], 1) for name, feature in features.items()})
    for lower, upper in chosen:
        if lower == PREDICTION:
            raise ValueError(f"pair ({lower!r}, {upper!r}): {PREDICTION!r} is only an upper layer")
        unknown = [n for n in (lower, upper) if n not in rank and n != PREDICTION]
        if unknown:
            raise ValueError(
                f"pair ({lower!r}, {upper!r}) names layer(s) {unknown} that are not in layers "
                f"{list(layers)}"
            )
        if upper != PREDICTION and not rank[lower] < rank[upper]:
            raise ValueError(
                f"pair ({lower!r}, {upper!r}) does not go up the network: {upper!r} is not "
                f"above {lower!r} in forward order (a feature layer sits just above its source)"
            )
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"pairs contain duplicates: {chosen}")
    return chosen


def graph_pairs(
    layers: Sequence[str], features: Mapping[str, FeatureLayer], *, prediction: bool = True
) -> list[tuple[str, str]]:
    """The concept graph's (lower, upper) layer pairs over channel and feature layers.

    Channel layers are chained in forward order as without features, and the last one links to
    the prediction; feature layers form a second chain, ordered by their sources: each gets
    edges from the channel layer just below its source (if any), consecutive feature layers are
    linked, and the last links to the prediction. So the channel pairs alone are the graph of a
    study without features, and the feature pairs alone chain the features to the prediction.

    Parameters
    ----------
    layers
        Channel layers in forward order.
    features
        Feature layer name -> :class:`~carto_assets.core.sae.layer.FeatureLayer`; every source
        must be one of ``layers``.
    prediction
        Include the pairs into :data:`PREDICTION`.
    """
    check_features(features, layers)
    position = {name: i for i, name in enumerate(layers)}
    pairs = list(itertools.pairwise(layers))
    if prediction and layers:
        pairs.append((layers[-1], PREDICTION))
    ordered = sorted(features, key=lambda name: position[features[name].source])
    for i, name in enumerate(ordered):
        below = position[features[name].source] - 1
        if below >= 0:
            pairs.append((layers[below], name))
        if i > 0:
            pairs.append((ordered[i - 1], name))
    if prediction and ordered:
        pairs.append((ordered[-1], PREDICTION))
    return pairs
