"""Scaling out: parallel shard processes, incremental shards, the cluster deployment config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from carto_assets.cli.run import RunFailed, materialize_all
from carto_assets.storage.sharding import shard_of
from carto_assets.storage.store import CartoStore
from carto_assets.study import StudyError, load_study, study_from_dict

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "docs" / "deploy"


def _top_images(study_file: Path) -> pl.DataFrame:
    store = CartoStore(load_study(study_file).database_path)
    return store.query("SELECT * FROM top_images ORDER BY neuron_id, rank")


def _assert_same_top_images(a: pl.DataFrame, b: pl.DataFrame) -> None:
    assert len(a) == len(b) > 0
    cols = ["neuron_id", "rank", "image_id"]
    assert a.select(cols).equals(b.select(cols))
    assert (a["activation"] - b["activation"]).abs().max() < 1e-5


def _persistent_instance(home: Path) -> dg.DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").touch()
    return dg.DagsterInstance.from_config(str(home))


# ---- 1. parallel shard processes through Dagster ---------------------------------------------
@pytest.mark.slow
def test_jobs_2_matches_jobs_1_and_records_every_partition(tmp_path, make_study):
    (tmp_path / "par").mkdir()
    (tmp_path / "seq").mkdir()
    # The parallel study also splits the concept graph into class chunks of 3 classes.
    par_file = make_study(tmp_path / "par", shards=3, graph={"classes_per_chunk": 3})
    seq_file = make_study(tmp_path / "seq", shards=3)

    instance = _persistent_instance(tmp_path / "dagster_home")
    # Three shards, two worker processes, one shared (SQLite-backed) instance.
    timings = materialize_all(str(par_file), instance, say=lambda m: None, jobs=2)
    assert timings["shards_computed"] == 3
    keys = {"shard-0000", "shard-0001", "shard-0002"}
    assert instance.get_materialized_partitions(dg.AssetKey("activations")) == keys
    runs = instance.get_runs(filters=dg.RunsFilter(job_name="activation_pass"))
    assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(keys)
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)

    chunk_runs = instance.get_runs(filters=dg.RunsFilter(job_name="concept_graph_chunks"))
    chunk_keys = instance.get_materialized_partitions(dg.AssetKey("concept_graph_chunk"))
    assert len(chunk_keys) >= 2 and len(chunk_runs) == len(chunk_keys)
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in chunk_runs)

    materialize_all(str(seq_file), dg.DagsterInstance.ephemeral(), say=lambda m: None, jobs=1)
    _assert_same_top_images(_top_images(par_file), _top_images(seq_file))
    # Class chunks in two worker processes give the single chunk's concept graph.
    edges = [
        CartoStore(load_study(f).database_path).query(
            "SELECT * FROM concept_graph_edges ORDER BY ALL"
        )
        for f in (par_file, seq_file)
    ]
    keys = ["label", "source_layer", "source_cluster", "target_layer", "target_cluster"]
    assert len(edges[0]) > 0 and edges[0].select(keys).equals(edges[1].select(keys))
    assert (edges[0]["weight"] - edges[1]["weight"]).abs().max() < 1e-4 * edges[1]["weight"].max()


def test_parallel_jobs_need_a_persistent_instance(tmp_path, make_study):
    study_file = make_study(tmp_path, shards=2)
    with pytest.raises(RunFailed, match="persistent Dagster instance"):
        materialize_all(str(study_file), dg.DagsterInstance.ephemeral(), say=lambda m: None, jobs=2)


# ---- 2. fixed-size shards and incremental runs -----------------------------------------------
def test_shard_size_assigns_fixed_shards_and_wins_over_shards():
    assert shard_of([0, 99, 100, 250], 300, 7, shard_size=100).tolist() == [0, 0, 1, 2]
    assert shard_of([0, 99, 100, 250], 300, 3).tolist() == [0, 0, 1, 2]  # compatible default
    study = study_from_dict({"dataset": {"kind": "shapes", "size": 250}, "shard_size": 100})
    assert (study.shard_size, study.shards) == (100, 3)
    assert study_from_dict({"shards": 5}).shard_size is None
    with pytest.raises(StudyError, match="'shard_size'"):
        study_from_dict({"shard_size": 0})


def test_shard_size_on_an_image_folder_needs_its_size(tmp_path):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    raw = {"dataset": {"kind": "imagefolder", "path": "imgs"}, "shard_size": 10}
    with pytest.raises(StudyError, match=r"'shard_size'.*dataset.size"):
        study_from_dict(raw, base_dir=tmp_path)


def _checkpoint(path: Path) -> Path:
    """A fixed torchvision checkpoint: a model that does not depend on the dataset's size."""
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=6).state_dict(), path)
    return path


def _growing_study(folder: Path, make_study, ckpt: Path, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return make_study(
        folder,
        model="torchvision:resnet18",
        weights=str(ckpt),
        dataset={"kind": "shapes", "size": size, "image_size": 32},
        layers=["layer1"],
        embedding={"epochs": 2},
        shard_size=100,
    )


@pytest.mark.slow
def test_adding_images_recomputes_only_the_new_shard(tmp_path, make_study):
    ckpt = _checkpoint(tmp_path / "resnet18.pt")
    study_file = _growing_study(tmp_path / "grow", make_study, ckpt, 200)
    instance = dg.DagsterInstance.ephemeral()
    first = materialize_all(str(study_file), instance, say=lambda m: None)
    assert first["shards_computed"] == 2
    study = load_study(study_file)
    root = study.files_dir / "activations"
    before = {p.parent.name: p.stat().st_mtime_ns for p in root.glob("*/summary.json")}
    assert sorted(before) == ["shard-0000", "shard-0001"]

    study_file = _growing_study(tmp_path / "grow", make_study, ckpt, 300)
    second = materialize_all(str(study_file), instance, say=lambda m: None)
    assert (second["shards_computed"], second["shards_reused"]) == (1, 2)
    after = {p.parent.name: p.stat().st_mtime_ns for p in root.glob("*/summary.json")}
    assert sorted(after) == ["shard-0000", "shard-0001", "shard-0002"]
    assert {k: after[k] for k in before} == before  # the old shards were not rewritten
    summary = json.loads((root / "shard-0002" / "summary.json").read_text())
    assert summary["n_images"] == 100 and summary["shard_size"] == 100
    runs = instance.get_runs(filters=dg.RunsFilter(job_name="activation_pass"))
    assert sorted(r.tags["dagster/partition"] for r in runs) == [
        "shard-0000",
        "shard-0001",
        "shard-0002",
    ]

    scratch = _growing_study(tmp_path / "scratch", make_study, ckpt, 300)
    materialize_all(str(scratch), dg.DagsterInstance.ephemeral(), say=lambda m: None)
    _assert_same_top_images(_top_images(study_file), _top_images(scratch))
    n = CartoStore(study.database_path).query("SELECT count(*) AS n FROM images")["n"][0]
    assert n == 300

    forced = materialize_all(str(study_file), instance, say=lambda m: None, force=True)
    assert (forced["shards_computed"], forced["shards_reused"]) == (3, 0)


# ---- 3. the documented cluster deployment ----------------------------------------------------
def test_deploy_dagster_yaml_is_valid_instance_config(monkeypatch):
    for var in ("CARTO_PG_HOST", "CARTO_PG_USER", "CARTO_PG_PASSWORD", "CARTO_PG_DB"):
        monkeypatch.setenv(var, "carto")
    monkeypatch.setenv("CARTO_PG_PORT", "5432")
    monkeypatch.setenv("CARTO_COMPUTE_LOGS", "/mnt/carto/dagster/compute_logs")
    from dagster._core.instance.config import dagster_instance_config

    config, custom_class = dagster_instance_config(str(DEPLOY), "dagster.yaml")
    assert custom_class is None
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    # The storage and coordinator classes' own config schemas accept what the file sets.
    from dagster._config import process_config
    from dagster._core.run_coordinator import QueuedRunCoordinator

    coordinator = config["run_coordinator"]["config"]
    assert process_config(QueuedRunCoordinator.config_type(), coordinator).success
    from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager

    logs = config["compute_logs"]["config"]
    assert process_config(LocalComputeLogManager.config_type(), logs).success
    pg = pytest.importorskip("dagster_postgres")
    storage = config["storage"]["postgres"]
    assert process_config(pg.PostgresRunStorage.config_type(), storage).success


def test_deploy_run_config_validates_against_the_documented_celery_code_location(monkeypatch):
    pytest.importorskip("dagster_celery")
    monkeypatch.setenv("CARTO_CELERY_BROKER", "pyamqp://guest@rabbitmq:5672//")
    monkeypatch.setenv("CARTO_CELERY_BACKEND", "rpc://")
    monkeypatch.setenv("CARTO_STUDY", "/mnt/carto/studies/pets.yaml")
    doc = (DEPLOY / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.S)
    assert code, "docs/deploy/README.md lost its code-location snippet"
    namespace: dict = {}
    exec(compile(code.group(1), "docs/deploy/README.md", "exec"), namespace)  # the documented file
    defs: dg.Definitions = namespace["defs"]
    run_config = yaml.safe_load((DEPLOY / "run_config.yaml").read_text())
    for job_name in ("activation_pass", "summaries"):
        job = defs.resolve_job_def(job_name)
        assert job.executor_def.name == "celery"
        # Dagster's own validation of the whole run config (executor, resources) for the job.
        resolved = dg.validate_run_config(job, run_config)
        assert resolved["execution"]["celery"]["broker"] == "pyamqp://guest@rabbitmq:5672//"
        assert resolved["resources"]["study"]["config"]["study_file"].endswith("pets.yaml")

    job = defs.resolve_job_def("activation_pass")
    bad = {**run_config, "execution": {"config": {"no_such_option": 1}}}
    with pytest.raises(dg.DagsterInvalidConfigError, match="no_such_option"):
        dg.validate_run_config(job, bad)


def test_an_unknown_partition_is_named(tmp_path):
    from carto_assets.cli.run import execute_partition

    instance = _persistent_instance(tmp_path / "home")
    with pytest.raises(RunFailed, match=r"unknown partition 'shard-0009'.*prepare_study"):
        execute_partition("", "shard-0009", instance)


@pytest.mark.slow
def test_failed_worker_processes_are_collected_and_named(tmp_path):
    from carto_assets.cli.run import _run_partitions_in_processes

    instance = _persistent_instance(tmp_path / "home")
    with pytest.raises(RunFailed) as err:
        _run_partitions_in_processes("", ["shard-0007", "shard-0008"], instance, 2, lambda m: None)
    msg = str(err.value)
    assert "partition(s) shard-0007, shard-0008" in msg
    assert "--- shard-0008 ---" in msg and "unknown partition 'shard-0008'" in msg
