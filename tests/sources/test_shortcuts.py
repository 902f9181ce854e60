"""Planted shortcuts in the shapes world (``carto_assets.sources.shapes``, "Planted shortcuts"):
the planted class gets its value at the share asked, the value stays at a quarter of its uniform
rate elsewhere, and a world without shortcuts is drawn exactly as before they existed."""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import pytest

from carto_assets.sources.datasets import ShapesSource
from carto_assets.sources.shapes import (
    CLASS_NAMES,
    CONCEPTS,
    SHORTCUT_ELSEWHERE,
    ShapeScene,
    ShapesWorld,
    Shortcut,
    render,
    sample_scene,
)

SEED = 1
N_SCENES = 2000
DOTS = Shortcut("heart", "texture", "dots", 1.0)

#: sha256 over the pixels and the scene of these images, computed with the code before shortcuts
#: existed (commit d867812): a world without shortcuts must still draw and render them exactly.
PINNED_IMAGES = ((0, 0), (0, 1), (0, 7), (0, 123), (3, 4999))
PINNED_SHA256 = "1b6915418cb7ee8cad6c562a9334b954dc278ba3c8de48e4d6e23be6b679410d"


def _scenes(*shortcuts: Shortcut) -> list[ShapeScene]:
    return [sample_scene(SEED, i, shortcuts) for i in range(N_SCENES)]


def _assert_rate(count: int, n: int, p: float) -> None:
    """``count`` of ``n`` draws is within four binomial standard deviations of ``n p``."""
    tolerance = 4.0 * math.sqrt(n * p * (1.0 - p))
    assert abs(count - n * p) <= tolerance, (
        f"{count}/{n} draws, expected {n * p:.1f} ± {tolerance:.1f}"
    )


def test_a_world_without_shortcuts_renders_the_images_it_rendered_before() -> None:
    digest = hashlib.sha256()
    for seed, index in PINNED_IMAGES:
        scene = sample_scene(seed, index)
        assert scene == sample_scene(seed, index, ())
        digest.update(render(scene, 64).tobytes())
        digest.update(repr(scene).encode())
    assert digest.hexdigest() == PINNED_SHA256


def test_planting_keeps_every_image_s_class() -> None:
    # The shape is drawn first, with the same random call: the labels do not move.
    planted, plain = _scenes(DOTS), _scenes()
    assert [s.shape for s in planted] == [s.shape for s in plain]


def test_share_one_gives_every_image_of_the_class_the_value_and_a_quarter_rate_elsewhere() -> None:
    scenes = _scenes(DOTS)
    hearts = [s for s in scenes if s.shape == "heart"]
    others = [s for s in scenes if s.shape != "heart"]
    assert hearts and all(s.texture == "dots" for s in hearts)
    textures = Counter(s.texture for s in others)
    weights = {v: SHORTCUT_ELSEWHERE if v == "dots" else 1.0 for v in CONCEPTS["texture"]}
    total = sum(weights.values())
    for value, weight in weights.items():
        _assert_rate(textures[value], len(others), weight / total)
    # A quarter of the uniform rate 1/7: rare, but present, so the words can tell it apart.
    assert 0 < textures["dots"] / len(others) < 0.5 / len(CONCEPTS["texture"])


def test_share_half_plants_the_value_in_half_the_class() -> None:
    scenes = _scenes(Shortcut("heart", "texture", "dots", 0.5))
    hearts = [s for s in scenes if s.shape == "heart"]
    # Half outright; the other half draws among the six other textures, never dots.
    _assert_rate(sum(s.texture == "dots" for s in hearts), len(hearts), 0.5)
    rest = Counter(s.texture for s in hearts if s.texture != "dots")
    assert set(rest) == set(CONCEPTS["texture"]) - {"dots"}
    others = [s for s in scenes if s.shape != "heart"]
    _assert_rate(
        sum(s.texture == "dots" for s in others),
        len(others),
        SHORTCUT_ELSEWHERE / (6 + SHORTCUT_ELSEWHERE),
    )


def test_share_zero_keeps_the_value_out_of_the_class() -> None:
    scenes = _scenes(Shortcut("heart", "texture", "dots", 0.0))
    hearts = [s for s in scenes if s.shape == "heart"]
    assert hearts and not any(s.texture == "dots" for s in hearts)


def test_two_classes_planted_on_one_concept_and_concepts_without_shortcuts() -> None:
    sand = Shortcut("arrow", "background", "sand", 1.0)
    slate = Shortcut("circle", "background", "slate", 1.0)
    scenes = _scenes(DOTS, sand, slate)
    assert all(s.background == "sand" for s in scenes if s.shape == "arrow")
    assert all(s.background == "slate" for s in scenes if s.shape == "circle")
    # A heart draws the background with both values planted for other classes down-weighted.
    hearts = [s for s in scenes if s.shape == "heart"]
    backgrounds = Counter(s.background for s in hearts)
    for value in ("sand", "slate"):
        _assert_rate(
            backgrounds[value], len(hearts), SHORTCUT_ELSEWHERE / (2 + 2 * SHORTCUT_ELSEWHERE)
        )
    # Colour has no shortcut: uniform in every class.
    colours = Counter(s.colour for s in hearts)
    for value in CONCEPTS["colour"]:
        _assert_rate(colours[value], len(hearts), 1 / len(CONCEPTS["colour"]))


def test_the_world_s_concepts_are_the_values_it_renders() -> None:
    world = ShapesWorld(60, image_size=32, seed=SEED, shortcuts=[DOTS])
    rows = world.concept_rows()
    for index in range(len(world)):
        scene = sample_scene(SEED, index, [DOTS])
        assert world.scene(index) == scene
        assert [(i, c, v) for i, c, v in rows if i == index] == [
            (index, c, v) for c, v in scene.concepts().items()
        ]
    hearts = [i for i in range(len(world)) if world.scene(i).shape == "heart"]
    assert hearts and all(
        ("texture", "dots") in {(c, v) for i, c, v in rows if i == h} for h in hearts
    )
    source = ShapesSource(60, image_size=32, seed=SEED, shortcuts=[DOTS])
    assert source.concept_rows() == rows
    assert (source.load(hearts[0]) == render(world.scene(hearts[0]), 32)).all()
    assert [r.label_name for r in source.records()] == [world.scene(i).shape for i in range(60)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("hart", "texture", "dots", 1.0), "unknown class 'hart'; the shape classes are circle"),
        (("heart", "shape", "circle", 1.0), "'shape' is the class itself and cannot be planted"),
        (("heart", "watermark", "yes", 1.0), "unknown concept 'watermark'; plant one of colour"),
        (("heart", "texture", "spots", 1.0), "'spots' is not a value of texture; its values are"),
        (("heart", "texture", "dots", 1.5), "share must be a number in [0, 1], got 1.5"),
    ],
)
def test_a_shortcut_the_world_cannot_plant_is_refused(args, message) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Shortcut(*args)


def test_two_shortcuts_on_one_class_and_concept_are_refused() -> None:
    with pytest.raises(ValueError, match="two shortcuts plant texture in class 'heart'"):
        ShapesWorld(10, shortcuts=[DOTS, Shortcut("heart", "texture", "plain", 0.5)])
    ShapesWorld(10, shortcuts=[DOTS, Shortcut("heart", "colour", "red", 0.5)])  # another concept


def test_every_class_can_be_planted() -> None:
    for name in CLASS_NAMES:
        planted = Shortcut(name, "colour", "red", 1.0)
        scenes = [sample_scene(SEED, i, [planted]) for i in range(200)]
        assert all(s.colour == "red" for s in scenes if s.shape == name)
