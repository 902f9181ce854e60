"""Pack example patches into a few compressed sprite sheets.

At the paper's scale (6,860 neurons x 9 patches) one PNG per patch is 61,740 files and about
400 MB; JPEG sheets of a few dozen neurons each are about 70 MB in about 120 files. The page
decodes a sheet only when one of its patches is first shown and cuts patches out of it in the
browser (see ``export.py``), so nothing has to be sliced or re-encoded per patch on disk.

Measured on natural-image patches (``carto_viz.synthetic``, random crops of real photographs,
64 px), per patch against the PNG: JPEG quality 80 without chroma subsampling (the default)
1,128 bytes at 34.0 dB PSNR, encoded in 14 ms per sheet of 522 patches; JPEG quality 85 with
4:2:0 subsampling 1,005 bytes at 32.2 dB; WebP quality 85 (method 0) 1,002 bytes at 33.5 dB
but 132 ms per sheet, 8 s of CPU at the paper's scale; PNG 6,580 bytes.
``benchmarks/views.py`` prints these figures for the current code.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl
from PIL import Image

#: encoder settings per format (Pillow ``save`` keywords).
FORMATS: dict[str, tuple[str, str, dict]] = {
    "webp": ("WEBP", "image/webp", {"quality": 85, "method": 0}),
    # 4:4:4 (no chroma subsampling): colour edges stay crisp at 64 px.
    "jpeg": ("JPEG", "image/jpeg", {"quality": 80, "subsampling": 0}),
    "png": ("PNG", "image/png", {"compress_level": 6}),
}


@dataclass(frozen=True)
class Sheet:
    """One encoded sprite sheet: ``columns`` tiles of ``tile`` px per row."""

    name: str
    columns: int
    tile: int
    data: bytes
    mime: str
    n_patches: int


@dataclass(frozen=True)
class SpriteAtlas:
    """Where every patch is: ``slots[neuron_id] = (sheet index, first tile, patch count)``.

    Patch ``rank`` (1-based) of a neuron is tile ``first + rank - 1`` of its sheet, and tile
    ``t`` sits at column ``t % columns``, row ``t // columns``.
    """

    sheets: tuple[Sheet, ...]
    slots: dict[int, tuple[int, int, int]]

    @property
    def n_bytes(self) -> int:
        return sum(len(s.data) for s in self.sheets)

    @property
    def n_patches(self) -> int:
        return sum(s.n_patches for s in self.sheets)

    def manifest(self) -> dict:
        """The JSON the page needs to find a patch (no image bytes)."""
        return {
            "sheets": [{"name": s.name, "columns": s.columns, "tile": s.tile} for s in self.sheets],
            "slots": {str(n): list(slot) for n, slot in self.slots.items()},
        }


def neurons_per_sheet(n_neurons: int, patches_per_neuron: int, max_sheets: int = 120) -> int:
    """Neurons per sheet: sheets of about 512 patches, but never more than ``max_sheets``."""
    base = max(1, 512 // max(1, patches_per_neuron))
    return max(base, math.ceil(n_neurons / max_sheets))


def _tile_size(patches: pl.DataFrame) -> int:
    """The side of the first patch (patches of another size are resized to it)."""
    with Image.open(io.BytesIO(patches["png"][0])) as image:
        return int(max(image.size))


def _decode(png: bytes, tile: int) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        image = image.convert("RGB")
        if image.size != (tile, tile):
            image = image.resize((tile, tile), Image.BILINEAR)
        return np.asarray(image)


def _encode(tiles: list[np.ndarray], tile: int, fmt: str) -> tuple[bytes, int]:
    """Lay ``tiles`` out row by row on a near-square sheet and encode it."""
    columns = max(1, math.ceil(math.sqrt(len(tiles))))
    rows = max(1, math.ceil(len(tiles) / columns))
    canvas = np.full((rows * tile, columns * tile, 3), 255, np.uint8)
    for i, pixels in enumerate(tiles):
        r, c = divmod(i, columns)
        canvas[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = pixels
    pil_format, _, options = FORMATS[fmt]
    out = io.BytesIO()
    Image.fromarray(canvas).save(out, format=pil_format, **options)
    return out.getvalue(), columns


def _sheet_job(pngs: list[bytes], firsts: list[int], tile: int, thumb: int, fmt: str):
    """Decode one sheet's patches, encode the sheet; return the first patches as thumbnails."""
    tiles = [_decode(png, tile) for png in pngs]
    data, columns = _encode(tiles, tile, fmt)
    thumbs = [
        np.asarray(Image.fromarray(tiles[i]).resize((thumb, thumb), Image.BILINEAR)) for i in firsts
    ]
    return data, columns, thumbs


def _n_workers(workers: int | None, n_jobs: int) -> int:
    """Processes :func:`_pool` starts: 1 where it packs in a thread."""
    n = min(workers or min(os.cpu_count() or 1, 8), n_jobs)
    daemon = multiprocessing.current_process().daemon
    return n if n > 1 and not daemon and "fork" in multiprocessing.get_all_start_methods() else 1


def _pool(workers: int | None, n_jobs: int) -> Executor:
    """Worker processes where ``fork`` exists (the workers only touch numpy and Pillow, so
    forking a process that runs polars or DuckDB threads is safe), else one thread. A daemonic
    process (a Celery worker's) may not have children: it packs in one thread."""
    n = _n_workers(workers, n_jobs)
    if n > 1:
        return ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(max_workers=1)


#: ``load_pngs(neuron_ids)``: those neurons' patches as rows ``(neuron_id, rank, png)``.
PngLoader = Callable[[list[int]], pl.DataFrame]


def pack_patches(
    patches: pl.DataFrame,
    *,
    fmt: str = "jpeg",
    per_sheet: int | None = None,
    thumb_size: int = 48,
    workers: int | None = None,
    load_pngs: PngLoader | None = None,
    prefix: str = "sheet",
) -> tuple[SpriteAtlas, SpriteAtlas]:
    """Pack ``example_patches`` rows (neuron_id, rank, png) into sprite sheets.

    Parameters
    ----------
    patches
        One row per patch; a neuron's patches are kept in rank order (numbered 1..n). Without
        a ``png`` column, ``load_pngs`` supplies the images.
    fmt
        ``jpeg`` (default), ``webp`` or ``png``.
    per_sheet
        Neurons per sheet; default :func:`neurons_per_sheet`.
    thumb_size
        Side of the thumbnails: every neuron's first patch again, small, on a few sheets of
        their own, so that drawing a class's graph (one picture per node, from any neuron)
        decodes a few small sheets rather than one large sheet per node.
    workers
        Processes decoding patches and encoding sheets (default: the CPU count, at most 8;
        1 works in this process). Decoding thousands of small PNGs is bound by the
        interpreter, so threads would not help.
    load_pngs
        Called with one sheet's neuron ids at a time, returns their ``(neuron_id, rank, png)``
        rows: only the sheets being encoded are in memory, never every PNG (googlenet's
        61,740 patches of real photographs are 440 MB of PNG).
    prefix
        The sheets' names, ``<prefix>-0000``, ... (the thumbnails' are ``thumb-...`` with the
        default prefix, ``<prefix>thumb-...`` otherwise); the explained images use ``image``.

    Returns
    -------
    (patches, thumbnails)
        Two :class:`SpriteAtlas`; in the second every neuron has one tile.

    Raises
    ------
    ValueError
        For an unknown ``fmt``, ``per_sheet < 1``, ``thumb_size < 1``, or patches without a
        ``png`` column and no ``load_pngs``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown patch format {fmt!r}; choose one of {sorted(FORMATS)}")
    if per_sheet is not None and per_sheet < 1:
        raise ValueError(f"per_sheet must be >= 1, got {per_sheet}")
    if thumb_size < 1:
        raise ValueError(f"thumb_size must be >= 1, got {thumb_size}")
    if "png" not in patches.columns and load_pngs is None:
        raise ValueError("patches have no png column: pass load_pngs to read them")
    empty = SpriteAtlas(sheets=(), slots={})
    if patches.height == 0:
        return empty, empty
    if "png" in patches.columns:
        frame = patches
        load_pngs = lambda ids: frame.filter(pl.col("neuron_id").is_in(ids))  # noqa: E731
    counts = patches.group_by("neuron_id").agg(n=pl.len()).sort("neuron_id")
    neuron_ids = counts["neuron_id"].to_list()
    max_patches = int(counts["n"].max())
    per_sheet = per_sheet or neurons_per_sheet(len(neuron_ids), max_patches)
    groups = [neuron_ids[lo : lo + per_sheet] for lo in range(0, len(neuron_ids), per_sheet)]
    tile = _tile_size(load_pngs(neuron_ids[:1]).sort("rank"))
    slots: dict[int, tuple[int, int, int]] = {}
    thumb_ids: list[int] = []

    def sheet_tiles(sheet_index: int) -> tuple[list[bytes], list[int]]:
        """One sheet's PNGs in (neuron, rank) order, and where each neuron's first one is."""
        per_neuron = (
            load_pngs(groups[sheet_index])
            .select("neuron_id", "rank", "png")
            .sort("neuron_id", "rank")
            .group_by("neuron_id", maintain_order=True)
            .agg(pl.col("png"))
        )
        tiles: list[bytes] = []
        firsts: list[int] = []
        for neuron_id, neuron_pngs in per_neuron.iter_rows():
            slots[int(neuron_id)] = (sheet_index, len(tiles), len(neuron_pngs))
            thumb_ids.append(int(neuron_id))
            firsts.append(len(tiles))
            tiles.extend(neuron_pngs)
        return tiles, firsts

    done: list[tuple[bytes, int, list[np.ndarray]]] = []
    n_patches: list[int] = []
    n_workers = _n_workers(workers, len(groups))
    with _pool(workers, len(groups)) as pool:
        # Two sheets per worker in flight, not all of them: memory is O(workers), not O(PNGs).
        pending: deque = deque()
        for sheet_index in range(len(groups)):
            tiles, firsts = sheet_tiles(sheet_index)
            n_patches.append(len(tiles))
            pending.append(pool.submit(_sheet_job, tiles, firsts, tile, thumb_size, fmt))
            while len(pending) >= 2 * n_workers:
                done.append(pending.popleft().result())
        while pending:
            done.append(pending.popleft().result())
    mime = FORMATS[fmt][1]
    sheets = tuple(
        Sheet(f"{prefix}-{i:04d}", columns, tile, data, mime, n)
        for i, ((data, columns, _), n) in enumerate(zip(done, n_patches))
    )
    thumbs = [t for _, _, sheet_thumbs in done for t in sheet_thumbs]
    per_thumb_sheet = max(1, math.ceil(len(thumbs) / max(1, math.ceil(len(thumbs) / 2048))))
    thumb_sheets = []
    thumb_slots: dict[int, tuple[int, int, int]] = {}
    for i, lo in enumerate(range(0, len(thumbs), per_thumb_sheet)):
        part = thumbs[lo : lo + per_thumb_sheet]
        data, columns = _encode(part, thumb_size, fmt)
        name = "thumb" if prefix == "sheet" else f"{prefix}thumb"
        thumb_sheets.append(Sheet(f"{name}-{i:04d}", columns, thumb_size, data, mime, len(part)))
        for j, neuron_id in enumerate(thumb_ids[lo : lo + per_thumb_sheet]):
            thumb_slots[neuron_id] = (i, j, 1)
    return SpriteAtlas(sheets, slots), SpriteAtlas(tuple(thumb_sheets), thumb_slots)


def cut_patch(atlas: SpriteAtlas, neuron_id: int, rank: int) -> np.ndarray:
    """Decode one patch back out of its sheet (RGB array): what the page does, for tests."""
    sheet_index, first, count = atlas.slots[int(neuron_id)]
    if not 1 <= rank <= count:
        raise ValueError(f"neuron {neuron_id} has patches 1..{count}, not rank {rank}")
    sheet = atlas.sheets[sheet_index]
    row, col = divmod(first + rank - 1, sheet.columns)
    with Image.open(io.BytesIO(sheet.data)) as image:
        pixels = np.asarray(image.convert("RGB"))
    t = sheet.tile
    return pixels[row * t : (row + 1) * t, col * t : (col + 1) * t]
