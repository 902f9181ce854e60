"""Layers: what one forward pass reveals about every module, and the study's layer choice.

A *layer* is a module name from ``model.named_modules()``; its output's channels are the
neurons. :func:`probe_layers` runs one forward pass with a hook on every module to learn each
module's output shape, how often it runs per forward pass and the order in which modules finish,
which is what layer validation, ``auto`` layer selection (:func:`default_layers`) and
``carto layers`` are built on.

This module never imports dagster.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from carto_assets.core.network.hooks import capture

#: Layer sets that follow a model's published structure rather than the generic rule.
KNOWN_DEFAULT_LAYERS: dict[str, tuple[str, ...]] = {
    "builtin": ("block1", "block2", "block3", "block4"),
    # The paper's InceptionV1 blocks (mixed3a..mixed5b).
    "googlenet": (
        "inception3a",
        "inception3b",
        "inception4a",
        "inception4b",
        "inception4c",
        "inception4d",
        "inception4e",
        "inception5a",
        "inception5b",
    ),
    # The end of each convolutional stage, before the next downsampling: VGG16's last ReLU of
    # each conv stage (the one before each max pool); 64, 128, 256, 512, 512 channels.
    "vgg16": ("features.3", "features.8", "features.15", "features.22", "features.29"),
    # The last inverted-residual block at each resolution (16, 24, 40, 112, 160 channels) and the
    # final 1x1 conv the classifier reads (960).
    "mobilenet_v3_large": (
        "features.1",
        "features.3",
        "features.6",
        "features.12",
        "features.15",
        "features.16",
    ),
    # Stage outputs (96, 192, 384, 768 channels); features.0/2/4/6 are the stem and the
    # downsampling layers. Deeper modules include channels-last (H, W, C) LayerNorms whose shape
    # would be misread as (C, H, W), so the generic rule must not be used here.
    "convnext_tiny": ("features.1", "features.3", "features.5", "features.7"),
    # The seven MBConv stages (16, 24, 40, 80, 112, 192, 320 channels) and the final 1x1 conv
    # (1280): the paper's stages 2-9.
    "efficientnet_b0": tuple(f"features.{i}" for i in range(1, 9)),
    # Token outputs (197 x 768) of four evenly spaced encoder blocks; see _vit_blocks.
    "vit_b_16": tuple(f"encoder.layers.encoder_layer_{i}" for i in (2, 5, 8, 11)),
}
# Every torchvision ResNet (and its wide / ResNeXt variants) names its four stages layer1..4.
for _resnet in (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "wide_resnet50_2",
):
    KNOWN_DEFAULT_LAYERS[_resnet] = ("layer1", "layer2", "layer3", "layer4")


class LayerError(ValueError):
    """A requested layer is unknown or unusable; the message lists the valid ones."""


@dataclass(frozen=True)
class LayerInfo:
    """What one forward pass revealed about a module."""

    name: str
    type: str
    output_shape: tuple[int, ...] | None  # without the batch dimension; None if not a tensor
    calls: int  # times the module ran in one forward pass
    order: int  # position in order of completion (forward order of outputs)
    depth: int

    @property
    def channels(self) -> int | None:
        if self.output_shape is None or len(self.output_shape) < 1:
            return None
        if len(self.output_shape) == 2:  # tokens: (T, C)
            return self.output_shape[1]
        return self.output_shape[0]

    @property
    def is_tokens(self) -> bool:
        """True for a (T, C) token output (a transformer block)."""
        return self.output_shape is not None and len(self.output_shape) == 2

    @property
    def token_grid(self) -> tuple[int, int] | None:
        """For a token layer, the (rows, cols) grid of its patch tokens, else ``None``.

        ViT-style outputs hold ``T = 1 + g * g`` tokens with the class token first; token ``t``
        (``t >= 1``) covers patch ``divmod(t - 1, g)`` of the input. ``None`` when ``T`` has no
        such square layout (or for a map layer).
        """
        if not self.is_tokens:
            return None
        assert self.output_shape is not None
        for extra in (1, 0):  # class token first (ViT), or patch tokens only
            g = math.isqrt(self.output_shape[0] - extra)
            if g > 0 and g * g == self.output_shape[0] - extra:
                return g, g
        return None

    @property
    def map_size(self) -> tuple[int, int]:
        """(height, width) of the map a neuron's argmax lives in.

        For a (T, C) token layer this is ``(T, 1)``: the argmax ``y`` is a token index and ``x``
        is 0 (see ``activations.spatial_max``), so it is not a pixel grid. Every token of a
        transformer block attends to every patch, so the receptive field of a token layer is the
        whole image: example patches for token layers use the whole image (use
        :attr:`token_grid` to place a token on the input when a location is wanted).
        """
        s = self.output_shape or ()
        if len(s) == 3:
            return s[1], s[2]
        if len(s) == 2:
            return s[0], 1
        return 1, 1


def probe_layers(model: nn.Module, input_size: int, device: str = "cpu") -> list[LayerInfo]:
    """Run one forward pass on a zero image and describe every named module.

    Raises a ``ValueError`` naming the input size when the model cannot run on it.
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    was_training = model.training
    model.eval()
    try:
        with capture(model, [n for n, _ in named], keep=_output_shape) as shapes, torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, device=device))
    except Exception as exc:
        raise ValueError(
            f"the model fails on a {input_size}x{input_size} input "
            f"(set dataset.image_size to a size it accepts): {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        model.train(was_training)
    order = {n: i for i, n in enumerate(shapes)}  # shapes are kept in order of completion
    infos = []
    for name, mod in named:
        if name not in shapes:
            continue  # never ran (e.g. aux heads in eval mode)
        infos.append(
            LayerInfo(
                name=name,
                type=type(mod).__name__,
                output_shape=shapes[name],
                calls=shapes.calls[name],
                order=order[name],
                depth=name.count(".") + 1,
            )
        )
    infos.sort(key=lambda i: i.order)
    return infos


def _output_shape(_name: str, output: object) -> tuple[int, ...] | None:
    """Without the batch dimension; None for an output that is not a tensor."""
    return tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None


_POOLING = ("MaxPool", "AvgPool", "AdaptiveAvgPool", "AdaptiveMaxPool", "Dropout", "Identity")


def default_layers(model_key: str, infos: Sequence[LayerInfo]) -> list[str]:
    """The ``auto`` layer set: the output of each convolutional stage, in forward order.

    Known architectures use their published blocks; otherwise, for every run of modules sharing
    one spatial resolution, the shallowest module that finishes last at that resolution (the
    stage's output), skipping pooling layers and 1x1 maps. Vision transformers (torchvision's
    ``encoder.layers.encoder_layer_<n>`` blocks) get the token outputs of four evenly spaced
    blocks ending with the last one.
    """
    valid = {i.name for i in infos}
    if model_key in KNOWN_DEFAULT_LAYERS and set(KNOWN_DEFAULT_LAYERS[model_key]) <= valid:
        return list(KNOWN_DEFAULT_LAYERS[model_key])
    vit = _vit_blocks(infos)
    if vit:
        return vit
    usable = [
        i
        for i in infos
        if i.output_shape is not None
        and len(i.output_shape) == 3
        and i.calls == 1
        and not i.type.startswith(_POOLING)
        and i.map_size != (1, 1)
    ]
    stages: list[list[LayerInfo]] = []
    for info in usable:
        if stages and stages[-1][-1].map_size == info.map_size:
            stages[-1].append(info)
        else:
            stages.append([info])
    chosen = []
    for stage in stages:
        shallowest = min(i.depth for i in stage)
        chosen.append([i for i in stage if i.depth == shallowest][-1].name)
    if not chosen:
        token = [
            i
            for i in infos
            if i.output_shape is not None
            and len(i.output_shape) == 2
            and i.calls == 1
            and i.depth <= 3
            and "encoder" in i.name
        ]
        chosen = [i.name for i in token]
    return chosen


_VIT_BLOCK = re.compile(r"^encoder\.layers\.encoder_layer_(\d+)$")


def _vit_blocks(infos: Sequence[LayerInfo]) -> list[str]:
    """Four evenly spaced ViT encoder blocks (2, 5, 8, 11 of 12), or [] if not a ViT.

    The patch embedding (``conv_proj``) is a single linear map of 16x16 pixels, not a stage, and
    every block has the same token shape, so the resolution rule cannot find stages here.
    """
    blocks = sorted(
        (int(m.group(1)), i.name)
        for i in infos
        if (m := _VIT_BLOCK.match(i.name)) and i.is_tokens and i.calls == 1
    )
    if not blocks:
        return []
    n = len(blocks)
    picks = sorted({max(0, (n * q) // 4 - 1) for q in (1, 2, 3, 4)})
    return [blocks[p][1] for p in picks]


def resolve_layers(
    infos: Sequence[LayerInfo], requested: Sequence[str] | str, model_key: str
) -> list[LayerInfo]:
    """Validate requested layer names and return them in forward order."""
    by_name = {i.name: i for i in infos}
    names = default_layers(model_key, infos) if requested == "auto" else list(requested)
    if not names:
        raise LayerError("no layers selected and 'auto' found none; list layers explicitly")
    chosen = []
    for name in names:
        info = by_name.get(name)
        if info is None:
            usable = [i.name for i in infos if i.channels]
            raise LayerError(
                f"unknown layer {name!r}; valid layers: {', '.join(usable)} "
                f"(run `carto layers <model>` to see them with channel counts)"
            )
        if info.output_shape is None:
            raise LayerError(f"layer {name!r} outputs a {info.type} result that is not a tensor")
        if len(info.output_shape) not in (1, 2, 3):
            raise LayerError(
                f"layer {name!r} has output shape {info.output_shape}; expected "
                "(C,), (T, C) tokens or (C, H, W)"
            )
        if info.calls != 1:
            raise LayerError(
                f"layer {name!r} runs {info.calls} times per forward pass (a shared module); "
                "pick a module that runs once"
            )
        chosen.append(info)
    return sorted(chosen, key=lambda i: i.order)
