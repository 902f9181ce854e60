"""A dictionary on a layer: the one type for it, from training to the concept graph.

A *feature layer* is a pseudo-layer of units: the latents ``z = encode(x)`` of a sparse
autoencoder (:mod:`carto_assets.core.sae.autoencoder`) read at every position of a captured
layer, its *source*. It is named ``<source>:features`` (``neurons.layer``) and sits right after
its source in neuron order. :class:`FeatureLayer` is what every stage holds of it:

- training gives one, with its fit on the sample (:func:`~carto_assets.core.sae.dictionaries.
  train_dictionaries`); storage saves and loads it (``save_dictionaries`` /
  ``load_dictionaries``);
- the activation pass reduces each image to its features' spatial maxima in the source
  layer's hook (:meth:`FeatureLayer.reduce`, what the recorder's
  :class:`~carto_assets.core.network.recorder.DerivedUnits` asks for);
- the concept graph reads its feature maps inside the autograd graph, projects gradients onto
  the features and subtracts the features' decoder contribution to ablate them
  (:meth:`FeatureLayer.maps`, :meth:`FeatureLayer.project`, :meth:`FeatureLayer.decoded`; the
  definitions are in :mod:`carto_assets.core.attribution.features`).

No study, no dagster here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch

from carto_assets.core.network.recorder import max_and_position, spatial_max
from carto_assets.core.sae.autoencoder import SaeReport, SparseAutoencoder, encode
from carto_assets.schema import FEATURE_SUFFIX

_WEIGHT_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")


def feature_layer_name(source: str) -> str:
    """``block3`` -> ``block3:features``."""
    return f"{source}{FEATURE_SUFFIX}"


def source_layer(name: str) -> str:
    """The mapped layer a (pseudo-)layer's units come from: ``block3:features`` -> ``block3``;
    a real layer is its own source."""
    return name.removesuffix(FEATURE_SUFFIX)


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C); token (B, T, C) and vector (B, C) outputs already are."""
    return t.permute(0, 2, 3, 1) if t.ndim == 4 else t


def channels_back(t: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`channels_last`."""
    return t.permute(0, 3, 1, 2) if t.ndim == 4 else t


def _channel_axis(t: torch.Tensor) -> int:
    return 1 if t.ndim in (2, 4) else 2


@dataclass(frozen=True, eq=False)
class FeatureLayer:
    """The features of one sparse autoencoder read at the output of the layer ``source``.

    Attributes
    ----------
    source
        The captured module whose output (channels as dimensions) the dictionary encodes.
    sae
        The dictionary: ``d`` channels in, ``n_features`` features out, ``W_dec`` (d, m).
    fit
        How it fits the sample it was trained on (FVU, L0, dead features); None when unknown.
    n_samples, seconds
        The training sample's size and the training's wall time (0 when unknown).
    """

    source: str
    sae: SparseAutoencoder
    fit: SaeReport | None = None
    n_samples: int = 0
    seconds: float = 0.0

    @property
    def name(self) -> str:
        """The pseudo-layer: ``<source>:features``."""
        return feature_layer_name(self.source)

    @property
    def n_features(self) -> int:
        return self.sae.n_features

    @property
    def channels(self) -> int:
        """The units' count, under the name a layer's is (the recorder's block width)."""
        return self.n_features

    def on(self, device: torch.device | str) -> FeatureLayer:
        """The same layer with the dictionary's weights as float32 tensors on ``device``, so
        encoding a batch there copies nothing."""
        return replace(self, sae=sae_on(self.sae, device))

    # ---- the activation pass ------------------------------------------------------------------
    def reduce(
        self, output: torch.Tensor, floor: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each image's features reduced over space, as channels are (:func:`feature_maxima`)."""
        return feature_maxima(self.sae, output, floor=floor)

    # ---- the concept graph --------------------------------------------------------------------
    @cached_property
    def decoder(self) -> torch.Tensor:
        """``W_dec``, (d, m): feature j writes ``decoder[:, j] * z_j`` into the source."""
        return torch.as_tensor(np.asarray(self.sae.W_dec, dtype=np.float32))

    def _decoder_for(self, t: torch.Tensor) -> torch.Tensor:
        return self.decoder.to(device=t.device, dtype=t.dtype)

    def check(self, output: torch.Tensor) -> None:
        """Raise ``ValueError`` unless the dictionary fits ``output`` (the source's output)."""
        d = int(output.shape[_channel_axis(output)])
        if self.decoder.shape[0] != d:
            raise ValueError(
                f"feature layer {self.name!r}: the decoder has shape "
                f"{tuple(self.decoder.shape)} but its source {self.source!r} outputs {d} "
                f"channels; expected ({d}, n_features)"
            )

    def maps(self, output: torch.Tensor) -> torch.Tensor:
        """Feature maps of a source output: (B, d, H, W) -> (B, m, H, W), (B, T, d) ->
        (B, T, m), (B, d) -> (B, m); in the autograd graph of ``output``."""
        return channels_back(encode(self.sae, channels_last(output)))

    def project(self, grad: torch.Tensor) -> torch.Tensor:
        """The gradient with respect to the features, ``W_dec^T g`` at every position, of a
        gradient ``g`` with respect to the source's output (the reconstruction error held
        fixed); in the layout of :meth:`maps`."""
        return channels_back(channels_last(grad) @ self._decoder_for(grad))

    def decoded(self, z: torch.Tensor, members: np.ndarray) -> torch.Tensor:
        """``W_dec[:, A] z_A`` at every position, in the source output's layout: what the
        features ``members`` (A) write into the source's output."""
        idx = torch.as_tensor(members, dtype=torch.long, device=z.device)
        z_last = channels_last(z).index_select(-1, idx)
        return channels_back(z_last @ self._decoder_for(z).index_select(1, idx).T)


def position_rows(output: torch.Tensor) -> torch.Tensor:
    """A layer output as one channel vector per position: ``(rows, C)``.

    ``(B, C, H, W)`` gives ``B x H x W`` rows, ``(B, T, C)`` gives ``B x T`` rows and ``(B, C)``
    gives ``B`` rows, matching the positions :func:`spatial_max` reduces over.
    """
    if output.ndim == 4:
        return output.permute(0, 2, 3, 1).reshape(-1, output.shape[1])
    if output.ndim == 3:
        return output.reshape(-1, output.shape[2])
    if output.ndim == 2:
        return output
    raise ValueError(f"cannot split an output of shape {tuple(output.shape)} into positions")


def feature_maxima(
    sae: SparseAutoencoder,
    layer_output: torch.Tensor,
    *,
    max_elements: int = 1 << 24,
    floor: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each image's feature activations reduced over space, as channels are.

    Parameters
    ----------
    sae
        The layer's dictionary (``d`` inputs, ``m`` features); :func:`sae_on` puts its weights
        on the output's device once, instead of once per call.
    layer_output
        ``(B, d, H, W)`` maps, ``(B, T, d)`` tokens or ``(B, d)`` vectors.
    max_elements
        Most feature activations (positions x ``m``) encoded at once; images are encoded in
        chunks below it (at least one image at a time), so memory does not grow with ``B``.
    floor
        ``(m,)``: positions only where the maximum is at least its feature's floor, as
        :func:`spatial_max` finds them.

    Returns
    -------
    values, y, x
        Each ``(B, m)``, exactly :func:`spatial_max` of the feature maps: ``y, x`` is the
        argmax position (``y = flat // W``, ``x = flat % W``; tokens: ``y`` = token, ``x`` = 0;
        -1 where the maximum is below ``floor``).
    """
    out = layer_output.detach().float()
    dim = out.shape[1] if out.ndim in (2, 4) else out.shape[-1]
    if out.ndim not in (2, 3, 4) or dim != sae.W_enc.shape[1]:
        raise ValueError(
            f"layer_output must be (B, {sae.W_enc.shape[1]}, H, W), (B, T, "
            f"{sae.W_enc.shape[1]}) or (B, {sae.W_enc.shape[1]}), got {tuple(out.shape)}"
        )
    positions = (
        int(np.prod(out.shape[2:])) if out.ndim == 4 else (out.shape[1] if out.ndim == 3 else 1)
    )
    step = max(1, max_elements // max(1, positions * sae.n_features))
    parts = []
    # float32 even inside the activation pass's autocast (bf16 would reorder near-ties).
    with torch.autocast(out.device.type, enabled=False):
        for lo in range(0, out.shape[0], step):
            chunk = out[lo : lo + step]
            z = encode(sae, position_rows(chunk))  # (chunk x positions, m)
            if chunk.ndim == 2:
                parts.append(spatial_max(z))
                continue
            # Reduced over the positions as laid out (b, positions, m): no copy into (b, m, ...).
            width = chunk.shape[3] if chunk.ndim == 4 else 1
            parts.append(max_and_position(z.view(chunk.shape[0], -1, z.shape[1]), 1, width, floor))
    if len(parts) == 1:  # a batch in one chunk: no copy
        return parts[0]
    return tuple(torch.cat([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def sae_on(sae: SparseAutoencoder, device: torch.device | str) -> SparseAutoencoder:
    """The same dictionary with its weights as float32 tensors on ``device``, so encoding a
    batch there copies nothing (:func:`~carto_assets.core.sae.autoencoder.encode` takes either)."""
    dev = torch.device(device)
    weights = {
        name: torch.as_tensor(np.asarray(getattr(sae, name)), dtype=torch.float32).to(dev)
        if not isinstance(getattr(sae, name), torch.Tensor)
        else getattr(sae, name).to(dev, torch.float32)
        for name in _WEIGHT_NAMES
    }
    return SparseAutoencoder(**weights, k=sae.k)  # type: ignore[arg-type]
