"""Procedural "shapes" world: the built-in offline demo dataset.

Every image shows one coloured shape on a textured background, and every image comes with the
exact values of the concepts it was rendered from. A small CNN is trained to classify the shape;
the known concepts then let us check which neurons respond to which concept.

The world is built so that concepts live at several levels of abstraction:

* low level: object ``colour``, ``background`` tint, background ``texture`` (stripes, dots, ...);
* mid level: ``size``, ``position``;
* high level: ``shape``, which is also the class label.

All concepts are sampled independently and uniformly, so no concept value is confounded with
another and each one is separately identifiable from a neuron's top-activating images, unless
shortcuts are planted.

Planted shortcuts
-----------------
A :class:`Shortcut` ``(class_name, concept, value, share)`` correlates a concept value with a
class, as a watermark or a snowy background does in real data (the study field
``dataset.shortcuts``). The shape is drawn first. For a concept with shortcuts, an image of a
planted class gets the planted value with probability ``share``, so exactly that share of the
class holds it; otherwise the class's image draws the concept from its other values, and every
image of the other classes draws it from all its values, with each value planted for *another*
class weighted :data:`SHORTCUT_ELSEWHERE` (a quarter of its uniform rate) and every other value
weighted 1. The planted value thus stays rare but present elsewhere, so annotations can still
tell ``texture=dots`` from ``shape=heart``. Concepts without shortcuts are drawn uniformly, and a
world without shortcuts is drawn exactly as before they existed (the same random calls, the
same pixels).

:func:`counterfactual` changes one concept of a scene and nothing else, so a model's reliance on
a value can be tested by re-rendering its images without it.

Determinism
-----------
A scene depends on ``(seed, index)`` alone (``np.random.default_rng([seed, index])``), and a
rendered image depends on its scene alone. Any single image can therefore be regenerated without
touching the others, which shard workers and patch croppers rely on.

Rendering
---------
The object's coverage mask is drawn with PIL at ``SUPERSAMPLE`` times the target resolution and
box-reduced, which gives exact area anti-aliasing. The background texture is evaluated
analytically at the target resolution with a one-pixel anti-aliasing ramp, so it never needs the
supersampled canvas. Both choices keep rendering well above 2000 images/s at 64x64 on two cores.

Examples
--------
>>> world = ShapesWorld(n_images=100, image_size=64, seed=0)
>>> world.image(3).shape
(64, 64, 3)
>>> world.scene(3).concepts()["shape"] == CLASS_NAMES[world.label(3)]
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from carto_assets.core.validate import check_int
from carto_assets.sources.shape_outlines import INSET_STEPS, max_inset_step, unit_outline

__all__ = [
    "BACKGROUND_RGB",
    "CHANGEABLE_CONCEPTS",
    "CLASS_NAMES",
    "COLOUR_RGB",
    "CONCEPTS",
    "MAX_IMAGE_SIZE",
    "MIN_IMAGE_SIZE",
    "SHORTCUT_ELSEWHERE",
    "SUPERSAMPLE",
    "ShapeScene",
    "ShapesWorld",
    "Shortcut",
    "background_layer",
    "counterfactual",
    "object_coverage",
    "render",
    "sample_scene",
    "shortcut_problems",
]

CLASS_NAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "heart",
    "crescent",
    "arrow",
)
"""Shape classes; the label of an image is the index of its shape in this tuple."""

# Saturated object colours, far apart in RGB so that the named colour of an object can be
# recovered from its mean pixel colour even after brightness jitter.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (50, 175, 70),
    "cyan": (40, 200, 210),
    "blue": (45, 85, 225),
    "purple": (145, 70, 205),
    "pink": (245, 120, 190),
}
"""Nominal RGB of each object colour (before per-image brightness jitter)."""

# Desaturated background tints, so that the saturated object always stands out from them.
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "dark": (38, 38, 44),
    "slate": (95, 105, 120),
    "sand": (196, 182, 150),
    "light": (232, 232, 228),
}
"""Nominal RGB of each background tint (before per-image shift and texture)."""

CONCEPTS: dict[str, tuple[str, ...]] = {
    "shape": CLASS_NAMES,
    "colour": tuple(COLOUR_RGB),
    "texture": ("plain", "stripes_h", "stripes_v", "stripes_diag", "checker", "dots", "noise"),
    "background": tuple(BACKGROUND_RGB),
    "size": ("small", "medium", "large"),
    "position": ("centre", "top_left", "top_right", "bottom_left", "bottom_right"),
}
"""Concept name -> allowed values. Every concept is categorical with string values."""

OUTLINES = ("filled", "outlined")
"""Render styles. The world samples only ``filled`` objects: with outlined ones in the mix, the
extra inner edges made "outlined" the strongest driver of almost every neuron's top images
(80-88% of deep neurons' top images on the demo), so that one value drowned out every other
concept. ``outlined`` stays available for hand-made scenes."""

#: Bump when the renderer changes what it draws, so cached checkpoints are retrained
#: (part of :func:`carto_assets.storage.fingerprints.model_fingerprint`).
SHAPES_REVISION = "filled-only-1"

SHORTCUT_ELSEWHERE = 0.25
"""Weight of a value planted for another class when a concept with shortcuts is drawn (every
other value weighs 1): a planted value stays a quarter as frequent as uniform outside its
classes, rare but present."""

CHANGEABLE_CONCEPTS: tuple[str, ...] = ("colour", "texture", "background", "size", "position")
"""Concepts a shortcut may plant and :func:`counterfactual` may change: all but ``shape``, which
is the class itself."""

MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 512
SUPERSAMPLE = 4
"""Linear supersampling factor of the object mask (4 -> 16 samples per output pixel)."""

# Object radius as a fraction of the image side. The ranges do not overlap, so "size" is
# unambiguous from the pixels; the largest radius still leaves room to move into a corner.
_SIZE_RADIUS: dict[str, tuple[float, float]] = {
    "small": (0.11, 0.15),
    "medium": (0.18, 0.22),
    "large": (0.26, 0.30),
}
_CENTRE_JITTER = 0.04
_EDGE_MARGIN = 0.02
# Corner objects are pushed between 70% and 100% of the way to the frame edge; even large
# objects then sit clearly off-centre (>= 0.126 of the side) while never being clipped.
_CORNER_REACH = (0.7, 1.0)
_CORNER_SIGNS: dict[str, tuple[int, int]] = {
    "top_left": (-1, -1),
    "top_right": (1, -1),
    "bottom_left": (-1, 1),
    "bottom_right": (1, 1),
}
# Small tilts add variety without turning one class into another (e.g. square -> diamond).
_MAX_ROTATION_DEG = 20.0
_BRIGHTNESS = (0.88, 1.06)
_BACKGROUND_SHIFT = 10.0
# Texture amplitude is moderate so that it is clearly visible yet never rivals the object.
_TEXTURE_CONTRAST = (32.0, 48.0)
# Texture period as a fraction of the side: 7-11 px at 64x64, well above the Nyquist limit.
_TEXTURE_PERIOD = (1.0 / 9.0, 1.0 / 6.0)
# Outline stroke: a fraction of the radius, but never thinner than this many output pixels.
_STROKE_FRACTION = 0.18
_MIN_STROKE_PX = 1.5


@dataclass(frozen=True)
class ShapeScene:
    """Everything needed to render one image.

    Parameters
    ----------
    shape, colour, texture, background, size, position : str
        Concept values; each must be one of ``CONCEPTS[name]``.
    outline : str
        ``filled`` (what the world samples) or ``outlined``, see :data:`OUTLINES`.
    centre_x, centre_y : float
        Object centre as a fraction of the image side (0 = left/top, 1 = right/bottom).
    radius : float
        Radius of the circle enclosing the object, as a fraction of the image side.
    rotation_deg : float
        Counter-clockwise rotation of the object in degrees.
    brightness : float
        Multiplier applied to the nominal object colour.
    background_shift : float
        Offset (0-255 scale) added to every channel of the background tint.
    texture_period : float
        Texture period as a fraction of the image side.
    texture_phase_x, texture_phase_y : float
        Texture phase in periods, in ``[0, 1)``.
    texture_contrast : float
        Texture amplitude on the 0-255 scale.
    texture_seed : int
        Seed of the random field used by the ``noise`` texture.
    """

    shape: str
    colour: str
    texture: str
    background: str
    size: str
    position: str
    outline: str
    centre_x: float
    centre_y: float
    radius: float
    rotation_deg: float
    brightness: float
    background_shift: float
    texture_period: float
    texture_phase_x: float
    texture_phase_y: float
    texture_contrast: float
    texture_seed: int

    def __post_init__(self) -> None:
        for name, allowed in CONCEPTS.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"ShapeScene.{name}={value!r} is not one of {allowed}")
        if self.outline not in OUTLINES:
            raise ValueError(f"ShapeScene.outline={self.outline!r} is not one of {OUTLINES}")
        if not 0.0 < self.radius <= 0.5:
            raise ValueError(f"ShapeScene.radius={self.radius!r} must be in (0, 0.5]")
        if self.texture_period <= 0.0:
            raise ValueError(f"ShapeScene.texture_period={self.texture_period!r} must be > 0")

    def concepts(self) -> dict[str, str]:
        """Return ``{concept: value}`` with the same keys, in the same order, as ``CONCEPTS``."""
        return {name: getattr(self, name) for name in CONCEPTS}


def shortcut_problems(class_name: object, concept: object, value: object) -> dict[str, str]:
    """What is wrong with a shortcut's class, concept and value, ``{field: message}`` (field:
    ``class``, ``concept`` or ``value``); empty when the shortcut can be planted."""
    problems: dict[str, str] = {}
    if class_name not in CLASS_NAMES:
        problems["class"] = (
            f"unknown class {class_name!r}; the shape classes are {', '.join(CLASS_NAMES)}"
        )
    if concept == "shape":
        problems["concept"] = (
            "'shape' is the class itself and cannot be planted; plant one of "
            f"{', '.join(CHANGEABLE_CONCEPTS)}"
        )
    elif concept not in CHANGEABLE_CONCEPTS:
        problems["concept"] = (
            f"unknown concept {concept!r}; plant one of {', '.join(CHANGEABLE_CONCEPTS)}"
        )
    elif value not in CONCEPTS[str(concept)]:
        problems["value"] = (
            f"{value!r} is not a value of {concept}; its values are "
            f"{', '.join(CONCEPTS[str(concept)])}"
        )
    return problems


@dataclass(frozen=True)
class Shortcut:
    """A concept value planted in a class's images (see the module's "Planted shortcuts").

    Parameters
    ----------
    class_name : str
        The planted class, one of ``CLASS_NAMES``.
    concept : str
        One of ``CHANGEABLE_CONCEPTS`` (``shape`` is the class itself).
    value : str
        One of ``CONCEPTS[concept]``.
    share : float
        Probability in ``[0, 1]`` that an image of the class gets ``value`` (its other images
        never do).
    """

    class_name: str
    concept: str
    value: str
    share: float

    def __post_init__(self) -> None:
        problems = shortcut_problems(self.class_name, self.concept, self.value)
        if problems:
            field, message = next(iter(problems.items()))
            raise ValueError(f"shortcut {field}: {message}")
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"shortcut share must be a number in [0, 1], got {self.share!r}")


def _check_shortcuts(shortcuts: Iterable[Shortcut]) -> tuple[Shortcut, ...]:
    planted = tuple(shortcuts)
    seen: set[tuple[str, str]] = set()
    for shortcut in planted:
        if not isinstance(shortcut, Shortcut):
            raise TypeError(f"shortcuts must be Shortcut objects, got {shortcut!r}")
        key = (shortcut.class_name, shortcut.concept)
        if key in seen:
            raise ValueError(
                f"two shortcuts plant {shortcut.concept} in class {shortcut.class_name!r}; "
                "keep one per class and concept"
            )
        seen.add(key)
    return planted


def _check_image_size(image_size: object) -> int:
    return check_int("image_size", image_size, minimum=MIN_IMAGE_SIZE, maximum=MAX_IMAGE_SIZE)


def _choice(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _planted_concepts(rng: np.random.Generator, shortcuts: tuple[Shortcut, ...]) -> dict[str, str]:
    """The concepts of a world with shortcuts (the module's "Planted shortcuts")."""
    concepts = {"shape": _choice(rng, CLASS_NAMES)}
    shape = concepts["shape"]
    for name, values in CONCEPTS.items():
        if name == "shape":
            continue
        planted = [s for s in shortcuts if s.concept == name]
        if not planted:
            concepts[name] = _choice(rng, values)
            continue
        own = next((s for s in planted if s.class_name == shape), None)
        if own is not None and rng.random() < own.share:
            concepts[name] = own.value
            continue
        elsewhere = {s.value for s in planted if s.class_name != shape}
        # The class's other images never draw its planted value: exactly `share` of them hold it.
        mine = own.value if own is not None else None
        cumulative = np.cumsum(
            [0.0 if v == mine else SHORTCUT_ELSEWHERE if v in elsewhere else 1.0 for v in values]
        )
        drawn = np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")
        concepts[name] = values[int(drawn)]
    return concepts


def sample_scene(seed: int, index: int, shortcuts: Sequence[Shortcut] = ()) -> ShapeScene:
    """Sample the scene of image ``index`` in the world with ``seed``.

    Parameters
    ----------
    seed, index : int
        Non-negative integers. The scene depends on this pair (and the shortcuts) alone, so any
        image can be regenerated without sampling the images before it.
    shortcuts : sequence of Shortcut
        Concept values planted in classes, at most one per class and concept; none (the
        default): every concept is drawn uniformly, exactly as before shortcuts existed.

    Returns
    -------
    ShapeScene
        Concept values (drawn independently and uniformly unless shortcuts are planted), plus
        continuous jitter.
    """
    seed = check_int("seed", seed, minimum=0)
    index = check_int("index", index, minimum=0)
    planted = _check_shortcuts(shortcuts)
    rng = np.random.default_rng([seed, index])

    if planted:
        concepts = _planted_concepts(rng, planted)
    else:
        # Concepts are drawn first and independently, so their joint distribution is a product
        # of uniforms and no concept value predicts another.
        concepts = {name: _choice(rng, values) for name, values in CONCEPTS.items()}

    radius = float(rng.uniform(*_SIZE_RADIUS[concepts["size"]]))
    position = concepts["position"]
    if position == "centre":
        dx, dy = rng.uniform(-_CENTRE_JITTER, _CENTRE_JITTER, size=2)
    else:
        reach = 0.5 - radius - _EDGE_MARGIN
        sx, sy = _CORNER_SIGNS[position]
        dx, dy = reach * rng.uniform(*_CORNER_REACH, size=2) * (sx, sy)

    return ShapeScene(
        **concepts,
        outline="filled",
        centre_x=float(0.5 + dx),
        centre_y=float(0.5 + dy),
        radius=radius,
        rotation_deg=float(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG)),
        brightness=float(rng.uniform(*_BRIGHTNESS)),
        background_shift=float(rng.uniform(-_BACKGROUND_SHIFT, _BACKGROUND_SHIFT)),
        texture_period=float(rng.uniform(*_TEXTURE_PERIOD)),
        texture_phase_x=float(rng.uniform()),
        texture_phase_y=float(rng.uniform()),
        texture_contrast=float(rng.uniform(*_TEXTURE_CONTRAST)),
        texture_seed=int(rng.integers(2**31)),
    )


def _relative_offsets(scene: ShapeScene) -> tuple[float, float]:
    """Where the scene's centre sits within the range its position allows, ``(tx, ty)`` in
    ``[0, 1]`` per axis: the inverse of :func:`_centre` (clipped, for hand-made scenes)."""
    reach = 0.5 - scene.radius - _EDGE_MARGIN
    low, high = _CORNER_REACH
    signs = _CORNER_SIGNS.get(scene.position, (1, 1))

    def place(offset: float, sign: int) -> float:
        if scene.position == "centre":
            t = (offset + _CENTRE_JITTER) / (2 * _CENTRE_JITTER)
        else:
            t = (offset * sign / reach - low) / (high - low)
        return min(max(t, 0.0), 1.0)

    return place(scene.centre_x - 0.5, signs[0]), place(scene.centre_y - 0.5, signs[1])


def _centre(position: str, offsets: tuple[float, float], radius: float) -> tuple[float, float]:
    """The centre ``(x, y)`` of an object of ``radius`` at ``position``, ``offsets`` placing it
    within the range the position allows, by :func:`sample_scene`'s rule."""
    reach = 0.5 - radius - _EDGE_MARGIN
    low, high = _CORNER_REACH
    signs = _CORNER_SIGNS.get(position, (1, 1))

    def offset(t: float, sign: int) -> float:
        if position == "centre":
            return _CENTRE_JITTER * (2 * t - 1)
        return reach * (low + t * (high - low)) * sign

    return 0.5 + offset(offsets[0], signs[0]), 0.5 + offset(offsets[1], signs[1])


def counterfactual(scene: ShapeScene, concept: str, value: str) -> ShapeScene:
    """The same scene with only ``concept`` set to ``value``.

    Colour, texture and background are swapped outright. ``size`` maps the radius to the same
    relative place in the new size's range (and recomputes a corner object's centre, whose reach
    depends on the radius); ``position`` moves the centre to the same relative place within the
    new position's range. Rotation, brightness, tint shift and texture parameters are kept, so
    nothing else about the image changes.

    Raises
    ------
    ValueError
        If ``concept`` is not one of ``CHANGEABLE_CONCEPTS`` or ``value`` not one of its values.
    """
    if concept not in CHANGEABLE_CONCEPTS:
        raise ValueError(
            f"cannot change concept {concept!r}; changeable: {', '.join(CHANGEABLE_CONCEPTS)}"
        )
    if value not in CONCEPTS[concept]:
        raise ValueError(
            f"{value!r} is not a value of {concept}; its values are {', '.join(CONCEPTS[concept])}"
        )
    if concept in ("colour", "texture", "background"):
        return replace(scene, **{concept: value})
    offsets = _relative_offsets(scene)
    if concept == "size":
        old_low, old_high = _SIZE_RADIUS[scene.size]
        new_low, new_high = _SIZE_RADIUS[value]
        place = (scene.radius - old_low) / (old_high - old_low)
        radius = new_low + place * (new_high - new_low)
        centre_x, centre_y = _centre(scene.position, offsets, radius)
        return replace(scene, size=value, radius=radius, centre_x=centre_x, centre_y=centre_y)
    centre_x, centre_y = _centre(value, offsets, scene.radius)
    return replace(scene, position=value, centre_x=centre_x, centre_y=centre_y)


def _to_canvas(unit: np.ndarray, scene: ShapeScene, canvas_size: int) -> list[tuple[float, float]]:
    theta = math.radians(scene.rotation_deg)
    c, s = math.cos(theta), math.sin(theta)
    r = scene.radius * canvas_size
    x = scene.centre_x * canvas_size + r * (unit[:, 0] * c - unit[:, 1] * s)
    # Image rows grow downwards, so the maths y axis is flipped.
    y = scene.centre_y * canvas_size - r * (unit[:, 0] * s + unit[:, 1] * c)
    return list(zip(x.tolist(), y.tolist(), strict=True))


def object_coverage(scene: ShapeScene, image_size: int = 64) -> np.ndarray:
    """Fraction of each output pixel covered by the object.

    Parameters
    ----------
    scene : ShapeScene
        Scene to rasterise.
    image_size : int
        Output side length in pixels, ``MIN_IMAGE_SIZE`` to ``MAX_IMAGE_SIZE``.

    Returns
    -------
    np.ndarray
        float32 array of shape ``(image_size, image_size)`` with values in ``[0, 1]``; for
        outlined objects only the stroke counts as covered. ``coverage > 0.5`` is a good
        object mask.
    """
    image_size = _check_image_size(image_size)
    canvas_size = image_size * SUPERSAMPLE
    mask = Image.new("L", (canvas_size, canvas_size), 0)
    draw = ImageDraw.Draw(mask)
    silhouette = unit_outline(scene.shape)
    assert silhouette is not None
    draw.polygon(_to_canvas(silhouette, scene, canvas_size), fill=255)
    if scene.outline == "outlined":
        stroke = max(_STROKE_FRACTION, _MIN_STROKE_PX / (scene.radius * image_size))
        step = min(round(stroke * INSET_STEPS), max_inset_step(scene.shape))
        hole = unit_outline(scene.shape, step)
        if hole is not None:
            draw.polygon(_to_canvas(hole, scene, canvas_size), fill=0)
    # Box reduction averages the SUPERSAMPLE**2 samples of each pixel: exact area coverage.
    reduced = mask.reduce(SUPERSAMPLE)
    return np.asarray(reduced, dtype=np.float32) * np.float32(1.0 / 255.0)


# --------------------------------------------------------------------------- background


@lru_cache(maxsize=16)
def _pixel_centres(image_size: int) -> np.ndarray:
    return np.arange(image_size, dtype=np.float32) + np.float32(0.5)


def _square_wave(u: np.ndarray, period_px: float, duty: float = 0.5) -> np.ndarray:
    # Distance (in pixels) from the nearest stripe centre turned into a one-pixel ramp gives an
    # anti-aliased square wave without supersampling.
    d = np.abs(u - np.floor(u) - np.float32(0.5))
    return np.clip((np.float32(duty / 2.0) - d) * np.float32(period_px) + np.float32(0.5), 0, 1)


def _texture_pattern(scene: ShapeScene, image_size: int) -> np.ndarray:
    """Texture intensity in ``[0, 1]``, shape ``(H, W)`` (or broadcastable to it)."""
    period_px = scene.texture_period * image_size
    p = _pixel_centres(image_size)
    ux = p[None, :] / np.float32(period_px) + np.float32(scene.texture_phase_x)
    uy = p[:, None] / np.float32(period_px) + np.float32(scene.texture_phase_y)
    texture = scene.texture
    if texture == "plain":
        return np.zeros((1, 1), dtype=np.float32)
    if texture == "stripes_h":
        return _square_wave(uy, period_px)
    if texture == "stripes_v":
        return _square_wave(ux, period_px)
    if texture == "stripes_diag":
        # Projection on the (1, 1) / sqrt(2) direction keeps the period equal to the others.
        u = (p[None, :] + p[:, None]) / np.float32(period_px * math.sqrt(2.0))
        return _square_wave(u + np.float32(scene.texture_phase_x), period_px)
    if texture == "checker":
        sx, sy = _square_wave(ux, period_px), _square_wave(uy, period_px)
        return sx + sy - 2.0 * sx * sy  # soft XOR
    if texture == "dots":
        fx = ux - np.floor(ux) - np.float32(0.5)
        fy = uy - np.floor(uy) - np.float32(0.5)
        dist_px = np.sqrt(fx * fx + fy * fy) * np.float32(period_px)
        return np.clip(np.float32(0.28 * period_px + 0.5) - dist_px, 0, 1)
    if texture == "noise":
        # Value noise: a random lattice with about one cell per texture period, smoothly
        # upsampled; cloudy blobs rather than per-pixel grain, so it reads as a texture at any
        # image size.
        cells = max(2, round(1.0 / scene.texture_period))
        lattice = np.random.default_rng(scene.texture_seed).random((cells + 1, cells + 1))
        field = Image.fromarray(lattice.astype(np.float32)).resize(
            (image_size, image_size), Image.Resampling.BICUBIC
        )
        values = np.asarray(field, dtype=np.float32)
        # Stretch towards the full [0, 1] range so noise has a contrast similar to the others.
        return np.clip((values - np.float32(0.5)) * np.float32(1.6) + np.float32(0.5), 0, 1)
    raise AssertionError(f"unhandled texture {texture!r}")  # guarded by ShapeScene validation


def background_layer(scene: ShapeScene, image_size: int = 64) -> np.ndarray:
    """Render the textured background without the object.

    Parameters
    ----------
    scene : ShapeScene
        Scene whose ``background`` tint and ``texture`` are rendered.
    image_size : int
        Output side length in pixels, ``MIN_IMAGE_SIZE`` to ``MAX_IMAGE_SIZE``.

    Returns
    -------
    np.ndarray
        float32 RGB array of shape ``(image_size, image_size, 3)`` on the 0-255 scale.
    """
    image_size = _check_image_size(image_size)
    base = np.asarray(BACKGROUND_RGB[scene.background], dtype=np.float32)
    base = base + np.float32(scene.background_shift)
    # Texture moves towards mid-grey, so it stays visible on both dark and light tints.
    direction = np.float32(1.0 if base.mean() < 128.0 else -1.0)
    delta = direction * np.float32(scene.texture_contrast)
    pattern = _texture_pattern(scene, image_size)
    layer = base + (pattern * delta)[..., None]
    return np.broadcast_to(layer, (image_size, image_size, 3)).astype(np.float32)


def render(scene: ShapeScene, image_size: int = 64) -> np.ndarray:
    """Render a scene to an RGB image.

    Parameters
    ----------
    scene : ShapeScene
        Scene to render.
    image_size : int
        Output side length in pixels, ``MIN_IMAGE_SIZE`` to ``MAX_IMAGE_SIZE``.

    Returns
    -------
    np.ndarray
        uint8 array of shape ``(image_size, image_size, 3)``, RGB, anti-aliased.
    """
    image_size = _check_image_size(image_size)
    alpha = object_coverage(scene, image_size)[..., None]
    background = background_layer(scene, image_size)
    colour = np.asarray(COLOUR_RGB[scene.colour], dtype=np.float32) * np.float32(scene.brightness)
    image = background + (np.minimum(colour, np.float32(255.0)) - background) * alpha
    return np.clip(image + np.float32(0.5), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- world


class ShapesWorld:
    """A fixed-size, seeded collection of shape images with known concepts.

    Parameters
    ----------
    n_images : int
        Number of images, at least 1.
    image_size : int
        Side length of the square images, ``MIN_IMAGE_SIZE`` (16) to ``MAX_IMAGE_SIZE`` (512).
    seed : int
        Non-negative world seed; image ``i`` is
        ``render(sample_scene(seed, i, shortcuts), image_size)``.
    shortcuts : sequence of Shortcut
        Concept values planted in classes (none by default).

    Raises
    ------
    ValueError
        If a parameter is out of its allowed range.
    TypeError
        If a parameter is not an integer.
    """

    def __init__(
        self,
        n_images: int,
        image_size: int = 64,
        seed: int = 0,
        shortcuts: Sequence[Shortcut] = (),
    ) -> None:
        self.n_images = check_int("n_images", n_images, minimum=1)
        self.image_size = _check_image_size(image_size)
        self.seed = check_int("seed", seed, minimum=0)
        self.shortcuts = _check_shortcuts(shortcuts)

    def __len__(self) -> int:
        return self.n_images

    def __repr__(self) -> str:
        planted = f", shortcuts={list(self.shortcuts)}" if self.shortcuts else ""
        return (
            f"ShapesWorld(n_images={self.n_images}, image_size={self.image_size}, "
            f"seed={self.seed}{planted})"
        )

    def _check_index(self, index: int) -> int:
        index = check_int("index", index)
        if not 0 <= index < self.n_images:
            raise IndexError(
                f"index={index} is out of range for a world of {self.n_images} images "
                f"(allowed 0 <= index < {self.n_images})"
            )
        return index

    def scene(self, index: int) -> ShapeScene:
        """Scene of image ``index``; raises ``IndexError`` outside ``[0, len(self))``."""
        return sample_scene(self.seed, self._check_index(index), self.shortcuts)

    def label(self, index: int) -> int:
        """Class label of image ``index``: the position of its shape in ``CLASS_NAMES``."""
        return CLASS_NAMES.index(self.scene(index).shape)

    def image(self, index: int) -> np.ndarray:
        """uint8 RGB image ``(image_size, image_size, 3)`` of image ``index``."""
        return render(self.scene(index), self.image_size)

    def images(self, indices: Iterable[int]) -> np.ndarray:
        """Stack of images, shape ``(len(indices), image_size, image_size, 3)``, uint8."""
        index_list = [int(i) if isinstance(i, np.integer) else i for i in indices]
        out = np.empty((len(index_list), self.image_size, self.image_size, 3), dtype=np.uint8)
        for row, index in enumerate(index_list):
            out[row] = self.image(index)
        return out

    def object_mask(self, index: int) -> np.ndarray:
        """bool ``(image_size, image_size)``: the pixels the object of image ``index`` covers
        (more than half of the pixel's area): where its class's evidence is."""
        return object_coverage(self.scene(index), self.image_size) > 0.5

    def labels(self) -> np.ndarray:
        """int64 class labels of all images, in index order."""
        return np.array([self.label(i) for i in range(self.n_images)], dtype=np.int64)

    def concept_rows(self) -> list[tuple[int, str, str]]:
        """``(image_index, concept, value)`` for every image and concept, in index order."""
        rows: list[tuple[int, str, str]] = []
        for index in range(self.n_images):
            rows.extend(
                (index, name, value) for name, value in self.scene(index).concepts().items()
            )
        return rows
