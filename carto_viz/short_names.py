"""What the views show where space is short: a layer's distinguishing end, a cluster label's
leading term (the full names are on hover)."""

from __future__ import annotations

import re

from carto_assets.schema import FEATURE_SUFFIX


def layer_short_names(layers: list[str]) -> dict[str, str]:
    """Each layer's shortest dotted suffix that no other layer ends with: what tells it apart
    (``encoder.layers.encoder_layer_11`` -> ``encoder_layer_11``; ``inception4a.branch2.1`` ->
    ``inception4a.branch2.1`` when other blocks have a ``branch2.1``). A feature pseudo-layer
    ``<layer>:features`` is its layer's short name with ``:features``. The views show these
    where space is short and the full name on hover."""
    suffix = FEATURE_SUFFIX
    bases = sorted({name.removesuffix(suffix) for name in layers})
    parts = {name: name.split(".") for name in bases}
    short: dict[str, str] = {}
    for name in bases:
        for k in range(1, len(parts[name]) + 1):
            tail = parts[name][-k:]
            if not any(o != name and parts[o][-k:] == tail for o in bases):
                short[name] = ".".join(tail)
                break
        else:
            short[name] = name
    return {
        name: short[name.removesuffix(suffix)] + (suffix if name.endswith(suffix) else "")
        for name in layers
    }


def short_label(label: str | None) -> str:
    """The leading term of a cluster label: ``"colour=red (0.97), size=large" -> "colour=red"``."""
    if not label:
        return ""
    first = label.split(", ")[0]
    return re.sub(r"\s*\([0-9.]+\)$", "", first)
