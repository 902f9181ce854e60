"""Stage functions behind the assets: manifest, model, per-shard activations, top-k merge.

Each function takes a :class:`~carto_assets.study.Study`, reads and writes the study's files
and returns plain data, so the same pipeline runs from a notebook or a test without Dagster.
The asset modules only call these and attach metadata.

Files under ``study.files_dir``::

    manifest/images.parquet         the image manifest (also the ``images`` table)
    manifest/classes.json           class names in label order
    model/<fingerprint>/model.pt    the trained built-in CNN (state dict)
    model/<fingerprint>/meta.json   layers, accuracy, preprocessing
    activations/<shard>/top_k.parquet, class_stats.parquet, summary.json
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from carto_assets import progress as progress_of
from carto_assets.core.activations import Batch, PassResult, activation_pass
from carto_assets.core.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BuiltinCNN,
    LayerInfo,
    ModelBundle,
    probe_layers,
    resolve_device,
    resolve_layers,
    torchvision_model,
)
from carto_assets.sources.datasets import (
    ImageFolderSource,
    ImageSource,
    SkippedFile,
    open_source,
    shard_fingerprint,
    shard_key,
    shard_model_identity,
    shard_of,
    study_image_size,
)
from carto_assets.storage import CartoStore, sql_path_list, write_parquet_atomic
from carto_assets.study import Study

log = logging.getLogger("carto")

BUILTIN_MEAN = (0.5, 0.5, 0.5)
BUILTIN_STD = (0.25, 0.25, 0.25)


# ---- manifest -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Manifest:
    images: pl.DataFrame  # image_id, shard, source, label, label_name
    class_names: list[str]
    concepts: pl.DataFrame | None  # image_id, concept, value
    skipped: list[SkippedFile]


def build_manifest(study: Study) -> Manifest:
    """Scan the study's dataset and assign images to shards."""
    source = open_source(study)
    records = source.records()
    n = len(records)
    if study.top_k > n:
        raise ValueError(
            f"top_k={study.top_k} is larger than the dataset ({n} readable images); "
            f"lower top_k or add images"
        )
    if study.shards > n:
        raise ValueError(f"shards={study.shards} is larger than the dataset ({n} images)")
    ids = np.arange(n, dtype=np.int64)
    shard = shard_of(ids, n, study.shards, study.shard_size).astype(np.int32)
    if study.shard_size is not None and int(shard.max()) + 1 != study.shards:
        raise ValueError(
            f"shard_size={study.shard_size}: the dataset has {n} readable images "
            f"({int(shard.max()) + 1} shards) but dataset.size={study.dataset.size} promised "
            f"{study.shards} shards; set dataset.size to {n}"
        )
    images = pl.DataFrame(
        {
            "image_id": ids,
            "shard": shard,
            "source": [r.source for r in records],
            "label": np.array([r.label for r in records], dtype=np.int32),
            "label_name": [r.label_name for r in records],
        }
    )
    rows = source.concept_rows()
    concepts = None
    if rows is not None:
        concepts = pl.DataFrame(
            {
                "image_id": np.array([r[0] for r in rows], dtype=np.int64),
                "concept": [r[1] for r in rows],
                "value": [r[2] for r in rows],
            }
        )
    return Manifest(images, list(source.class_names), concepts, source.skipped)


def manifest_dir(study: Study) -> Path:
    return study.files_dir / "manifest"


def save_manifest(study: Study, manifest: Manifest) -> None:
    d = manifest_dir(study)
    write_parquet_atomic(manifest.images, d / "images.parquet")
    tmp = d / ".classes.json.tmp"
    tmp.write_text(json.dumps({"class_names": manifest.class_names}))
    os.replace(tmp, d / "classes.json")


def load_manifest(study: Study) -> tuple[pl.DataFrame, list[str]]:
    d = manifest_dir(study)
    if not (d / "images.parquet").is_file():
        raise FileNotFoundError(
            f"no image manifest under {d}; materialize the `images` asset first"
        )
    images = pl.read_parquet(d / "images.parquet")
    class_names = json.loads((d / "classes.json").read_text())["class_names"]
    return images, class_names


def source_for_manifest(study: Study, images: pl.DataFrame, class_names: list[str]) -> ImageSource:
    """The image source for a stored manifest (image folders are not rescanned)."""
    if study.dataset.kind == "imagefolder":
        return ImageFolderSource.from_manifest(
            study.dataset.path or "",
            images["source"].to_list(),
            images["label"].to_list(),
            class_names,
            study_image_size(study),
        )
    return open_source(study)


# ---- model ----------------------------------------------------------------------------------
def model_dir(study: Study) -> Path:
    return study.files_dir / "model" / study.model_fingerprint()


def _bundle_for(study: Study, module: torch.nn.Module) -> ModelBundle:
    """The model in eval mode with the normalization its weights were trained with.

    Torchvision weights (``DEFAULT`` or an enum name) bring their own preprocessing: mean/std
    come from ``get_model_weights(name)[weights].transforms()`` (metadata, no download). Those
    transforms also resize (e.g. 256) and centre-crop (e.g. 224; 384 for ViT SWAG E2E weights);
    the image sources already resize and centre-crop to ``dataset.image_size``, so that is the
    size to set. Random init and checkpoints keep ImageNet's statistics.
    """
    from carto_assets.core.models import weights_normalization

    size = study_image_size(study)
    if study.is_builtin_model:
        return ModelBundle(module.eval(), "builtin", size, BUILTIN_MEAN, BUILTIN_STD)
    mean, std = weights_normalization(
        study.torchvision_name or "", study.weights, fallback=(IMAGENET_MEAN, IMAGENET_STD)
    )
    return ModelBundle(module.eval(), study.model, size, mean, std)


def layer_table(layers: list[LayerInfo]) -> list[dict[str, Any]]:
    return [
        {
            "layer": i.name,
            "type": i.type,
            "channels": i.channels,
            "map_height": i.map_size[0],
            "map_width": i.map_size[1],
            "order": i.order,
        }
        for i in layers
    ]


def prepare_model(
    study: Study,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train (built-in) or load (torchvision) the study's model, resolve its layers, cache it.

    Returns the model's metadata. A cached checkpoint is reused while the study's model and
    dataset settings are unchanged (they make up the cache key).
    """
    say = progress or log.info
    images, class_names = load_manifest(study)
    out = model_dir(study)
    meta_path = out / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        say(f"reusing cached model {out}")
        meta["cached"] = True
        return meta
    size = study_image_size(study)
    meta: dict[str, Any] = {
        "model": study.model,
        "weights": study.weights,
        "input_size": size,
        "fingerprint": study.model_fingerprint(),
        "cached": False,
    }
    if study.is_builtin_model:
        from carto_assets.core.training import train_builtin

        source = source_for_manifest(study, images, class_names)
        say(f"rendering/loading {len(images)} images for training")
        pixels, ok = source.load_many(images["image_id"].to_list(), workers=4)
        labels = images["label"].to_numpy()[ok]
        t = study.training
        progress_of.advance("model training", 0, t.epochs, "epochs")
        result = train_builtin(
            pixels,
            labels,
            len(class_names),
            epochs=t.epochs,
            learning_rate=t.learning_rate,
            batch_size=t.batch_size,
            holdout_fraction=t.holdout_fraction,
            seed=study.seed,
            mean=BUILTIN_MEAN,
            std=BUILTIN_STD,
            progress=lambda e, loss, s: (
                progress_of.advance("model training", e, t.epochs, "epochs"),
                say(f"epoch {e}/{t.epochs}: loss {loss:.4f} ({s:.0f} s)"),
            ),
        )
        module = result.bundle.module
        meta.update(
            holdout_accuracy=result.holdout_accuracy,
            train_accuracy=result.train_accuracy,
            epoch_losses=result.epoch_losses,
            n_train=result.n_train,
            n_holdout=result.n_holdout,
            training_seconds=result.seconds,
            n_classes=len(class_names),
        )
    else:
        # Random init (weights: none) is seeded and saved below, so every shard, process and
        # later stage sees the same network.
        torch.manual_seed(study.seed)
        module = torchvision_model(study.torchvision_name or "", study.weights)
        meta.update(n_classes=None, holdout_accuracy=None)
    infos = probe_layers(module.eval(), size)
    layers = resolve_layers(infos, study.layers, _model_key(study))
    meta["layers"] = layer_table(layers)
    meta["n_neurons"] = sum(int(i.channels or 0) for i in layers)
    meta["n_parameters"] = sum(p.numel() for p in module.parameters())
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if _saves_state(study):
        torch.save(module.state_dict(), tmp / "model.pt")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return meta


def _saves_state(study: Study) -> bool:
    """Whether the model's weights live in the cache: trained, or randomly initialised."""
    return study.is_builtin_model or study.weights == "none"


def _model_key(study: Study) -> str:
    return "builtin" if study.is_builtin_model else (study.torchvision_name or "")


def load_model(study: Study) -> tuple[ModelBundle, list[LayerInfo], dict[str, Any]]:
    """The prepared model in eval mode and its resolved layers (from the ``model`` asset)."""
    meta_path = model_dir(study) / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"no prepared model for this study at {meta_path.parent}; materialize `model` first"
        )
    meta = json.loads(meta_path.read_text())
    if study.is_builtin_model:
        module: torch.nn.Module = BuiltinCNN(int(meta["n_classes"]))
        state = torch.load(model_dir(study) / "model.pt", map_location="cpu", weights_only=True)
        module.load_state_dict(state)
    else:
        module = torchvision_model(study.torchvision_name or "", study.weights)
        if _saves_state(study):
            state = torch.load(model_dir(study) / "model.pt", map_location="cpu", weights_only=True)
            module.load_state_dict(state)
    bundle = _bundle_for(study, module)
    infos = probe_layers(bundle.module, bundle.input_size)
    layers = resolve_layers(infos, [row["layer"] for row in meta["layers"]], _model_key(study))
    return bundle, layers, meta


def neurons_frame(layers: list[LayerInfo]) -> pl.DataFrame:
    """``neurons(neuron_id, layer, layer_index, channel, map_height, map_width)``."""
    rows: dict[str, list] = {
        k: [] for k in ("neuron_id", "layer", "layer_index", "channel", "map_height", "map_width")
    }
    nid = 0
    for li, info in enumerate(layers):
        for c in range(int(info.channels or 0)):
            rows["neuron_id"].append(nid)
            rows["layer"].append(info.name)
            rows["layer_index"].append(li)
            rows["channel"].append(c)
            rows["map_height"].append(info.map_size[0])
            rows["map_width"].append(info.map_size[1])
            nid += 1
    return pl.DataFrame(
        rows,
        schema={
            "neuron_id": pl.Int64,
            "layer": pl.Utf8,
            "layer_index": pl.Int32,
            "channel": pl.Int32,
            "map_height": pl.Int32,
            "map_width": pl.Int32,
        },
    )


# ---- activations ----------------------------------------------------------------------------
def shard_dir(study: Study, shard: int) -> Path:
    return study.files_dir / "activations" / shard_key(shard)


class ShardBatches(torch.utils.data.Dataset):
    """One shard as a dataset of batches (uint8 pixels), for a DataLoader with workers.

    Each item is (image_ids, pixels (b, H, W, 3) uint8, labels, failed_ids); images that fail to
    decode are dropped from the batch and reported in ``failed_ids``.
    """

    def __init__(
        self, source: ImageSource, image_ids: np.ndarray, labels: np.ndarray, batch_size: int
    ) -> None:
        self.source = source
        self.image_ids = image_ids
        self.labels = labels
        self.batch_size = batch_size
        # Without DataLoader workers, decode image folders with a few threads (PIL releases
        # the GIL while decoding); workers already run in parallel.
        self.threads = 4 if isinstance(source, ImageFolderSource) else 1

    def __len__(self) -> int:
        return -(-len(self.image_ids) // self.batch_size)

    def __getitem__(self, index: int):
        lo = index * self.batch_size
        ids = self.image_ids[lo : lo + self.batch_size]
        pixels, ok = self.source.load_many(ids.tolist(), workers=self.threads)
        return (
            torch.from_numpy(ids[ok].copy()),
            torch.from_numpy(pixels),
            torch.from_numpy(self.labels[lo : lo + self.batch_size][ok].astype(np.int64)),
            torch.from_numpy(ids[~ok].copy()),
        )


def _batches(
    dataset: ShardBatches, workers: int, pin_memory: bool, failures: list[tuple[int, str]]
) -> Iterator[Batch]:
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin_memory
    )
    for ids, pixels, labels, failed in loader:
        failures.extend((int(i), "could not be decoded") for i in failed)
        if len(ids):
            yield Batch(image_ids=ids, images=pixels, labels=labels)


def run_shard(
    study: Study, shard: int, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """The activation pass over one shard; writes its Parquet files and returns a summary."""
    say = progress or log.info
    images, class_names = load_manifest(study)
    if not 0 <= shard < study.shards:
        raise ValueError(f"shard {shard} out of range: the study has shards 0..{study.shards - 1}")
    part = images.filter(pl.col("shard") == shard).sort("image_id")
    bundle, layers, meta = load_model(study)
    device = resolve_device(study.device)
    bundle.module.to(device)
    source = source_for_manifest(study, images, class_names)
    failures: list[tuple[int, str]] = []
    last = [0.0]

    def report(done: int, seconds: float) -> None:
        progress_of.advance(shard_key(shard), done, len(part), "images")
        if seconds - last[0] >= 5.0 or done == len(part):
            last[0] = seconds
            say(
                f"{shard_key(shard)}: {done}/{len(part)} images, "
                f"{done / max(seconds, 1e-9):.0f} images/s"
            )

    result: PassResult = activation_pass(
        bundle.module,
        layers,
        _batches(
            ShardBatches(
                source, part["image_id"].to_numpy(), part["label"].to_numpy(), study.batch_size
            ),
            workers=study.loader_workers,
            pin_memory=device.type == "cuda",
            failures=failures,
        ),
        preprocess=bundle.normalize,
        precision=study.precision,
        channels_last=study.channels_last,
        k=study.top_k,
        n_classes=len(class_names),
        mass_fraction=study.mass_fraction,
        device=device,
        progress=report,
    )
    out = shard_dir(study, shard)
    write_parquet_atomic(pl.DataFrame(result.top_k), out / "top_k.parquet")
    write_parquet_atomic(pl.DataFrame(result.class_stats), out / "class_stats.parquet")
    paths = dict(zip(images["image_id"].to_list(), images["source"].to_list()))
    summary = {
        "shard": shard,
        "n_images": len(part),
        "n_processed": result.n_images,
        "n_failed": len(failures),
        "failed": [{"image_id": i, "source": paths[i], "reason": r} for i, r in failures[:1000]],
        "seconds": result.seconds,
        "images_per_second": result.n_images / max(result.seconds, 1e-9),
        "n_neurons": int(meta["n_neurons"]),
        "top_k": study.top_k,
        "model_fingerprint": study.model_fingerprint(),
        "shard_size": study.shard_size,
        "shard_fingerprint": _expected_fingerprint(
            images, class_names, shard, shard_model_identity(study)
        ),
        "device": str(device),
    }
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / "summary.json")
    return summary


# ---- top images -----------------------------------------------------------------------------
def _expected_fingerprint(
    images: pl.DataFrame, class_names: list[str], shard: int, identity: str
) -> str:
    """The fingerprint a shard's summary must hold to be up to date: only this shard's images
    (and the model/settings) count, so images added in new shards leave the others valid."""
    part = images.filter(pl.col("shard") == shard).sort("image_id")
    return shard_fingerprint(
        part["image_id"].to_list(),
        part["source"].to_list(),
        part["label"].to_list(),
        class_names,
        identity,
    )


def shard_states(study: Study) -> tuple[dict[int, dict[str, Any]], list[int], list[int]]:
    """(summaries of the up-to-date shards, missing shards, stale shards) of the manifest.

    A shard is missing when its summary or Parquet files are absent, stale when its stored
    fingerprint differs from what its current images, model and settings give.
    """
    images, class_names = load_manifest(study)
    identity = shard_model_identity(study)
    fresh: dict[int, dict[str, Any]] = {}
    missing: list[int] = []
    stale: list[int] = []
    for s in range(study.shards):
        folder = shard_dir(study, s)
        files = ("summary.json", "top_k.parquet", "class_stats.parquet")
        if not all((folder / name).is_file() for name in files):
            missing.append(s)
            continue
        try:
            summary = json.loads((folder / "summary.json").read_text())
        except (OSError, ValueError):
            stale.append(s)
            continue
        if summary.get("shard_fingerprint") == _expected_fingerprint(
            images, class_names, s, identity
        ):
            fresh[s] = summary
        else:
            stale.append(s)
    return fresh, missing, stale


def shard_summaries(study: Study) -> list[dict[str, Any]]:
    """Summaries of every shard of the current manifest; raises if any is missing or stale."""
    fresh, missing, stale = shard_states(study)
    if missing or stale:
        names = ", ".join(shard_key(s) for s in missing + stale)
        raise RuntimeError(
            f"activations are not up to date for partitions {names} (missing: {len(missing)}, "
            f"computed for other images/model/top_k: {len(stale)}); materialize those "
            "`activations` partitions first"
        )
    return [fresh[s] for s in sorted(fresh)]


def merge_top_images(study: Study, store: CartoStore) -> dict[str, Any]:
    """Global top-k per neuron from the shards, and the ``neurons`` table, in one transaction.

    Also (re)creates the views ``activation_shard_top_k`` and ``activation_class_stats`` over
    the per-shard Parquet files.
    """
    summaries = shard_summaries(study)
    _, layers, meta = load_model(study)
    topk_files = [shard_dir(study, s["shard"]) / "top_k.parquet" for s in summaries]
    stats_files = [shard_dir(study, s["shard"]) / "class_stats.parquet" for s in summaries]
    topk_src = f"read_parquet({sql_path_list(topk_files)})"
    stats_src = f"read_parquet({sql_path_list(stats_files)})"
    # The shard files carry their own shard-local `rank`; re-rank globally under another name.
    top_images_sql = f"""
        SELECT neuron_id, global_rank::INTEGER AS rank, image_id, activation, y, x
        FROM (
            SELECT neuron_id::BIGINT AS neuron_id, image_id::BIGINT AS image_id,
                   activation::FLOAT AS activation, y::INTEGER AS y, x::INTEGER AS x,
                   row_number() OVER (PARTITION BY neuron_id ORDER BY activation DESC, image_id)
                       AS global_rank
            FROM {topk_src}
        )
        WHERE global_rank <= {int(study.top_k)}
        ORDER BY neuron_id, rank
    """
    counts = store.replace_tables(
        {"neurons": neurons_frame(layers), "top_images": top_images_sql},
        views={
            "activation_shard_top_k": f"SELECT * FROM {topk_src}",
            "activation_class_stats": f"SELECT * FROM {stats_src}",
        },
    )
    return {
        "counts": counts,
        "n_images_processed": sum(s["n_processed"] for s in summaries),
        "n_failed": sum(s["n_failed"] for s in summaries),
        "failed": [f for s in summaries for f in s["failed"]][:100],
        "layers": meta["layers"],
        "activation_seconds": sum(s["seconds"] for s in summaries),
    }


def write_images_tables(study: Study, manifest: Manifest, store: CartoStore) -> dict[str, int]:
    """``images`` (and ``image_concepts`` where the source has ground truth), atomically."""
    tables: dict[str, pl.DataFrame | str] = {"images": manifest.images}
    if manifest.concepts is not None:
        tables["image_concepts"] = manifest.concepts
    # A source without ground truth drops the table an earlier study may have left.
    drop = ["image_concepts"] if manifest.concepts is None else []
    return store.replace_tables(tables, drop=drop)


def stale_shard_dirs(study: Study) -> list[Path]:
    """Shard folders beyond the study's shard count (left by an earlier, larger study)."""
    root = study.files_dir / "activations"
    if not root.is_dir():
        return []
    keep = {shard_key(s) for s in range(study.shards)}
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name not in keep)
