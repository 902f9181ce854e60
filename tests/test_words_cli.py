"""`carto run` on an image folder study with its own annotations table, typed as a user types
it: the units get words, a planted column of the user's names the units that see it, and the
words hold their stored AUC when recomputed from the tables."""

from __future__ import annotations

import re

import duckdb
import numpy as np
import pytest
from PIL import Image
from readme.walk import CARTO, run, write_study
from sklearn.metrics import roc_auc_score

from carto_assets.core.words.formula import evaluate, parse, terms

pytestmark = pytest.mark.slow

#: Two classes; within each, half the images are bright ("tint=warm"), the other half dark:
#: the user's column is not the class, so only the user's annotations can name it.
N_PER_CLASS = 24


def _image(rng, warm: bool, cls: int) -> np.ndarray:
    base = np.full((32, 32, 3), 40 if not warm else 215, dtype=np.uint8)
    pixels = base + rng.integers(0, 25, size=base.shape, dtype=np.uint8)
    if cls == 0:  # a bar: class "bar"; no bar: class "plain"
        pixels[12:20, 4:28, 2] = 255
    return pixels


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    root = tmp_path_factory.mktemp("words")
    rng = np.random.default_rng(0)
    rows = ["path,tint,note"]
    for cls, name in enumerate(("bar", "plain")):
        (root / "images" / name).mkdir(parents=True)
        for i in range(N_PER_CLASS):
            warm = i % 2 == 0
            Image.fromarray(_image(rng, warm, cls)).save(root / "images" / name / f"{i}.png")
            note = "kept|seen" if i % 3 == 0 else ("" if i % 3 == 1 else "seen")
            rows.append(f"{name}/{i}.png,{'warm' if warm else 'cool'},{note}")
    (root / "notes.csv").write_text("\n".join(rows) + "\n")
    study = write_study(
        root,
        "annotated",
        {
            "model": "builtin",
            "dataset": {"kind": "imagefolder", "path": "images", "image_size": 32},
            "training": {"epochs": 2},
            "top_k": 4,
            "shards": 2,
            "annotations": "notes.csv",
            # 0.6 (default 0.9): in 48 images of two tints, both kinds of concept occur
            "labels": {"sample_images": None, "always_on": 0.6},
        },
    )
    out = run([CARTO, "run", "--study", study.name], cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    (database,) = [
        line.split(":", 1)[1].strip()
        for line in out.stdout.splitlines()
        if line.startswith("Database:")
    ]
    return database, out, root


def test_the_run_summary_says_how_many_units_have_words(mapped):
    _, out, _ = mapped
    (line,) = [line for line in out.stdout.splitlines() if "units with words" in line]
    assert "median AUC" in line and "(unit_labels)" in line


def test_a_users_column_names_the_units_that_see_it(mapped):
    database, _, _ = mapped
    con = duckdb.connect(database, read_only=True)
    units, labelled = con.execute("SELECT count(*), count(formula) FROM unit_labels").fetchone()
    assert units == con.execute("SELECT count(*) FROM neurons").fetchone()[0]
    assert labelled > 0
    formulas = [
        f
        for (f,) in con.execute(
            "SELECT formula FROM unit_labels WHERE formula IS NOT NULL"
        ).fetchall()
    ]
    # Brightness is the strongest thing in these images and only the user's column says it.
    assert any("tint=" in f for f in formulas), formulas[:20]
    concepts = {t.concept for f in formulas for t in terms(parse(f))}
    assert concepts <= {"class", "tint", "note"}, concepts


def test_every_stored_auc_is_the_formulas_auc_recomputed_from_the_tables(mapped):
    database, _, _ = mapped
    con = duckdb.connect(database, read_only=True)
    maxima = con.execute("SELECT image_id, maxima FROM unit_maxima ORDER BY image_id").fetchall()
    ids = np.array([r[0] for r in maxima])
    matrix = np.array([r[1] for r in maxima], dtype=np.float64)
    assert len(ids) == 2 * N_PER_CLASS  # sample_images: null keeps every image
    rows = con.execute("SELECT image_id, concept, value FROM image_annotations").fetchall()
    position = {int(i): k for k, i in enumerate(ids)}
    labelled = con.execute(
        "SELECT neuron_id, formula, auc FROM unit_labels WHERE formula IS NOT NULL"
    ).fetchall()
    assert labelled
    for neuron_id, formula, auc in labelled:
        tree = parse(formula)
        indicator = {}
        for t in terms(tree):
            mask = np.zeros(len(ids), dtype=bool)
            for image_id, concept, value in rows:
                if (concept, value) == (t.concept, t.value):
                    mask[position[int(image_id)]] = True
            indicator[t] = mask
        truth = evaluate(tree, indicator)
        assert roc_auc_score(truth, matrix[:, neuron_id]) == pytest.approx(auc, abs=1e-9)


def test_a_cluster_has_words_of_its_own(mapped):
    database, _, _ = mapped
    con = duckdb.connect(database, read_only=True)
    assert (
        con.execute("SELECT count(*) FROM cluster_labels").fetchone()[0]
        == con.execute("SELECT count(DISTINCT cluster_id) FROM neuron_clusters").fetchone()[0]
    )


def test_carto_explain_names_each_concept_by_its_words(mapped):
    database, _, root = mapped
    out = run(
        [CARTO, "explain", "images/bar/0.png", "--study", "annotated.yaml", "--top", "3"],
        cwd=root,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    line_re = r"^    [+-]\d+%  cluster (\d+)  (.*)$"
    concepts = [line for line in out.stdout.splitlines() if re.match(line_re, line)]
    assert concepts
    con = duckdb.connect(database, read_only=True)
    rows = con.execute("SELECT cluster_id, formula, auc, always_on FROM cluster_labels").fetchall()
    words = {c: (f, a, on) for c, f, a, on in rows}
    for line in concepts:
        cluster, name = re.match(line_re, line).groups()
        formula, auc, on = words[int(cluster)]
        expected = f"{formula} (AUC {auc:.2f})" if formula else "no word fits"
        assert name == expected + (" · always on" if on else ""), line
    # Where a line is marked, one note under them says what it means, with the typed bound.
    marked = any(line.endswith(" · always on") for line in concepts)
    assert ("(always on: on for at least 60% of the images" in out.stdout) == marked


def test_on_shares_are_the_maxima_s_and_always_on_is_the_typed_threshold(mapped):
    database, _, _ = mapped
    con = duckdb.connect(database, read_only=True)
    maxima = con.execute("SELECT maxima FROM unit_maxima ORDER BY image_id").fetchall()
    matrix = np.array([r[0] for r in maxima], dtype=np.float64)
    rows = con.execute(
        "SELECT neuron_id, on_share, always_on FROM unit_labels ORDER BY neuron_id"
    ).fetchall()
    for neuron_id, share, on in rows:
        column = matrix[:, neuron_id]
        top = column.max()
        expected = float(np.mean(column >= 0.5 * top)) if top > 0 else 0.0
        assert share == pytest.approx(expected, abs=1e-12), neuron_id
        assert on == (share >= 0.6)
    clusters = con.execute("SELECT always_on, count(*) FROM cluster_labels GROUP BY 1").fetchall()
    assert dict(clusters).keys() == {True, False}, clusters


def test_explanations_rank_always_on_concepts_after_the_others(mapped):
    database, _, _ = mapped
    con = duckdb.connect(database, read_only=True)
    rows = con.execute(
        "SELECT e.image_id, e.target, e.layer, e.rank, e.share, l.always_on "
        "FROM explanation_concepts e JOIN cluster_labels l USING (cluster_id) "
        "ORDER BY e.image_id, e.target, e.layer, e.rank"
    ).fetchall()
    groups: dict[tuple, list] = {}
    for image, target, layer, rank, share, on in rows:
        groups.setdefault((image, target, layer), []).append((rank, on, share))
    moved = 0
    for key, ranked in groups.items():
        assert [r for r, _, _ in ranked] == list(range(1, len(ranked) + 1)), key
        flags = [on for _, on, _ in ranked]
        assert flags == sorted(flags), key  # not always on (False) first
        for part in (False, True):
            shares = [s for _, on, s in ranked if on == part]
            assert shares == sorted(shares, reverse=True), key
        top_share = max(s for _, _, s in ranked)
        moved += ranked[0][2] < top_share
    # Somewhere an always-on concept had the largest share and was moved behind the others.
    assert moved > 0


def test_the_explain_text_says_what_always_on_means_only_where_a_line_is_marked():
    from pathlib import Path

    from carto_assets.cli.explain import Report

    def report(labels):
        concepts = [{"share": 0.4, "cluster_id": i, "label": t} for i, t in enumerate(labels)]
        layers = [{"layer": "block4", "total": 1.0, "gap": 0.0, "concepts": concepts}]
        prediction = {"name": "heart", "logit": 2.0, "p": 0.9}
        return Report(Path("x.png"), None, prediction, layers, None, [], 0.85).text()

    marked = report(["shape=heart (AUC 0.97)", "no word fits · always on"])
    assert marked.splitlines()[-1].startswith("(always on: on for at least 85% of the images")
    assert "always on: on for" not in report(["shape=heart (AUC 0.97)", "no word fits"])
