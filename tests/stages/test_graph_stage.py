"""Patch boxes per layer kind: conv maps, ViT tokens (class token and patch tokens), vectors."""

import numpy as np
import polars as pl

from carto_assets.core.network.layers import LayerInfo
from carto_assets.stages.example_patches import _layer_boxes


def rows(ys, xs, h, w):
    return pl.DataFrame({"y": ys, "x": xs, "map_height": [h] * len(ys), "map_width": [w] * len(ys)})


def test_token_layer_boxes_follow_the_patch_grid():
    vit = LayerInfo("encoder.layers.encoder_layer_11", "EncoderBlock", (197, 768), 1, 0, 3)
    boxes = _layer_boxes(vit, None, rows([0, 1, 196], [0, 0, 0], 197, 1), 224)
    assert boxes[0].tolist() == [0, 0, 224, 224]  # class token: the whole image
    top, left, bottom, right = boxes[1]
    assert top == 0 and left == 0 and bottom - top == 56  # first patch: top-left quarter
    top, left, bottom, right = boxes[2]
    assert bottom == 224 and right == 224  # last patch: bottom-right


def test_vector_layer_gets_the_whole_image():
    vec = LayerInfo("fc", "Linear", (10,), 1, 0, 1)
    boxes = _layer_boxes(vec, None, rows([0, 0], [0, 0], 1, 1), 64)
    assert np.all(boxes == [0, 0, 64, 64])
