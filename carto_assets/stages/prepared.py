"""A study prepared for one step: what every stage needs, loaded once and handed down.

A step (one Dagster asset, ``carto explain``, one study of ``carto compare``) validates its
study once and opens its store once (:meth:`PreparedStudy.open`); what the stages read from the
study's files is loaded the first time a stage asks for it and kept for the rest of the step:

- ``manifest``: the image manifest (``images.parquet``, ``classes.json``) and its image source;
- ``model_info``: the prepared model's record (``model/<fingerprint>/meta.json``);
- ``model``: the network built from it (bundle and resolved layers);
- ``dictionary_fingerprint`` and ``feature_layers``: the trained dictionaries, found through
  the record the ``dictionary`` asset leaves
  (:func:`~carto_assets.stages.stored_dictionaries.current_fingerprint`);
- ``units``: the graph's units (each unit's neuron and cluster, from the store).

A step that needs only the study and its store builds nothing else. A comparison's step
prepares its studies the same way (:class:`PreparedComparison`). A prepared study is not
shared between steps: the step before may have written the files it reads (the ``images``
asset writes the manifest the ``model`` asset reads).

It reads through the stages' readers of the stored files (:mod:`~carto_assets.stages.images`,
:mod:`~carto_assets.stages.stored_model`, :mod:`~carto_assets.stages.stored_dictionaries`,
:mod:`~carto_assets.stages.units`), which never import it; the stages that do the assets' work
take a prepared study. No dagster imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from carto_assets.stages.images import load_manifest, manifest_identity, source_for_manifest
from carto_assets.stages.stored_dictionaries import current_fingerprint, feature_layers
from carto_assets.stages.stored_model import ModelInfo, load_model, model_info
from carto_assets.stages.units import Units, read_units
from carto_assets.storage.store import CartoStore, describe_writer
from carto_assets.study import Study, load_study

if TYPE_CHECKING:
    from carto_assets.core.network.layers import LayerInfo
    from carto_assets.core.network.zoo import ModelBundle
    from carto_assets.core.sae.layer import FeatureLayer
    from carto_assets.sources.datasets import ImageSource
    from carto_assets.study.comparison import Comparison


def open_store(study: Study, owner: str | None = None) -> CartoStore:
    """The study's database: the one way to open it.

    ``owner`` names a writer in the database's lock (e.g. ``"Dagster run <id>"``), so a blocked
    writer can say who holds it; readers need none.
    """
    return CartoStore(
        study.database_path,
        owner=describe_writer(owner) if owner else None,
        memory_limit=study.database_memory_limit,
    )


def open_comparison_store(comparison: Comparison, owner: str | None = None) -> CartoStore:
    """A comparison's database (:func:`open_store`'s twin for a comparison)."""
    return CartoStore(comparison.database_path, owner=describe_writer(owner) if owner else None)


@dataclass(frozen=True)
class StoredManifest:
    """The ``images`` asset's files, read: the manifest frame and the class names."""

    images: pl.DataFrame  # image_id, shard, source, label, label_name
    class_names: list[str]
    #: the manifest files' identity when they were read (:func:`manifest_identity`): what a
    #: record derived from this manifest must name (None: given, not read)
    identity: tuple | None = None


@dataclass(frozen=True, eq=False)
class PreparedStudy:
    """One validated study and its store, with what the stages read from its files loaded at
    most once (each on first use)."""

    study: Study
    store: CartoStore

    @classmethod
    def open(cls, study: Study, owner: str | None = None) -> PreparedStudy:
        """``study`` with its store (:func:`open_store`)."""
        return cls(study, open_store(study, owner))

    @classmethod
    def load(cls, path: str | Path | None = None, owner: str | None = None) -> PreparedStudy:
        """The study at ``path`` (else ``$CARTO_STUDY``, else the demo study), read and
        validated once; raises :class:`~carto_assets.study.StudyError`."""
        return cls.open(load_study(path), owner)

    @classmethod
    def given(cls, study: Study, store: CartoStore, **loaded: object) -> PreparedStudy:
        """A prepared study whose members ``loaded`` are given instead of read from the
        study's files (any of :data:`LOADED`: a test's tiny network, a notebook's manifest)."""
        unknown = sorted(set(loaded) - set(LOADED))
        if unknown:
            raise TypeError(f"PreparedStudy.given: no member {unknown}; valid: {list(LOADED)}")
        prepared = cls(study, store)
        # The lazy members are cached in the instance's __dict__: given ones are found there.
        prepared.__dict__.update(loaded)
        return prepared

    # ---- the manifest -----------------------------------------------------------------------
    @cached_property
    def manifest(self) -> StoredManifest:
        """The stored manifest; raises ``FileNotFoundError`` naming ``images`` without one."""
        # The identity read on both sides of the files: a manifest replaced while it was read
        # (another run's ``images``) is read again, so the identity is the frame's.
        try:
            before = manifest_identity(self.study)
        except FileNotFoundError:
            before = None  # load_manifest names the `images` asset
        for _ in range(3):
            images, class_names = load_manifest(self.study)
            after = manifest_identity(self.study)
            if after == before:
                return StoredManifest(images, class_names, after)
            before = after
        raise RuntimeError(
            f"the image manifest of study {self.study.name!r} changed while it was read, three "
            "times (another run is writing it: `images`); run again once that run has finished"
        )

    @property
    def images(self) -> pl.DataFrame:
        return self.manifest.images

    @property
    def class_names(self) -> list[str]:
        return self.manifest.class_names

    @cached_property
    def source(self) -> ImageSource:
        """The image source of the stored manifest (image folders are not rescanned)."""
        return source_for_manifest(self.study, self.images, self.class_names)

    # ---- the model --------------------------------------------------------------------------
    @cached_property
    def model_info(self) -> ModelInfo:
        """The prepared model's record; raises ``FileNotFoundError`` naming ``model``."""
        return model_info(self.study)

    @cached_property
    def model(self) -> tuple[ModelBundle, list[LayerInfo]]:
        """The prepared network in eval mode and its resolved layers, built once."""
        bundle, layers, _ = load_model(self.study, self.model_info)
        return bundle, layers

    @property
    def bundle(self) -> ModelBundle:
        return self.model[0]

    @property
    def layers(self) -> list[LayerInfo]:
        return self.model[1]

    # ---- the dictionaries -------------------------------------------------------------------
    @cached_property
    def dictionary_fingerprint(self) -> str | None:
        """The fingerprint the study's dictionaries must have now; None without features."""
        if self.study.features is None:
            return None
        return current_fingerprint(self.study, self.images)

    @cached_property
    def feature_layers(self) -> list[FeatureLayer]:
        """The study's dictionaries as pseudo-layers (``[]`` without features); raises
        ``FileNotFoundError`` naming ``dictionary`` when they are not stored or stale."""
        if self.study.features is None:
            return []
        return feature_layers(self.study, self.dictionary_fingerprint or "", self.model_info)

    # ---- the units --------------------------------------------------------------------------
    @cached_property
    def units(self) -> Units:
        """The graph's units: channel layers in forward order, then feature layers."""
        return read_units(self.store, [i.name for i in self.layers], self.feature_layers)


@dataclass(frozen=True, eq=False)
class PreparedComparison:
    """One validated comparison and its store, with each compared study prepared at most once
    (on first use): a comparison's step reads every study file once."""

    comparison: Comparison
    store: CartoStore

    @classmethod
    def load(cls, path: str | Path, owner: str | None = None) -> PreparedComparison:
        """The comparison at ``path``, read and validated; raises ``ComparisonError``."""
        from carto_assets.study.comparison import load_comparison

        comparison = load_comparison(path)
        return cls(comparison, open_comparison_store(comparison, owner))

    @cached_property
    def studies(self) -> list[PreparedStudy]:
        """The compared studies in the comparison's order, each with its store; raises
        ``ComparisonError`` naming a bad one."""
        return [PreparedStudy.open(study) for study in self.comparison.load_studies()]


#: The members a prepared study loads on first use (what :meth:`PreparedStudy.given` takes).
LOADED = (
    "manifest",
    "source",
    "model_info",
    "model",
    "dictionary_fingerprint",
    "feature_layers",
    "units",
)
