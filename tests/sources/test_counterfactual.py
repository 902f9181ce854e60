"""The counterfactual renderer (``shapes.counterfactual``, ``ImageSource.counterfactual``): only
the named concept changes, in the scene and in the pixels, and the draw is seeded."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, binary_erosion

from carto_assets.sources.datasets import DigitsSource, ShapesSource
from carto_assets.sources.shapes import (
    CHANGEABLE_CONCEPTS,
    CONCEPTS,
    ShapeScene,
    counterfactual,
    object_coverage,
    render,
    sample_scene,
)

SIZE = 64
SCENES = [sample_scene(5, i) for i in range(40)]

#: The scene's fields besides the concepts that each change may move (geometry only).
MOVES = {
    "colour": set(),
    "texture": set(),
    "background": set(),
    "size": {"radius", "centre_x", "centre_y"},
    "position": {"centre_x", "centre_y"},
}


def _changes(scene: ShapeScene, concept: str):
    for value in CONCEPTS[concept]:
        if value != getattr(scene, concept):
            yield value, counterfactual(scene, concept, value)


def _mask(scene: ShapeScene) -> np.ndarray:
    return object_coverage(scene, SIZE) > 0.5


@pytest.mark.parametrize("concept", CHANGEABLE_CONCEPTS)
def test_only_the_named_concept_changes(concept: str) -> None:
    for scene in SCENES:
        for value, changed in _changes(scene, concept):
            before, after = scene.concepts(), changed.concepts()
            assert after[concept] == value
            assert {k for k in before if before[k] != after[k]} == {concept}
            moved = {
                f.name
                for f in dataclasses.fields(ShapeScene)
                if f.name not in CONCEPTS and getattr(scene, f.name) != getattr(changed, f.name)
            }
            assert moved <= MOVES[concept]


@pytest.mark.parametrize("concept", ["texture", "background"])
def test_a_background_change_leaves_the_object_s_pixels_alone(concept: str) -> None:
    for scene in SCENES:
        # The object's pixels: one pixel in from its mask, and wholly covered (a sharp tip
        # leaves part-covered pixels even there), so no anti-aliased edge mixes in background.
        inside = binary_erosion(_mask(scene)) & (object_coverage(scene, SIZE) == 1.0)
        assert inside.sum() > 10
        image = render(scene, SIZE)
        for _, changed in _changes(scene, concept):
            assert (render(changed, SIZE)[inside] == image[inside]).all()


def test_a_colour_change_leaves_the_background_s_pixels_alone() -> None:
    for scene in SCENES:
        # The background's pixels: one pixel out from the mask, and not touched at all (a
        # sharp tip reaches into pixels beyond that), so no anti-aliased edge mixes in colour.
        outside = ~binary_dilation(_mask(scene)) & (object_coverage(scene, SIZE) == 0.0)
        image = render(scene, SIZE)
        for _, changed in _changes(scene, "colour"):
            new = render(changed, SIZE)
            assert (new[outside] == image[outside]).all()
            assert not (new[~outside] == image[~outside]).all()


@pytest.mark.parametrize("concept", ["size", "position"])
def test_size_and_position_move_the_object_and_keep_its_look(concept: str) -> None:
    for scene in SCENES:
        for value, changed in _changes(scene, concept):
            assert (changed.colour, changed.texture) == (scene.colour, scene.texture)
            assert not (_mask(changed) == _mask(scene)).all()
            # The same rule the world samples by: a scene it could have drawn.
            assert changed.radius == pytest.approx(scene.radius) or concept == "size"
            back = counterfactual(changed, concept, getattr(scene, concept))
            assert back.radius == pytest.approx(scene.radius)
            assert back.centre_x == pytest.approx(scene.centre_x)
            assert back.centre_y == pytest.approx(scene.centre_y)
            assert value == getattr(changed, concept)


def test_size_and_position_land_in_their_ranges() -> None:
    areas: dict[str, list[float]] = {v: [] for v in CONCEPTS["size"]}
    for scene in SCENES:
        for value, changed in _changes(scene, "size"):
            areas[value].append(float(_mask(changed).mean()))
        for value, changed in _changes(scene, "position"):
            dx, dy = changed.centre_x - 0.5, changed.centre_y - 0.5
            if value == "centre":
                assert max(abs(dx), abs(dy)) < 0.05
            else:
                assert dx < 0 if "left" in value else dx > 0
                assert dy < 0 if "top" in value else dy > 0
                # Never clipped: the enclosing circle stays inside the frame.
                assert changed.radius <= min(changed.centre_x, 1 - changed.centre_x)
                assert changed.radius <= min(changed.centre_y, 1 - changed.centre_y)
    assert max(areas["small"]) < min(areas["large"])
    assert np.mean(areas["small"]) < np.mean(areas["medium"]) < np.mean(areas["large"])


def test_a_concept_or_value_that_cannot_change_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot change concept 'shape'"):
        counterfactual(SCENES[0], "shape", "circle")
    with pytest.raises(ValueError, match="'huge' is not a value of size"):
        counterfactual(SCENES[0], "size", "huge")


def test_the_source_draws_another_value_per_image_seeded() -> None:
    source = ShapesSource(30, image_size=32, seed=5)
    ids = [3, 7, 11, 20]
    for concept in CHANGEABLE_CONCEPTS:
        assert source.can_change(concept)
        pixels, values = source.counterfactual(ids, concept, seed=9)
        assert pixels.shape == (4, 32, 32, 3) and pixels.dtype == np.uint8
        for row, (index, value) in enumerate(zip(ids, values, strict=True)):
            scene = source.world.scene(index)
            assert value != getattr(scene, concept) and value in CONCEPTS[concept]
            np.testing.assert_array_equal(
                pixels[row], render(counterfactual(scene, concept, value), 32)
            )
        again, same = source.counterfactual(ids[::-1], concept, seed=9)
        np.testing.assert_array_equal(again, pixels[::-1])
        assert same == values[::-1]
    drawn = {tuple(source.counterfactual(range(30), "texture", seed=s)[1]) for s in range(3)}
    assert len(drawn) == 3
    assert not source.can_change("shape")
    with pytest.raises(ValueError, match="cannot change concept 'shape'"):
        source.counterfactual(ids, "shape", seed=0)


def test_a_source_that_cannot_render_says_so() -> None:
    digits = DigitsSource(image_size=16, limit=10)
    assert not digits.can_change("colour")
    assert digits.counterfactual([0, 1], "colour", seed=0) is None
