"""Everything about a study that can be known before the forward pass, checked at once.

:func:`load_study` validates the file itself (fields, types, ranges). This goes further and
touches what the fields point at, without running the model over the data: that a torchvision
model of that name exists, that the weights are a known weights name or a checkpoint holding
a state dict that fits the model, that every listed layer is a module of the model, that the
image folder holds readable images, that planted shortcuts name the shapes world's classes,
concepts and values, that ``top_k`` and ``shards`` fit the number of
images, and that the study's own annotations table can be used (UTF-8, rows, a ``path`` column
naming each image once and only images of the study, no concept column with one value).
Every problem is one line naming the field and the fix; tracebacks go to the log.

This module never imports dagster (``carto check`` must stay light).
"""

from __future__ import annotations

import difflib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from carto_assets.study import Study

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """One user error: the study field and what to do about it."""

    field: str
    message: str

    def line(self) -> str:
        return f"study field '{self.field}': {self.message}"


def _checkpoint_state(path: Path) -> tuple[dict | None, str | None]:
    """The state dict in a checkpoint, or a one-line reason it is not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # torch's own message recommends weights_only=False, which would run arbitrary code
        # from the file: never repeat it. Only the exception type goes to the log.
        log.info("torch.load(%s, weights_only=True) raised %s", path, type(exc).__name__)
        return None, (
            f"{path} is not a checkpoint holding a state dict (it cannot be read as tensors "
            "only); save one with torch.save(model.state_dict(), path)"
        )
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    elif isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None, (
            f"{path} holds a {type(state).__name__}, not a state dict of tensors; "
            "save one with torch.save(model.state_dict(), path)"
        )
    return state, None


def _model(study: Study, problems: list[Problem]) -> torch.nn.Module | None:
    """The study's model, built without downloading weights (None after a problem)."""
    from carto_assets.core.network.zoo import BuiltinCNN, torchvision_model

    if study.is_builtin_model:
        return BuiltinCNN(num_classes=10)
    import torchvision

    name = study.torchvision_name or ""
    available = sorted(torchvision.models.list_models())
    if name not in available:
        close = difflib.get_close_matches(name, available, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        problems.append(
            Problem(
                "model",
                f"unknown torchvision model {name!r}; {hint}torchvision {torchvision.__version__} "
                f"has {len(available)} models (torchvision.models.list_models())",
            )
        )
        return None
    weights = study.weights
    if weights not in ("none", "DEFAULT") and Path(weights).is_file():
        _, reason = _checkpoint_state(Path(weights))
        if reason is not None:
            problems.append(Problem("weights", reason))
            return None
        try:
            model = torchvision_model(name, weights)
        except (ValueError, RuntimeError) as exc:
            log.info("checkpoint does not fit the model", exc_info=True)
            first = str(exc).splitlines()[0]
            problems.append(
                Problem(
                    "weights",
                    f"{first}; use a checkpoint saved from torchvision's {name} "
                    "(torch.save(model.state_dict(), path))",
                )
            )
            return None
    else:
        if weights != "none":
            members = list(torchvision.models.get_model_weights(name).__members__)
            if weights not in members:
                problems.append(
                    Problem(
                        "weights",
                        f"{weights!r} is not a weights name of {name} nor an existing file; "
                        f"valid: none, {', '.join(members)} or a checkpoint path",
                    )
                )
        model = torchvision_model(name, "none")
    return model


def _image_source(study: Study, problems: list[Problem]):
    """The study's image source (an image folder scanned once), or None after a problem."""
    from carto_assets.sources.datasets import open_source

    try:
        return open_source(study)
    except (ValueError, OSError) as exc:
        log.info("image folder scan failed", exc_info=True)
        problems.append(
            Problem(
                "dataset.path",
                f"{exc}; put images in {study.dataset.path}/<class name>/<image file>",
            )
        )
        return None


def _image_count(study: Study, problems: list[Problem], source=None) -> int | None:
    ds = study.dataset
    if ds.kind != "imagefolder":
        return ds.image_count
    return None if source is None else len(source)


def _annotations(study: Study, source) -> list[Problem]:
    """The study's own annotations table, read and checked whole against its images
    (:mod:`carto_assets.sources.annotations`): one problem, the first found."""
    if study.annotations is None or source is None:
        return []
    from carto_assets.sources.annotations import (
        CLASS_CONCEPT,
        AnnotationError,
        load_user_annotations,
    )

    records = source.records()
    rows = source.concept_rows() if study.dataset.kind != "imagefolder" else None
    world = {concept for _, concept, _ in rows or ()}
    try:
        load_user_annotations(
            study.annotations, [r.source for r in records], reserved={CLASS_CONCEPT, *world}
        )
    except AnnotationError as exc:
        return [Problem("annotations", str(exc))]
    return []


def _layer_infos(study: Study, model: torch.nn.Module) -> list | None:
    """Every module of the study's model with its output shape (one forward pass on a zero
    image), or None when the model does not run at the study's input size (the activation pass
    says so)."""
    from carto_assets.core.network.layers import probe_layers
    from carto_assets.sources.datasets import study_image_size

    try:
        return probe_layers(model, study_image_size(study))
    except ValueError:
        log.info("probing the model's layers failed", exc_info=True)
        return None


def _feature_layers(study: Study, model: torch.nn.Module | None) -> list[Problem]:
    """``features.layers`` must be among the mapped layers, ``auto`` included, and ``features.k``
    at most each one's feature count (``expansion x channels``), which the dictionary's
    training needs."""
    if study.features is None or model is None:
        return []
    from carto_assets.core.network.layers import default_layers

    infos = _layer_infos(study, model)
    if study.layers != "auto":
        mapped = list(study.layers)
    elif infos is not None:
        kind = "builtin" if study.is_builtin_model else study.torchvision_name
        mapped = default_layers(kind, infos)
    else:
        return []
    unknown = [n for n in study.features.layers if n not in mapped]
    if unknown:
        which = "the auto layer set" if study.layers == "auto" else "the study's layers"
        return [
            Problem(
                "features.layers",
                f"{', '.join(map(repr, unknown))} not among the mapped layers ({which}: "
                f"{', '.join(mapped)}); list mapped layers, e.g. features: "
                f"{{layers: [{mapped[-1]}]}}",
            )
        ]
    channels = {info.name: int(info.channels or 0) for info in infos or []}
    features = study.features
    fewest = min(
        ((features.expansion * channels[n], n) for n in features.layers if channels.get(n)),
        default=None,
    )
    if fewest is None or features.k <= fewest[0]:
        return []
    n_features, layer = fewest
    return [
        Problem(
            "features.k",
            f"{features.k} exceeds the {n_features} features of layer {layer!r} (expansion "
            f"{features.expansion} x {channels[layer]} channels); set k to at most {n_features}",
        )
    ]


def _shortcuts(study: Study) -> list[Problem]:
    """Each planted shortcut's class, concept and value must be the shapes world's (the study
    file checks the rest: the share, the kind, one per class and concept)."""
    from carto_assets.sources.shapes import shortcut_problems

    return [
        Problem(f"dataset.shortcuts.{i}.{field}", message)
        for i, s in enumerate(study.dataset.shortcuts)
        for field, message in shortcut_problems(s.class_name, s.concept, s.value).items()
    ]


def _writable_folder(field: str, folder: Path) -> list[Problem]:
    """A folder the run can create and write files in, checked without leaving anything behind:
    a temporary file in its deepest existing ancestor."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    why = None
    if not existing.is_dir():
        why = f"{existing} is a file, not a folder"
    else:
        try:
            with tempfile.NamedTemporaryFile(dir=existing, prefix=".carto-check-"):
                pass
        except OSError as exc:
            why = f"no file can be created in {existing} ({exc.strerror or type(exc).__name__})"
    if why is None:
        return []
    return [Problem(field, f"cannot write {folder}: {why}; point {field} at a writable folder")]


def preflight(study: Study) -> list[Problem]:
    """Every problem knowable without the forward pass (empty when the study can run)."""
    problems: list[Problem] = []
    problems += _writable_folder("database", study.database_path.parent)
    if study.data_dir is not None:
        problems += _writable_folder("data_dir", study.files_dir)
    if study.views_dir is not None:
        problems += _writable_folder("views_dir", study.views_path)
    model = _model(study, problems)
    modules = None if model is None else [n for n, _ in model.named_modules() if n]
    if modules is not None and study.layers != "auto":
        known = set(modules)
        for layer in study.layers:
            if layer not in known:
                close = difflib.get_close_matches(layer, modules, n=5, cutoff=0.6)
                shown = close or modules[:8]
                problems.append(
                    Problem(
                        "layers",
                        f"{study.model} has no layer {layer!r}; "
                        f"{'did you mean' if close else 'valid names include'} "
                        f"{', '.join(shown)} (`carto layers {study.model}` lists all "
                        f"{len(modules)} with channel counts)",
                    )
                )
    if not any(p.field == "layers" for p in problems):
        problems += _feature_layers(study, model)
    planted = _shortcuts(study)
    problems += planted
    source = None
    if study.dataset.kind == "imagefolder" or (study.annotations is not None and not planted):
        source = _image_source(study, problems)
    n_images = _image_count(study, problems, source)
    problems += _annotations(study, source)
    if n_images is not None:
        if study.top_k > n_images:
            problems.append(
                Problem(
                    "top_k",
                    f"{study.top_k} exceeds the {n_images} images; set top_k to at most {n_images}",
                )
            )
        if study.shards > n_images:
            problems.append(
                Problem(
                    "shards",
                    f"{study.shards} shards for {n_images} images; set shards to at most "
                    f"{n_images}",
                )
            )
    if study.device.startswith("cuda") and not torch.cuda.is_available():
        problems.append(
            Problem("device", f"{study.device!r} but CUDA is not available here; use auto or cpu")
        )
    return problems
