"""The shapes world's outlines: each shape as a closed polygon on the unit circle, and its
insets (the hole of an outlined object), cached on a grid.

Each shape is a closed polygon in maths orientation (y up, counter-clockwise). An outlined
object is the silhouette minus its *inset*: the region at least `inset` inside the boundary.
Insets are built per shape (analytically for circles and arcs, by mitred edge offsets for
straight-edged polygons) because PIL's wide lines leave one-pixel cracks between segments,
and morphological erosion on the supersampled canvas is ~10x slower than two polygon fills.
"""

from __future__ import annotations

import math
from functools import cache, lru_cache

import numpy as np


def _arc(cx: float, cy: float, r: float, start: float, stop: float, n: int) -> np.ndarray:
    t = np.linspace(start, stop, n)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _mitred_inset(points: np.ndarray, inset: float) -> np.ndarray:
    # Every edge moves `inset` along its inward normal; each vertex goes to the intersection of
    # its two moved edges, so the inset edges stay parallel to the originals at exact distance.
    edges = np.roll(points, -1, axis=0) - points
    edges = edges / np.linalg.norm(edges, axis=1, keepdims=True)
    normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1)  # left normal = inward for CCW
    before = np.roll(normals, 1, axis=0)
    miter = (before + normals) / (1.0 + (before * normals).sum(axis=1, keepdims=True))
    return points + inset * miter


def _crescent(radius: float, bite_offset: float, bite_radius: float) -> np.ndarray | None:
    # Outer arc outside the bite circle, then the bite arc back inside the outer circle; the two
    # circles meet at (x0, +-y0). None when the bite swallows the disc.
    d = bite_offset
    x0 = (radius**2 - bite_radius**2 + d**2) / (2.0 * d)
    if radius <= 0.0 or abs(x0) >= radius:
        return None
    y0 = math.sqrt(radius**2 - x0**2)
    theta0 = math.atan2(y0, x0)
    phi0 = math.atan2(y0, x0 - d)
    outer = _arc(0.0, 0.0, radius, theta0, 2.0 * np.pi - theta0, 64)
    inner = _arc(d, 0.0, bite_radius, 2.0 * np.pi - phi0, phi0, 48)[1:-1]
    return np.concatenate([outer, inner])


def _heart(lobe_offset: float, lobe_radius: float, tip_depth: float) -> np.ndarray | None:
    # Two overlapping lobes (circles at (+-a, 0)) joined to a tip at (0, -h) by tangent lines.
    # Shrinking the lobes by `i` and raising the tip by i / sin(half tip angle) moves every
    # boundary piece inwards by exactly `i`, so the inset of a heart is again a heart.
    a, r, h = lobe_offset, lobe_radius, tip_depth
    if r <= 0.0 or math.hypot(a, h) <= r:
        return None
    phi = math.atan2(-h, -a)  # direction from the right lobe's centre to the tip
    tangent = phi + math.acos(r / math.hypot(a, h))
    # Where the lobes no longer overlap, the notch is closed by a straight segment at y = 0.
    notch = math.atan2(math.sqrt(r * r - a * a), -a) if r > a else math.pi
    right = _arc(a, 0.0, r, tangent, notch, 48)
    left = right[::-1] * (-1.0, 1.0)
    if r > a:
        left = left[1:]  # the notch vertex is shared by both lobes
    return np.concatenate([[(0.0, -h)], right, left])


def _heart_tip_sine(lobe_offset: float, lobe_radius: float, tip_depth: float) -> float:
    outline = _heart(lobe_offset, lobe_radius, tip_depth)
    assert outline is not None
    tx, ty = outline[1]  # first tangent point
    return tx / math.hypot(tx, ty + tip_depth)


def _star(n_points: int, inner_radius: float) -> np.ndarray:
    angles = np.pi / 2 + np.arange(2 * n_points) * np.pi / n_points  # first point straight up
    radii = np.where(np.arange(2 * n_points) % 2 == 0, 1.0, inner_radius)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_HEART = (0.40, 0.58, 1.18)
_CRESCENT = (1.0, 0.5, 0.85)
_R2 = 1.0 / math.sqrt(2.0)
_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([(_R2, _R2), (-_R2, _R2), (-_R2, -_R2), (_R2, -_R2)]),
    "triangle": _arc(0.0, 0.0, 1.0, np.pi / 2, np.pi / 2 + 4 * np.pi / 3, 3),
    # Inner radius 0.45 keeps the arms fat enough to stay recognisable at small sizes.
    "star": _star(n_points=5, inner_radius=0.45),
    "cross": np.array(
        [
            *[(0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1)],
            *[(-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3), (-0.3, -1)],
        ]
    ),
    "arrow": np.array(
        [(-1, -0.26), (0.1, -0.26), (0.1, -0.66), (1, 0), (0.1, 0.66), (0.1, 0.26), (-1, 0.26)]
    ),
}


def _raw_outline(shape: str, inset: float) -> np.ndarray | None:
    """Outline of ``shape`` inset by ``inset`` in its construction units (None if empty)."""
    if shape == "circle":
        return _arc(0.0, 0.0, 1.0 - inset, 0.0, 2.0 * np.pi, 97)[:-1] if inset < 1.0 else None
    if shape == "crescent":
        radius, offset, bite = _CRESCENT
        return _crescent(radius - inset, offset, bite + inset)
    if shape == "heart":
        a, r, h = _HEART
        return _heart(a, r - inset, h - inset / _heart_tip_sine(a, r, h))
    points = _POLYGONS[shape]
    return _mitred_inset(points, inset) if inset > 0.0 else points


@cache
def _normalisation(shape: str) -> tuple[np.ndarray, float]:
    # Centre on the bounding box and fit inside the unit circle, so that "radius" bounds every
    # shape and rotation can never push a vertex outside the frame.
    points = _raw_outline(shape, 0.0)
    assert points is not None
    centre = (points.min(axis=0) + points.max(axis=0)) / 2.0
    return centre, float(np.linalg.norm(points - centre, axis=1).max())


# Insets are cached on a 1/512 grid: strokes are a fixed fraction of the radius except where
# the minimum stroke width kicks in, so only a few hundred distinct insets ever occur.
INSET_STEPS = 512


@lru_cache(maxsize=4096)
def unit_outline(shape: str, inset_step: int = 0) -> np.ndarray | None:
    """Unit-circle outline of ``shape`` inset by ``inset_step / INSET_STEPS`` (None if empty)."""
    centre, scale = _normalisation(shape)
    points = _raw_outline(shape, inset_step / INSET_STEPS * scale)
    if points is None:
        return None
    unit = (points - centre) / scale
    unit.flags.writeable = False  # cached and shared between calls
    return unit


def _signed_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _cross(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    ab, ac = b - a, c - a
    return ab[..., 0] * ac[..., 1] - ab[..., 1] * ac[..., 0]


def _is_valid_hole(hole: np.ndarray | None, outer: np.ndarray) -> bool:
    """Whether ``hole`` is a proper, simple, counter-clockwise polygon inside ``outer``."""
    if hole is None or len(hole) < 3 or _signed_area(hole) <= 0.0:
        return False
    if len(hole) == len(outer):
        # An inset driven past a collapse turns edges around (a triangle inset too far comes
        # back as a smaller, upside-down triangle with positive area).
        edges_in = np.roll(hole, -1, axis=0) - hole
        edges_out = np.roll(outer, -1, axis=0) - outer
        if np.any((edges_in * edges_out).sum(axis=1) <= 0.0):
            return False
    # Crossing-number test: every hole vertex inside the outer polygon.
    x, y = hole[:, None, 0], hole[:, None, 1]
    ox, oy = outer[:, 0], outer[:, 1]
    ox2, oy2 = np.roll(ox, -1), np.roll(oy, -1)
    straddle = (oy > y) != (oy2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = ox + (y - oy) * (ox2 - ox) / (oy2 - oy)
    if not np.all((straddle & (x < x_cross)).sum(axis=1) % 2 == 1):
        return False
    # No two non-adjacent edges may cross: a crossed inset is a bow tie.
    p, q = hole[:, None], np.roll(hole, -1, axis=0)[:, None]
    pt, qt = hole[None], np.roll(hole, -1, axis=0)[None]
    crossing = (_cross(p, q, pt) * _cross(p, q, qt) < 0) & (
        _cross(pt, qt, p) * _cross(pt, qt, q) < 0
    )
    gap = np.abs(np.arange(len(hole))[:, None] - np.arange(len(hole))[None, :])
    return not np.any(crossing & (gap > 1) & (gap < len(hole) - 1))


@cache
def max_inset_step(shape: str) -> int:
    # Largest inset (on the cache grid) that still leaves a valid hole, found by bisection;
    # strokes are clamped to 90% of it so thin parts (cross arms, crescent horns) never
    # produce a self-intersecting hole.
    outer = unit_outline(shape)
    assert outer is not None
    lo, hi = 0, INSET_STEPS
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _is_valid_hole(unit_outline(shape, mid), outer):
            lo = mid
        else:
            hi = mid
    return int(0.9 * lo)
