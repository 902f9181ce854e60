"""Example patches: the window of an input image that a neuron's argmax cell sees.

A neuron's top-k images come with the argmax position (y, x) of its activation map. The patch
shown for it is the square window of input pixels around that cell, as wide as the layer's
receptive field (clipped to sensible bounds), cut out and resized to a thumbnail.

The receptive field is *measured*, not derived from a layer list, so it works for any
architecture, branching ones included (inception blocks, residual blocks): see
:func:`receptive_field`.

This module never imports dagster.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.overrides import TorchFunctionMode

from carto_assets.core.network.hooks import capture, find_modules
from carto_assets.core.validate import check_int

#: Smallest patch window, as a fraction of the image side: a 3 px RF crop says nothing.
MIN_WINDOW_FRACTION = 0.125


@dataclass(frozen=True)
class RFInfo:
    """A layer's measured receptive field.

    Attributes
    ----------
    size_px
        Side of the square that holds the field: ``max(height_px, width_px)``.
    height_px, width_px
        Extent of the input pixels with a non-zero gradient for the centre cell.
    stride_px
        Input pixels per map cell at ``input_size`` (``input_size / map_h``).
    map_size
        (height, width) of the layer's map at ``input_size``.
    offset_px
        (dy, dx) from the cell centre as :func:`patch_boxes` places it, ``(y + 0.5) * stride``,
        to the measured field's centre; a fraction of the stride for usual padding. Measured
        on ``canvas_px``, so only approximate for ``input_size`` when the canvas grew (padding
        and ceil-mode pooling shift it by a pixel or two with the input size).
    canvas_px
        Side of the input the field was finally measured on (larger than ``input_size`` when
        the field did not fit, see :func:`receptive_field`).
    truncated
        True when the field touched the border of even the largest canvas tried: ``size_px``
        is then a lower bound (global operations such as attention, squeeze-excitation or
        global pooling make every cell see the whole input).
    """

    size_px: int
    height_px: int
    width_px: int
    stride_px: float
    map_size: tuple[int, int]
    offset_px: tuple[float, float]
    canvas_px: int
    truncated: bool


_MAX_POOLS = {
    F.max_pool1d: F.avg_pool1d,
    F.max_pool2d: F.avg_pool2d,
    F.max_pool3d: F.avg_pool3d,
    torch.max_pool1d: F.avg_pool1d,
    torch.max_pool2d: F.avg_pool2d,
    torch.max_pool3d: F.avg_pool3d,
    F.max_pool1d_with_indices: F.avg_pool1d,
    F.max_pool2d_with_indices: F.avg_pool2d,
    F.max_pool3d_with_indices: F.avg_pool3d,
}
_ADAPTIVE_MAX_POOLS = {
    F.adaptive_max_pool1d: F.adaptive_avg_pool1d,
    F.adaptive_max_pool2d: F.adaptive_avg_pool2d,
    F.adaptive_max_pool3d: F.adaptive_avg_pool3d,
}
_POOL_ARGS = (
    "input",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "ceil_mode",
    "return_indices",
)


class _MaxToAvgPool(TorchFunctionMode):
    """Run every max pooling (module or functional) as average pooling of the same geometry.

    Max pooling sends the gradient to one element per window, and a constant-ish input makes
    that element the same corner everywhere, so the measured field would shrink and shift.
    Average pooling covers exactly the same window with a gradient on every element.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _MAX_POOLS:
            bound = dict(zip(_POOL_ARGS, args))
            bound.update(kwargs)
            dilation = bound.get("dilation", 1)
            if any(d != 1 for d in np.atleast_1d(dilation)):
                return func(*args, **kwargs)  # avg pooling has no dilation; keep the max
            out = _MAX_POOLS[func](
                bound["input"],
                bound["kernel_size"],
                bound.get("stride") or None,
                bound.get("padding", 0),
                bound.get("ceil_mode", False),
            )
            if bound.get("return_indices", False) or func in (
                F.max_pool1d_with_indices,
                F.max_pool2d_with_indices,
                F.max_pool3d_with_indices,
            ):
                _, indices = func(*args, **{**kwargs, "return_indices": True})
                return out, indices
            return out
        if func in _ADAPTIVE_MAX_POOLS:
            bound = dict(zip(("input", "output_size", "return_indices"), args))
            bound.update(kwargs)
            out = _ADAPTIVE_MAX_POOLS[func](bound["input"], bound["output_size"])
            if bound.get("return_indices", False):
                return out, func(*args, **kwargs)[1]
            return out
        return func(*args, **kwargs)


def _positive_surrogate(model: nn.Module) -> nn.Module:
    """A float64 eval-mode copy whose every pre-activation is positive for a positive input.

    Weights become ``1 / fan_in`` (so values stay O(1) at any depth), biases a small positive
    constant and batch norms the identity. With a positive input, ReLU-like functions then
    never sit in a zero-gradient region and no weight happens to cancel a path, so a non-zero
    input gradient marks exactly the pixels the cell is wired to.
    """
    surrogate = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for name, p in surrogate.named_parameters():
            if p.ndim >= 2:
                p.fill_(1.0 / max(1, p[0].numel()))
            elif name.rsplit(".", 1)[-1] == "bias":
                p.fill_(0.01)
            else:
                p.fill_(1.0)
        for name, b in surrogate.named_buffers():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_mean":
                b.zero_()
            elif leaf == "running_var":
                b.fill_(1.0)
        for p in surrogate.parameters():
            p.requires_grad_(False)
    return surrogate


def _map_of(model: nn.Module, layer_name: str, x: torch.Tensor) -> torch.Tensor:
    """Run ``model`` on ``x`` until ``layer_name`` has run and return its (B, C, H, W) output."""
    with capture(model, [layer_name], stop_after=layer_name) as captured, _MaxToAvgPool():
        model(x)
    if layer_name not in captured:
        raise ValueError("the layer did not run in the forward pass")
    out = captured[layer_name]
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the layer's output is {shape}, not a (B, C, H, W) map")
    return out


def _probe(canvas: int, seed: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # Positive and slightly uneven: no pre-activation is zero and no centring op sees a
    # constant (which would make its gradient vanish).
    x = 0.5 + torch.rand(1, 3, canvas, canvas, generator=gen, dtype=torch.float64)
    return x.to(device).requires_grad_(True)


def _support(
    x: torch.Tensor, out: torch.Tensor, retain: bool = False
) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """The bounding box of the input pixels the centre cell of ``out`` (a map of ``x``) sees,
    and the map's (height, width)."""
    h, w = out.shape[2], out.shape[3]
    cy, cx = h // 2, w // 2
    (grad,) = torch.autograd.grad(out[0, :, cy, cx].sum(), x, retain_graph=retain)
    seen = grad.abs().sum(dim=(0, 1)) > 0
    rows = torch.nonzero(seen.any(dim=1)).flatten()
    cols = torch.nonzero(seen.any(dim=0)).flatten()
    if len(rows) == 0:
        raise ValueError("the centre cell's input gradient is zero everywhere")
    box = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
    return box, (h, w)


def _measure(
    model: nn.Module, layer_name: str, canvas: int, seed: int
) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = _probe(canvas, seed, device)
    with torch.enable_grad():
        return _support(x, _map_of(model, layer_name, x))


def _copy(_name: str, output: object) -> object:
    return output.clone() if isinstance(output, torch.Tensor) else output


def _measure_each(
    model: nn.Module, names: Sequence[str], canvas: int, seed: int
) -> dict[str, tuple[tuple[int, int, int, int], tuple[int, int]] | Exception]:
    """:func:`_measure` of every layer (or the error it raises), from one forward pass of the
    whole model where that runs; where it does not (a model that takes one input size, a
    layer whose output is no map), each layer the shared pass did not measure is measured on
    its own, as :func:`_measure` alone would. The input and each layer's gradient are the
    same either way, so are the boxes."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    shared: dict[str, tuple[tuple[int, int, int, int], tuple[int, int]]] = {}
    if len(names) > 1:
        x = _probe(canvas, seed, device)
        try:
            # The maps are copied as they are made: the rest of the pass may change a
            # module's output in place, which a pass stopped after the layer never does.
            with (
                capture(model, names, keep=_copy) as captured,
                _MaxToAvgPool(),
                torch.enable_grad(),
            ):
                model(x)
                maps = {
                    n: v
                    for n, v in captured.items()
                    if isinstance(v, torch.Tensor) and v.ndim == 4 and v.requires_grad
                }
                for k, name in enumerate(n for n in names if n in maps):
                    try:
                        shared[name] = _support(x, maps[name], retain=k < len(maps) - 1)
                    except ValueError:
                        pass  # measured on its own below, which raises it again
        except (RuntimeError, ValueError):
            pass
    out: dict[str, tuple[tuple[int, int, int, int], tuple[int, int]] | Exception] = {}
    for name in names:
        if name in shared:
            out[name] = shared[name]
            continue
        try:
            out[name] = _measure(model, name, canvas, seed)
        except (RuntimeError, ValueError) as error:
            out[name] = error
    return out


def receptive_field(
    model: nn.Module,
    layer_name: str,
    input_size: int,
    *,
    max_canvas_px: int | None = None,
    seed: int = 0,
) -> RFInfo:
    """Measure the receptive field of a layer's map cells by backpropagation.

    Method: a float64 copy of the model gets positive surrogate weights (``1/fan_in``, batch
    norm as identity, small positive biases) and max pooling is run as average pooling of the
    same geometry; the gradient of the centre cell (summed over all channels) with respect to a
    positive random input is then strictly positive on exactly the pixels the cell is wired to,
    whatever the branches (inception concatenations, residual sums) in between. The field is the
    bounding box of that support. The real weights are never used: they could zero a path
    (dead ReLUs, a max pool's argmax) and the field would shrink.

    The input is ``input_size`` square; when the support touches the border the measure is
    repeated on a canvas twice as large, up to ``max_canvas_px`` (default ``2 * input_size``:
    a field larger than that is "the whole image" for any patch).

    Limits: fields are measured at the centre cell, so cells near the border (whose field is
    cut by padding) are not described; global operations (attention, squeeze-excitation, global
    pooling, spatial norms) legitimately give a field as large as the canvas (``truncated``);
    a max pooling with dilation keeps its max and may shrink the field; a model that only
    accepts one input size is measured at ``input_size`` only.

    Parameters
    ----------
    model
        Any ``nn.Module`` taking (B, 3, H, W); it is copied, never modified.
    layer_name
        A module name from ``model.named_modules()`` with a (B, C, H, W) output.
    input_size
        The side of the model's input images.
    max_canvas_px
        Largest canvas to try when the field does not fit.
    seed
        Seed of the positive random input.

    Returns
    -------
    RFInfo
    """
    return receptive_fields(
        model, [layer_name], input_size, max_canvas_px=max_canvas_px, seed=seed
    )[layer_name]


def receptive_fields(
    model: nn.Module,
    layer_names: Sequence[str],
    input_size: int,
    *,
    max_canvas_px: int | None = None,
    seed: int = 0,
) -> dict[str, RFInfo]:
    """:func:`receptive_field` of each layer of ``layer_names``, the same figures: one
    surrogate for them all and, per canvas size, one forward pass (each layer's own backward
    pass from it) instead of one per layer. The first layer whose field cannot be measured
    raises as :func:`receptive_field` would."""
    check_int("input_size", input_size, minimum=1)
    names = list(dict.fromkeys(layer_names))
    find_modules(model, names)
    if not names:
        return {}
    surrogate = _positive_surrogate(model)
    limit = max(input_size, max_canvas_px if max_canvas_px is not None else 2 * input_size)

    base_map: dict[str, tuple[int, int]] = {}
    # name -> (box, map size, canvas): every layer grows through the same canvas sizes.
    state: dict[str, tuple[tuple[int, int, int, int], tuple[int, int], int]] = {}
    for name, result in _measure_each(surrogate, names, input_size, seed).items():
        if isinstance(result, Exception):
            raise result
        base_map[name] = result[1]
        state[name] = (*result, input_size)
    growing = [name for name in names if _touches(state[name][0], input_size)]
    canvas = input_size
    while growing and canvas < limit:
        bigger = min(limit, canvas * 2)
        still = []
        for name, result in _measure_each(surrogate, growing, bigger, seed).items():
            if isinstance(result, Exception):
                continue  # the model accepts no other input size: the last canvas stands
            state[name] = (*result, bigger)
            if _touches(result[0], bigger):
                still.append(name)
        growing, canvas = still, bigger
    return {name: _field(*state[name], base_map[name], input_size) for name in names}


def _field(
    box: tuple[int, int, int, int],
    map_hw: tuple[int, int],
    canvas: int,
    base_map: tuple[int, int],
    input_size: int,
) -> RFInfo:
    truncated = _touches(box, canvas)
    top, left, bottom, right = box
    height, width = bottom - top, right - left
    stride_y, stride_x = canvas / map_hw[0], canvas / map_hw[1]
    cy, cx = map_hw[0] // 2, map_hw[1] // 2
    offset = (
        (top + bottom) / 2 - (cy + 0.5) * stride_y,
        (left + right) / 2 - (cx + 0.5) * stride_x,
    )
    return RFInfo(
        size_px=max(height, width),
        height_px=height,
        width_px=width,
        stride_px=input_size / base_map[0],
        map_size=(int(base_map[0]), int(base_map[1])),
        offset_px=(float(offset[0]), float(offset[1])),
        canvas_px=canvas,
        truncated=truncated,
    )


def _touches(box: tuple[int, int, int, int], canvas: int) -> bool:
    top, left, bottom, right = box
    return top <= 0 or left <= 0 or bottom >= canvas or right >= canvas


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def patch_boxes(
    ys: np.ndarray,
    xs: np.ndarray,
    map_h: int,
    map_w: int,
    input_size: int | tuple[int, int],
    window_px: int,
    *,
    min_fraction: float = MIN_WINDOW_FRACTION,
    offset_px: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """The square input windows around map cells: (N,) cells -> (N, 4) boxes.

    A cell's centre maps to ``((y + 0.5) * H / map_h, (x + 0.5) * W / map_w)``. The window
    side is ``window_px`` (usually :attr:`RFInfo.size_px`) clipped to at least
    ``min_fraction`` of the shorter image side and at most that side; a window that would
    cross the border is shifted inside rather than cropped, so every patch has the same scale.
    ``tests/reference/patches.py`` computes one box the same way, cell by cell.

    Parameters
    ----------
    ys, xs
        (N,) argmax cells of the neurons' maps.
    map_h, map_w
        Size of the layer's map.
    input_size
        Image side, or (height, width), in the pixels the boxes refer to.
    window_px
        Desired window side in those pixels.
    min_fraction
        Smallest window as a fraction of the shorter image side.
    offset_px
        (dy, dx) added to the cell centre, e.g. :attr:`RFInfo.offset_px` to centre the window
        on the measured field rather than on the cell's share of the image.

    Returns
    -------
    np.ndarray
        (N, 4) int64 pixel bounds (top, left, bottom, right), bottom/right exclusive
        (``image[top:bottom, left:right]``).
    """
    img_h, img_w = _hw(input_size)
    if map_h < 1 or map_w < 1 or img_h < 1 or img_w < 1:
        raise ValueError(
            f"map size ({map_h}, {map_w}) and image size ({img_h}, {img_w}) must be positive"
        )
    ys = np.asarray(ys, dtype=np.int64)
    xs = np.asarray(xs, dtype=np.int64)
    if ys.shape != xs.shape:
        raise ValueError(f"ys {ys.shape} and xs {xs.shape} differ in shape")
    if ys.size and (ys.min() < 0 or ys.max() >= map_h or xs.min() < 0 or xs.max() >= map_w):
        raise ValueError(f"cell positions fall outside the {map_h}x{map_w} map")
    side = min(img_h, img_w)
    window = int(np.clip(int(window_px), max(1, math.ceil(min_fraction * side)), side))
    cy = (ys + 0.5) * img_h / map_h + offset_px[0]
    cx = (xs + 0.5) * img_w / map_w + offset_px[1]
    top = np.clip(np.round(cy - window / 2), 0, img_h - window).astype(np.int64)
    left = np.clip(np.round(cx - window / 2), 0, img_w - window).astype(np.int64)
    return np.stack([top, left, top + window, left + window], axis=-1).reshape(-1, 4)


def crop_patch(image: np.ndarray, box: Sequence[int] | np.ndarray, out_size: int = 64) -> bytes:
    """Cut ``box`` out of an (H, W, 3) uint8 image and return it as ``out_size``² PNG bytes.

    The resize is bicubic (PIL antialiases when shrinking).
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"image must be an (H, W, 3) array, got {shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if out_size < 1:
        raise ValueError(f"out_size must be >= 1, got {out_size}")
    top, left, bottom, right = (int(v) for v in box)
    h, w = image.shape[:2]
    if not (0 <= top < bottom <= h and 0 <= left < right <= w):
        raise ValueError(f"box {(top, left, bottom, right)} is empty or outside a {h}x{w} image")
    crop = Image.fromarray(np.ascontiguousarray(image[top:bottom, left:right]))
    if crop.size != (out_size, out_size):
        crop = crop.resize((out_size, out_size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    crop.save(buf, format="PNG")
    return buf.getvalue()


def crop_patches(
    images: Mapping[int, np.ndarray] | Sequence[np.ndarray] | np.ndarray,
    image_ids: Sequence[int] | np.ndarray,
    boxes: np.ndarray,
    out_size: int = 64,
    encoded: dict[tuple[int, ...], bytes] | None = None,
    workers: int = 1,
) -> list[bytes]:
    """PNG patches for many (image, box) pairs; ``images[image_ids[i]]`` is cut by ``boxes[i]``.

    ``images`` is anything indexable by image id: a dict of decoded images, a list, or an
    (N, H, W, 3) array. Group top-k rows by image before calling to decode each image once.

    A pair that repeats is encoded once (the same bytes): neurons of a layer often share an
    image and its argmax cell, and a layer whose field covers the image crops every cell to
    the whole image (googlenet's rehearsal: 49,392 patches, far fewer distinct pairs).
    ``encoded`` (image id, top, left, bottom, right) -> PNG is filled as it goes; pass the same
    dict to calls over the same images and ``out_size`` to share their pairs too.

    ``workers`` threads cut, resize and encode the new pairs (Pillow releases the GIL while it
    resizes and compresses); the bytes are the same whatever their number.
    """
    boxes = np.asarray(boxes)
    ids = np.asarray(image_ids)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4), got {boxes.shape}")
    if len(ids) != len(boxes):
        raise ValueError(f"{len(ids)} image ids for {len(boxes)} boxes")
    encoded = {} if encoded is None else encoded
    keys = [(int(i), *box) for i, box in zip(ids.tolist(), boxes.tolist())]
    new = [k for k in dict.fromkeys(keys) if k not in encoded]

    def cut(key: tuple[int, ...]) -> bytes:
        return crop_patch(images[key[0]], key[1:], out_size)

    if workers > 1 and len(new) > 1:
        with ThreadPoolExecutor(min(workers, len(new))) as pool:
            encoded.update(zip(new, pool.map(cut, new)))
    else:
        encoded.update((k, cut(k)) for k in new)
    return [encoded[k] for k in keys]


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W, 3) uint8 array (for tests and previews)."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))
