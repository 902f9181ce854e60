"""A shard's summary names the images that failed to decode by their path in the folder; the
stage's loader skips them and counts them."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from carto_assets.sources.batches import load_batches
from carto_assets.stages.activations import run_shard
from carto_assets.stages.images import build_manifest, save_manifest, write_images_tables
from carto_assets.stages.model import prepare_model
from carto_assets.stages.prepared import PreparedStudy
from carto_assets.study import load_study


def _folder_study(tmp_path, make_study):
    """A folder of 12 PNGs in two classes and one truncated JPEG, as a study (no features)."""
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
    buffer = io.BytesIO()
    noise = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="JPEG")
    # Header intact, scan data cut: in the manifest, fails to decode in the pass.
    (tmp_path / "images" / "dogs" / "truncated.jpg").write_bytes(buffer.getvalue()[:3000])
    return load_study(
        make_study(
            tmp_path,
            dataset={"kind": "imagefolder", "path": "images", "image_size": 32},
            shards=1,
            top_k=2,
            batch_size=4,
            features=None,
            labels={"enabled": False},
        )
    )


def test_failed_images_are_listed_with_their_paths(tmp_path, make_study, one_torch_thread):
    study = _folder_study(tmp_path, make_study)
    manifest = build_manifest(study)
    save_manifest(study, manifest)
    prepared = PreparedStudy.open(study)
    write_images_tables(study, manifest, prepared.store)
    prepare_model(prepared, progress=lambda m: None)
    summary = run_shard(PreparedStudy.open(study), 0, progress=lambda m: None)
    truncated = manifest.images.filter(manifest.images["source"] == "dogs/truncated.jpg")
    assert summary.n_failed == 1 and summary.n_processed == 12
    assert summary.failed == [
        {
            "image_id": truncated["image_id"].item(),
            "source": "dogs/truncated.jpg",
            "reason": "could not be decoded",
        }
    ]


def test_the_loader_keeps_the_order_and_skips_what_fails_to_decode(tmp_path, make_study):
    study = _folder_study(tmp_path, make_study)
    manifest = build_manifest(study)
    save_manifest(study, manifest)
    images = manifest.images.sort("image_id", descending=True)  # any order is kept
    ids, labels = images["image_id"].to_numpy(), images["label"].to_numpy()
    truncated = images.filter(images["source"] == "dogs/truncated.jpg")["image_id"].item()
    source = PreparedStudy.open(study).source
    failures: list[tuple[int, str]] = []
    batches = list(load_batches(source, ids, labels, 5, failures=failures))
    assert failures == [(truncated, "could not be decoded")]
    got = np.concatenate([b.image_ids.numpy() for b in batches])
    assert got.tolist() == [i for i in ids.tolist() if i != truncated]
    assert np.concatenate([b.labels.numpy() for b in batches]).tolist() == [
        int(label) for i, label in zip(ids, labels) if i != truncated
    ]
    first = batches[0]
    assert first.images.dtype == torch.uint8 and tuple(first.images.shape[1:]) == (32, 32, 3)
    expected, ok = source.load_many(first.image_ids.tolist())
    assert ok.all() and np.array_equal(first.images.numpy(), expected)
    # Without a list to count them in, failures are still skipped.
    assert [len(b.image_ids) for b in load_batches(source, ids, labels, 5)] == [
        len(b.image_ids) for b in batches
    ]
