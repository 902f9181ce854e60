"""The prepared study: what a step loads, loaded on first use and at most once."""

import pytest

from carto_assets.stages.images import build_manifest, save_manifest
from carto_assets.stages.prepared import LOADED, PreparedStudy, StoredManifest, open_store
from carto_assets.study import load_study


def test_a_step_that_needs_only_the_study_and_store_loads_nothing_else(tmp_path, make_study):
    prepared = PreparedStudy.load(make_study(tmp_path))
    assert prepared.study.name == "tiny"
    assert prepared.store.database_path == prepared.study.database_path
    assert prepared.store.memory_limit == prepared.study.database_memory_limit
    assert not set(LOADED) & set(vars(prepared))  # nothing loaded yet
    with pytest.raises(FileNotFoundError, match=r"materialize the `images` asset first"):
        _ = prepared.manifest
    with pytest.raises(FileNotFoundError, match=r"materialize `model` first"):
        _ = prepared.model


def test_the_manifest_is_read_once_and_kept_for_the_step(tmp_path, make_study):
    study = load_study(make_study(tmp_path))
    save_manifest(study, build_manifest(study))
    prepared = PreparedStudy.open(study)
    assert prepared.images is prepared.images
    assert prepared.class_names == prepared.manifest.class_names
    assert set(vars(prepared)) & set(LOADED) == {"manifest"}
    assert PreparedStudy.open(study).images.equals(prepared.images)  # the next step's


def test_given_members_are_used_and_unknown_ones_refused(tmp_path, make_study):
    study = load_study(make_study(tmp_path))
    manifest = StoredManifest(images=None, class_names=["a"])  # type: ignore[arg-type]
    prepared = PreparedStudy.given(study, open_store(study), manifest=manifest, units="units")
    assert prepared.manifest is manifest and prepared.units == "units"
    with pytest.raises(TypeError, match=r"no member \['network'\]"):
        PreparedStudy.given(study, open_store(study), network=None)
