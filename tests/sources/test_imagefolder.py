"""Image folders: bad files skipped and listed, odd image modes converted, clear errors."""

import numpy as np
import pytest
from PIL import Image

from carto_assets.sources.datasets import (
    DigitsSource,
    ImageFolderSource,
    to_rgb,
)


def make_folder(root):
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :30] = (200, 10, 10)
    Image.fromarray(rgb).save(root / "cats" / "a.jpg")
    Image.fromarray(rgb).convert("L").save(root / "cats" / "gray.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(
        root / "cats" / "pal.png"
    )
    Image.fromarray(np.dstack([rgb, np.full((40, 60), 128, np.uint8)])).save(
        root / "dogs" / "rgba.png"
    )
    Image.fromarray(rgb).convert("CMYK").save(root / "dogs" / "cmyk.jpg")
    Image.fromarray((np.arange(40 * 60).reshape(40, 60) * 27).astype(np.uint16)).save(
        root / "dogs" / "deep16.png"
    )
    (root / "dogs" / "empty.jpg").write_bytes(b"")
    (root / "dogs" / "notes.txt").write_text("not an image")
    noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "big.tmp.jpg", format="JPEG")
    full = (root / "big.tmp.jpg").read_bytes()
    (root / "big.tmp.jpg").unlink()
    # Header intact, scan data cut: passes the header check, fails to decode.
    (root / "cats" / "truncated.jpg").write_bytes(full[: len(full) * 2 // 3])
    (root / "stray.jpg").write_bytes(full)


def test_folder_skips_and_lists_bad_files_and_converts_modes(tmp_path):
    make_folder(tmp_path)
    src = ImageFolderSource(tmp_path, image_size=32)
    assert src.class_names == ["cats", "dogs"]
    reasons = {s.path: s.reason for s in src.skipped}
    assert reasons["dogs/empty.jpg"] == "zero-byte file"
    assert "not an image" in reasons["dogs/notes.txt"]
    assert "class folder" in reasons["stray.jpg"]
    names = [r.source for r in src.records()]
    assert "cats/gray.png" in names and "dogs/deep16.png" in names
    ok_images = []
    failed = []
    for i, rec in enumerate(src.records()):
        try:
            img = src.load(i)
        except Exception as exc:
            failed.append((rec.source, type(exc).__name__))
            continue
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
        ok_images.append(rec.source)
    # A truncated JPEG passes the header check but fails to decode: the pass skips it.
    assert failed == [("cats/truncated.jpg", "ImageLoadError")]
    batch, ok = src.load_many(list(range(len(src.records()))), workers=2)
    assert ok.sum() == len(ok_images) and batch.shape[0] == len(ok_images)


def test_sixteen_bit_is_rescaled_not_clipped():
    arr = np.array([[0, 32768, 65535]], np.uint16)
    rgb = np.asarray(to_rgb(Image.fromarray(arr)))
    assert rgb[0, :, 0].tolist() == [0, 127, 255]


def test_rgba_composites_on_white():
    arr = np.zeros((1, 1, 4), np.uint8)  # fully transparent black
    assert np.asarray(to_rgb(Image.fromarray(arr, "RGBA"))).tolist() == [[[255, 255, 255]]]


def test_folder_without_readable_images_fails_clearly(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no readable image.*1 file\(s\) skipped.*zero-byte"):
        ImageFolderSource(tmp_path)


def test_missing_folder_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        ImageFolderSource(tmp_path / "nope")


def test_digits_are_real_and_rgb():
    src = DigitsSource(image_size=32, limit=50)
    assert len(src.records()) == 50
    img = src.load(0)
    assert img.shape == (32, 32, 3) and img.max() > 200 and img.min() == 0
    assert src.records()[0].label_name == "0"
