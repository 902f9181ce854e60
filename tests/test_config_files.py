"""Study and comparison files: one loader, one wording, one bound per kind of field, and the
refusals `carto check` and `carto compare` print, typed as a user types them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image
from readme.walk import CARTO, run, write_study

from carto_assets.core.projection.umap2d import Projection
from carto_assets.core.sae.dictionaries import DictionaryTraining, Sampling
from carto_assets.core.similarity.lsh import MinHashLsh
from carto_assets.core.similarity.minhash import minhash_signatures
from carto_assets.study import (
    ClusteringConfig,
    ConfigError,
    EmbeddingConfig,
    FeaturesConfig,
    Study,
    StudyError,
    TrainingConfig,
    load_study,
    study_from_dict,
)
from carto_assets.study.comparison import (
    Comparison,
    ComparisonError,
    comparison_from_dict,
    load_comparison,
)
from carto_assets.study.loading import yaml_problem
from carto_assets.study.types import MAX_SEED

SEED_RANGE = f"an integer in [0, {MAX_SEED}]"


def _bounds(model, field: str) -> tuple:
    info = model.model_fields[field]
    return (info.annotation, *sorted(repr(m) for m in info.metadata if not hasattr(m, "text")))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((Study, "seed"), (ClusteringConfig, "seed")),
        ((Study, "seed"), (Comparison, "seed")),
        ((ClusteringConfig, "threshold"), (Comparison, "threshold")),
        ((ClusteringConfig, "threshold"), (Comparison, "concept_threshold")),
        ((ClusteringConfig, "num_perm"), (Comparison, "num_perm")),
        ((ClusteringConfig, "bands"), (Comparison, "bands")),
        ((Study, "batch_size"), (Comparison, "batch_size")),
        ((Study, "batch_size"), (TrainingConfig, "batch_size")),
        ((EmbeddingConfig, "batch_size"), (FeaturesConfig, "batch_size")),
        ((TrainingConfig, "learning_rate"), (FeaturesConfig, "learning_rate")),
        ((TrainingConfig, "learning_rate"), (EmbeddingConfig, "learning_rate")),
        ((Study, "database"), (Comparison, "database")),
    ],
)
def test_a_kind_of_field_has_one_bound_in_every_config(a, b):
    bounds_a, bounds_b = _bounds(*a), _bounds(*b)
    # An optional field is the same type with None allowed.
    assert bounds_a[1:] == bounds_b[1:]
    assert bounds_a[0] in (bounds_b[0], bounds_b[0] | None) or bounds_b[0] == bounds_a[0] | None


@pytest.mark.parametrize(
    ("block", "core"),
    [
        (ClusteringConfig(), MinHashLsh()),
        (EmbeddingConfig(), Projection()),
        (FeaturesConfig(layers=["block4"]), DictionaryTraining()),
        (FeaturesConfig(layers=["block4"]), Sampling(50_000, 4, 2)),
    ],
)
def test_a_settings_block_is_what_its_core_function_takes(block, core):
    """Core functions take the block whole: it has every setting, with the same defaults."""
    names = [f.name for f in dataclasses.fields(core)]
    assert {name: getattr(block, name) for name in names} == dataclasses.asdict(core)


@pytest.mark.parametrize(
    "patch",
    [
        {"seed": MAX_SEED + 1},
        {"clustering": {"seed": 2**40}},
        {"training": {"seed": MAX_SEED + 1}},
        {"clustering": {"seed": -1}},
    ],
)
def test_every_seed_is_one_numpy_takes(patch):
    ((block, value),) = patch.items()
    field = block if not isinstance(value, dict) else f"{block}.seed"
    got = value if not isinstance(value, dict) else value["seed"]
    with pytest.raises(StudyError) as error:
        study_from_dict(patch)
    assert str(error.value) == f"study field '{field}' must be {SEED_RANGE}, got {got}"


def test_the_largest_seed_check_accepts_is_one_minhash_takes():
    study = study_from_dict({"clustering": {"seed": MAX_SEED}})
    indptr, indices = np.array([0, 2]), np.array([3, 5])
    assert minhash_signatures(indptr, indices, num_perm=4, seed=study.clustering.seed).shape == (
        1,
        4,
    )
    with pytest.raises(ValueError, match="seed must be an integer in"):
        minhash_signatures(indptr, indices, num_perm=4, seed=MAX_SEED + 1)


def test_a_comparison_null_draw_seed_stays_a_seed():
    raw = {"name": "c", "studies": ["a.yaml", "b.yaml"], "null_draws": 5}
    assert comparison_from_dict({**raw, "seed": MAX_SEED - 4}).seed == MAX_SEED - 4
    assert comparison_from_dict({**raw, "seed": MAX_SEED, "null_draws": 0}).seed == MAX_SEED
    with pytest.raises(ComparisonError) as error:
        comparison_from_dict({**raw, "seed": MAX_SEED - 3})
    assert str(error.value) == (
        f"comparison field 'seed' must be at most {MAX_SEED - 4} with null_draws 5 (draw i "
        f"matches with seed + i, at most {MAX_SEED}), got {MAX_SEED - 3}"
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"studies": ["a.yaml", "b.yaml"], "name": "c", "treshold": 0.2},
            "unknown comparison field 'treshold'; allowed fields: bands, batch_size, ",
        ),
        (
            {"studies": ["a.yaml", "b.yaml"], "name": "c", "threshold": 0},
            "comparison field 'threshold' must be a number in (0.0, 1.0], got 0",
        ),
        (
            {"studies": ["a.yaml", "b.yaml"], "name": "c", "embedding": {"dim": 1}},
            "comparison field 'embedding.dim' must be an integer in [2, 4096], got 1",
        ),
        ({"studies": ["a.yaml", "b.yaml"]}, "comparison field 'name' is required"),
        (
            {"studies": ["a.yaml", "b.yaml"], "name": "c", "base_dir": "/"},
            "unknown comparison field 'base_dir'; allowed fields: ",
        ),
        (["a.yaml"], "a comparison must be a YAML mapping of fields, got list"),
    ],
)
def test_a_comparison_is_worded_as_a_study_is(raw, message):
    with pytest.raises(ComparisonError) as error:
        comparison_from_dict(raw)
    assert str(error.value).startswith(message)
    assert isinstance(error.value, ConfigError)


def test_a_yaml_syntax_error_is_one_line_with_its_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nclustering:\n  seed: [1, 2\n")
    expected = (
        "is not valid YAML at line 4, column 1: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence at line 3, column 9)"
    )
    with pytest.raises(StudyError) as study:
        load_study(bad)
    with pytest.raises(ComparisonError) as comparison:
        load_comparison(bad)
    assert str(study.value) == f"study file {bad} {expected}"
    assert str(comparison.value) == f"comparison file {bad} {expected}"
    tab = tmp_path / "tab.yaml"
    tab.write_text("name: x\n\tseed: 1\n")
    with pytest.raises(StudyError) as error:
        load_study(tab)
    assert "\n" not in str(error.value) and " at line 2, column 1: " in str(error.value)


def test_yaml_problem_without_a_position_is_still_one_line():
    import yaml

    assert yaml_problem(yaml.YAMLError("two\nlines")) == ": two lines"


# ---- typed as a user types them ------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path):
    """An image folder study's folder: two classes of two PNGs each."""
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.png")
    return tmp_path


def _study(folder, **fields):
    return write_study(
        folder,
        "mine",
        {
            "dataset": {"kind": "imagefolder", "path": "images", "image_size": 16},
            "top_k": 2,
            "shards": 1,
            **fields,
        },
    )


def _errors(out) -> list[str]:
    return [line for line in out.stderr.splitlines() if not line.startswith("carto: details")]


@pytest.mark.slow  # a `carto` subprocess: the CLI tier, not `make test-fast`'s unit tier
def test_carto_check_refuses_an_out_of_range_clustering_seed(image_folder):
    study = _study(image_folder, clustering={"seed": 1099511627776})
    out = run([CARTO, "check", "--study", study.name], cwd=image_folder)
    assert out.returncode == 2
    assert _errors(out) == [
        f"carto: invalid study: {study}: study field 'clustering.seed' must be {SEED_RANGE}, "
        "got 1099511627776"
    ]
    good = _study(image_folder, clustering={"seed": MAX_SEED})
    assert run([CARTO, "check", "--study", good.name], cwd=image_folder).ok()


@pytest.mark.slow  # a `carto` subprocess: the CLI tier, not `make test-fast`'s unit tier
@pytest.mark.parametrize(
    ("field", "bad", "good"),
    [
        ("max_share", 0, 1.0),
        ("max_share", 1.5, 1.0),
        ("max_share", "half", 1.0),
        ("always_on", 0, 0.95),
        ("always_on", 1.01, 0.95),
        ("always_on", "most", 0.95),
    ],
)
def test_carto_check_refuses_a_labels_share_outside_0_1_in_one_line(image_folder, field, bad, good):
    study = _study(image_folder, labels={field: bad})
    out = run([CARTO, "check", "--study", study.name], cwd=image_folder)
    assert out.returncode == 2
    (line,) = _errors(out)
    assert line.startswith(f"carto: invalid study: {study}: ") and f"labels.{field}" in line
    assert str(bad) in line
    good_study = _study(image_folder, labels={field: good})
    assert run([CARTO, "check", "--study", good_study.name], cwd=image_folder).ok()


@pytest.mark.slow  # a `carto` subprocess: the CLI tier, not `make test-fast`'s unit tier
def test_carto_check_prints_a_yaml_syntax_error_in_one_line(image_folder):
    study = _study(image_folder)
    study.write_text(study.read_text() + "clustering: {seed: 3\n")
    out = run([CARTO, "check", "--study", study.name], cwd=image_folder)
    assert out.returncode == 2
    (line,) = _errors(out)
    lines = study.read_text().splitlines()
    assert line == (
        f"carto: invalid study: study file {study} is not valid YAML at line {len(lines) + 1}, "
        "column 1: expected ',' or '}', but got '<stream end>' (while parsing a flow mapping at "
        f"line {len(lines)}, column 13)"
    )


@pytest.mark.slow  # a `carto` subprocess: the CLI tier, not `make test-fast`'s unit tier
def test_carto_compare_says_once_that_a_study_is_named_twice(image_folder):
    _study(image_folder)
    comparison = image_folder / "cmp.yaml"
    comparison.write_text("name: cmp\nstudies: [mine.yaml, mine.yaml]\n")
    out = run([CARTO, "compare", comparison.name], cwd=image_folder)
    assert out.returncode == 2
    assert _errors(out) == [
        f"carto: {comparison}: comparison field 'studies' must be a list naming each study once "
        "('mine.yaml' twice), got ['mine.yaml', 'mine.yaml']"
    ]


@pytest.mark.slow  # a `carto` subprocess: the CLI tier, not `make test-fast`'s unit tier
def test_carto_compare_prints_a_yaml_syntax_error_in_one_line(tmp_path):
    comparison = tmp_path / "cmp.yaml"
    comparison.write_text("name: cmp\nstudies: [a.yaml, b.yaml\n")
    out = run([CARTO, "compare", comparison.name], cwd=tmp_path)
    assert out.returncode == 2
    assert _errors(out) == [
        f"carto: comparison file {comparison} is not valid YAML at line 3, column 1: expected "
        "',' or ']', but got '<stream end>' (while parsing a flow sequence at line 2, column 10)"
    ]


def _planted(folder, kind="shapes", *shortcuts):
    dataset = {"kind": kind, "size": 240, "image_size": 32, "shortcuts": list(shortcuts)}
    return write_study(folder, "planted", {"dataset": dataset, "top_k": 8, "shards": 1})


HEART_DOTS = {"class": "heart", "concept": "texture", "value": "dots", "share": 1.0}


@pytest.mark.slow  # a `carto` subprocess: the CLI tier, not `make test-fast`'s unit tier
def test_carto_check_passes_a_planted_shortcut_and_names_each_the_world_cannot_plant(tmp_path):
    study = _planted(tmp_path, "shapes", HEART_DOTS)
    out = run([CARTO, "check", "--study", study.name], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("study 'planted' is valid: model builtin, dataset shapes")
    bad = [
        {**HEART_DOTS, "class": "hart"},
        {**HEART_DOTS, "concept": "shape", "value": "circle", "class": "star"},
        {**HEART_DOTS, "concept": "watermark", "class": "cross"},
        {**HEART_DOTS, "value": "spots", "class": "arrow"},
    ]
    study = _planted(tmp_path, "shapes", HEART_DOTS, *bad)
    out = run([CARTO, "check", "--study", study.name], cwd=tmp_path)
    assert out.returncode == 2
    assert _errors(out) == [
        "carto: study field 'dataset.shortcuts.1.class': unknown class 'hart'; the shape classes "
        "are circle, square, triangle, star, cross, heart, crescent, arrow",
        "carto: study field 'dataset.shortcuts.2.concept': 'shape' is the class itself and "
        "cannot be planted; plant one of colour, texture, background, size, position",
        "carto: study field 'dataset.shortcuts.3.concept': unknown concept 'watermark'; plant one "
        "of colour, texture, background, size, position",
        "carto: study field 'dataset.shortcuts.4.value': 'spots' is not a value of texture; its "
        "values are plain, stripes_h, stripes_v, stripes_diag, checker, dots, noise",
    ]


@pytest.mark.slow  # a `carto` subprocess: the CLI tier, not `make test-fast`'s unit tier
@pytest.mark.parametrize(
    ("kind", "shortcuts", "message"),
    [
        (
            "shapes",
            [{**HEART_DOTS, "share": 1.5}],
            "study field 'dataset.shortcuts.0.share' must be a number in [0.0, 1.0], got 1.5",
        ),
        (
            "shapes",
            [HEART_DOTS, {**HEART_DOTS, "value": "plain", "share": 0.5}],
            "study field 'dataset.shortcuts.1.concept' must be another concept than shortcut 0's "
            "for class 'heart' (one shortcut per class and concept), got 'texture'",
        ),
        (
            "digits",
            [HEART_DOTS],
            "study field 'dataset.shortcuts' must be unset for kind 'digits' (only the 'shapes' "
            "world plants shortcuts), got [{'class': 'heart', 'concept': 'texture', 'value': "
            "'dots', 'share': 1.0}]",
        ),
    ],
)
def test_carto_check_refuses_a_shortcut_the_study_file_cannot_hold(
    tmp_path, kind, shortcuts, message
):
    study = _planted(tmp_path, kind, *shortcuts)
    out = run([CARTO, "check", "--study", study.name], cwd=tmp_path)
    assert out.returncode == 2
    assert _errors(out) == [f"carto: invalid study: {study}: {message}"]
