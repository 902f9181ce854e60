"""Study files: defaults, validation messages that name the bad field, path resolution."""

import re
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from carto_assets.storage.fingerprints import model_fingerprint
from carto_assets.study import (
    DEMO_STUDY,
    ClusteringConfig,
    DatasetConfig,
    EmbeddingConfig,
    GraphConfig,
    LabelsConfig,
    ShortcutConfig,
    Study,
    StudyError,
    TrainingConfig,
    load_study,
    study_from_dict,
)

README = Path(__file__).resolve().parents[1] / "README.md"


def test_demo_study_is_valid():
    study = study_from_dict(DEMO_STUDY)
    assert study.model == "builtin" and study.dataset.kind == "shapes"
    assert study.database_path.name == "carto.duckdb"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"model": "resnet"}, "study field 'model'"),
        (
            {"dataset": {"kind": "cifar"}},
            r"'dataset.kind' must be one of 'shapes', 'digits', 'imagefolder'",
        ),
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
            "'weights' must be an existing checkpoint file",
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
    # Two studies beside each other keep their own page (the views were one `views` folder).
    assert study.views_path == tmp_path / "out" / "mine_views"


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
    assert model_fingerprint(a) == model_fingerprint(b)
    assert model_fingerprint(a) != model_fingerprint(c)


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
    assert model_fingerprint(study_from_dict(raw)) == fingerprint


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"dataset": {"size": 0}}, "study field 'dataset.size' must be an integer >= 1, got 0"),
        ({"top_k": "5"}, "study field 'top_k' must be an integer in [1, 100000], got '5'"),
        ({"shards": 4.0}, "study field 'shards' must be an integer in [1, 100000], got 4.0"),
        ({"seed": True}, "study field 'seed' must be an integer in [0, 4294967295], got True"),
        (
            {"embedding": {"min_dist": 1.5}},
            "study field 'embedding.min_dist' must be a number in [0.0, 1.0], got 1.5",
        ),
        (
            {"mass_fraction": float("nan")},
            "study field 'mass_fraction' must be a number in (0.0, 1.0], got nan",
        ),
        (
            {"clustering": {"linkage": "single"}},
            "study field 'clustering.linkage' must be one of 'average', 'complete', got 'single'",
        ),
        (
            {"clustering": {"foo": 1}},
            "unknown study field 'clustering.foo'; allowed fields: bands, linkage, method, "
            "num_perm, rows, seed, sets, threshold, top_fraction",
        ),
        (
            {"clustering": {"sets": "all"}},
            "study field 'clustering.sets' must be one of 'auto', 'sample', 'top_k', got 'all'",
        ),
        (
            {"clustering": {"top_fraction": 0}},
            "study field 'clustering.top_fraction' must be a number in (0.0, 1.0], got 0",
        ),
        (
            {"clustering": {"sets": "sample"}, "labels": {"enabled": False}},
            "study field 'clustering.sets' must be top_k or auto while labels.enabled is false "
            "(the sample's sets are drawn from the labels' sample, which the study does not "
            "keep), got 'sample'",
        ),
        (
            {"base_dir": "/"},
            "unknown study field 'base_dir'; allowed fields: annotations, audit, batch_size, ",
        ),
        (
            {"training": [1]},
            "study field 'training' must be a mapping (epochs, learning_rate, batch_size, ...), "
            "got [1]",
        ),
        (
            {"clustering": {"bands": 4}},
            "study field 'clustering.bands' must be given together with rows (both or neither), "
            "got 4",
        ),
        (
            {"clustering": {"bands": 20, "rows": 7}},
            "study field 'clustering.bands' must be such that bands x rows <= num_perm "
            "(20 x 7 = 140 > 128), got 20",
        ),
        ({"channels_last": "yes"}, "study field 'channels_last' must be true or false, got 'yes'"),
        ({"dataset": None}, "study field 'dataset' must be a dataset kind or a mapping"),
        (
            {"dataset": {"kind": "shapes", "size": 1_000_000}, "shard_size": 1},
            "study field 'shards' (derived from shard_size) must be an integer in [1, 100000], "
            "got 1000000",
        ),
    ],
)
def test_messages_name_the_field_what_it_must_be_and_the_value(patch, message):
    with pytest.raises(StudyError, match=re.escape(message)):
        study_from_dict({**DEMO_STUDY, **patch})


def test_defaults_and_shorthands():
    assert study_from_dict({"dataset": "digits"}).dataset.size is None
    assert study_from_dict({"dataset": {"kind": "shapes"}}).dataset.size == 4000
    empty = study_from_dict({"training": None, "clustering": None, "weights": None})
    assert empty.training == TrainingConfig() and empty.clustering == ClusteringConfig()
    assert empty.weights == "none"
    assert study_from_dict({"layers": "layer1"}).layers == ("layer1",)
    assert study_from_dict({"training": {"learning_rate": 1}}).training.learning_rate == 1.0
    assert study_from_dict({"dataset": "digits", "shard_size": 500}).shards == 4  # 1,797 images


def test_a_study_is_frozen_and_copied_with_updates():
    study = study_from_dict(DEMO_STUDY)
    with pytest.raises(pydantic.ValidationError):
        study.top_k = 3
    assert study.model_copy(update={"loader_workers": 2}).loader_workers == 2
    assert study.model_copy() == study and hash(study.model_copy()) == hash(study)
    assert study.to_dict()["dataset"] == {
        "kind": "shapes",
        "size": 4000,
        "image_size": 64,
        "path": None,
    }


def test_the_study_package_imports_neither_dagster_nor_torch():
    code = (
        "import sys; import carto_assets.study; "
        "heavy = {m.split('.')[0] for m in sys.modules} & {'dagster', 'torch'}; "
        "assert not heavy, heavy"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    ("name", "section"),
    [
        ("training", TrainingConfig),
        ("clustering", ClusteringConfig),
        ("embedding", EmbeddingConfig),
        ("graph", GraphConfig),
        ("labels", LabelsConfig),
    ],
)
def test_readme_lists_every_field_of_each_section_with_its_default(name, section):
    listed = re.search(rf"`{name}: \{{(.*?)\}}`", README.read_text(), re.S)
    assert listed, f"README's configuration section does not list {name}'s fields"
    items = [part.split(":") for part in re.sub(r"`\s+`", " ", listed.group(1)).split(",")]
    assert [item[0].strip() for item in items] == list(section.model_fields)
    defaults = section()
    for key, *value in items:
        if value and "|" not in value[0]:  # `method: lsh|exact` lists the choices
            assert str(getattr(defaults, key.strip())) == value[0].strip(), key


def test_readme_example_study_uses_real_fields():
    example = re.search(r"```yaml\n# my_study.yaml.*?\n```", README.read_text(), re.S)
    assert example
    keys = re.findall(r"^(\w+):", example.group(0), re.M)
    assert keys and set(keys) <= set(Study.model_fields)


def test_every_field_is_described():
    models = [
        Study,
        DatasetConfig,
        TrainingConfig,
        ClusteringConfig,
        EmbeddingConfig,
        GraphConfig,
        LabelsConfig,
        ShortcutConfig,
    ]
    undescribed = [
        f"{model.__name__}.{name}"
        for model in models
        for name, field in model.model_fields.items()
        if not field.description
    ]
    assert undescribed == []


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ({"layers": []}, "study field 'features.layers' must be a non-empty list of mapped layer"),
        ({"layers": ["block3", "block3"]}, "study field 'features.layers' must be a list of uniq"),
        ({"layers": ["block3"], "k": 0}, "study field 'features.k' must be an integer >= 1, got 0"),
        (
            {"layers": ["block3"], "learning_rate": 0},
            "study field 'features.learning_rate' must be a number in (0.0, 10.0], got 0",
        ),
        (
            {"layers": ["block3"], "sample_images": 0},
            "study field 'features.sample_images' must be an integer >= 1, got 0",
        ),
        (
            {"layers": ["block3"], "strongest_per_image": 0},
            "study field 'features.strongest_per_image' must be an integer >= 1, got 0",
        ),
        ({"k": 4}, "study field 'features.layers' is required"),
        (
            {"layers": ["block3"], "expanse": 2},
            "unknown study field 'features.expanse'; allowed fields: batch_size, epochs, "
            "expansion, k, layers, learning_rate, random_per_image, sample_images, samples, "
            "strongest_per_image",
        ),
        ("block3", "study field 'features' must be a mapping (layers, expansion, k, ...)"),
    ],
)
def test_features_messages_name_the_field(features, message):
    with pytest.raises(StudyError, match=re.escape(message)):
        study_from_dict({**DEMO_STUDY, "features": features})


def test_features_layers_must_be_mapped_layers():
    with pytest.raises(StudyError, match=re.escape("'features.layers' must be among the study's")):
        study_from_dict({"layers": ["block1", "block2"], "features": {"layers": ["block3"]}})
    study = study_from_dict({"layers": ["block2", "block3"], "features": {"layers": "block3"}})
    assert study.features is not None and study.features.layers == ("block3",)


def test_demo_maps_features_and_features_leave_the_model_fingerprint_alone():
    from carto_assets.storage.fingerprints import shard_model_identity

    demo = study_from_dict(DEMO_STUDY)
    assert demo.features is not None and demo.features.layers == ("block3", "block4")
    assert (demo.features.expansion, demo.features.k, demo.features.epochs) == (2, 8, 240)
    assert (demo.features.strongest_per_image, demo.features.random_per_image) == (4, 2)
    plain = study_from_dict({k: v for k, v in DEMO_STUDY.items() if k != "features"})
    assert plain.features is None
    other = study_from_dict({**DEMO_STUDY, "features": {"layers": ["block3"], "k": 4}})
    assert model_fingerprint(demo) == model_fingerprint(plain) == model_fingerprint(other)
    # The shards depend on the features: other settings or dictionaries recompute them.
    identities = {
        shard_model_identity(demo),
        shard_model_identity(plain),
        shard_model_identity(other),
        shard_model_identity(demo, dictionary="abc"),
    }
    assert len(identities) == 4


def test_the_embedding_block_is_the_trainers_settings_with_its_defaults():
    import dataclasses

    from carto_assets.core.skipgram.trainer import SkipGram
    from carto_assets.study import EmbeddingConfig

    names = [f.name for f in dataclasses.fields(SkipGram)]
    block = EmbeddingConfig()
    assert {n: getattr(block, n) for n in names} == dataclasses.asdict(SkipGram())
    assert EmbeddingConfig(epochs=3, window=2).model_dump(include=set(names)) == (
        dataclasses.asdict(SkipGram(epochs=3, window=2))
    )


# ---- planted shortcuts (dataset.shortcuts) ---------------------------------------------------

HEART_DOTS = {"class": "heart", "concept": "texture", "value": "dots", "share": 0.95}


def _planted(*shortcuts, kind="shapes") -> dict:
    return {
        **DEMO_STUDY,
        "dataset": {**DEMO_STUDY["dataset"], "kind": kind, "shortcuts": list(shortcuts)},
    }


def test_a_shortcut_is_read_with_its_class_and_written_back_as_typed():
    study = study_from_dict(_planted(HEART_DOTS))
    (shortcut,) = study.dataset.shortcuts
    assert (shortcut.class_name, shortcut.concept, shortcut.value, shortcut.share) == (
        "heart",
        "texture",
        "dots",
        0.95,
    )
    assert study.to_dict()["dataset"]["shortcuts"] == [HEART_DOTS]
    assert hash(study) == hash(study.model_copy())
    assert study_from_dict(_planted({**HEART_DOTS, "share": 1})).dataset.shortcuts[0].share == 1.0


def test_shortcuts_change_the_model_fingerprint_and_none_keep_it():
    demo = model_fingerprint(study_from_dict(DEMO_STUDY))
    assert model_fingerprint(study_from_dict(_planted())) == demo  # `shortcuts: []`
    planted = model_fingerprint(study_from_dict(_planted(HEART_DOTS)))
    other_share = model_fingerprint(study_from_dict(_planted({**HEART_DOTS, "share": 0.5})))
    other_value = model_fingerprint(study_from_dict(_planted({**HEART_DOTS, "value": "plain"})))
    assert len({demo, planted, other_share, other_value}) == 4


def test_shortcuts_change_a_pretrained_model_s_shards_and_none_keep_them():
    from carto_assets.storage.fingerprints import shard_model_identity

    def identity(dataset):
        raw = {"model": "torchvision:resnet18", "layers": ["layer1"], "dataset": dataset}
        return shard_model_identity(study_from_dict(raw))

    plain = identity({"kind": "shapes"})
    assert identity({"kind": "shapes", "shortcuts": []}) == plain
    assert identity({"kind": "shapes", "shortcuts": [HEART_DOTS]}) != plain


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        (
            _planted({**HEART_DOTS, "share": 1.5}),
            "study field 'dataset.shortcuts.0.share' must be a number in [0.0, 1.0], got 1.5",
        ),
        (
            _planted({**HEART_DOTS, "share": -0.1}),
            "study field 'dataset.shortcuts.0.share' must be a number in [0.0, 1.0], got -0.1",
        ),
        (
            _planted(HEART_DOTS, {**HEART_DOTS, "value": "plain"}),
            "study field 'dataset.shortcuts.1.concept' must be another concept than shortcut 0's "
            "for class 'heart' (one shortcut per class and concept), got 'texture'",
        ),
        (
            _planted(HEART_DOTS, kind="digits"),
            "study field 'dataset.shortcuts' must be unset for kind 'digits' (only the 'shapes' "
            "world plants shortcuts), got [{'class': 'heart', 'concept': 'texture', 'value': "
            "'dots', 'share': 0.95}]",
        ),
        (
            _planted({**HEART_DOTS, "klass": "heart"}),
            "unknown study field 'dataset.shortcuts.0.klass'; allowed fields: class, concept, "
            "share, value",
        ),
        (
            _planted({"class": "heart", "concept": "texture", "share": 1.0}),
            "study field 'dataset.shortcuts.0.value' is required",
        ),
        (
            _planted({**HEART_DOTS, "class": 5}),
            "study field 'dataset.shortcuts.0.class' must be a shape class name (circle, square, "
            "heart, ...), got 5",
        ),
        (
            {**DEMO_STUDY, "dataset": {"kind": "shapes", "shortcuts": HEART_DOTS}},
            "study field 'dataset.shortcuts' must be a list of {class, concept, value, share} "
            "mappings",
        ),
    ],
)
def test_a_bad_shortcut_is_named(dataset, message):
    with pytest.raises(StudyError, match=re.escape(message)):
        study_from_dict(dataset)
