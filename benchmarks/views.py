"""The views at the paper's scale: export time, page and patch sizes, and the page in Chromium.

Builds the synthetic study of ``carto_viz.synthetic`` at NeuroCartography's scale (googlenet's
6,860 neurons in 25 blocks, ImageNet's 1,000 classes, 9 patches of 64 px per neuron, every
patch a distinct crop of a real photograph), exports it, and prints, side by side in one run:

- patch storage: one PNG file per patch (what the page used before) vs the sprite sheets in
  each format, with bytes, files and PSNR against the PNGs;
- the export: seconds, index.html and spec sizes, files beside the page, and the class graphs'
  chunks (compact: 88 MB in 56 chunks before, see carto_viz/class_graphs.py);
- with ``--browser`` (Debian's chromium + playwright): page ready, class switch, node click
  and hover times, measured as the tests do, and with ``--feature-layers`` the units toggle's
  switch times (``--feature-layers 4`` gives four evenly spaced layers a dictionary of
  ``--features`` units each).

    .venv/bin/python benchmarks/views.py                 # about 2-3 minutes here
    .venv/bin/python benchmarks/views.py --browser --neurons 6860 --classes 1000
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
from PIL import Image

from carto_viz import export_views
from carto_viz.sprites import FORMATS, cut_patch, pack_patches
from carto_viz.synthetic import HOSTILE_NAMES, make_database


def _psnr(db: Path, atlas, sample: int = 2000) -> float:
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        "SELECT neuron_id, rank, png FROM example_patches "
        f"USING SAMPLE {sample} ROWS (reservoir, 0)"
    ).fetchall()
    con.close()
    errors = []
    for neuron, rank, png in rows:
        want = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(float)
        errors.append(((want - cut_patch(atlas, neuron, rank).astype(float)) ** 2).mean())
    mse = float(np.mean(errors))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def storage(db: Path, formats: list[str]) -> None:
    con = duckdb.connect(str(db), read_only=True)
    patches = con.sql("SELECT neuron_id, rank, png FROM example_patches").pl()
    con.close()
    png_bytes = int(patches["png"].bin.size().sum())
    print(f"\npatch storage for {patches.height:,} patches")
    print(f"  {'layout':<28}{'MB':>8}{'files':>8}{'B/patch':>9}{'PSNR dB':>9}{'pack s':>8}")
    print(
        f"  {'one PNG file per patch':<28}{png_bytes / 1e6:>8.1f}{patches.height:>8,}"
        f"{png_bytes / patches.height:>9.0f}{'lossless':>9}{'-':>8}"
    )
    for fmt in formats:
        start = time.perf_counter()
        atlas, thumbs = pack_patches(patches, fmt=fmt)
        seconds = time.perf_counter() - start
        total = atlas.n_bytes + thumbs.n_bytes
        name = f"{fmt} sheets (+thumbnails)"
        print(
            f"  {name:<28}{total / 1e6:>8.1f}{len(atlas.sheets) + len(thumbs.sheets):>8}"
            f"{atlas.n_bytes / patches.height:>9.0f}{_psnr(db, atlas):>9.1f}{seconds:>8.1f}"
        )
        if fmt == "jpeg":
            print(
                f"  ratio PNG files / jpeg sheets: {png_bytes / total:.1f}x bytes, "
                f"{patches.height / (len(atlas.sheets) + len(thumbs.sheets)):.0f}x files"
            )


def browser(
    html: Path, n_neurons: int, last_class: str, last_label: int, features: bool = False
) -> None:
    tests = Path(__file__).resolve().parents[1] / "tests"
    sys.path[:0] = [str(tests), str(tests / "viz")]  # test_browser imports viz.pages
    from playwright.sync_api import sync_playwright
    from test_browser import ARGS, CHROMIUM, Page, _set_units

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = Page(b, html)
        try:
            page.search("<scr")
            first = page.choose(0)
            page.search(last_class)
            switch = page.choose(last_label)
            frames = [f for f in page.items("graph", "frame") if f["cluster_id"] >= 0]
            frames = [f for f in frames if 0 < f["py"] < 950]
            clicks = [page.click(frames[i % len(frames)]) for i in range(3)]
            neurons = page.items("projection", "neuron")
            cold = page.hover(neurons[n_neurons // 2])
            warm = page.hover(neurons[n_neurons // 2])
            node = page.hover(frames[0])
            units = ""
            if features:
                times = [_set_units(page, kind) for kind in ("feature", "channel", "both")]
                units = "units switch " + "/".join(f"{ms:.0f}" for ms in times) + " ms, "
            print(
                f"\npage in headless Chromium: ready {page.ready_ms:.0f} ms, class switch "
                f"{first:.0f} / {switch:.0f} ms, node click {min(clicks):.0f}-{max(clicks):.0f} "
                f"ms, hover neuron {cold['ms']:.0f} ms cold / {warm['ms']:.0f} ms warm, "
                f"hover node {node['ms']:.0f} ms; {units}console errors {len(page.errors)}, "
                f"non-file requests {len(page.offline())}"
            )
        finally:
            page.close()
            b.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=6860)
    parser.add_argument("--layers", type=int, default=25)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--patches", type=int, default=9, help="patches per neuron")
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument(
        "--feature-layers", type=int, default=0, help="layers with a dictionary of features"
    )
    parser.add_argument("--features", type=int, default=256, help="features per dictionary")
    parser.add_argument(
        "--explained", type=int, default=0, help="explained images per class (at most 2)"
    )
    parser.add_argument("--formats", nargs="+", default=["jpeg", "webp"], choices=list(FORMATS))
    parser.add_argument("--browser", action="store_true", help="also time the page in Chromium")
    parser.add_argument("--out", type=Path, default=None, help="keep the export here")
    args = parser.parse_args()

    folder = args.out or Path(tempfile.mkdtemp(prefix="carto-views-"))
    folder.mkdir(parents=True, exist_ok=True)
    classes = (*HOSTILE_NAMES, *(f"class {i:03d}" for i in range(args.classes - 4)))
    layers = tuple(f"block{i:02d}" for i in range(args.layers))
    every = max(1, args.layers // max(1, args.feature_layers))
    with_features = layers[every - 1 :: every][: args.feature_layers]
    start = time.perf_counter()
    db = make_database(
        folder / "paper.duckdb",
        n_neurons=args.neurons,
        layers=layers,
        feature_layers=with_features,
        features_per_layer=args.features,
        class_names=classes[: args.classes],
        patches_per_neuron=args.patches,
        patch_size=args.patch_size,
        neighbors=10,
        nodes_per_layer=5,
        distinct_patches=None,
        explained_per_class=args.explained,
    )
    print(
        f"synthetic study: {args.neurons:,} neurons, {args.layers} layers "
        f"({len(with_features) * args.features:,} features in {len(with_features)} "
        f"dictionaries), {args.classes:,} "
        f"classes, {args.patches} patches of {args.patch_size} px "
        f"(built in {time.perf_counter() - start:.0f} s) in {folder}"
    )
    storage(db, args.formats)
    start = time.perf_counter()
    result = export_views(db, folder / "views")
    seconds = time.perf_counter() - start
    files = [p for p in (folder / "views").rglob("*") if p.is_file()]
    spec = max(p.stat().st_size for p in result.spec_paths)
    # The class graphs' chunks: beside the page, or inline in it for small studies.
    graph_files = sorted((folder / "views" / "index_files").glob("graph-*.js"))
    image_files = sorted((folder / "views" / "index_files").glob("image-*.js"))
    if image_files:
        size = sum(p.stat().st_size for p in image_files) / 1e6
        print(f"\nexplained images' thumbnails: {size:.1f} MB in {len(image_files)} sheets")
    print(
        f"\nclass graphs: {sum(p.stat().st_size for p in graph_files) / 1e6:.1f} MB in "
        f"{len(graph_files)} chunks beside the page"
    )
    print(
        f"export: {seconds:.1f} s; index.html {result.page_bytes / 1e6:.2f} MB, largest spec "
        f"{spec / 1e6:.2f} MB, {len(files)} files ({sum(p.stat().st_size for p in files) / 1e6:.0f}"
        f" MB), patches {result.patch_bytes / 1e6:.1f} MB in {result.n_sheets} sheets"
    )
    if args.browser:
        names = classes[: args.classes]
        browser(result.html_path, args.neurons, names[-1], len(names) - 1, bool(with_features))


if __name__ == "__main__":
    main()
