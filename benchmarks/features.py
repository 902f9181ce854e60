"""Dictionary features vs channels on a study: single-unit gain, reconstruction, cost.

For each layer of ``--layers`` (default: every layer of the study), one run:

1. the activation pass over every image (channels' top-k, timed: the reference cost);
2. the sampling pass (:func:`sample_activations`) over ``--sample-images`` images with a
   reservoir of ``--samples`` rows per layer, at a quarter and at all of those images: the
   peak resident memory above the level before the step (``Δpeak``; VmHWM after a reset of
   ``/proc/self/clear_refs``) stays flat because the reservoir is fixed;
3. one top-k SAE per layer (:func:`train_dictionaries`), timed, with FVU, L0 and dead
   features on its training sample and FVU on a held-out sample of other images;
4. the features' top-k images over every image (:func:`feature_pass`, timed);
5. single-unit gain of channels and of features with the pipeline's own code
   (``stages/clustering.py``: ``group_images``, ``layer_shares``, ``group_gains``, units with
   constant top-k activations left out as ``load_neuron_sets`` does), against the study's
   ground-truth concepts.

``layer_share`` for features is computed among the features' own top images (the union over
the layer's features), as it is among the channels' own top images for channels: the gain
asks how far a unit's top images are from what its own kind of unit in that layer sees. The
``gain@ch`` column scores features against the channels' layer shares instead, as a check that
the choice does not make the comparison.

    python benchmarks/features.py                         # the demo study (run `make demo`)
    python benchmarks/features.py --study /tmp/before_demo/study.yaml --layers block3 block4

Without a prepared model (no ``make demo`` yet) it trains the built-in CNN on a small shapes
study in a temporary folder first.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carto_assets.core import clustering as C
from carto_assets.core.activations import Batch, activation_pass
from carto_assets.core.dictionary import encode
from carto_assets.pipeline import (
    build_manifest,
    load_manifest,
    load_model,
    prepare_model,
    save_manifest,
    source_for_manifest,
)
from carto_assets.stages.clustering import group_gains, group_images, layer_shares
from carto_assets.stages.features import (
    DictionarySettings,
    feature_pass,
    sample_activations,
    sample_image_ids,
    train_dictionaries,
)
from carto_assets.study import Study, load_study

DEFAULTS = DictionarySettings(layers=("-",))


# ---- study ------------------------------------------------------------------------------------
def open_study(path: str | None) -> Study:
    """The study at ``path`` (default: the built-in demo study) with a prepared model; without
    one, a small shapes study is prepared in a temporary folder."""
    study = load_study(path)
    try:
        load_model(study)
        load_manifest(study)
        return study
    except FileNotFoundError:
        folder = Path(tempfile.mkdtemp(prefix="carto-features-"))
        print(
            f"no prepared model for {study.database_path}; preparing a small shapes study in {folder}"
        )
        raw = {
            "name": "features-bench",
            "dataset": {"kind": "shapes", "size": 2000, "image_size": 64},
            "training": {"epochs": 4},
            "top_k": 50,
            "database": "carto.duckdb",
            "seed": 0,
        }
        (folder / "study.yaml").write_text(yaml.safe_dump(raw))
        small = load_study(folder / "study.yaml")
        save_manifest(small, build_manifest(small))
        prepare_model(small, progress=lambda m: print("  " + m))
        return small


# ---- memory -------------------------------------------------------------------------------------
def _status_mib(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_mib("VmHWM") is not None


def measured(fn):
    """``(result, seconds, Δpeak MiB)`` of ``fn()``."""
    resettable = _reset_peak()
    before = _status_mib("VmRSS") or 0.0
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = (
        _status_mib("VmHWM")
        if resettable
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    )
    return result, seconds, max(0.0, (peak or 0.0) - before)


# ---- gain ---------------------------------------------------------------------------------------
def unit_sets(top: dict[str, np.ndarray], unit_key: str, layer_of_unit: np.ndarray) -> C.NeuronSets:
    """Top-image sets as ``load_neuron_sets`` builds them: units whose top-k activations are
    all equal get an empty set."""
    frame = pl.DataFrame(
        {"unit": top[unit_key], "image_id": top["image_id"], "a": top["activation"]}
    )
    varied = frame.group_by("unit").agg(spread=pl.col("a").max() - pl.col("a").min())
    frame = frame.join(varied.filter(pl.col("spread") > 0), on="unit")
    return C.build_neuron_sets(
        frame["unit"].to_numpy(),
        frame["image_id"].to_numpy(),
        neurons_neuron_id=np.arange(len(layer_of_unit)),
        neurons_layer=layer_of_unit,
    )


def single_unit_gains(
    sets: C.NeuronSets, annotations: pl.DataFrame, shares: pl.DataFrame | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(gain per unit, alive mask): the pipeline's single-unit gain (``quality``)."""
    shares = layer_shares(sets, annotations) if shares is None else shares
    singles = np.arange(sets.n_neurons, dtype=np.int64)
    gains = group_gains(group_images(sets, singles, singles), annotations, shares)
    out = np.zeros(sets.n_neurons)
    out[gains["group_id"].to_numpy()] = gains["gain"].to_numpy()
    return out, np.diff(sets.indptr) > 0


def held_out_fvu(sae, rows: np.ndarray) -> float:
    z = encode(sae, rows).numpy()
    recon = z @ sae.W_dec.T + sae.b_dec
    return float(((rows - recon) ** 2).sum() / ((rows - rows.mean(axis=0)) ** 2).sum())


# ---- main ---------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default=None, help="study YAML (default: the built-in demo study)")
    ap.add_argument("--layers", nargs="*", default=None, help="layers (default: all the study's)")
    ap.add_argument("--expansion", type=int, default=DEFAULTS.expansion)
    ap.add_argument("--k", type=int, default=DEFAULTS.k)
    ap.add_argument("--samples", type=int, default=DEFAULTS.samples)
    ap.add_argument("--sample-images", type=int, default=DEFAULTS.sample_images)
    ap.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    ap.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    ap.add_argument("--learning-rate", type=float, default=DEFAULTS.learning_rate)
    ap.add_argument("--seed", type=int, default=DEFAULTS.seed)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    study = open_study(args.study)
    bundle, all_layers, _ = load_model(study)
    names = tuple(args.layers or [i.name for i in all_layers])
    settings = DictionarySettings(
        layers=names,
        expansion=args.expansion,
        k=args.k,
        samples=args.samples,
        sample_images=args.sample_images,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    layers = settings.check_layers(all_layers)
    images, class_names = load_manifest(study)
    source = source_for_manifest(study, images, class_names)
    concepts = source.concept_rows()
    if concepts is None:
        raise SystemExit("the study's dataset has no ground-truth concepts to score gains with")
    annotations = pl.DataFrame(
        {
            "image_id": np.array([r[0] for r in concepts], dtype=np.int64),
            "concept": [r[1] for r in concepts],
            "value": [r[2] for r in concepts],
        }
    )
    ids = images["image_id"].to_numpy()
    pixels, ok = source.load_many(ids.tolist(), workers=2)
    ids, labels = ids[ok], images["label"].to_numpy()[ok]
    bs = study.batch_size

    def batches(subset: np.ndarray | None = None):
        rows = np.arange(len(ids)) if subset is None else np.searchsorted(ids, subset)
        for lo in range(0, len(rows), bs):
            r = rows[lo : lo + bs]
            yield Batch(
                torch.from_numpy(ids[r]),
                torch.from_numpy(pixels[r]),
                torch.from_numpy(labels[r].astype(np.int64)),
            )

    model = bundle.module
    print(
        f"study {study.name}: {len(ids)} images of {study_size(study)} px, layers {list(names)}, "
        f"top_k {study.top_k}, torch threads {torch.get_num_threads()}"
    )
    print(
        f"settings: expansion {settings.expansion}, k {settings.k}, samples {settings.samples}, "
        f"sample_images {settings.sample_images}, epochs {settings.epochs}, "
        f"batch_size {settings.batch_size}, learning_rate {settings.learning_rate}, "
        f"seed {settings.seed}"
    )

    # 1. channels: the activation pass over every image.
    channels = activation_pass(
        model,
        layers,
        batches(),
        k=study.top_k,
        n_classes=len(class_names),
        mass_fraction=study.mass_fraction,
        preprocess=bundle.normalize,
    )

    # 2. sampling: a quarter of the images and all of them; memory should not follow.
    subset = sample_image_ids(ids, settings.sample_images, settings.seed)
    quarter = subset[: max(1, len(subset) // 4)]
    memory = {}
    for part in (quarter, subset):
        sample, seconds, delta = measured(
            lambda part=part: sample_activations(
                model,
                layers,
                batches(part),
                settings.samples,
                settings.seed,
                preprocess=bundle.normalize,
            )
        )
        memory[len(part)] = (seconds, delta)
    held_out_ids = np.setdiff1d(ids, subset)[:500]
    held_out = sample_activations(
        model, layers, batches(held_out_ids), 50_000, settings.seed + 1, preprocess=bundle.normalize
    ).samples

    # 3. SAEs.
    dictionaries = train_dictionaries(
        sample.samples,
        expansion=settings.expansion,
        k=settings.k,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
    )

    # 4. features' top-k over every image.
    features = feature_pass(
        model, dictionaries, batches(), k=study.top_k, preprocess=bundle.normalize
    )

    # 5. gains.
    widths = [int(i.channels or 0) for i in layers]
    channel_layer = np.repeat(np.arange(len(layers)), widths)
    feature_layer = np.repeat(np.arange(len(layers)), [d.n_features for d in dictionaries.values()])
    ch_sets = unit_sets(channels.top_k, "neuron_id", channel_layer)
    ft_sets = unit_sets(features.top_k, "feature_id", feature_layer)
    ch_shares = layer_shares(ch_sets, annotations)
    ch_gain, ch_alive = single_unit_gains(ch_sets, annotations, ch_shares)
    ft_gain, ft_alive = single_unit_gains(ft_sets, annotations)
    ft_gain_ch, _ = single_unit_gains(ft_sets, annotations, ch_shares)
    positive = (
        pl.DataFrame(features.top_k)
        .group_by("feature_id")
        .agg(positive=(pl.col("activation") > 0).sum())
    )
    full = np.zeros(len(feature_layer), dtype=np.int64)
    full[positive["feature_id"].to_numpy()] = positive["positive"].to_numpy()

    header = (
        f"{'layer':<8}{'units':>7}{'gain':>7}{'≥0.8':>7}  |{'feats':>6}{'gain':>7}{'≥0.8':>7}"
        f"{'gain@ch':>8}{'<k pos':>7}{'FVU':>7}{'FVU ho':>7}{'L0':>6}{'dead':>6}{'train s':>9}"
    )
    print()
    print("channels" + " " * 22 + "|features")
    print(header)
    print("-" * len(header))
    for li, info in enumerate(layers):
        d = dictionaries[info.name]
        ch = (channel_layer == li) & ch_alive
        ft = (feature_layer == li) & ft_alive
        print(
            f"{info.name:<8}{ch.sum():>7}{ch_gain[ch].mean():>7.3f}{(ch_gain[ch] >= 0.8).mean():>7.2f}"
            f"  |{ft.sum():>6}{ft_gain[ft].mean():>7.3f}{(ft_gain[ft] >= 0.8).mean():>7.2f}"
            f"{ft_gain_ch[ft].mean():>8.3f}{(full[feature_layer == li] < study.top_k).sum():>7}"
            f"{d.report.fvu:>7.3f}{held_out_fvu(d.sae, held_out[info.name]):>7.3f}"
            f"{d.report.l0:>6.1f}{d.report.dead:>6}{d.seconds:>9.1f}"
        )
    print()
    print(
        f"activation pass (channels, {channels.n_images} images): {channels.seconds:.1f} s; "
        f"feature pass (same images): {features.seconds:.1f} s; "
        f"SAE training (all layers): {sum(d.seconds for d in dictionaries.values()):.1f} s"
    )
    for n, (seconds, delta) in memory.items():
        print(
            f"sampling pass over {n} images: {seconds:.1f} s, Δpeak RSS {delta:.0f} MiB "
            f"(reservoirs {sample.sample_bytes / 2**20:.0f} MiB)"
        )
    seen = ", ".join(f"{k} {v}" for k, v in sample.positions_seen.items())
    print(f"positions offered per layer: {seen}")
    print(
        "units: alive units (constant top-k left out); gain/≥0.8: mean single-unit gain and the "
        "share of units with gain ≥ 0.8; gain@ch: features scored against the channels' layer "
        f"shares; <k pos: features with fewer than {study.top_k} images where they fire; "
        "FVU ho: on 500 held-out images"
    )


def study_size(study: Study) -> int:
    from carto_assets.sources.datasets import study_image_size

    return study_image_size(study)


if __name__ == "__main__":
    main()
