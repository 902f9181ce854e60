"""Tests for the procedural shapes world (``carto_assets.sources.shapes``)."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter

import numpy as np
import pytest

from carto_assets.sources.shapes import (
    BACKGROUND_RGB,
    CLASS_NAMES,
    COLOUR_RGB,
    CONCEPTS,
    ShapeScene,
    ShapesWorld,
    background_layer,
    object_coverage,
    render,
    sample_scene,
)

SEED = 1234
N_SAMPLES = 2000


@pytest.fixture(scope="module")
def scenes() -> list[ShapeScene]:
    return [sample_scene(SEED, i) for i in range(N_SAMPLES)]


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    distances = [np.linalg.norm(rgb - np.asarray(palette[name], dtype=float)) for name in names]
    return names[int(np.argmin(distances))]


# ----------------------------------------------------------------------------- determinism


def test_same_seed_and_index_give_identical_pixels() -> None:
    for index in (0, 1, 17, 999):
        first, second = sample_scene(7, index), sample_scene(7, index)
        assert first == second
        np.testing.assert_array_equal(render(first), render(second))


def test_different_seed_or_index_gives_different_pixels() -> None:
    for index in range(5):
        reference = render(sample_scene(0, index))
        assert not np.array_equal(reference, render(sample_scene(1, index)))
        assert not np.array_equal(reference, render(sample_scene(0, index + 100)))


def test_image_is_independent_of_world_size_and_access_order() -> None:
    small, large = ShapesWorld(10, seed=3), ShapesWorld(5000, seed=3)
    forward = large.images([3, 7, 9])
    backward = large.images([9, 7, 3])
    np.testing.assert_array_equal(small.image(3), large.image(3))
    np.testing.assert_array_equal(forward, backward[::-1])
    np.testing.assert_array_equal(large.image(4321), render(sample_scene(3, 4321)))


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize("size", [16, 31, 64, 100, 256])
def test_render_shape_dtype_and_content(size: int) -> None:
    scene = sample_scene(SEED, 5)
    image = render(scene, size)
    assert image.shape == (size, size, 3)
    assert image.dtype == np.uint8
    coverage = object_coverage(scene, size)
    assert coverage.shape == (size, size)
    assert coverage.dtype == np.float32
    assert coverage.min() >= 0.0 and coverage.max() <= 1.0
    assert coverage.max() > 0.99  # the object is actually drawn at every size


def test_world_images_batch_matches_single_images() -> None:
    world = ShapesWorld(20, image_size=32, seed=SEED)
    batch = world.images(np.arange(5, 12))
    assert batch.shape == (7, 32, 32, 3)
    assert batch.dtype == np.uint8
    for row, index in enumerate(range(5, 12)):
        np.testing.assert_array_equal(batch[row], world.image(index))
    assert world.images([]).shape == (0, 32, 32, 3)
    assert len(world) == 20


def test_edges_are_anti_aliased() -> None:
    partial = [
        np.mean((c > 0.02) & (c < 0.98))
        for c in (object_coverage(sample_scene(SEED, i)) for i in range(20))
    ]
    assert min(partial) > 0.0  # every object has fractional-coverage edge pixels


# ----------------------------------------------------------------------------- concepts


def test_concepts_keys_and_values(scenes: list[ShapeScene]) -> None:
    seen: dict[str, set[str]] = {name: set() for name in CONCEPTS}
    for scene in scenes:
        concepts = scene.concepts()
        assert list(concepts) == list(CONCEPTS)
        for name, value in concepts.items():
            assert value in CONCEPTS[name]
            seen[name].add(value)
    for name, values in CONCEPTS.items():
        assert seen[name] == set(values), f"concept {name!r} misses {set(values) - seen[name]}"


def test_concept_values_are_all_strings_and_unique() -> None:
    assert CONCEPTS["shape"] == CLASS_NAMES
    assert 6 <= len(CLASS_NAMES) <= 8
    for name, values in CONCEPTS.items():
        assert all(isinstance(v, str) for v in values), name
        assert len(set(values)) == len(values) >= 2, name


def test_shapes_are_balanced(scenes: list[ShapeScene]) -> None:
    counts = Counter(scene.shape for scene in scenes)
    expected = N_SAMPLES / len(CLASS_NAMES)
    for shape in CLASS_NAMES:
        assert 0.75 * expected < counts[shape] < 1.25 * expected, (shape, counts[shape])


def test_concepts_are_not_confounded(scenes: list[ShapeScene]) -> None:
    # Independent uniform sampling fills every cell of every pairwise contingency table with
    # roughly its expected count; a confounded pair would leave cells empty or lopsided.
    for first, second in itertools.combinations(CONCEPTS, 2):
        counts = Counter((getattr(s, first), getattr(s, second)) for s in scenes)
        expected = N_SAMPLES / (len(CONCEPTS[first]) * len(CONCEPTS[second]))
        for cell in itertools.product(CONCEPTS[first], CONCEPTS[second]):
            assert counts[cell] > 0.4 * expected, (first, second, cell, counts[cell], expected)


def test_labels_match_shape() -> None:
    world = ShapesWorld(200, seed=SEED)
    labels = world.labels()
    assert labels.shape == (200,)
    for index in range(200):
        assert CLASS_NAMES[world.label(index)] == world.scene(index).shape
        assert labels[index] == world.label(index)


def test_concept_rows() -> None:
    world = ShapesWorld(30, seed=SEED)
    rows = world.concept_rows()
    assert len(rows) == 30 * len(CONCEPTS)
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    for index in range(30):
        mine = {concept: value for i, concept, value in rows if i == index}
        assert mine == world.scene(index).concepts()


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("n_images", [0, -3])
def test_world_rejects_bad_n_images(n_images: int) -> None:
    with pytest.raises(ValueError, match=rf"n_images must be an integer >= 1, got {n_images}"):
        ShapesWorld(n_images)


@pytest.mark.parametrize("image_size", [8, 15, 513, 4096])
def test_world_rejects_bad_image_size(image_size: int) -> None:
    with pytest.raises(
        ValueError, match=rf"image_size must be an integer in \[16, 512\], got {image_size}"
    ):
        ShapesWorld(10, image_size=image_size)


def test_render_rejects_bad_image_size() -> None:
    with pytest.raises(ValueError, match=r"image_size must be an integer in \[16, 512\], got 15"):
        render(sample_scene(0, 0), 15)


def test_bad_types_and_seeds_are_rejected() -> None:
    with pytest.raises(TypeError, match="n_images"):
        ShapesWorld(2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="image_size"):
        ShapesWorld(2, image_size=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        ShapesWorld(2, seed=-1)
    with pytest.raises(ValueError, match="index must be an integer >= 0, got -2"):
        sample_scene(0, -2)


@pytest.mark.parametrize("index", [-1, 10, 11])
def test_world_index_out_of_range(index: int) -> None:
    world = ShapesWorld(10)
    with pytest.raises(IndexError, match=rf"index={index}"):
        world.scene(index)
    with pytest.raises(IndexError):
        world.images([0, index])


def test_scene_rejects_unknown_concept_value() -> None:
    scene = sample_scene(0, 0)
    with pytest.raises(ValueError, match="colour='mauve'"):
        dataclasses.replace(scene, colour="mauve")
    with pytest.raises(ValueError, match="radius"):
        dataclasses.replace(scene, radius=0.0)


# ----------------------------------------------------------------------------- pixels


def test_object_colour_is_the_named_colour(scenes: list[ShapeScene]) -> None:
    for scene in scenes[:150]:
        image = render(scene).astype(float)
        inside = object_coverage(scene) > 0.95
        assert inside.sum() >= 4, scene
        assert _nearest(image[inside].mean(axis=0), COLOUR_RGB) == scene.colour, scene


def test_background_is_the_named_tint(scenes: list[ShapeScene]) -> None:
    # Textures pull the mean towards mid-grey (a textured "light" can average close to
    # "sand"), so the tint itself is checked on the untextured pixels: the texture's
    # off-phase, which for every texture is the brightest (dark tints: darkest) mode.
    checked = 0
    for scene in scenes[:300]:
        image = render(scene).astype(float)
        outside = object_coverage(scene) == 0.0
        if scene.texture == "plain":
            colour = image[outside].mean(axis=0)
        else:
            pixels = image[outside]
            lum = pixels.mean(axis=1)
            dark = np.mean(BACKGROUND_RGB[scene.background]) < 128
            pick = lum <= np.quantile(lum, 0.1) if dark else lum >= np.quantile(lum, 0.9)
            colour = pixels[pick].mean(axis=0)
        assert _nearest(colour, BACKGROUND_RGB) == scene.background, scene
        checked += 1
    assert checked == 300


def test_size_orders_object_area(scenes: list[ShapeScene]) -> None:
    area: dict[str, list[float]] = {size: [] for size in CONCEPTS["size"]}
    for scene in scenes[:240]:
        filled = dataclasses.replace(scene, outline="filled")
        area[scene.size].append(float(object_coverage(filled).sum()))
    small, medium, large = (np.mean(area[s]) for s in ("small", "medium", "large"))
    assert small * 1.5 < medium and medium * 1.5 < large, (small, medium, large)


def test_outlined_objects_have_a_hole_inside_the_same_silhouette(
    scenes: list[ShapeScene],
) -> None:
    for shape in CLASS_NAMES:
        scene = next(s for s in scenes if s.shape == shape and s.size == "large")
        filled = object_coverage(dataclasses.replace(scene, outline="filled"), 128)
        outlined = object_coverage(dataclasses.replace(scene, outline="outlined"), 128)
        assert np.all(outlined <= filled + 1e-6), shape  # the stroke stays inside
        assert outlined.sum() < 0.8 * filled.sum(), shape
        assert outlined.sum() > 0.2 * filled.sum(), shape


def test_position_moves_the_object(scenes: list[ShapeScene]) -> None:
    for scene in scenes[:200]:
        coverage = object_coverage(dataclasses.replace(scene, outline="filled"))
        rows, cols = np.indices(coverage.shape) + 0.5
        cy = float((rows * coverage).sum() / coverage.sum()) / coverage.shape[0]
        cx = float((cols * coverage).sum() / coverage.sum()) / coverage.shape[1]
        if scene.position == "centre":
            assert abs(cx - 0.5) < 0.12 and abs(cy - 0.5) < 0.12, scene
        else:
            vertical, horizontal = scene.position.split("_")
            assert (cy < 0.5) == (vertical == "top"), scene
            assert (cx < 0.5) == (horizontal == "left"), scene
        # Nothing is clipped by the frame.
        assert coverage[0].max() < 0.5 and coverage[-1].max() < 0.5, scene
        assert coverage[:, 0].max() < 0.5 and coverage[:, -1].max() < 0.5, scene


def test_shapes_have_distinct_silhouettes() -> None:
    base = dataclasses.replace(
        sample_scene(0, 0),
        outline="filled",
        centre_x=0.5,
        centre_y=0.5,
        radius=0.3,
        rotation_deg=0.0,
    )
    masks = {
        shape: object_coverage(dataclasses.replace(base, shape=shape)) > 0.5
        for shape in CLASS_NAMES
    }
    for a, b in itertools.combinations(CLASS_NAMES, 2):
        iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
        assert iou < 0.85, (a, b, iou)


def test_textures_have_their_structure() -> None:
    base = sample_scene(0, 0)

    def layer(texture: str) -> np.ndarray:
        scene = dataclasses.replace(base, texture=texture, background="slate")
        return background_layer(scene, 64).mean(axis=2)

    assert np.ptp(layer("plain")) == 0.0
    horizontal, vertical = layer("stripes_h"), layer("stripes_v")
    # Horizontal stripes are constant along each row and vary down the columns.
    assert horizontal.std(axis=1).max() < 1e-3 < 10.0 < horizontal.std(axis=0).min()
    assert vertical.std(axis=0).max() < 1e-3 < 10.0 < vertical.std(axis=1).min()
    for texture in ("stripes_diag", "checker", "dots", "noise"):
        pattern = layer(texture)
        assert pattern.std() > 3.0, texture
        assert pattern.std(axis=0).mean() > 1.0 and pattern.std(axis=1).mean() > 1.0, texture
    # Texture stays subordinate: it never moves the tint more than its contrast.
    for texture in CONCEPTS["texture"]:
        values = layer(texture)
        assert np.ptp(values) <= base.texture_contrast + 1.0, texture
