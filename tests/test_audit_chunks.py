"""Which of the class audit's rows the concept graph's chunks' checks cover
(:func:`carto_assets.stages.class_audit._from_chunks`): plain frames, no model."""

from __future__ import annotations

import polars as pl

from carto_assets.stages.audit_checks import CHECK_COLUMNS, CHECKS_SCHEMA, IMAGES_SCHEMA
from carto_assets.stages.class_audit import _from_chunks


def _checks(rows):
    return pl.DataFrame(
        rows,
        schema={
            "label": pl.Int32,
            "term": pl.String,
            "top_layer": pl.String,
            "flagged": pl.Boolean,
            "wanted": pl.Boolean,
        },
        orient="row",
    )


KEY = "k1"


def _chunk(rows, key=KEY):
    full = [{**{c: r.get(c) for c in CHECKS_SCHEMA}, "checks_key": key} for r in rows]
    images = pl.DataFrame(
        [(r["label"], r["term"], 1, 7, 1.5, b"png") for r in rows],
        schema=IMAGES_SCHEMA,
        orient="row",
    ).with_columns(checks_key=pl.lit(key))
    return {"audit_checks": pl.DataFrame(full, schema=CHECKS_SCHEMA), "audit_check_images": images}


ABLATED = {"ablation_units": 3, "ablation_drop": 2.0, "ablation_confirms": True}


def test_a_row_is_covered_only_where_its_chunk_ran_what_it_needs():
    checks = _checks(
        [
            (0, "a=1", "l4", True, False),  # flagged, chunk ablated at l4: covered
            (1, "b=1", "l4", True, False),  # flagged, chunk did not ablate: checked here
            (2, "c=1", "l4", True, False),  # flagged, chunk ablated at l3: checked here
            (3, "d=1", "l4", False, False),  # not flagged, counterfactual says no: covered
            (4, "e=1", "l4", False, True),  # asked for, no chunk row: checked here
        ]
    )
    chunk = _chunk(
        [
            {"label": 0, "term": "a=1", "top_layer": "l4", **ABLATED},
            {"label": 1, "term": "b=1", "top_layer": "l4", "counterfactual_confirms": False},
            {"label": 2, "term": "c=1", "top_layer": "l3", **ABLATED},
            {
                "label": 3,
                "term": "d=1",
                "top_layer": "l4",
                "counterfactual_confirms": False,
                **ABLATED,
            },
        ]
    )
    done, images = _from_chunks(checks, [chunk], KEY)
    assert done.columns == ["label", "term", *CHECK_COLUMNS]
    assert sorted(done["term"].to_list()) == ["a=1", "d=1"]
    a = done.filter(pl.col("term") == "a=1").row(0, named=True)
    assert a["ablation_drop"] == 2.0 and a["confirmed"] is True
    # d was ablated in the chunk (its share reached min_share there) but the stage would not
    # ablate it (not flagged, the counterfactual says the model does not use it): no ablation.
    d = done.filter(pl.col("term") == "d=1").row(0, named=True)
    assert d["ablation_drop"] is None and d["confirmed"] is False
    assert images["term"].to_list() == ["a=1"]


def test_no_chunk_tables_cover_nothing():
    checks = _checks([(0, "a=1", "l4", True, False)])
    done, images = _from_chunks(checks, [{}], KEY)
    assert done.is_empty() and images.is_empty()
    assert done.columns == ["label", "term", *CHECK_COLUMNS]


def test_checks_made_under_other_settings_or_words_are_not_used():
    """A chunk written before the audit's settings or the units' words changed carries another
    key: its rows are checked again by the stage. Two chunks with the same row count once."""
    checks = _checks([(0, "a=1", "l4", True, False), (1, "b=1", "l4", True, False)])
    row_a = {"label": 0, "term": "a=1", "top_layer": "l4", **ABLATED}
    row_b = {"label": 1, "term": "b=1", "top_layer": "l4", **ABLATED}
    stale = _chunk([row_a], key="old")
    fresh = _chunk([row_b])
    done, images = _from_chunks(checks, [stale, fresh, fresh], KEY)
    assert done["term"].to_list() == ["b=1"]
    assert images["term"].to_list() == ["b=1"]
