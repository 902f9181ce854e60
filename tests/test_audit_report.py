"""`carto audit`'s text from a class_audit frame: a block per flag, one line without flags."""

import polars as pl
import pytest

from carto_assets.cli.audit import AuditError, report


def _frame(lift: float, flagged: bool = True) -> pl.DataFrame:
    row = {
        "label": 0, "class_name": "heart", "term": "texture=dots", "own": False, "rank": 1,
        "specific_rank": 1, "relevance_share": 0.15, "top_layer": "block4",
        "top_layer_share": 0.44, "lift": lift, "class_rate": 1.0, "other_rate": 0.05,
        "flagged": flagged, "flagged_by": "relevance" if flagged else None, "checked": flagged,
        "ablation_units": 3, "ablation_images": 32,
        "ablation_drop": 4.0, "ablation_random_drop": 0.1, "ablation_other_drop": -0.5,
        "ablation_confirms": True, "counterfactual_images": None, "accuracy": None,
        "counterfactual_accuracy": None, "logit": None, "counterfactual_logit": None,
        "counterfactual_confirms": None, "confirmed": True,
    }  # fmt: skip
    own = {**row, "term": "shape=heart", "own": True, "rank": 2, "relevance_share": 0.03,
           "flagged": False, "checked": False}  # fmt: skip
    other = {**own, "label": 1, "class_name": "arrow", "term": "shape=arrow", "rank": 1}
    return pl.DataFrame([row, own, other])


def test_a_flag_gets_its_block_and_an_infinite_lift_is_said_in_words():
    text = report(_frame(float("inf")), None, 0.05)
    lines = text.splitlines()
    assert lines[0] == "1 of 2 class(es) flagged, 1 term(s):"
    assert lines[2] == (
        "heart: relies on texture=dots (flagged by its relevance; CONFIRMED: the model uses it)"
    )
    assert "no other class's units carry it; the class's own: shape=heart 0.03" in lines[3]
    assert "inf" not in text
    assert "counterfactual: not available (the source cannot re-render this term)" in text
    assert "12.0x their mean" in report(_frame(12.0), None, 0.05)


def test_no_flag_is_one_line_and_an_unknown_class_is_refused():
    text = report(_frame(12.0, flagged=False), "arrow", 0.05)
    assert text.startswith("No shortcut flagged (class arrow audited)") and "\n" not in text
    with pytest.raises(AuditError, match=r"--class 'nope' is not a class of the study"):
        report(_frame(12.0), "nope", 0.05)


def test_a_flag_the_counterfactual_raised_says_so_and_that_no_word_names_it():
    frame = _frame(float("nan")).with_columns(
        flagged_by=pl.when(pl.col("flagged")).then(pl.lit("counterfactual")),
        top_layer=pl.when(pl.col("flagged")).then(None).otherwise(pl.col("top_layer")),
        relevance_share=pl.when(pl.col("flagged")).then(0.0).otherwise(pl.col("relevance_share")),
        ablation_drop=pl.when(pl.col("flagged")).then(None).otherwise(pl.col("ablation_drop")),
        counterfactual_images=pl.lit(20),
        accuracy=pl.lit(0.95),
        counterfactual_accuracy=pl.lit(0.25),
        logit=pl.lit(2.7),
        counterfactual_logit=pl.lit(0.4),
        counterfactual_confirms=pl.lit(True),
    )
    lines = report(frame, None, 0.05).splitlines()
    assert lines[2] == (
        "heart: relies on texture=dots (flagged by the counterfactual, whatever its relevance; "
        "CONFIRMED: the model uses it)"
    )
    assert lines[3].startswith("  relevance: no unit's words name texture=dots")
    assert not any(line.startswith("  ablation") for line in lines)
    assert "accuracy 0.95 -> 0.25, mean logit 2.70 -> 0.40" in lines[-1]
