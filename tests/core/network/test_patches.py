"""Receptive fields against analytic values, patch boxes around a known spot, PNG crops."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reference.patches import patch_box
from torch import nn

from carto_assets.core.network.hooks import capture
from carto_assets.core.network.patches import (
    crop_patch,
    crop_patches,
    decode_png,
    patch_boxes,
    receptive_field,
    receptive_fields,
)
from carto_assets.core.network.zoo import torchvision_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random_stack(*modules: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*modules)


@pytest.mark.parametrize(
    ("net", "layer", "expected"),
    [
        # Three 3x3 stride-1 convs: 1 + 3 * 2.
        (
            lambda: _random_stack(
                nn.Conv2d(3, 4, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(4, 4, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(4, 4, 3, padding=1),
                nn.ReLU(),
            ),
            "5",
            7,
        ),
        # Stride 2 first: 3, then each 3x3 adds 2 * 2.
        (
            lambda: _random_stack(
                nn.Conv2d(3, 4, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(4, 4, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(4, 4, 3, padding=1),
            ),
            "4",
            11,
        ),
        # 3x3 conv, 2x2/2 max pool, 3x3 conv: 3, 4, 4 + 2 * 2.
        (
            lambda: _random_stack(
                nn.Conv2d(3, 4, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(4, 4, 3, padding=1),
            ),
            "3",
            8,
        ),
        # Dilation 2: a 3x3 kernel spanning 5 pixels.
        (
            lambda: _random_stack(nn.Conv2d(3, 4, 3, padding=2, dilation=2)),
            "0",
            5,
        ),
        # A 7x7 stride-2 stem and a 3x3/2 max pool (the resnet stem): 7, then 7 + 2 * 2.
        (
            lambda: _random_stack(
                nn.Conv2d(3, 4, 7, stride=2, padding=3),
                nn.BatchNorm2d(4),
                nn.ReLU(),
                nn.MaxPool2d(3, stride=2, padding=1),
            ),
            "3",
            11,
        ),
    ],
)
def test_receptive_field_matches_analytic(net, layer, expected):
    rf = receptive_field(net(), layer, 32)
    assert rf.size_px == rf.height_px == rf.width_px == expected
    assert not rf.truncated


class _FunctionalPool(nn.Module):
    """A max pool called through torch.nn.functional, not a module."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.a(x), inplace=True)
        x = F.max_pool2d(x, 4)
        return self.b(x)


def test_receptive_field_sees_through_functional_max_pool():
    # A max pool routes the gradient to one element of its window, so measured as such the
    # field would be the conv's 3 px instead of 3 + (4 - 1).
    assert receptive_field(_FunctionalPool(), "b", 32).size_px == 6


def test_receptive_field_leaves_the_model_alone():
    net = _random_stack(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    receptive_field(net, "1", 16)
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_receptive_field_grows_the_canvas_and_flags_global_layers():
    net = _random_stack(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
    )
    small = receptive_field(net, "2", 6)  # 7 px field on a 6 px image
    assert small.size_px == 7 and small.canvas_px == 12 and not small.truncated
    assert small.stride_px == 1.0 and small.map_size == (6, 6)
    pooled = receptive_field(net, "3", 8)
    assert pooled.truncated and pooled.size_px == pooled.canvas_px == 16


def test_receptive_field_rejects_unknown_layer():
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['nope'\]"):
        receptive_field(nn.Sequential(nn.Conv2d(3, 3, 1)), "nope", 8)


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision_model("resnet18", "none")


@pytest.fixture(scope="module")
def googlenet():
    torch.manual_seed(0)
    return torchvision_model("googlenet", "none")


def test_receptive_field_resnet18(resnet18):
    # Stem 7 -> 11 after the max pool (stride 4); layer1 adds 4 convs x 2 x 4 = 43; layer2's
    # stride-2 conv adds 2 x 4 and three more convs 3 x 2 x 8 = 99.
    l1 = receptive_field(resnet18, "layer1", 64)
    l2 = receptive_field(resnet18, "layer2", 64)
    assert (l1.size_px, l2.size_px) == (43, 99)
    assert (l1.stride_px, l2.stride_px) == (4.0, 8.0)
    assert l2.canvas_px == 128 and not l2.truncated


def test_receptive_field_googlenet(googlenet):
    # torchvision's inception blocks use 3x3 (not 5x5) in branch 3: 27 after maxpool2 (stride
    # 8), +16 per block (3a: 43, 3b: 59), 3x3/2 max pool +16, inception4a +32.
    sizes = [
        receptive_field(googlenet, name, 96).size_px for name in ("inception3a", "inception4a")
    ]
    assert sizes == [43, 107]


def test_receptive_fields_of_googlenet_equal_one_layer_at_a_time(googlenet):
    # One pass per canvas for all layers: the same fields as one measure per layer, those that
    # grow the canvas (96 -> 192 px) and those truncated at its largest included.
    names = [f"inception{b}" for b in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")]
    together = receptive_fields(googlenet, names, 96)
    alone = {name: receptive_field(googlenet, name, 96) for name in names}
    assert together == alone
    assert {rf.canvas_px for rf in alone.values()} == {96, 192}
    assert any(rf.truncated for rf in alone.values())


class _InPlace(nn.Module):
    """Changes a map in place after it is read; ``side``: a head that takes that input size
    only (flattened), else any (pooled)."""

    def __init__(self, side: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(3, 4, 5, padding=2)
        self.pool = nn.Identity() if side else nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * side * side if side else 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        b = self.b(a)
        # After b has read it: a pass that goes on sees a map of a wider field (autograd
        # does not object: nothing saved a for its backward pass).
        a.add_(self.c(x))
        return self.head(self.pool(a + b).flatten(1))


def test_receptive_fields_where_the_whole_pass_fails_or_changes_a_map():
    net = _InPlace(side=4)
    fields = receptive_fields(net, ["a", "b"], 4)
    assert fields == {name: receptive_field(net, name, 4) for name in ("a", "b")}
    # Both grew to a canvas the head refuses, measured there each on its own.
    assert (fields["a"].size_px, fields["b"].size_px) == (3, 5)
    assert fields["a"].canvas_px == fields["b"].canvas_px == 8
    # A pass through the whole network: "a" is measured as it was made, not as changed.
    net = _InPlace()
    fields = receptive_fields(net, ["a", "b"], 6)
    assert fields == {name: receptive_field(net, name, 6) for name in ("a", "b")}
    assert (fields["a"].size_px, fields["a"].canvas_px) == (3, 6)
    assert receptive_fields(net, [], 6) == {}


def test_patch_box_window_bounds_and_shift():
    # Centre cell, window inside the image.
    assert patch_box(3, 3, 8, 8, 64, 16) == (20, 20, 36, 36)
    # A corner cell: shifted inside, same size.
    top, left, bottom, right = patch_box(0, 7, 8, 8, 64, 24)
    assert (top, bottom - top, right - left, right) == (0, 24, 24, 64)
    # Tiny windows grow to 1/8 of the image, huge ones shrink to it.
    box = patch_box(4, 4, 8, 8, 64, 3)
    assert box[2] - box[0] == 8 and box[3] - box[1] == 8
    assert patch_box(1, 6, 8, 8, 64, 500) == (0, 0, 64, 64)
    # Non-square image: the square side is bounded by the shorter side.
    top, left, bottom, right = patch_box(0, 0, 4, 8, (32, 64), 100)
    assert (bottom - top, right - left) == (32, 32)
    vec = patch_boxes(np.array([3, 0]), np.array([3, 7]), 8, 8, 64, 16)
    assert vec.shape == (2, 4) and tuple(vec[0]) == (20, 20, 36, 36)
    with pytest.raises(ValueError, match="outside the 8x8 map"):
        patch_boxes(np.array([8]), np.array([0]), 8, 8, 64, 16)


def _one_box(y, x, map_h, map_w, size, window_px, offset_px):
    """``patch_boxes`` for a single cell, as a tuple."""
    box = patch_boxes(
        np.array([y]), np.array([x]), map_h, map_w, size, window_px, offset_px=offset_px
    )
    return tuple(int(v) for v in box[0])


@pytest.mark.parametrize("size", [64, 60, (32, 48), (50, 37)])
def test_patch_boxes_match_the_scalar_reference(size):
    rng = np.random.default_rng(0)
    for map_h, map_w in ((1, 1), (7, 7), (8, 8), (13, 5)):
        ys = rng.integers(0, map_h, 40)
        xs = rng.integers(0, map_w, 40)
        for window_px in (1, 8, 13, 24, 500):
            for offset in ((0.0, 0.0), (0.5, -0.5), (-3.25, 1.75)):
                got = patch_boxes(ys, xs, map_h, map_w, size, window_px, offset_px=offset)
                want = [
                    patch_box(int(y), int(x), map_h, map_w, size, window_px, offset_px=offset)
                    for y, x in zip(ys, xs)
                ]
                assert got.dtype == np.int64
                assert [tuple(row) for row in got.tolist()] == want


class _Blur(nn.Module):
    """Binomial 3x3 blurs, each with a chosen stride: a single maximum right at a bright spot."""

    def __init__(self, strides: tuple[int, ...]) -> None:
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        kernel = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3).clone()
        for i, s in enumerate(strides):
            conv = nn.Conv2d(3, 3, 3, stride=s, padding=1, groups=3, bias=False)
            conv.weight.data.copy_(kernel)
            self.add_module(f"c{i}", conv)
        self.n = len(strides)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n):
            x = getattr(self, f"c{i}")(x)
        return x


def _spot_image(size: int, sy: int, sx: int) -> np.ndarray:
    img = np.full((size, size, 3), 20, np.uint8)
    img[sy, sx] = 255
    return img


def _argmax_cell(net: nn.Module, layer: str, img: np.ndarray) -> tuple[int, int, int, int]:
    with capture(net, [layer]) as maps, torch.no_grad():
        net(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)
    out = maps[layer][0, 0]
    h, w = out.shape
    flat = int(out.argmax())
    return flat // w, flat % w, h, w


@pytest.mark.parametrize("size", [64, 60])
@pytest.mark.parametrize("layer", ["c0", "c1", "c2", "c3"])
def test_patch_box_centres_on_the_spot(size, layer):
    net = _Blur((1, 2, 2, 1)).eval()
    rf = receptive_field(net, layer, size)
    rng = np.random.default_rng([size, int(layer[1:])])
    for sy, sx in rng.integers(6, size - 6, size=(6, 2)):
        img = _spot_image(size, int(sy), int(sx))
        y, x, h, w = _argmax_cell(net, layer, img)
        top, left, bottom, right = _one_box(y, x, h, w, size, rf.size_px, rf.offset_px)
        assert top <= sy < bottom and left <= sx < right
        # The argmax cell is the one whose field centre is nearest the spot: at most half a
        # cell away, plus one pixel for rounding the box.
        tol = rf.stride_px / 2 + 1
        assert abs((top + bottom) / 2 - (sy + 0.5)) <= tol
        assert abs((left + right) / 2 - (sx + 0.5)) <= tol
        patch = decode_png(crop_patch(img, (top, left, bottom, right), out_size=32))
        py, px = np.unravel_index(patch[..., 0].argmax(), patch.shape[:2])
        scale = 32 / (bottom - top)
        assert abs(py + 0.5 - (sy + 0.5 - top) * scale) <= scale + 1
        assert abs(px + 0.5 - (sx + 0.5 - left) * scale) <= scale + 1


@pytest.mark.parametrize("layer", ["c0", "c1", "c2"])
def test_patch_box_exact_for_spots_on_cell_centres(layer):
    # With the measured offset a spot on a cell's field centre gets a box centred on it.
    size = 64
    net = _Blur((1, 2, 2)).eval()
    rf = receptive_field(net, layer, size)
    stride = int(rf.stride_px)
    for cell in (3, 5, 9):
        s = cell * stride  # the field of cell `cell` is centred on pixel cell * stride
        img = _spot_image(size, s, s)
        y, x, h, w = _argmax_cell(net, layer, img)
        assert (y, x) == (cell, cell)
        top, left, bottom, right = _one_box(y, x, h, w, size, rf.size_px, rf.offset_px)
        assert abs((top + bottom) / 2 - (s + 0.5)) <= 1
        assert abs((left + right) / 2 - (s + 0.5)) <= 1


def test_crop_patch_png_roundtrip():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    for out_size in (16, 64):
        data = crop_patch(img, (5, 10, 25, 30), out_size=out_size)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert decode_png(data).shape == (out_size, out_size, 3)
    # Same size: pixels survive exactly.
    assert np.array_equal(decode_png(crop_patch(img, (0, 0, 20, 20), out_size=20)), img[:20, :20])
    many = crop_patches([img, img[::-1]], [1, 0], np.array([[0, 0, 8, 8], [2, 2, 12, 12]]), 8)
    assert [decode_png(p).shape for p in many] == [(8, 8, 3), (8, 8, 3)]
    assert np.array_equal(decode_png(many[0]), img[::-1][:8, :8])


def test_crop_patches_repeated_pairs_encoded_once_same_bytes():
    # Against one crop_patch per pair: the same box on another image, another box on the same
    # image and exact repeats, split over two calls sharing one dict of encoded pairs.
    rng = np.random.default_rng(1)
    images = {
        7: rng.integers(0, 256, (30, 30, 3), np.uint8),
        9: rng.integers(0, 256, (30, 30, 3), np.uint8),
    }
    ids = np.array([7, 9, 7, 7, 9, 9, 7])
    boxes = np.array(
        [
            [0, 0, 20, 20],
            [0, 0, 20, 20],
            [0, 0, 20, 20],
            [5, 5, 25, 25],
            [0, 0, 20, 20],
            [0, 0, 30, 30],
            [5, 5, 25, 25],
        ]
    )
    encoded: dict = {}
    got = crop_patches(images, ids[:4], boxes[:4], 16, encoded=encoded)
    got += crop_patches(images, ids[4:], boxes[4:], 16, encoded=encoded)
    assert got == [crop_patch(images[int(i)], b, 16) for i, b in zip(ids, boxes)]
    assert sorted(encoded) == [
        (7, 0, 0, 20, 20),
        (7, 5, 5, 25, 25),
        (9, 0, 0, 20, 20),
        (9, 0, 0, 30, 30),
    ]
    assert got[0] != got[1]  # the same box on two images is two patches


def test_crop_patch_rejects_bad_input():
    img = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="outside a 10x10 image"):
        crop_patch(img, (0, 0, 11, 5))
    with pytest.raises(ValueError, match="uint8"):
        crop_patch(img.astype(np.float32), (0, 0, 5, 5))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        crop_patch(np.zeros((10, 10), np.uint8), (0, 0, 5, 5))


@pytest.mark.parametrize("workers", [2, 5])
def test_crop_patches_in_threads_are_the_same_bytes_in_the_same_order(workers):
    # Many pairs, repeats among them, a dict already holding some: against one crop_patch each.
    rng = np.random.default_rng(2)
    images = {i: rng.integers(0, 256, (40, 40, 3), np.uint8) for i in range(6)}
    ids = rng.integers(0, 6, 120)
    tops, lefts = rng.integers(0, 20, 120), rng.integers(0, 20, 120)
    sides = rng.choice([8, 16, 20], 120)
    boxes = np.stack([tops, lefts, tops + sides, lefts + sides], axis=1)
    encoded = {(int(ids[0]), *boxes[0].tolist()): crop_patch(images[int(ids[0])], boxes[0], 12)}
    got = crop_patches(images, ids, boxes, 12, encoded=encoded, workers=workers)
    assert got == [crop_patch(images[int(i)], b, 12) for i, b in zip(ids, boxes)]
    assert len(encoded) == len({(int(i), *b) for i, b in zip(ids, boxes.tolist())})
    with pytest.raises(ValueError, match="outside"):
        crop_patches(images, [0, 1], np.array([[0, 0, 8, 8], [0, 0, 50, 50]]), 8, workers=workers)
