"""The code location loads, for the demo study and a study file; bad studies fail at load."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from carto_assets.definitions import build_definitions
from carto_assets.study import StudyError

ROOT = Path(__file__).resolve().parents[1]


#: Every asset, and what each job of `carto run` materializes, in the order it runs them.
JOBS = {
    "prepare_study": {"images", "model", "dictionary"},
    "activation_pass": {"activations"},
    "summaries": {
        "top_images",
        "class_importance",
        "minhash_signatures",
        "neuron_clusters",
        "cluster_quality",
        "unit_labels",
        "cooccurrence",
        "neuron_embedding",
        "neuron_projection",
        "example_patches",
    },
    "concept_graph_chunks": {"concept_graph_chunk", "explanation_chunk"},
    "graph_and_views": {"concept_graph", "explanations", "class_audit", "views"},
}


def test_definitions_hold_every_asset_once_in_one_job():
    defs = build_definitions("")
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == set().union(*JOBS.values())
    assert len(keys) == 20
    for job, assets in JOBS.items():
        selected = defs.resolve_job_def(job).asset_layer.executable_asset_keys
        assert {k.to_user_string() for k in selected} == assets, job
    partitioned = {
        k.to_user_string()
        for k in defs.resolve_asset_graph().get_all_asset_keys()
        if defs.resolve_assets_def(k).partitions_def is not None
    }
    assert partitioned == {"activations", "concept_graph_chunk", "explanation_chunk"}


def test_invalid_study_fails_when_definitions_load(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("top_k: -3\n")
    with pytest.raises(StudyError, match="top_k"):
        build_definitions(str(bad))


@pytest.mark.slow  # a Dagster CLI process loading the workspace: about 10 s
def test_dagster_definitions_validate_cli():
    env = {**os.environ, "DAGSTER_HOME": str(ROOT / ".dagster-test")}
    env.pop("CARTO_STUDY", None)
    (ROOT / ".dagster-test").mkdir(exist_ok=True)
    exe = Path(sys.executable).parent / "dagster"
    out = subprocess.run(
        [str(exe), "definitions", "validate", "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow  # a dg CLI process: about 5 s
def test_dg_check_defs():
    exe = Path(sys.executable).parent / "dg"
    if not exe.exists():
        pytest.skip("dagster-dg-cli not installed")
    out = subprocess.run(
        [str(exe), "check", "defs"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DAGSTER_HOME": str(ROOT / ".dagster-test")},
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_asset_gives_its_freed_memory_back():
    """A study's assets and a comparison's each run the one ``release_memory`` hook."""
    from carto_assets.assets.hooks import release_memory_after
    from carto_assets.comparison_definitions import ALL_ASSETS as COMPARISON_ASSETS
    from carto_assets.definitions import ALL_ASSETS

    for asset in [*ALL_ASSETS, *COMPARISON_ASSETS]:
        assert release_memory_after in asset.hook_defs, asset.key
