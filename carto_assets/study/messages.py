"""pydantic's validation errors in one wording for every config file (a study, a comparison):
the field's dotted path, what it must be, the value it got
(``study field 'dataset.size' must be an integer >= 1, got 0``,
``comparison field 'threshold' must be a number in (0.0, 1.0], got 0``).

Numbers and choices are worded by :mod:`carto_assets.core.validate` from the field's constraints
(the shared types of :mod:`carto_assets.study.types`), other fields by their
:class:`~carto_assets.study.types.Allowed` text, rules across fields by the
:class:`~carto_assets.study.types.InvalidField` their validator raised.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from carto_assets.core.validate import check_choice, check_float, check_int
from carto_assets.study.fields import LOADER_FIELDS, Study
from carto_assets.study.types import Allowed, InvalidField


class ConfigError(ValueError):
    """A config file (a study, a comparison) is invalid; the message names the field and
    what is allowed."""


class StudyError(ConfigError):
    """A study file is invalid; the message names the field and what is allowed."""


def unknown_field_message(
    path: str, model: type[BaseModel], noun: str, loader_fields: Collection[str] = LOADER_FIELDS
) -> str:
    """``unknown <noun> field '<path>'; allowed fields: ...`` (those of ``model``)."""
    allowed = sorted(
        info.alias or name for name, info in model.model_fields.items() if name not in loader_fields
    )
    return f"unknown {noun} field '{path}'; allowed fields: {', '.join(allowed)}"


def validation_message(exc: ValidationError, root: type[BaseModel], noun: str) -> str:
    """The first of ``exc``'s errors, validating ``root`` (the file's model), in one line."""
    errors = exc.errors()
    # Name an unknown field first: a misspelt key usually explains the other complaints.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    path, model, info = _field_at(root, first["loc"])
    if first["type"] == "extra_forbidden":
        return unknown_field_message(path, model, noun)
    return _message(root, noun, first, path, info)


def unknown_field(path: str, model: type[BaseModel] = Study) -> StudyError:
    return StudyError(unknown_field_message(path, model, "study"))


def study_error(exc: ValidationError) -> StudyError:
    """The first of ``exc``'s errors (validating a :class:`Study`) as a :class:`StudyError`."""
    return StudyError(validation_message(exc, Study, "study"))


def _section(info: FieldInfo) -> type[BaseModel] | None:
    """The block's model of a nested field (``FeaturesConfig | None`` included), or None."""
    for annotation in (info.annotation, *get_args(info.annotation)):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
    return None


def _field_at(
    root: type[BaseModel], loc: tuple[int | str, ...]
) -> tuple[str, type[BaseModel], FieldInfo | None]:
    """The dotted path of ``loc``, the model holding its last part, and that part's field."""
    model = root
    parts: list[str] = []
    info: FieldInfo | None = None
    items = False  # the last field is a list of blocks (dataset.shortcuts)
    for i, part in enumerate(loc):
        name = _field_name(model, part) if isinstance(part, str) else None
        if name is None:
            parts.append(str(part))  # an unknown key, or a position inside a list
            info = None
            if items and str(part).isdigit():
                continue  # a block of the list: its fields follow
            break
        parts.append(part)
        info = model.model_fields[name]
        section = _section(info)
        items = get_origin(info.annotation) in (list, tuple)
        if section is not None and i < len(loc) - 1:
            model = section
    return ".".join(parts), model, info


def _field_name(model: type[BaseModel], key: str) -> str | None:
    """The model's field that ``key`` names, by its name or its alias (``class``), or None."""
    if key in model.model_fields:
        return key
    return next((n for n, f in model.model_fields.items() if f.alias == key), None)


def _bound(info: FieldInfo, name: str) -> float | None:
    """The field's ``ge``, ``gt`` or ``le`` constraint (``Field(ge=1)``), or None."""
    return next((getattr(m, name) for m in info.metadata if hasattr(m, name)), None)


def _message(
    root: type[BaseModel], noun: str, error: ErrorDetails, path: str, info: FieldInfo | None
) -> str:
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, InvalidField):  # its field is relative to the model that raised it
        if cause.field:
            path, _, _ = _field_at(root, (*error["loc"], *cause.field.split(".")))
        return f"{noun} field '{path}' must be {cause.must_be}, got {cause.value!r}"
    if isinstance(cause, ValueError):  # a carto_assets.core.validate check: already worded
        return str(cause)
    name, value = f"{noun} field '{path}'", error["input"]
    if error["type"] == "missing":
        if len(error["loc"]) == 1:  # the file itself: its whole mapping says nothing more
            return f"{name} is required"
        return f"{name} is required (a block without it: {value!r})"
    if info is not None:
        allowed = next((m.text for m in info.metadata if isinstance(m, Allowed)), None)
        if allowed is not None:
            return f"{name} must be {allowed}, got {value!r}"
        section = _section(info)
        if section is not None:
            fields = ", ".join(list(section.model_fields)[:3])
            return f"{name} must be a mapping ({fields}, ...), got {value!r}"
        try:
            if error["type"] == "literal_error":
                check_choice(name, value, get_args(info.annotation))
            elif info.annotation in (int, int | None):
                check_int(name, value, minimum=_bound(info, "ge"), maximum=_bound(info, "le"))
            elif info.annotation is float:
                greater = _bound(info, "gt")
                low = _bound(info, "ge") if greater is None else greater
                check_float(
                    name, value, low=low, high=_bound(info, "le"), low_open=greater is not None
                )
        except (TypeError, ValueError) as exc:
            return str(exc)
    return f"{name}: {error['msg']}, got {value!r}"  # a rule no field describes; should not occur
