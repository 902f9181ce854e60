"""The one loader of config files, a study's and a comparison's: read the file, parse its YAML,
refuse the fields only the loader sets, validate it into its pydantic model, and turn any
problem into one line naming the file, the field, what it must be and the value it got
(:mod:`carto_assets.study.messages`).

Nothing here imports dagster or torch, so a file can be checked anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from carto_assets.study.fields import LOADER_FIELDS
from carto_assets.study.messages import ConfigError, unknown_field_message, validation_message

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class ConfigKind(Generic[M]):
    """One kind of config file: what messages call it, its model, the error it raises."""

    noun: str
    model: type[M]
    error: type[ConfigError]
    #: Where the file's path may come from, added to "file not found" (e.g. an option).
    source_hint: str = ""


def config_from_dict(kind: ConfigKind[M], raw: Any, base_dir: str | Path = ".") -> M:
    """Validate ``raw`` (as parsed from YAML) into ``kind``'s model; relative paths in it
    resolve against ``base_dir`` (the file's folder).

    Raises ``kind.error`` naming the first bad field, what it must be and the value it got.
    """
    if not isinstance(raw, dict):
        raise kind.error(
            f"a {kind.noun} must be a YAML mapping of fields, got {type(raw).__name__}"
        )
    for field in LOADER_FIELDS:
        if field in raw:
            raise kind.error(unknown_field_message(field, kind.model, kind.noun))
    try:
        return kind.model.model_validate({**raw, "base_dir": str(Path(base_dir).resolve())})
    except ValidationError as exc:
        raise kind.error(validation_message(exc, kind.model, kind.noun)) from None


def config_file(kind: ConfigKind, path: str | Path) -> Path:
    """``path`` resolved, once it is a file; else ``kind.error`` saying it is not found."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise kind.error(f"{kind.noun} file not found: {p}{kind.source_hint}")
    return p


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML syntax error in one line: at which line and column (1-based), what is wrong."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return ": " + " ".join(str(exc).split())
    mark = exc.problem_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    what = exc.problem or "a syntax error"
    if exc.context and exc.context_mark is not None:
        start = exc.context_mark
        what += f" ({exc.context} at line {start.line + 1}, column {start.column + 1})"
    return f" at {where}: {what}"


def config_from_text(kind: ConfigKind[M], path: Path, text: bytes | str) -> M:
    """The config in the file at ``path`` whose content is ``text``; every error starts with
    the file's path."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise kind.error(f"{kind.noun} file {path} is not valid YAML{yaml_problem(exc)}") from None
    try:
        return config_from_dict(kind, raw, base_dir=path.parent)
    except ConfigError as exc:
        raise kind.error(f"{path}: {exc}") from None


def load_config(kind: ConfigKind[M], path: str | Path) -> M:
    """Load and validate the ``kind`` file at ``path``."""
    p = config_file(kind, path)
    return config_from_text(kind, p, p.read_bytes())
