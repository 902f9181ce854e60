"""Example patches: each neuron's top images cropped around its argmax.

No dagster imports. The model and images come through the same loading code as the
activation pass, so patches are cut from exactly the pixels the model saw.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from carto_assets.core.network.patches import crop_patches, patch_boxes, receptive_fields
from carto_assets.core.sae.layer import source_layer
from carto_assets.runtime.memory import release_memory
from carto_assets.storage.store import CartoStore, sql_path_list, write_parquet_atomic

if TYPE_CHECKING:
    from carto_assets.stages.prepared import PreparedStudy


@dataclass(frozen=True)
class PatchParts:
    """Where :func:`example_patches` wrote its rows, and what the metadata shows."""

    #: Parquet part files holding the ``example_patches`` rows
    parts: list[Path]
    #: layer -> ``{"receptive_field_px", "truncated"}``
    receptive_fields: dict[str, dict[str, Any]]
    n_images_loaded: int


#: Patches encoded and written per Parquet part (64 px PNGs: about 12 kB each, ~50 MB a part).
PATCH_ROWS = 4096
#: Threads cutting and encoding the patches (the same bytes whatever their number).
PATCH_WORKERS = min(8, os.cpu_count() or 1)


def example_patches(
    prepared: PreparedStudy, progress=None, workers: int = PATCH_WORKERS
) -> PatchParts:
    """``example_patches(neuron_id, rank, image_id, png)``: each neuron's top images cropped
    around the argmax cell, with a window as large as the layer's receptive field.

    Returns the Parquet part files holding the rows (one per chunk of images, under
    ``example_patches/`` of the study's files) and information for the metadata. The PNGs are
    written a chunk at a time and never held together in memory (googlenet's 49k patches of
    a noisy image set are ~0.6 GB, and each in-memory copy on the way to DuckDB added that
    much); :func:`patches_select` loads the parts into the table in SQL.
    """
    say = progress or (lambda m: None)
    study, store = prepared.study, prepared.store
    bundle, layers = prepared.model
    source = prepared.source
    m = study.graph.patches_per_neuron
    top = store.query(
        "SELECT t.neuron_id, t.rank, t.image_id, t.y, t.x, n.layer, n.map_height, n.map_width "
        f"FROM top_images t JOIN neurons n USING (neuron_id) WHERE t.rank <= {int(m)} "
        "ORDER BY t.neuron_id, t.rank"
    )
    infos = {info.name: info for info in layers}
    maps = [i.name for i in layers if i.output_shape is not None and len(i.output_shape) == 3]
    fields: dict[str, Any] = receptive_fields(bundle.module, maps, bundle.input_size)
    # Measuring a deep layer's field backpropagates through a float64 copy of the model on a
    # canvas up to twice the input size (googlenet: +0.4 GB); give that back before the crops.
    release_memory()
    # Boxes first (they need no pixels), then images a chunk at a time: memory stays
    # O(chunk), not O(images with patches) (62k ImageNet images for googlenet's 9 per neuron).
    boxed = []
    for layer, group in top.group_by("layer", maintain_order=True):
        mapped = source_layer(layer[0])  # features are cropped with their source layer's field
        boxes = _layer_boxes(infos[mapped], fields.get(mapped), group, bundle.input_size)
        boxed.append(
            group.select("neuron_id", "rank", "image_id").with_columns(
                top=pl.Series(boxes[:, 0], dtype=pl.Int32),
                left=pl.Series(boxes[:, 1], dtype=pl.Int32),
                bottom=pl.Series(boxes[:, 2], dtype=pl.Int32),
                right=pl.Series(boxes[:, 3], dtype=pl.Int32),
            )
        )
    rows = pl.concat(boxed)
    wanted = np.unique(rows["image_id"].to_numpy())
    say(f"loading {len(wanted)} images for {len(rows)} patches")
    parts: list[Path] = []
    out = study.files_dir / "example_patches"
    shutil.rmtree(out, ignore_errors=True)
    n_loaded = 0
    for lo in range(0, len(wanted), 256):
        ids = wanted[lo : lo + 256]
        batch, ok = source.load_many(ids.tolist(), workers=4)
        pixels = {int(i): img for i, img in zip(ids[ok], batch)}
        n_loaded += len(pixels)
        chunk = rows.filter(pl.col("image_id").is_in(list(pixels)))
        # A few images can hold most patches (200 images, 49k patches of 5,488 neurons): the
        # PNGs are encoded and written PATCH_ROWS at a time, so memory is bounded either way.
        # A pair (image, box) repeated anywhere in the chunk is encoded once.
        encoded: dict[tuple[int, ...], bytes] = {}
        for start in range(0, len(chunk), PATCH_ROWS):
            piece = chunk.slice(start, PATCH_ROWS)
            boxes = piece.select("top", "left", "bottom", "right").to_numpy()
            pngs = crop_patches(
                pixels,
                piece["image_id"].to_numpy(),
                boxes,
                out_size=study.graph.patch_size,
                encoded=encoded,
                workers=workers,
            )
            part = piece.with_columns(png=pl.Series(pngs, dtype=pl.Binary))
            parts.append(write_parquet_atomic(part, out / f"part-{len(parts):05d}.parquet"))
            del pngs, part
        del batch, pixels, chunk, encoded
        release_memory()  # the images were decoded in loader threads, each with its own heap
    if not parts:  # no rows: one empty part keeps the table's columns
        empty = rows.head(0).with_columns(png=pl.Series([], dtype=pl.Binary))
        parts.append(write_parquet_atomic(empty, out / "part-00000.parquet"))
    rf_table = {
        n: {"receptive_field_px": f.size_px, "truncated": f.truncated} for n, f in fields.items()
    }
    for n in infos.keys() - fields.keys():
        rf_table[n] = {"receptive_field_px": bundle.input_size, "truncated": True}
    return PatchParts(parts, rf_table, n_loaded)


def publish_patches(store: CartoStore, written: PatchParts) -> None:
    """Load :func:`example_patches`' part files into the ``example_patches`` table (in SQL: the
    PNGs never sit in this process all at once), then remove them."""
    store.replace_tables({"example_patches": patches_select(written.parts)})
    for part in written.parts:
        part.unlink()


def patches_select(parts: list[Path]) -> str:
    """The SELECT that loads :func:`example_patches`' part files as the table, ordered."""
    return (
        "SELECT neuron_id::BIGINT AS neuron_id, rank::INTEGER AS rank, "
        'image_id::BIGINT AS image_id, top::INTEGER AS top, "left"::INTEGER AS "left", '
        'bottom::INTEGER AS bottom, "right"::INTEGER AS "right", png::BLOB AS png '
        f"FROM read_parquet({sql_path_list(parts)}) ORDER BY neuron_id, rank"
    )


def _layer_boxes(info, rf, group: pl.DataFrame, input_size: int) -> np.ndarray:
    """Crops for one layer's rows: around the argmax cell, sized by the receptive field.

    Token layers (ViT) see the whole image; their argmax token still says where the neuron
    responded, so a patch token is cropped around its patch (a quarter of the image) and the
    class token, like a vector output, gets the whole image.
    """
    ys, xs = group["y"].to_numpy(), group["x"].to_numpy()
    if rf is not None:
        return patch_boxes(
            ys,
            xs,
            int(group["map_height"][0]),
            int(group["map_width"][0]),
            input_size,
            rf.size_px,
            min_fraction=0.25,
            offset_px=rf.offset_px,
        )
    whole = np.tile(np.array([0, 0, input_size, input_size], dtype=np.int64), (len(ys), 1))
    grid = info.token_grid
    if grid is None:
        return whole
    extra = info.output_shape[0] - grid[0] * grid[1]  # 1 with a class token first
    patch = ys - extra
    on_grid = patch >= 0
    if on_grid.any():
        rows, cols = np.divmod(patch[on_grid], grid[1])
        whole[on_grid] = patch_boxes(rows, cols, grid[0], grid[1], input_size, 0, min_fraction=0.25)
    return whole
