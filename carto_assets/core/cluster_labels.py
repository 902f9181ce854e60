"""A cluster label's terms, as the clustering stage writes them
(:func:`carto_assets.stages.clustering.label_clusters`): ``concept=value (fraction)``, most
distinctive first, joined by ``", "``.

Pure text; read by the comparison (which concepts changed labels) and its page.
"""

from __future__ import annotations

import re

#: A label's terms: ``colour=red (0.97), size=large (0.5)`` -> ``colour=red``, ``size=large``.
_TERM = re.compile(r"(.*?) \(\d+(?:\.\d+)?\)(?:, |$)")


def label_terms(label: str | None) -> list[str]:
    """A cluster label's terms without their fractions (the whole label if it has none)."""
    if not label:
        return []
    terms, pos = [], 0
    while pos < len(label) and (match := _TERM.match(label, pos)):
        terms.append(match.group(1))
        pos = match.end()
    return terms if terms and pos == len(label) else [label]


def leading_term(label: str | None) -> str:
    """The first term of a cluster label without its fraction ('' for no label)."""
    terms = label_terms(label)
    return terms[0] if terms else ""
