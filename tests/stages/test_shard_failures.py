"""A shard's summary names the images that failed to decode by their path in the folder."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from carto_assets.stages.activations import run_shard
from carto_assets.stages.images import build_manifest, save_manifest, write_images_tables
from carto_assets.stages.model import prepare_model
from carto_assets.stages.prepared import PreparedStudy
from carto_assets.study import load_study


def test_failed_images_are_listed_with_their_paths(tmp_path, make_study, one_torch_thread):
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
    study = load_study(
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
