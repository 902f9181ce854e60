"""benchmarks/paper_data_scale.py: its own logic (arguments, parsing, attribution, the table).

The benchmark's measurements are not tested here (they take minutes and are never asserted
on); what it computes from them is.
"""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from carto_assets.study import study_from_dict

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_data_scale.py"
spec = importlib.util.spec_from_file_location("paper_data_scale", PATH)
bench = importlib.util.module_from_spec(spec)
sys.modules["paper_data_scale"] = bench  # dataclasses look their module up there
spec.loader.exec_module(bench)


def test_sizes_are_parsed_sorted():
    assert bench.parse_sizes("40000, 4000,1_281_167") == [4000, 40000, 1281167]


@pytest.mark.parametrize("text", ["4k", "4000,", "100", "4000,4000", "-4000", ""])
def test_bad_sizes_are_refused_in_one_line(text):
    with pytest.raises(bench.BenchError) as caught:
        bench.parse_sizes(text)
    assert "\n" not in str(caught.value)


def test_bad_input_exits_with_one_line(capsys):
    assert bench.main(["--sizes", "4k"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("paper_data_scale.py: --sizes must be") and "'4k'" in err
    assert bench.main(["--sizes", "4000", "--image-size", "8"]) == 2
    assert "--image-size must be 16 to 1024 px, got 8" in capsys.readouterr().err


def test_the_study_it_writes_is_valid(tmp_path):
    args = bench.argparse.Namespace(
        image_size=48,
        batch_size=128,
        shard_size=10_000,
        top_k=50,
        epochs=1,
        features=True,
        dictionary_epochs=None,
    )
    study = study_from_dict(bench.study_dict(40_000, args), base_dir=tmp_path)
    assert study.shards == 4 and study.dataset.image_size == 48
    assert study.features is not None and study.training.epochs == 1
    assert study.database_path == tmp_path / "carto.duckdb"
    assert study.features.epochs == 240  # the study's default
    args.dictionary_epochs = 24
    assert study_from_dict(bench.study_dict(4000, args), base_dir=tmp_path).features.epochs == 24
    args.features = False
    assert study_from_dict(bench.study_dict(4000, args), base_dir=tmp_path).features is None


def test_done_line_is_parsed():
    output = (
        "...\nDone in 261 s: prepare 177 s, activations 18 s (4 shard(s) computed, 0 up to "
        "date, 227 images/s), summaries 67 s (of which 0.16 s publishing 12 database "
        "snapshots).\nMapped: ..."
    )
    assert bench.parse_done_line(output) == {
        "total": 261.0,
        "prepare": 177.0,
        "activations": 18.0,
        "summaries": 67.0,
    }
    with pytest.raises(bench.BenchError):
        bench.parse_done_line("carto: study field 'top_k' ...")
    assert bench.training_seconds("  model training: 5 epochs in 45.9 s\n") == 45.9
    assert bench.training_seconds("  model training: 1 epoch in 2.0 s") == 2.0
    assert bench.training_seconds("  model training: 250 batches in 45.9 s") == 45.9
    assert bench.training_seconds("model: cached") is None


def test_steps_sum_their_partitions_and_take_the_samples_inside():
    intervals = [("images", 0.0, 1.0), ("activations", 2.0, 5.0), ("activations", 6.0, 7.0)]
    samples = [(0.5, 1.0), (1.5, 9.0), (3.0, 2.0), (6.5, 2.5), (7.0, 1.5)]
    steps = bench.step_figures(intervals, samples)
    assert list(steps) == ["images", "activations"]
    assert steps["images"] == {"seconds": 1.0, "runs": 1, "peak_rss_gb": 1.0}
    assert steps["activations"] == {"seconds": 4.0, "runs": 2, "peak_rss_gb": 2.5}
    assert math.isnan(bench.step_figures([("views", 10.0, 11.0)], samples)["views"]["peak_rss_gb"])


def test_growth_exponent():
    assert bench.growth_exponent(4000, 2.0, 40000, 20.0) == pytest.approx(1.0)
    assert bench.growth_exponent(4000, 3.0, 40000, 3.0) == 0.0
    assert bench.growth_exponent(4000, 1.0, 40000, 100.0) == pytest.approx(2.0)
    assert math.isnan(bench.growth_exponent(4000, 0.0, 40000, 1.0))
    assert math.isnan(bench.growth_exponent(4000, float("nan"), 40000, 1.0))


def _result(n: int, scale: float) -> dict:
    return {
        "images": n,
        "stages": {"prepare": 10 * scale, "activations": 4 * scale, "summaries": 20.0, "total": 0},
        "peak_rss_gb": 1.0 + scale / 10,
        "training_s": None,
        "steps": {
            "images": {"seconds": scale, "runs": 1, "peak_rss_gb": 0.5},
            **({"views": {"seconds": 3.0, "runs": 1, "peak_rss_gb": 1.0}} if n > 400 else {}),
        },
        "reference": {"images": n, "load_s": 1.0 * scale, "forward_s": 1.0 * scale},
        "outputs": {
            "shard_pass_s": 3 * scale,
            "graph_s_per_class": 2.0,
            "database_mb": 10.0,
            "parquet_mb": scale,
            "files_mb": scale,
            "views_mb": 5.0,
            "shards": 1,
            "units": 560,
            "clusters": 50,
            "coverage": 0.25,
            "concept_cluster_gain": 0.8,
            "concept_random_gain": 0.5,
        },
    }


def test_the_table_has_a_column_per_size_and_the_growth():
    results = [_result(400, 1.0), _result(4000, 10.0)]
    table = bench.format_table(results).splitlines()
    assert table[0].split() == ["400", "4,000", "growth"]
    rows = {line[:40].strip(): line[40:].split() for line in table[1:]}
    assert rows["images"] == ["400", "4,000"]  # no growth for the sizes themselves
    assert rows["activations s (carto run)"] == ["4", "40", "1.00"]
    assert rows["activations / (load + forward)"] == ["2.00", "2.00", "0.00"]
    assert rows["summaries s (carto run)"] == ["20", "20", "0.00"]
    assert rows["step views s"] == ["-", "3.0", "-"]  # a step one size lacks
    assert rows["cluster gain (class)"] == ["-", "-", "-"]  # a figure the study lacks
    lines = bench.target_lines(results)
    assert "activation stage / (load + bare forward) at 4,000: 2.00 (target <= 1.1)" in lines
    assert any(line.startswith("concept graph per class at 4,000 / at 400: 1.00") for line in lines)
    one = bench.format_table([_result(4000, 10.0)]).splitlines()
    assert one[0].split() == ["4,000"]


def test_extrapolation_is_the_line_through_the_two_largest_never_below():
    assert bench.extrapolate(4000, 10.0, 40000, 100.0, 400000) == pytest.approx(1000.0)
    assert bench.extrapolate(4000, 10.0, 40000, 10.0, 400000) == 10.0
    assert bench.extrapolate(4000, 12.0, 40000, 10.0, 400000) == 10.0  # fell: flat
    assert math.isnan(bench.extrapolate(4000, float("nan"), 40000, 10.0, 400000))


def test_the_extrapolated_column_holds_amounts_only(tmp_path, capsys):
    results = [_result(400, 1.0), _result(4000, 10.0)]
    table = bench.format_table(results, extrapolate_to=40000).splitlines()
    assert table[0].split() == ["400", "4,000", "growth", "~40,000"]
    rows = {line[:40].strip(): line[40:].split() for line in table[1:]}
    assert rows["activations s (carto run)"] == ["4", "40", "1.00", "400"]
    assert rows["peak RSS GB (whole run)"][-1] == "11.00"  # 1.1 -> 2.0 GB: +0.9 per 3,600
    assert rows["parquet MB"][-1] == "100.0"
    assert rows["concept graph s per class"][-1] == "2.00"
    assert len(rows["activations / (load + forward)"]) == 3  # a ratio: not carried
    assert len(rows["coverage"]) == 3
    saved = tmp_path / "results.json"
    saved.write_text(bench.json.dumps(results))
    assert bench.main(["--from-json", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "EXTRAPOLATED, not measured" in out and "~1,281,167" in out
    assert bench.main(["--from-json", str(tmp_path / "missing.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_reference_over_the_first_images_is_compared_per_image():
    full, part = _result(4000, 10.0), _result(4000, 10.0)
    part["reference"] = {"images": 400, "load_s": 1.0, "forward_s": 1.0}  # a tenth, same rate
    assert bench.activation_ratio(part) == pytest.approx(bench.activation_ratio(full)) == 2.0
    part["reference"]["forward_s"] = 3.0  # twice as slow per image: half the ratio
    assert bench.activation_ratio(part) == pytest.approx(1.0)


def test_several_json_files_are_merged_by_size(tmp_path, capsys):
    small, large = tmp_path / "small.json", tmp_path / "large.json"
    small.write_text(bench.json.dumps([_result(400, 1.0), _result(40000, 100.0)]))
    large.write_text(bench.json.dumps([_result(4000, 10.0)]))
    assert bench.main(["--from-json", str(large), str(small), "--extrapolate", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    sizes = next(line for line in out if line.startswith("images "))
    assert sizes.split()[1:4] == ["400", "4,000", "40,000"]
    assert bench.main(["--from-json", str(small), str(small)]) == 2
    assert "400 images appear in two --json files" in capsys.readouterr().err
