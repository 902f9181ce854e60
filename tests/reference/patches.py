"""One patch box at a time, in plain Python: the oracle for ``core.patches.patch_boxes``."""

from __future__ import annotations

import math

from carto_assets.core.network.patches import MIN_WINDOW_FRACTION


def patch_box(
    y: int,
    x: int,
    map_h: int,
    map_w: int,
    input_size: int | tuple[int, int],
    window_px: int,
    *,
    min_fraction: float = MIN_WINDOW_FRACTION,
    offset_px: tuple[float, float] = (0.0, 0.0),
) -> tuple[int, int, int, int]:
    """The square input window around map cell (y, x): (top, left, bottom, right).

    The cell's centre is ``((y + 0.5) * H / map_h, (x + 0.5) * W / map_w)`` plus ``offset_px``;
    the side is ``window_px`` clipped to ``[ceil(min_fraction * side), side]`` with ``side`` the
    shorter image side; the window is shifted inside the image, never cut. ``round`` is Python's
    (half to even), as numpy's.
    """
    img_h, img_w = (input_size, input_size) if isinstance(input_size, int) else input_size
    if not (0 <= y < map_h and 0 <= x < map_w):
        raise ValueError(f"cell ({y}, {x}) falls outside the {map_h}x{map_w} map")
    side = min(img_h, img_w)
    window = min(max(int(window_px), max(1, math.ceil(min_fraction * side))), side)
    centre_y = (y + 0.5) * img_h / map_h + offset_px[0]
    centre_x = (x + 0.5) * img_w / map_w + offset_px[1]
    top = min(max(round(centre_y - window / 2), 0), img_h - window)
    left = min(max(round(centre_x - window / 2), 0), img_w - window)
    return top, left, top + window, left + window
