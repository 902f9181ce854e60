"""``carto audit [--class NAME]``: the classes whose prediction leans on a term that is not
their own (a candidate shortcut), with the evidence: its share of the class's relevance, how
often it co-occurs with the class, and whether zeroing its units and changing it in the
images confirm that the model uses it. Reads the ``class_audit`` table; runs nothing.
Registered in :func:`carto_assets.cli.main.main`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import polars as pl

from carto_assets.runtime.environment import STUDY_ENV_VAR


class AuditError(Exception):
    """What the user must fix, in one line."""


def add_parser(sub) -> None:
    p = sub.add_parser("audit", help="which classes rely on something that is not the class")
    p.add_argument("--study", help=f"study YAML (default: ${STUDY_ENV_VAR}, else the demo study)")
    p.add_argument("--class", dest="class_name", metavar="NAME", help="only this class (its name)")
    p.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    from carto_assets.stages.prepared import open_store
    from carto_assets.study import StudyError, load_study

    try:
        study = load_study(args.study or os.environ.get(STUDY_ENV_VAR) or None)
    except StudyError as exc:
        print(f"carto: invalid study: {exc}", file=sys.stderr)
        return 2
    try:
        if not study.database_path.exists():
            raise AuditError(f"no database at {study.database_path}: run `carto run` first")
        store = open_store(study)
        if not store.table_exists("class_audit"):
            why = (
                "the study disables it (audit.enabled or labels.enabled is false)"
                if not (study.audit.enabled and study.labels.enabled)
                else "run `carto run` first (the class_audit asset)"
            )
            raise AuditError(f"{study.database_path} has no class_audit table: {why}")
        audit = store.query("SELECT * FROM class_audit ORDER BY label, rank")
        print(report(audit, args.class_name, study.audit.min_share))
    except AuditError as exc:
        print(f"carto: {exc}", file=sys.stderr)
        return 2
    return 0


def report(audit: pl.DataFrame, class_name: str | None, min_share: float) -> str:
    """The flagged classes, one short block each; one line when nothing is flagged."""
    names = audit.unique("label").sort("label")["class_name"].to_list()
    if class_name is not None:
        if class_name not in names:
            raise AuditError(
                f"--class {class_name!r} is not a class of the study (classes: {', '.join(names)})"
            )
        audit = audit.filter(pl.col("class_name") == class_name)
    flagged = audit.filter(pl.col("flagged"))
    scope = f"class {class_name}" if class_name else f"{len(names)} classes"
    if flagged.is_empty():
        return (
            f"No shortcut flagged ({scope} audited): no term that is not a class's own and "
            f"co-occurs with it carries {min_share:.0%} of its relevance at a layer, leaned on "
            "more than by the other classes, or changes its prediction when re-rendered."
        )
    blocks = [
        f"{flagged['label'].n_unique()} of {len(names) if not class_name else 1} class(es) "
        f"flagged, {flagged.height} term(s):"
    ]
    for row in flagged.iter_rows(named=True):
        blocks.append(_block(row, audit.filter(pl.col("label") == row["label"])))
    return "\n\n".join(blocks)


def _verdict(confirmed: bool | None) -> str:
    if confirmed is None:
        return "no causal check ran"
    return "CONFIRMED: the model uses it" if confirmed else "not confirmed: it only co-occurs"


def _block(row: dict, mine: pl.DataFrame) -> str:
    name, term = row["class_name"], row["term"]
    own = mine.filter(pl.col("own")).sort("rank")
    own_text = (
        ", ".join(f"{t} {s:.2f}" for t, s in own.select("term", "relevance_share").iter_rows())
        or "none named"
    )
    lift = row["lift"]
    lift = (
        f"{lift:.1f}x their mean"
        if math.isfinite(lift)
        else "no other class's units carry it"
        if math.isinf(lift)
        else "no class's units carry it"
    )
    how = (
        "by its relevance"
        if row.get("flagged_by", "relevance") == "relevance"
        else "by the counterfactual, whatever its relevance"
    )
    lines = [f"{name}: relies on {term} (flagged {how}; {_verdict(row['confirmed'])})"]
    if row["top_layer"] is None:
        lines.append(
            f"  relevance: no unit's words name {term}: what the model uses it through has no "
            f"words (the class's own: {own_text})"
        )
    else:
        lines.append(
            f"  relevance share {row['relevance_share']:.2f}, {row['top_layer_share']:.2f} at "
            f"{row['top_layer']} (rank {row['rank']}, {row['specific_rank']} beyond the other "
            f"classes; {lift}; the class's own: {own_text})"
        )
    lines += [
        f"  in the data: holds on {row['class_rate']:.0%} of {name} images, "
        f"{row['other_rate']:.0%} of the others'",
    ]
    if row["ablation_drop"] is not None:
        lines.append(
            f"  ablation: zeroing its {row['ablation_units']} unit(s) at {row['top_layer']} "
            f"drops the {name} logit by {row['ablation_drop']:.2f} on {row['ablation_images']} "
            f"images (as many random units: {row['ablation_random_drop']:.2f}; the other "
            f"classes' logits: {row['ablation_other_drop']:.2f})"
            + ("" if row["ablation_confirms"] else " — does not confirm: not these units")
        )
    if row["counterfactual_images"]:
        accuracy = (
            f"accuracy {row['accuracy']:.2f} -> {row['counterfactual_accuracy']:.2f}, "
            if row["accuracy"] is not None
            else ""
        )
        lines.append(
            f"  counterfactual: {row['counterfactual_images']} {name} images rendered again "
            f"with {term} changed: {accuracy}mean logit {row['logit']:.2f} -> "
            f"{row['counterfactual_logit']:.2f}"
            + ("" if row["counterfactual_confirms"] else " — does not confirm")
        )
    elif row["counterfactual_images"] is None and row["checked"]:
        lines.append("  counterfactual: not available (the source cannot re-render this term)")
    return "\n".join(lines)
