"""A shortcut planted in a small shapes study, found by `carto audit` as a user types it: every
heart is dotted, dots are rare elsewhere, and the model learns the dots. The flag, both causal
checks and the ablation's drop against a plain PyTorch reference (forward hooks zeroing the
units, no restarts)."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
import torch
from readme.walk import CARTO, run, write_study

from carto_assets.core.attribution.forward import logits_of
from carto_assets.stages.concept_graph import class_images
from carto_assets.stages.prepared import PreparedStudy

pytestmark = pytest.mark.slow

PLANTED = {"class": "heart", "concept": "texture", "value": "dots", "share": 1.0}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    study = write_study(
        root,
        "planted",
        {
            "model": "builtin",
            "dataset": {"kind": "shapes", "size": 1600, "image_size": 32, "shortcuts": [PLANTED]},
            "training": {"epochs": 3},
            "shards": 2,
            "top_k": 20,
            "database": "planted.duckdb",
            "embedding": {"epochs": 2},
        },
    )
    out = run([CARTO, "run", "--study", study.name], cwd=root).ok()
    return root, study, out


def _row(root, term="texture=dots", name="heart"):
    con = duckdb.connect(str(root / "planted.duckdb"), read_only=True)
    try:
        frame = con.sql("SELECT * FROM class_audit ORDER BY label, rank").pl()
        images = con.sql("SELECT * FROM class_audit_images").pl()
    finally:
        con.close()
    row = frame.filter((frame["class_name"] == name) & (frame["term"] == term))
    return frame, images, row.row(0, named=True)


def test_carto_runs_summary_says_which_classes_are_flagged(planted):
    _, _, out = planted
    (line,) = [x for x in out.stdout.splitlines() if "classes flagged:" in x]
    assert "classes flagged: 1 of 8 (heart); 1 of 1 flags confirmed (class_audit)" in line


def test_carto_audit_names_the_planted_shortcut_with_its_evidence(planted):
    root, study, _ = planted
    out = run([CARTO, "audit", "--study", study.name], cwd=root).ok()
    blocks = out.stdout.split("\n\n")
    (heart,) = [b for b in blocks if b.startswith("heart: relies on texture=dots")]
    assert "CONFIRMED: the model uses it" in heart.splitlines()[0]
    assert "in the data: holds on 100% of heart images" in heart
    assert "ablation: zeroing its " in heart and "counterfactual: " in heart
    one = run([CARTO, "audit", "--study", study.name, "--class", "circle"], cwd=root).ok()
    assert one.stdout.strip().startswith("No shortcut flagged (class circle audited)")


def test_the_planted_term_leads_the_class_and_both_checks_confirm_it(planted):
    root, _, _ = planted
    frame, images, dots = _row(root)
    others = frame.filter((frame["class_name"] == "heart") & ~frame["own"])
    # First of what heart relies on beyond the other classes, and its only flag.
    assert others.sort("specific_rank")["term"][0] == "texture=dots"
    assert others.filter(others["flagged"])["term"].to_list() == ["texture=dots"]
    assert dots["flagged"] and dots["checked"] and dots["confirmed"]
    assert dots["class_rate"] == 1.0 and 0 < dots["other_rate"] < 0.1
    assert dots["ablation_confirms"] and dots["ablation_drop"] > 2 * dots["ablation_random_drop"]
    assert dots["counterfactual_confirms"]
    assert dots["counterfactual_images"] == dots["ablation_images"]  # every heart is dotted
    assert dots["counterfactual_accuracy"] < dots["accuracy"] - 0.3
    # Its images: the class's, with a drop each, sorted, with a thumbnail.
    mine = images.filter(images["term"] == "texture=dots").sort("rank")
    assert mine.height == 6 and mine["drop"].is_sorted(descending=True)
    assert all(bytes(t).startswith(b"\x89PNG") for t in mine["thumb"])


def test_a_shortcut_the_relevance_misses_is_flagged_by_the_counterfactual(planted):
    """With a share threshold no term reaches, the relevance flags nothing; the dots still
    co-occur with heart and the world can render them away, so the counterfactual runs on them
    anyway and flags them: the model uses them, whatever the words carry."""
    from carto_assets.stages.class_audit import class_audit

    root, study, _ = planted
    prepared = PreparedStudy.load(root / study.name)
    strict = prepared.study.model_copy(
        update={"audit": prepared.study.audit.model_copy(update={"min_share": 0.99})}
    )
    terms = class_audit(PreparedStudy(strict, prepared.store)).terms
    assert not terms.filter(terms["flagged_by"] == "relevance").height
    flagged = terms.filter(terms["flagged"])
    assert flagged.select("class_name", "term", "flagged_by").rows() == [
        ("heart", "texture=dots", "counterfactual")
    ]
    dots = flagged.row(0, named=True)
    assert dots["cooccurs"] and dots["checked"] and dots["confirmed"]
    assert dots["counterfactual_confirms"] and dots["counterfactual_accuracy"] < dots["accuracy"]
    # Its ablation ran too, as for any flag (its words' units are there).
    assert dots["ablation_drop"] is not None
    # The chance correlations of a small study are not co-occurrences: nothing else was checked.
    assert terms.filter(terms["checked"])["term"].to_list() == ["texture=dots"]


def test_the_rates_counted_in_the_database_equal_the_per_image_rows(planted):
    """The stage counts each (class, term) in DuckDB; the reference counts the annotation rows
    image by image (:func:`term_rates`)."""
    from carto_assets.core.audit import rates_from_counts, term_rates
    from carto_assets.stages import audit_checks as stage

    root, study, _ = planted
    prepared = PreparedStudy.load(root / study.name)
    with prepared.store.connect() as con:
        counts = stage._spelled(con.sql(stage.COUNTS_SQL).pl()).select("label", "term", "k")
        rows = con.sql("SELECT image_id, concept, value FROM image_annotations").pl()
    labels = prepared.images.select("image_id", "label")
    sizes = dict(labels.group_by("label").len("n").iter_rows())
    got = rates_from_counts(counts, sizes)
    want = term_rates(stage._spelled(rows), labels)
    assert got.keys() == want.keys() and len(got) > 100
    for key, rate in want.items():
        assert got[key] == pytest.approx(rate, rel=1e-12, abs=1e-300), key
    assert got[(prepared.class_names.index("heart"), "texture=dots")].class_rate == 1.0


def test_the_ablation_drop_equals_a_plain_forward_with_the_units_zeroed(planted):
    root, study, _ = planted
    _, images, dots = _row(root)
    prepared = PreparedStudy.load(root / study.name)
    label = prepared.class_names.index("heart")
    layer = dots["top_layer"]
    con = duckdb.connect(str(root / "planted.duckdb"), read_only=True)
    neurons = {
        n
        for (n,) in con.execute(
            "SELECT neuron_id FROM unit_labels WHERE layer = ? AND formula IS NOT NULL "
            "AND regexp_matches(formula, '(^|[ (])texture=dots') "
            "AND NOT regexp_matches(formula, 'NOT texture=dots')",
            [layer],
        ).fetchall()
    }
    con.close()
    units = [i for i, n in enumerate(prepared.units.neuron_of[layer]) if int(n) in neurons]
    assert len(units) == dots["ablation_units"]
    ids, _, x = class_images(
        prepared.study,
        label,
        prepared.images,
        prepared.source,
        prepared.bundle,
        count=prepared.study.audit.images_per_class,
    )
    model = prepared.bundle.module.eval()
    module = dict(model.named_modules())[layer]

    def zero(_, __, output):
        output = output.clone()
        output[:, units] = 0
        return output

    with torch.no_grad():
        clean = logits_of(model(x)).double().numpy()[:, label]
        handle = module.register_forward_hook(zero)
        try:
            ablated = logits_of(model(x)).double().numpy()[:, label]
        finally:
            handle.remove()
    assert dots["ablation_drop"] == pytest.approx(float(np.mean(clean - ablated)), abs=1e-4)
    top = images.filter(images["term"] == "texture=dots").sort("rank")
    best = int(ids[np.argmax(clean - ablated)])
    assert int(top["image_id"][0]) == best


def test_carto_check_refuses_a_bad_audit_block_in_one_line(tmp_path):
    study = write_study(
        tmp_path,
        "bad",
        {"dataset": {"kind": "shapes", "size": 80, "image_size": 32}, "audit": {"min_share": 1.5}},
    )
    out = run([CARTO, "check", "--study", study.name], cwd=tmp_path)
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert "audit.min_share" in line and "1.5" in line


def test_a_study_without_the_audit_says_so(tmp_path):
    study = write_study(
        tmp_path,
        "off",
        {
            "model": "builtin",
            "dataset": {"kind": "shapes", "size": 160, "image_size": 32},
            "training": {"epochs": 1},
            "shards": 1,
            "top_k": 5,
            "database": "off.duckdb",
            "embedding": {"epochs": 1},
            "audit": {"enabled": False},
        },
    )
    run([CARTO, "run", "--study", study.name], cwd=tmp_path).ok()
    out = run([CARTO, "audit", "--study", study.name], cwd=tmp_path)
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.endswith(
        "has no class_audit table: the study disables it (audit.enabled or labels.enabled is false)"
    )


def test_the_checks_the_graph_chunks_ran_equal_the_stage_checking_every_row_itself(planted):
    """`carto run` checks the co-occurring terms inside the concept graph's chunks, on the
    graph's own pass; the stage given no chunk tables checks every row itself, on a pass of its
    own over the same sampled images (the reference). Same rows, same figures, same images."""
    from polars.testing import assert_frame_equal

    from carto_assets.stages.audit_checks import TABLES
    from carto_assets.stages.class_audit import class_audit, unit_layers
    from carto_assets.stages.concept_graph import read_chunk_tables

    root, study, _ = planted
    prepared = PreparedStudy.load(root / study.name)
    folder = prepared.study.files_dir / "concept_graph"
    keys = sorted(p.name for p in folder.iterdir() if p.is_dir())
    chunks = [read_chunk_tables(prepared.study, key, TABLES) for key in keys]
    assert sum(c["audit_checks"].height for c in chunks) >= 1
    fast = class_audit(prepared, chunks=chunks)
    assert fast.reused >= 1 and fast.checked_here == 0
    reference = class_audit(PreparedStudy.load(root / study.name))
    assert reference.reused == 0 and reference.checked_here == fast.reused
    assert_frame_equal(fast.terms, reference.terms, check_exact=False, rel_tol=1e-5, abs_tol=1e-6)
    order = ["label", "term", "rank"]
    assert_frame_equal(
        fast.images.sort(order).drop("drop"), reference.images.sort(order).drop("drop")
    )
    # The table the run stored is the chunks' path's.
    con = duckdb.connect(str(root / "planted.duckdb"), read_only=True)
    try:
        stored = con.sql("SELECT * FROM class_audit").pl()
        layers = unit_layers(con)
    finally:
        con.close()
    assert_frame_equal(
        stored.sort("label", "term"),
        fast.terms.sort("label", "term"),
        check_exact=False,
        check_dtypes=False,
        rel_tol=1e-5,
    )
    # The stage reads the units' layers from the database, in the graph's order.
    assert layers == prepared.units.layers


def test_a_number_of_images_per_class_gives_the_checks_a_sample_of_their_own(planted, tmp_path):
    """`audit: {images_per_class: 24}` typed in the study: the chunks check the dotted hearts on
    24 seeded images with a pass of their own, not on the graph's 16."""
    import shutil

    import yaml

    root, study, _ = planted
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    raw = yaml.safe_load((copy / study.name).read_text())
    raw["audit"] = {"images_per_class": 24}
    (copy / study.name).write_text(yaml.safe_dump(raw))
    run([CARTO, "run", "--study", study.name], cwd=copy).ok()
    _, _, dots = _row(copy)
    assert dots["flagged"] and dots["confirmed"]
    assert dots["ablation_images"] == dots["counterfactual_images"] == 24
    # Checked in the chunk (not by the stage's fallback, which would draw 24 images too).
    chunks = sorted((copy / "planted_files" / "concept_graph").glob("*/audit_checks.parquet"))
    import polars as pl

    rows = pl.concat([pl.read_parquet(c) for c in chunks])
    (row,) = rows.filter(rows["term"] == "texture=dots").to_dicts()
    assert row["ablation_images"] == 24 and row["checks_key"]
    _, _, before = _row(root)
    assert before["ablation_images"] == 16  # graph.images_per_class, the default's


def test_the_counterfactual_draws_among_the_images_that_carry_the_term(planted):
    """As many carrying images as the checks' images, whatever share of the class carries it;
    all of them where fewer carry it; the logits those of a plain forward pass."""
    from carto_assets.stages.audit_checks import ClassPass, _counterfactual

    root, study, _ = planted
    prepared = PreparedStudy.load(root / study.name)
    label = prepared.class_names.index("heart")
    cp = ClassPass.drawn(prepared, label, 16)
    hearts = prepared.images.filter(prepared.images["label"] == label)["image_id"].to_list()
    every = _counterfactual(prepared, label, "texture=dots", set(hearts), cp)
    assert every["counterfactual_images"] == 16 and every["counterfactual_confirms"]
    few = sorted(hearts)[:5]
    some = _counterfactual(prepared, label, "texture=dots", set(few), cp)
    assert some["counterfactual_images"] == 5
    pixels, ok = prepared.source.load_many(few)
    assert ok.all()
    model = prepared.bundle.module.eval()
    with torch.no_grad():
        x = prepared.bundle.normalize(torch.from_numpy(pixels))
        logits = logits_of(model(x)).double().numpy()
    assert some["logit"] == pytest.approx(float(logits[:, label].mean()), abs=1e-5)
    assert some["accuracy"] == pytest.approx(float(np.mean(logits.argmax(axis=1) == label)))
    assert _counterfactual(prepared, label, "texture=dots", set(), cp) == {
        "counterfactual_images": 0
    }


def test_chunks_checked_under_other_audit_settings_are_checked_again(planted):
    """The chunks' checks were made on the graph's 16 images; a stage run asked for 12 does not
    reuse them, it checks the rows itself on 12 images."""
    from carto_assets.stages.audit_checks import TABLES
    from carto_assets.stages.class_audit import class_audit
    from carto_assets.stages.concept_graph import read_chunk_tables

    root, study, _ = planted
    prepared = PreparedStudy.load(root / study.name)
    folder = prepared.study.files_dir / "concept_graph"
    keys = sorted(p.name for p in folder.iterdir() if p.is_dir())
    chunks = [read_chunk_tables(prepared.study, key, TABLES) for key in keys]
    other = prepared.study.model_copy(
        update={"audit": prepared.study.audit.model_copy(update={"images_per_class": 12})}
    )
    again = class_audit(PreparedStudy(other, prepared.store), chunks=chunks)
    assert again.reused == 0 and again.checked_here >= 1
    terms = again.terms
    mine = (terms["class_name"] == "heart") & (terms["term"] == "texture=dots")
    dots = terms.filter(mine).row(0, named=True)
    assert dots["ablation_images"] == dots["counterfactual_images"] == 12
    assert dots["confirmed"]


def test_the_chunks_candidates_are_the_co_occurring_terms_of_the_full_rates(planted):
    """A chunk scores co-occurrence without the class= terms' rates; the terms it finds are
    those the stage's full rates give (the correction counting every pair in both)."""
    from carto_assets.core.audit import cooccurring
    from carto_assets.stages.audit_checks import read_candidates, read_inputs

    root, study, _ = planted
    prepared = PreparedStudy.load(root / study.name)
    minimum = prepared.study.audit.min_cooccurrence
    with prepared.store.connect() as con:
        inputs = read_inputs(con, prepared.images, prepared.class_names)
        words, found, key = read_candidates(con, prepared.images, minimum)
    want = cooccurring(inputs.rates, inputs.own, minimum)
    assert found == want and want[prepared.class_names.index("heart")] == {"texture=dots"}
    # Only the candidates' formulas are parsed; their units are all there.
    assert key == inputs.words_key
    mine = inputs.words.filter(inputs.words["term"] == "texture=dots")
    assert mine.height and words.filter(words["term"] == "texture=dots").equals(mine)
    assert words.height < inputs.words.height
