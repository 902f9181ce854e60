"""The `dictionary` stage and asset on a tiny study: trained once, reused while the
fingerprint matches, a clear error when stale, nothing to do without features."""

import json

import dagster as dg
import numpy as np
import pytest

from carto_assets.core.sae.dictionaries import train_dictionaries
from carto_assets.runtime import progress
from carto_assets.stages import dictionary as features_stage
from carto_assets.stages.dictionary import prepare_dictionaries
from carto_assets.stages.images import build_manifest, save_manifest
from carto_assets.stages.model import prepare_model
from carto_assets.stages.prepared import PreparedStudy
from carto_assets.stages.stored_dictionaries import (
    CURRENT_FILE,
    current_fingerprint,
    dictionary_dir,
    feature_layers,
    sample_fingerprint,
)
from carto_assets.stages.stored_model import model_dir
from carto_assets.study import load_study

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FEATURES = {"layers": ["block3"], "samples": 2000, "sample_images": 60, "epochs": 2}


def _fit(sae, x: np.ndarray) -> tuple[float, float, int]:
    """FVU, L0 and dead features of a top-k dictionary on ``x``, written out in numpy."""
    x = x.astype(np.float64)
    pre = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    z = np.zeros_like(pre)
    top = np.argsort(-pre, axis=1, kind="stable")[:, : sae.k]
    rows = np.arange(len(x))[:, None]
    z[rows, top] = np.maximum(pre[rows, top], 0.0)
    recon = z @ sae.W_dec.T + sae.b_dec
    fvu = ((x - recon) ** 2).sum() / ((x - x.mean(axis=0)) ** 2).sum()
    return float(fvu), float((z > 0).sum(axis=1).mean()), int((~(z > 0).any(axis=0)).sum())


def test_dictionaries_are_cached_by_fingerprint_and_stale_ones_are_refused(
    tmp_path, make_study, monkeypatch
):
    study = load_study(make_study(tmp_path, features=FEATURES))
    save_manifest(study, build_manifest(study))
    prepare_model(PreparedStudy.open(study), progress=lambda m: None)
    with pytest.raises(FileNotFoundError, match=r"none were trained yet.*materialize `dictionary`"):
        _ = PreparedStudy.open(study).feature_layers

    trained_on = {}

    def keep_sample(samples, *args, **kwargs):
        trained_on.update(samples)
        return train_dictionaries(samples, *args, **kwargs)

    monkeypatch.setattr(features_stage, "train_dictionaries", keep_sample)
    told: dict[str, list] = {}
    stop = progress.listen(
        lambda stage, done, total, unit: told.setdefault(stage, []).append((done, total, unit))
    )
    try:
        first = prepare_dictionaries(PreparedStudy.open(study), progress=lambda m: None)
    finally:
        stop()
    assert first is not None and not first.cached
    # The bars: the sample's images, then every layer's epochs (one layer, 2 epochs).
    assert told["dictionary training"] == [(0, 2, "epochs"), (1, 2, "epochs"), (2, 2, "epochs")]
    sampled = told["dictionary sample"]
    assert sampled[0] == (0, 60, "images") and sampled[-1] == (60, 60, "images")
    prepared = PreparedStudy.open(study)  # the next step's
    assert first.folder == dictionary_dir(study, prepared.dictionary_fingerprint or "")
    (row,) = first.layers
    assert row["layer"] == "block3" and row["n_features"] == 2 * 64 and row["l0"] <= 8
    # The fit is the stored dictionary's on the sample it was trained on, recomputed here; it
    # explains more variance than the sample's mean does.
    fvu, l0, dead = _fit(prepared.feature_layers[0].sae, trained_on["block3"])
    assert row["fvu"] == pytest.approx(fvu, abs=1e-4) and fvu < 1.0
    assert row["l0"] == pytest.approx(l0, abs=0.01)
    assert (row["dead"], row["dead_share"]) == (dead, round(dead / 128, 4))
    assert first.sample_images == 60 and first.sample_bytes == 2000 * 64 * 4
    (layer,) = prepared.feature_layers
    assert (layer.name, layer.source, layer.n_features) == ("block3:features", "block3", 128)
    assert layer.fit is not None and round(layer.fit.fvu, 4) == row["fvu"]
    assert (layer.n_samples, round(layer.seconds, 2)) == (row["n_samples"], row["seconds"])

    # A model record without the dictionary's layer: the message names the layer.
    record = prepared.model_info
    stripped = record.model_copy(
        update={"layers": [r for r in record.layers if r["layer"] != "block3"]}
    )
    with pytest.raises(ValueError, match=r"dictionaries for block3, not a layer of the stored"):
        feature_layers(study, prepared.dictionary_fingerprint or "", stripped)

    again = prepare_dictionaries(PreparedStudy.open(study), progress=lambda m: None)
    assert again is not None and again.cached and again.fingerprint == first.fingerprint
    assert again.layers == first.layers

    # Other features settings: another fingerprint, the same model checkpoint.
    changed = load_study(make_study(tmp_path, features={**FEATURES, "epochs": 3}))
    assert model_dir(changed) == model_dir(study)
    assert PreparedStudy.open(changed).dictionary_fingerprint != first.fingerprint
    with pytest.raises(FileNotFoundError, match=r"trained for other features settings"):
        _ = PreparedStudy.open(changed).feature_layers

    unmapped = load_study(make_study(tmp_path, features={**FEATURES, "layers": ["block9"]}))
    with pytest.raises(ValueError, match=r"features.layers must be layers of the study.*block9"):
        prepare_dictionaries(PreparedStudy.open(unmapped), progress=lambda m: None)


def test_the_recorded_fingerprint_is_read_while_its_inputs_hold(tmp_path, make_study):
    """A step finds the dictionaries through the record the asset left, without drawing the
    sample; other settings or a rewritten manifest miss it and draw the sample again."""
    study = load_study(make_study(tmp_path, features=FEATURES))
    save_manifest(study, build_manifest(study))
    prepare_model(PreparedStudy.open(study), progress=lambda m: None)
    first = prepare_dictionaries(PreparedStudy.open(study), progress=lambda m: None)
    assert first is not None
    record = study.files_dir / "dictionary" / CURRENT_FILE
    images = PreparedStudy.open(study).images
    assert json.loads(record.read_text())["fingerprint"] == first.fingerprint
    assert (
        current_fingerprint(study, images) == first.fingerprint == sample_fingerprint(study, images)
    )

    # Only the record is read while it holds (a planted one is believed)...
    planted = json.loads(record.read_text())
    record.write_text(json.dumps({**planted, "fingerprint": "planted"}))
    assert current_fingerprint(study, images) == "planted"
    # ...other settings miss it...
    changed = load_study(make_study(tmp_path, features={**FEATURES, "epochs": 3}))
    assert current_fingerprint(changed, images) == sample_fingerprint(changed, images)
    assert current_fingerprint(changed, images) != first.fingerprint
    # ...and so does a manifest written again (same images, new files): the sample is drawn.
    save_manifest(study, build_manifest(study))
    assert current_fingerprint(study, images) == first.fingerprint


def test_a_manifest_replaced_during_training_is_not_paired_with_the_old_fingerprint(
    tmp_path, make_study, monkeypatch
):
    """Another run's ``images`` writes the manifest again while the dictionaries train: the
    record names the manifest the sample was drawn from, so the new one misses it."""
    from carto_assets.stages.images import manifest_identity

    study = load_study(make_study(tmp_path, features=FEATURES))
    save_manifest(study, build_manifest(study))
    prepare_model(PreparedStudy.open(study), progress=lambda m: None)
    drawn_from = manifest_identity(study)

    def train_while_replaced(*args, **kwargs):
        save_manifest(study, build_manifest(study))  # new files (new inodes)
        return train_dictionaries(*args, **kwargs)

    monkeypatch.setattr(features_stage, "train_dictionaries", train_while_replaced)
    first = prepare_dictionaries(PreparedStudy.open(study), progress=lambda m: None)
    assert first is not None and manifest_identity(study) != drawn_from
    record = json.loads((study.files_dir / "dictionary" / CURRENT_FILE).read_text())
    assert record["inputs"]["manifest"] == json.loads(json.dumps(drawn_from))
    # The new manifest misses the record: its fingerprint is drawn from it again.
    images = PreparedStudy.open(study).images
    record_path = study.files_dir / "dictionary" / CURRENT_FILE
    record_path.write_text(json.dumps({**record, "fingerprint": "planted"}))
    assert current_fingerprint(study, images) == sample_fingerprint(study, images) != "planted"


def test_the_asset_materializes_without_features_and_says_so(tmp_path, make_study):
    from carto_assets.definitions import PREPARE_JOB, build_definitions

    study_file = make_study(tmp_path)
    study = load_study(study_file)
    prepared = PreparedStudy.open(study)
    assert prepare_dictionaries(prepared) is None and prepared.feature_layers == []
    instance = dg.DagsterInstance.ephemeral()
    result = (
        build_definitions(str(study_file))
        .resolve_job_def(PREPARE_JOB)
        .execute_in_process(instance=instance)
    )
    assert result.success
    record = instance.fetch_materializations(dg.AssetKey("dictionary"), limit=1).records[0]
    assert "none" in record.asset_materialization.metadata["features"].value
    assert all(check.passed for check in result.get_asset_check_evaluations())
