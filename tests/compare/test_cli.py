"""`carto compare` as a user types it: the refusals, before any work (the whole run on real
studies is in test_integration.py), and the demo comparison's files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from carto_assets.stages.comparison_studies import check_studies
from carto_assets.stages.prepared import PreparedComparison
from carto_assets.study import DEMO_STUDY, load_study
from carto_assets.study.comparison import ComparisonError, load_comparison

ROOT = Path(__file__).resolve().parents[2]
CARTO = [sys.executable, "-m", "carto_assets.cli.main"]


def carto(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache")),
    }
    return subprocess.run(
        [*CARTO, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _random_study(rng, layers, k, n_images):
    sets = [list(rng.choice(n_images, k, replace=False)) for _ in layers]
    clusters = [i // 2 for i in range(len(layers))]  # pairs of units of one layer
    return sets, clusters


def _comparison(folder: Path, studies: list[str], **fields) -> Path:
    path = folder / "cmp.yaml"
    path.write_text(yaml.safe_dump({"name": "cmp", "studies": studies, **fields}))
    return path


@pytest.fixture
def two_studies(tmp_path, write_study):
    rng = np.random.default_rng(1)
    layers = ["conv1"] * 6
    sets, clusters = _random_study(rng, layers, 5, 40)
    write_study(tmp_path, "a", sets, layers, clusters, n_images=40)
    return tmp_path, sets, layers, clusters


def test_carto_compare_refuses_studies_over_other_images(two_studies, write_study):
    folder, sets, layers, clusters = two_studies
    write_study(folder, "b", sets, layers, clusters, n_images=40, seed=1)
    out = carto("compare", str(_comparison(folder, ["a.yaml", "b.yaml"])), cwd=folder)
    assert out.returncode == 2
    first = out.stderr.splitlines()[0]
    assert first == (
        "carto: studies 'a' and 'b' do not map the same images: image 0 ('shapes:0') is from "
        "the shapes world with seed 0 in 'a' but from the shapes world with seed 1 in 'b'"
    )
    assert not (folder / "cmp.duckdb").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"sources": [f"shapes:{i}" for i in (0, 1, 3, 2, *range(4, 40))]},
            "image 2 is 'shapes:2' in 'a' but 'shapes:3' in 'b' (other files, or the same in "
            "another order)",
        ),
        ({"n_images": 41}, "'a' has 40 images and 'b' 41; image 40 ('shapes:40') is only in 'b'"),
    ],
)
def test_the_refusal_names_the_first_differing_image(two_studies, write_study, change, message):
    folder, sets, layers, clusters = two_studies
    write_study(folder, "b", sets, layers, clusters, **{"n_images": 40, **change})
    with pytest.raises(ComparisonError) as error:
        check_studies(PreparedComparison.load(_comparison(folder, ["a.yaml", "b.yaml"])))
    assert str(error.value) == f"studies 'a' and 'b' do not map the same images: {message}"


def test_comparison_files_are_checked(tmp_path, two_studies):
    folder = two_studies[0]
    out = carto("compare", str(folder / "missing.yaml"), cwd=folder)
    assert out.returncode == 2 and "comparison file not found" in out.stderr
    bad = _comparison(folder, ["a.yaml"])
    with pytest.raises(ComparisonError, match="'studies' must be a list of two or more study"):
        load_comparison(bad)
    bad = _comparison(folder, ["a.yaml", "a.yaml"])
    with pytest.raises(ComparisonError) as error:
        load_comparison(bad)
    assert str(error.value) == (
        f"{bad}: comparison field 'studies' must be a list naming each study once ('a.yaml' "
        "twice), got ['a.yaml', 'a.yaml']"
    )
    bad = _comparison(folder, ["a.yaml", "none.yaml"], treshold=0.2)
    with pytest.raises(ComparisonError, match="unknown comparison field 'treshold'"):
        load_comparison(bad)
    bad = _comparison(folder, ["a.yaml", "none.yaml"], threshold=0)
    with pytest.raises(ComparisonError, match="comparison field 'threshold'"):
        load_comparison(bad)
    bad = _comparison(folder, ["a.yaml", "b.yaml"], bands=4)
    with pytest.raises(ComparisonError) as error:
        load_comparison(bad)
    assert str(error.value) == (
        f"{bad}: comparison field 'bands' must be given together with rows (both or neither), got 4"
    )
    bad = _comparison(folder, ["a.yaml", "b.yaml"], bands=40, rows=4)
    with pytest.raises(ComparisonError, match=r"bands x rows <= num_perm \(40 x 4 = 160 > 128\)"):
        load_comparison(bad)
    with pytest.raises(ComparisonError, match=r"study 'none\.yaml': study file not found"):
        load_comparison(_comparison(folder, ["a.yaml", "none.yaml"])).load_studies()
    (folder / "late.yaml").write_text(yaml.safe_dump({"name": "late", "database": "late.duckdb"}))
    with pytest.raises(ComparisonError, match=r"study 'late.yaml' has no results at .*late.duckdb"):
        check_studies(PreparedComparison.load(_comparison(folder, ["a.yaml", "late.yaml"])))


def test_the_demo_comparison_is_the_demo_study_after_its_first_epoch():
    epoch1 = yaml.safe_load((ROOT / "examples/compare/demo-epoch1.yaml").read_text())
    differing = {"name", "database", "training"}
    assert {k: v for k, v in epoch1.items() if k not in differing} == {
        k: v for k, v in DEMO_STUDY.items() if k not in differing
    }
    assert epoch1["training"] == {"checkpoint_epoch": 1} and "training" not in DEMO_STUDY
    study = load_study(ROOT / "examples/compare/demo-epoch1.yaml")
    assert study.database_path == (ROOT / "data/shapes-demo-epoch1.duckdb").resolve()
    comparison = load_comparison(ROOT / "examples/compare/demo.yaml")
    assert comparison.studies == ("demo-epoch1.yaml", "demo")
    assert comparison.database_path.parent == (ROOT / "data/compare").resolve()


def test_the_comparison_code_location_loads_the_demo_comparison():
    from carto_assets.comparison_definitions import (
        COMPARE_JOB,
        DEMO_COMPARISON,
        build_comparison_definitions,
    )

    defs = build_comparison_definitions(DEMO_COMPARISON)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {
        "compare_units",
        "unit_matches",
        "layer_matches",
        "concept_matches",
        "compare_embedding",
        "compare_projection",
        "compare_views",
    }
    job = defs.resolve_job_def(COMPARE_JOB)
    assert len(job.asset_layer.executable_asset_keys) == len(keys)
    with pytest.raises(ComparisonError, match="comparison file not found"):
        build_comparison_definitions("no-such-comparison.yaml")


def test_the_readme_names_every_field_of_a_comparison_file_with_its_default():
    from carto_assets.study.comparison import Comparison

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Comparing models") : readme.index("## How it works")]
    defaults = Comparison(name="x", studies=("a", "b"))
    for name in Comparison.model_fields:
        if name in ("base_dir", "name", "studies", "embedding"):
            continue
        assert f"`{name}`" in section, name
        value = getattr(defaults, name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            assert f"`{name}` ({value}" in section, (name, value)


@pytest.mark.slow
def test_carto_compare_says_how_concepts_were_matched(tmp_path, write_study):
    from compare.known import worded_trio

    comparison, _, _ = worded_trio(tmp_path, write_study)
    out = carto("compare", str(comparison), "--dagster-home", str(tmp_path / "dg"), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert (
        "study 'c' has no words (no cluster_labels: mapped before words, or with "
        "labels.enabled: false): its concepts are matched by their top images, not by words"
    ) in lines
    pair = next(line for line in lines if line.startswith("'a' vs 'b': "))
    assert pair.endswith(
        "concepts 2 shared, 2 only in 'a' (matched by words; 2 clusters without words)"
    )
    pair = next(line for line in lines if line.startswith("'a' vs 'c': "))
    assert pair.endswith("(matched by top images)")


def test_studies_over_worlds_with_other_shortcuts_are_refused():
    import polars as pl

    from carto_assets.stages.comparison_images import check_same_images
    from carto_assets.study import study_from_dict

    images = pl.DataFrame({"image_id": [0, 1], "source": ["shapes:0", "shapes:1"]})
    dots = {"class": "heart", "concept": "texture", "value": "dots", "share": 1.0}
    plain = study_from_dict(
        {"name": "a", "dataset": {"kind": "shapes", "size": 2}, "top_k": 1, "shards": 1}
    )
    planted = study_from_dict(
        {
            "name": "b",
            "dataset": {"kind": "shapes", "size": 2, "shortcuts": [dots]},
            "top_k": 1,
            "shards": 1,
        }
    )
    check_same_images([planted, planted], [images, images])
    with pytest.raises(ComparisonError) as error:
        check_same_images([plain, planted], [images, images])
    assert str(error.value) == (
        "studies 'a' and 'b' do not map the same images: image 0 ('shapes:0') is from the shapes "
        "world with seed 0 in 'a' but from the shapes world with seed 0 and shortcuts heart "
        "texture=dots share 1 in 'b'"
    )
