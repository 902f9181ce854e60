"""carto check: every problem knowable before the forward pass, one line each, no Dagster."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from carto_assets.cli.check import preflight
from carto_assets.cli.main import main
from carto_assets.study import study_from_dict

SHAPES = {"kind": "shapes", "size": 240, "image_size": 32}


def problems(raw: dict, base_dir=".") -> dict[str, str]:
    return {p.field: p.line() for p in preflight(study_from_dict(raw, base_dir=base_dir))}


def test_a_valid_study_has_no_problems():
    assert problems({"dataset": SHAPES, "top_k": 8}) == {}
    assert (
        problems({"model": "torchvision:resnet18", "layers": ["layer1"], "dataset": SHAPES}) == {}
    )


def test_unknown_model_and_layer_are_named_with_the_fix():
    found = problems({"model": "torchvision:resnet181", "dataset": SHAPES})
    assert "unknown torchvision model 'resnet181'; did you mean resnet18" in found["model"]
    found = problems({"layers": ["layer9"], "dataset": SHAPES})
    assert "builtin has no layer 'layer9'" in found["layers"]
    assert "`carto layers builtin`" in found["layers"]
    found = problems({"model": "torchvision:resnet18", "layers": ["layer9"], "dataset": SHAPES})
    assert "did you mean layer4, layer3, layer2, layer1" in found["layers"]


def test_empty_image_folder_and_top_k_over_the_image_count(tmp_path):
    (tmp_path / "imgs" / "cats").mkdir(parents=True)
    found = problems({"dataset": {"kind": "imagefolder", "path": "imgs"}}, base_dir=tmp_path)
    assert "no readable image" in found["dataset.path"]
    assert "<class name>/<image file>" in found["dataset.path"]
    found = problems({"dataset": {"kind": "digits"}, "top_k": 2000})
    assert "2000 exceeds the 1797 images; set top_k to at most 1797" in found["top_k"]


@pytest.mark.parametrize("content", ["garbage", "pickled_module", "wrong_model"])
def test_checkpoints_that_are_not_a_fitting_state_dict(tmp_path, content):
    ckpt = tmp_path / "w.pt"
    if content == "garbage":
        ckpt.write_bytes(b"not a checkpoint")
    elif content == "pickled_module":
        torch.save(torch.nn.Linear(2, 2), ckpt)  # a whole pickled module, not a state dict
    else:
        torch.save(torch.nn.Linear(2, 2).state_dict(), ckpt)
    found = problems({"model": "torchvision:resnet18", "weights": str(ckpt), "dataset": SHAPES})
    assert str(ckpt) in found["weights"]
    assert "weights_only=False" not in found["weights"]
    assert "state_dict" in found["weights"]


def test_check_prints_one_line_per_problem_and_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    study = tmp_path / "s.yaml"
    study.write_text(
        "model: torchvision:notamodel\nlayers: [layer9]\n"
        "dataset: {kind: digits, size: 50}\ntop_k: 60\n"
    )
    assert main(["check", "--study", str(study)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("carto: study field 'model': unknown torchvision model 'notamodel'")
    assert err[1].startswith("carto: study field 'top_k': 60 exceeds the 50 images")
    assert len(err) == 2  # no traceback was logged, so no log file is named

    (tmp_path / "imgs").mkdir()
    study.write_text("model: torchvision:resnet18\ndataset: {kind: imagefolder, path: imgs}\n")
    assert main(["check", "--study", str(study)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("carto: study field 'dataset.path': no readable image in ")
    assert err[1].startswith("carto: details in ") and err[1].endswith(".log")
    log_file = Path(err[1].removeprefix("carto: details in "))
    assert "Traceback" in log_file.read_text()


def test_check_imports_no_dagster():
    code = (
        "import sys; from carto_assets.cli.main import main; rc = main(['check']); "
        "assert rc == 0, rc; "
        "assert not [m for m in sys.modules if m.split('.')[0] == 'dagster'], 'dagster imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_feature_layers_must_be_mapped_also_with_auto_layers():
    found = problems({"dataset": SHAPES, "features": {"layers": ["nolayer"]}})
    assert found["features.layers"] == (
        "study field 'features.layers': 'nolayer' not among the mapped layers (the auto layer "
        "set: block1, block2, block3, block4); list mapped layers, e.g. features: "
        "{layers: [block4]}"
    )
    assert problems({"dataset": SHAPES, "features": {"layers": ["block3"]}}) == {}
    found = problems(
        {"model": "torchvision:resnet18", "dataset": SHAPES, "features": {"layers": ["fc"]}}
    )
    expected = "'fc' not among the mapped layers (the auto layer set: layer1"
    assert expected in found["features.layers"]


def test_feature_k_must_fit_each_layers_features():
    # The builtin CNN's block1 has 32 channels: 2 x 32 = 64 features, block4 more.
    fits = {"layers": ["block1", "block4"], "expansion": 2, "k": 64}
    assert problems({"dataset": SHAPES, "features": fits}) == {}
    found = problems({"dataset": SHAPES, "features": {**fits, "k": 65}})
    assert found == {
        "features.k": "study field 'features.k': 65 exceeds the 64 features of layer 'block1' "
        "(expansion 2 x 32 channels); set k to at most 64"
    }
    found = problems(
        {"dataset": SHAPES, "layers": ["block1"], "features": {"layers": ["block1"], "k": 65}}
    )
    assert list(found) == ["features.k"]


def test_a_database_folder_that_cannot_be_written_is_named(tmp_path):
    found = problems({"dataset": SHAPES, "database": "/proc/carto/x.duckdb"})
    assert found["database"].startswith("study field 'database': cannot write /proc/carto: ")
    assert "point database at a writable folder" in found["database"]
    (tmp_path / "afile").write_text("")
    found = problems(
        {"dataset": SHAPES, "database": "afile/sub/x.duckdb", "views_dir": "afile/views"},
        base_dir=tmp_path,
    )
    assert "afile is a file, not a folder" in found["database"]
    assert "views_dir" in found
    # Checking leaves nothing behind, and a creatable folder is fine.
    assert problems({"dataset": SHAPES, "database": "new/dir/x.duckdb"}, base_dir=tmp_path) == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_shortcut_the_shapes_world_cannot_plant_is_named_one_line_each():
    planted = [
        {"class": "heart", "concept": "texture", "value": "dots", "share": 1.0},
        {"class": "hart", "concept": "colour", "value": "red", "share": 1.0},
        {"class": "star", "concept": "shape", "value": "circle", "share": 1.0},
        {"class": "star", "concept": "watermark", "value": "yes", "share": 1.0},
        {"class": "arrow", "concept": "background", "value": "snow", "share": 1.0},
    ]
    found = problems({"dataset": {**SHAPES, "shortcuts": planted}, "top_k": 8})
    assert found == {
        "dataset.shortcuts.1.class": "study field 'dataset.shortcuts.1.class': unknown class "
        "'hart'; the shape classes are circle, square, triangle, star, cross, heart, crescent, "
        "arrow",
        "dataset.shortcuts.2.concept": "study field 'dataset.shortcuts.2.concept': 'shape' is "
        "the class itself and cannot be planted; plant one of colour, texture, background, "
        "size, position",
        "dataset.shortcuts.3.concept": "study field 'dataset.shortcuts.3.concept': unknown "
        "concept 'watermark'; plant one of colour, texture, background, size, position",
        "dataset.shortcuts.4.value": "study field 'dataset.shortcuts.4.value': 'snow' is not a "
        "value of background; its values are dark, slate, sand, light",
    }
