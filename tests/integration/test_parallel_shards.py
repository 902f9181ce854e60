"""Shards in parallel processes write only Parquet: no DuckDB lock conflicts, same top-k."""

import multiprocessing as mp

import polars as pl
import pytest

from carto_assets.stages.activations import run_shard, shard_dir
from carto_assets.stages.images import build_manifest, save_manifest, write_images_tables
from carto_assets.stages.model import prepare_model
from carto_assets.stages.prepared import PreparedStudy
from carto_assets.stages.top_images import merge_top_images
from carto_assets.storage.store import CartoStore
from carto_assets.study import load_study

pytestmark = pytest.mark.slow


def _run_shard(args: tuple[str, int]) -> int:
    study_file, shard = args
    run_shard(PreparedStudy.load(study_file), shard, progress=lambda m: None)
    return shard


def _prepare(folder, make_study):
    study_file = make_study(folder, shards=3)
    study = load_study(study_file)
    manifest = build_manifest(study)
    save_manifest(study, manifest)
    store = CartoStore(study.database_path)
    write_images_tables(study, manifest, store)
    return study_file, study, store


def test_parallel_shards_merge_to_the_single_process_result(tmp_path, make_study):
    study_file, study, store = _prepare(tmp_path, make_study)
    prepare_model(PreparedStudy(study, store), progress=lambda m: None)
    # Hold a read connection open the whole time: shards never need the database.
    with store.connect(read_only=True):
        ctx = mp.get_context("spawn")
        with ctx.Pool(2) as pool:
            done = pool.map(_run_shard, [(str(study_file), s) for s in range(3)])
    assert sorted(done) == [0, 1, 2]
    prepared = PreparedStudy(study, store)
    merge_top_images(prepared)
    parallel = store.query("SELECT * FROM top_images ORDER BY neuron_id, rank")

    for s in range(3):  # the same shards again, one after another in this process
        run_shard(prepared, s, progress=lambda m: None)
    merge_top_images(prepared)
    sequential = store.query("SELECT * FROM top_images ORDER BY neuron_id, rank")
    assert len(parallel) == len(sequential) > 0
    assert parallel.select("neuron_id", "rank", "image_id").equals(
        sequential.select("neuron_id", "rank", "image_id")
    )
    diff = (parallel["activation"] - sequential["activation"]).abs().max()
    assert diff < 1e-5


def test_stale_or_missing_shards_are_named(tmp_path, make_study):
    _, study, store = _prepare(tmp_path, make_study)
    prepare_model(PreparedStudy(study, store), progress=lambda m: None)
    prepared = PreparedStudy(study, store)
    run_shard(prepared, 0, progress=lambda m: None)
    with pytest.raises(RuntimeError, match=r"shard-0001, shard-0002 \(missing: 2"):
        merge_top_images(prepared)


def test_dataloader_workers_give_the_same_shard(tmp_path, make_study):
    _, study, _ = _prepare(tmp_path, make_study)
    prepare_model(PreparedStudy.open(study), progress=lambda m: None)
    run_shard(PreparedStudy.open(study), 0, progress=lambda m: None)
    main = pl.read_parquet(shard_dir(study, 0) / "top_k.parquet")
    with_workers = study.model_copy(update={"loader_workers": 2})
    run_shard(PreparedStudy.open(with_workers), 0, progress=lambda m: None)
    workers = pl.read_parquet(shard_dir(study, 0) / "top_k.parquet")
    assert main.equals(workers)
