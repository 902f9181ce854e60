"""Study files: defaults, validation messages that name the bad field, path resolution."""

import pytest

from carto_assets.study import DEMO_STUDY, StudyError, load_study, study_from_dict


def test_demo_study_is_valid():
    study = study_from_dict(DEMO_STUDY)
    assert study.model == "builtin" and study.dataset.kind == "shapes"
    assert study.database_path.name == "carto.duckdb"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"model": "resnet"}, "study field 'model'"),
        ({"dataset": {"kind": "cifar"}}, r"'dataset.kind'.*shapes, digits, imagefolder"),
        ({"top_k": 0}, "study field 'top_k'"),
        ({"top_k": 5000, "dataset": {"kind": "shapes", "size": 100}}, "dataset size"),
        ({"shards": "four"}, "study field 'shards'"),
        ({"layers": []}, "study field 'layers'"),
        ({"layers": ["a", "a"]}, "unique"),
        ({"device": "tpu"}, "study field 'device'"),
        ({"batch_size": -1}, "study field 'batch_size'"),
        ({"database": "out.sqlite"}, "study field 'database'"),
        ({"mass_fraction": 2}, "study field 'mass_fraction'"),
        ({"colour": "red"}, "unknown study field 'colour'"),
        ({"training": {"epochs": 0}}, "training.epochs"),
        ({"weights": "DEFAULT"}, "builtin model is trained"),
        ({"dataset": {"kind": "imagefolder"}}, "dataset.path"),
        ({"dataset": {"kind": "imagefolder", "path": "/no/such/dir"}}, "no such folder"),
        (
            {"model": "torchvision:resnet18", "weights": "/no/such/ckpt.pt"},
            "checkpoint file not found",
        ),
    ],
)
def test_invalid_fields_are_named(patch, message):
    raw = {**DEMO_STUDY, **patch}
    with pytest.raises(StudyError, match=message):
        study_from_dict(raw)


def test_yaml_file_paths_resolve_against_the_file(tmp_path, monkeypatch):
    images = tmp_path / "imgs"
    images.mkdir()
    f = tmp_path / "study.yaml"
    f.write_text(
        "name: mine\nmodel: torchvision:resnet18\ndataset:\n  kind: imagefolder\n  path: imgs\n"
        "database: out/mine.duckdb\ntop_k: 5\nshards: 1\n"
    )
    monkeypatch.setenv("CARTO_STUDY", str(f))
    study = load_study()
    assert study.dataset.path == str(images)
    assert study.database_path == tmp_path / "out" / "mine.duckdb"
    assert study.files_dir == tmp_path / "out" / "mine_files"


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(StudyError, match="not found"):
        load_study(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(StudyError, match="not valid YAML"):
        load_study(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(StudyError, match="must be a YAML mapping"):
        load_study(scalar)


def test_model_fingerprint_tracks_model_and_dataset_settings():
    a = study_from_dict(DEMO_STUDY)
    b = study_from_dict({**DEMO_STUDY, "top_k": 10})
    c = study_from_dict({**DEMO_STUDY, "dataset": {"kind": "shapes", "size": 999}})
    assert a.model_fingerprint() == b.model_fingerprint()
    assert a.model_fingerprint() != c.model_fingerprint()


@pytest.mark.parametrize(
    ("raw", "fingerprint"),
    [
        # Checkpoint cache keys computed before the study models moved to pydantic: a change
        # here retrains (or reloads) every cached model, so it must be deliberate.
        (DEMO_STUDY, "282ca857659a78ae"),
        ({}, "7412844891ede40a"),
        ({"model": "torchvision:resnet18", "dataset": {"kind": "digits"}}, "3e05821db47f2d61"),
        ({**DEMO_STUDY, "training": {"epochs": 2, "learning_rate": 1}}, "e2e7e442ba4731ce"),
    ],
)
def test_model_fingerprint_is_pinned(raw, fingerprint):
    assert study_from_dict(raw).model_fingerprint() == fingerprint
