"""What each class relies on, as the page shows it (``class_audit``, ``class_audit_images``).

Per class, a "relies on" bar chart of its terms by relevance share (the class's own term and
the rest told apart, flagged terms marked, the evidence on hover); clicking a term rings its
units in the map (the units whose words name it, as the word search rings what it found) and
shows the class's images where zeroing those units mattered most (``page/audit.js``).

Optional: a study without the ``class_audit`` asset's tables exports the page it did before
(no audit key, no audit script, no audit section). Thumbnails of the shown images come from
``class_audit_images.thumb`` where the table has that column, else from
``explained_images.thumb`` for the images that were explained; an image with neither is
listed by id.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import polars as pl

from carto_assets.core.words.formula import And, Not, Or, Term, parse, text
from carto_viz.class_graphs import encode_ids
from carto_viz.connection import attached_store
from carto_viz.sprites import SpriteAtlas, pack_patches

#: the audit's tables (asset ``class_audit``); ``class_audit_images`` may be absent.
TABLES = ("class_audit", "class_audit_images")

#: the ``class_audit`` columns the page carries per term, in the order of each row's values
#: (the page's ``audit.columns``).
COLUMNS = (
    "term",
    "rank",
    "relevance_share",
    "own",
    "flagged",
    "flagged_by",
    "checked",
    "confirmed",
    "top_layer",
    "top_layer_share",
    "units",
    "lift",
    "class_rate",
    "other_rate",
    "ablation_units",
    "ablation_images",
    "ablation_drop",
    "ablation_other_drop",
    "ablation_random_drop",
    "ablation_confirms",
    "counterfactual_images",
    "accuracy",
    "counterfactual_accuracy",
    "logit",
    "counterfactual_logit",
    "counterfactual_confirms",
)

#: bars per class: the first terms by rank; the class's own term and flagged terms always.
SHOWN_TERMS = 12

QUERIES = {
    "class_audit": f"SELECT label, class_name, {', '.join(COLUMNS)} FROM class_audit",
    "class_audit_images": "SELECT label, term, rank, image_id, drop FROM class_audit_images",
}

#: the header's line, and what it means (shown on hover like the quality figures).
FLAGGED_FIGURE = "classes flagged"
FLAGGED_DEFINITION = (
    "classes with a term that is not their own carrying much of their relevance "
    "(share, lift over the other classes and co-occurrence over the thresholds of the study's "
    "audit block); the page's 'relies on' chart shows each class's evidence"
)


@dataclass(frozen=True)
class Audit:
    """The page's audit data (JSON-ready)."""

    #: ``str(label) -> [[value per COLUMNS], ...]`` in rank order (the shown terms)
    classes: dict[str, list[list]]
    #: ``str(label) -> {term: [[image_id, drop], ...]}`` in rank order
    images: dict[str, dict[str, list[list]]]
    #: ``term -> encode_ids(neuron ids)``: the units whose words name the term
    units: dict[str, str]
    #: the flagged classes' names, in label order
    flagged: list[str]
    n_classes: int

    def page(self, thumbs: SpriteAtlas | None) -> dict:
        """The page data's ``audit`` key."""
        return {
            "columns": list(COLUMNS),
            "classes": self.classes,
            "images": self.images,
            "units": self.units,
            "thumbs": thumbs.manifest() if thumbs else None,
        }

    @property
    def image_ids(self) -> list[int]:
        return sorted({i for terms in self.images.values() for x in terms.values() for i, _ in x})


def load(con, present: set[str]) -> dict[str, pl.DataFrame]:
    """The audit's tables the page reads, where the study has them (else none)."""
    if "class_audit" not in present:
        return {}
    return {name: con.sql(query).pl() for name, query in QUERIES.items() if name in present}


def positive_terms(formula: str) -> list[str]:
    """The terms a formula names outside NOT (the terms the audit counts a unit's relevance
    under), each as ``concept=value`` and, where it differs (a quoted name), as the formula
    text writes it; none for a formula that does not parse."""
    found: dict[str, None] = {}

    def walk(node) -> None:
        if isinstance(node, Term):
            found.setdefault(f"{node.concept}={node.value}", None)
            found.setdefault(text(node), None)
        elif isinstance(node, And | Or):
            for operand in node.operands:
                walk(operand)
        elif not isinstance(node, Not):
            raise TypeError(f"not a formula: {node!r}")

    try:
        walk(parse(formula))
    except ValueError:
        return []  # words that are not a formula name no term
    return list(found)


def term_units(unit_labels: pl.DataFrame, terms: set[str]) -> dict[str, list[int]]:
    """``term -> neuron ids`` whose words (``unit_labels.formula``) name it outside NOT, for
    ``terms`` only."""
    out: dict[str, list[int]] = {}
    rows = unit_labels.filter(pl.col("formula").is_not_null()).select("neuron_id", "formula")
    for neuron_id, formula in rows.iter_rows():
        for term in positive_terms(formula):
            if term in terms:
                out.setdefault(term, []).append(int(neuron_id))
    return out


def _value(value):
    """A JSON value: floats rounded to 4 digits, NaN and infinities as null (JSON has
    neither; an infinite ``lift`` is a term no other class's units carry)."""
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    return value


def audit_data(tables: Mapping[str, pl.DataFrame]) -> Audit | None:
    """The page's audit, or None where the study has no ``class_audit`` rows."""
    rows = tables.get("class_audit")
    if rows is None or rows.height == 0:
        return None
    rows = rows.sort("label", "rank")
    shown = rows.filter(
        (pl.col("rank") <= SHOWN_TERMS) | pl.col("own").fill_null(False) | pl.col("flagged")
    )
    classes = {
        str(int(key[0])): [[_value(v) for v in row] for row in part.select(COLUMNS).iter_rows()]
        for key, part in shown.partition_by("label", as_dict=True, maintain_order=True).items()
    }
    images: dict[str, dict[str, list[list]]] = {}
    picked = tables.get("class_audit_images")
    if picked is not None:
        for label, term, image_id, drop in (
            picked.sort("label", "term", "rank").select("label", "term", "image_id", "drop")
        ).iter_rows():
            images.setdefault(str(int(label)), {}).setdefault(term, []).append(
                [int(image_id), _value(drop)]
            )
    units = {}
    if "unit_labels" in tables:
        wanted = set(shown["term"].to_list())
        units = {t: encode_ids(ids) for t, ids in term_units(tables["unit_labels"], wanted).items()}
    flagged = (
        rows.filter(pl.col("flagged"))
        .group_by("label")
        .agg(pl.col("class_name").first())
        .sort("label")["class_name"]
        .to_list()
    )
    return Audit(classes, images, units, [str(n) for n in flagged], rows["label"].n_unique())


def header_figure(audit: Audit) -> dict[str, str]:
    """The header's line: ``classes flagged: 2 of 8 (heart, arrow)``."""
    names = ", ".join(audit.flagged[:5]) + (", …" if len(audit.flagged) > 5 else "")
    value = f"{len(audit.flagged)} of {audit.n_classes}" + (f" ({names})" if names else "")
    return {
        "figure": FLAGGED_FIGURE,
        "value": value,
        "asset": "class_audit",
        "definition": FLAGGED_DEFINITION,
    }


def thumbnails(database_path, image_ids: list[int], fmt: str = "jpeg") -> SpriteAtlas | None:
    """The shown images' thumbnails packed into sheets (``audit-0000``, ...), keyed by image
    id: ``class_audit_images.thumb`` where the table has it, else ``explained_images.thumb``;
    None when no shown image has one."""
    if not image_ids:
        return None
    with attached_store(database_path) as con:

        def has(table: str, column: str) -> bool:
            return bool(
                con.execute(
                    "SELECT count(*) FROM information_schema.columns WHERE table_catalog = "
                    "'carto' AND table_name = ? AND column_name = ?",
                    [table, column],
                ).fetchall()[0][0]
            )

        sources = [
            f"SELECT image_id, thumb, {order} AS source FROM {table} WHERE thumb IS NOT NULL"
            for order, table in enumerate(("class_audit_images", "explained_images"))
            if has(table, "thumb")
        ]
        if not sources:
            return None
        frame = con.sql(
            "SELECT image_id AS neuron_id, 1 AS rank, arg_min(thumb, source) AS png "
            f"FROM ({' UNION ALL '.join(sources)}) WHERE list_contains($ids, image_id) "
            "GROUP BY image_id ORDER BY image_id",
            params={"ids": image_ids},
        ).pl()
    if frame.height == 0:
        return None
    atlas, _ = pack_patches(frame, fmt=fmt, prefix="audit", workers=1)
    return atlas
