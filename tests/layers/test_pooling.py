"""Pooling and SPP pinned to Caffe's rounding.

BVLC ``pooling_layer.cpp``: out = ceil((H + 2p - k) / s) + 1 (``round_mode: FLOOR`` or the forks'
``ceil_mode: false``: floor); then ``if (pad_h_ || pad_w_)``, one less on an axis where
(out - 1) * s >= H + p, so the last window starts inside the image. Expected values are worked by
hand; a few are also checked against OpenCV's Caffe importer, which implements the same rule.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dnntool.errors import NetError
from tests.layers.util import build


def layer(body: str, ntops: int = 1) -> str:
    tops = "".join(f' top: "t{i}"' for i in range(ntops))
    return f'layer {{ name: "l" bottom: "b0"{tops} {body} }}\n'


def pool(params: str) -> str:
    return f'type: "Pooling" pooling_param {{ {params} }}'


# (pooling_param, bottom, top)
POOL = [
    # AlexNet pool5: ceil((13 - 3) / 2) + 1 = 6
    ("pool: MAX kernel_size: 3 stride: 2", (1, 256, 13, 13), (1, 256, 6, 6)),
    # AlexNet pool1: ceil((55 - 3) / 2) + 1 = 27
    ("pool: MAX kernel_size: 3 stride: 2", (2, 96, 55, 55), (2, 96, 27, 27)),
    # ceil rounds up where floor would not: ceil(11 / 2) + 1 = 7 (floor: 6)
    ("pool: MAX kernel_size: 3 stride: 2", (1, 1, 14, 14), (1, 1, 7, 7)),
    # ceil((7 + 2 - 3) / 2) + 1 = 4; (4-1)*2 = 6 < 7 + 1: kept
    ("pool: MAX kernel_size: 3 stride: 2 pad: 1", (1, 1, 7, 7), (1, 1, 4, 4)),
    # ceil((6 + 2 - 2) / 2) + 1 = 4; (4-1)*2 = 6 < 6 + 1: kept
    ("pool: AVE kernel_size: 2 stride: 2 pad: 1", (1, 1, 6, 6), (1, 1, 4, 4)),
    # GoogLeNet 3x3 s1 p1: (28 + 2 - 3) + 1 = 28; 27 < 29: kept
    ("pool: MAX kernel_size: 3 stride: 1 pad: 1", (1, 192, 28, 28), (1, 192, 28, 28)),
    # clipped: ceil((4 + 2 - 2) / 3) + 1 = 3; (3-1)*3 = 6 >= 4 + 1: one less -> 2
    ("pool: MAX kernel_size: 2 stride: 3 pad: 1", (1, 1, 4, 4), (1, 1, 2, 2)),
    # clipped: ceil((1 + 2 - 2) / 2) + 1 = 2; (2-1)*2 = 2 >= 1 + 1: one less -> 1
    ("pool: AVE kernel_size: 2 stride: 2 pad: 1", (1, 1, 1, 1), (1, 1, 1, 1)),
    # clipped: ceil((7 + 2 - 2) / 4) + 1 = 3; (3-1)*4 = 8 >= 7 + 1: one less -> 2
    ("pool: MAX kernel_size: 2 stride: 4 pad: 1", (1, 1, 7, 7), (1, 1, 2, 2)),
    # kernel_h/w, stride_h/w: H ceil((10 - 2) / 2) + 1 = 5, W ceil((20 - 4) / 4) + 1 = 5
    ("pool: MAX kernel_h: 2 kernel_w: 4 stride_h: 2 stride_w: 4", (1, 1, 10, 20), (1, 1, 5, 5)),
    # pad_h only: Caffe clips *both* axes when pad_h || pad_w.
    # H: ceil((4 + 2 - 2) / 3) + 1 = 3, 6 >= 5 -> 2; W: ceil((5 - 1) / 3) + 1 = 3, (3-1)*3 = 6 >= 5 + 0 -> 2
    ("pool: MAX kernel_h: 2 kernel_w: 1 stride: 3 pad_h: 1 pad_w: 0", (1, 2, 4, 5), (1, 2, 2, 2)),
    # no pad at all: no clipping even though (3-1)*3 = 6 >= 5: ceil((5 - 1) / 3) + 1 = 3
    ("pool: MAX kernel_size: 1 stride: 3", (1, 1, 5, 5), (1, 1, 3, 3)),
    # floor (fork's ceil_mode: false): floor(11 / 2) + 1 = 6
    ("pool: MAX kernel_size: 3 stride: 2 ceil_mode: false", (1, 1, 14, 14), (1, 1, 6, 6)),
    ("pool: MAX kernel_size: 3 stride: 2 ceil_mode: true", (1, 1, 14, 14), (1, 1, 7, 7)),
    # floor (BVLC round_mode: FLOOR): floor(109 / 2) + 1 = 55 (CEIL: 56)
    ("pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR", (1, 64, 112, 112), (1, 64, 55, 55)),
    ("pool: MAX kernel_size: 3 stride: 2 round_mode: CEIL", (1, 64, 112, 112), (1, 64, 56, 56)),
    # floor with pad: floor((8 + 2 - 3) / 2) + 1 = 4 (ceil: 5)
    ("pool: AVE kernel_size: 3 stride: 2 pad: 1 ceil_mode: false", (1, 1, 8, 8), (1, 1, 4, 4)),
    ("pool: AVE kernel_size: 3 stride: 2 pad: 1", (1, 1, 8, 8), (1, 1, 5, 5)),
    # global pooling: the kernel is the whole H x W
    ("pool: AVE global_pooling: true", (2, 512, 7, 7), (2, 512, 1, 1)),
    ("pool: MAX global_pooling: true", (1, 3, 5, 9), (1, 3, 1, 1)),
    ("pool: STOCHASTIC kernel_size: 2 stride: 2", (1, 4, 8, 8), (1, 4, 4, 4)),
]


@pytest.mark.parametrize("params,bottom,top", POOL)
def test_pool_shapes(params, bottom, top):
    lay = build(layer(pool(params)), [bottom])
    assert lay.top_shapes == [top]
    assert lay.params == []


def test_pool_max_mask_top():
    # a second top holds the argmax mask, shaped like the first
    lay = build(layer(pool("pool: MAX kernel_size: 2 stride: 2"), 2), [(1, 3, 8, 8)])
    assert lay.top_shapes == [(1, 3, 4, 4), (1, 3, 4, 4)]


def test_pool_cost_counts_window_taps():
    # AlexNet pool1 output 96*27*27 = 69984 values, 9 comparisons each
    lay = build(layer(pool("pool: MAX kernel_size: 3 stride: 2")), [(1, 96, 55, 55)])
    assert lay.cost.macs == 0 and lay.cost.flops == 69984 * 9
    # AVE: 9 additions + 1 division per output
    lay = build(layer(pool("pool: AVE kernel_size: 3 stride: 2")), [(1, 96, 55, 55)])
    assert lay.cost.flops == 69984 * 10


POOL_ERRORS = [
    ("pool: MAX stride: 2", (1, 1, 8, 8), "kernel_size"),
    ("pool: MAX kernel_size: 2 kernel_h: 2 kernel_w: 2", (1, 1, 8, 8), "not both"),
    ("pool: MAX kernel_h: 2", (1, 1, 8, 8), "together"),
    ("pool: MAX kernel_size: 2 pad: 1 pad_h: 1 pad_w: 1", (1, 1, 8, 8), "not both"),
    ("pool: MAX kernel_size: 0", (1, 1, 8, 8), "kernel"),
    ("pool: MAX kernel_size: 2 stride: 0", (1, 1, 8, 8), "stride"),
    # Caffe: CHECK_LT(pad_h_, kernel_h_)
    ("pool: MAX kernel_size: 2 pad: 2", (1, 1, 8, 8), "smaller than kernel"),
    # "With Global_pooling: true Filter size cannot specified"
    ("pool: AVE global_pooling: true kernel_size: 3", (1, 1, 8, 8), "global_pooling"),
    # "With Global_pooling: true; only pad = 0 and stride = 1"
    ("pool: AVE global_pooling: true stride: 2", (1, 1, 8, 8), "stride 1"),
    ("pool: AVE global_pooling: true pad: 1", (1, 1, 8, 8), "pad 0"),
    # "Padding implemented only for average and max pooling."
    ("pool: STOCHASTIC kernel_size: 3 pad: 1", (1, 1, 8, 8), "padding"),
    # "Input must have 4 axes, corresponding to (num, channels, height, width)"
    ("pool: MAX kernel_size: 2", (1, 1, 8), "4-D"),
    ("pool: MAX kernel_size: 5", (1, 1, 2, 2), "padded input"),
]


@pytest.mark.parametrize("params,bottom,match", POOL_ERRORS)
def test_pool_errors(params, bottom, match):
    with pytest.raises(NetError, match=match):
        build(layer(pool(params)), [bottom])


def test_pool_mask_top_only_for_max():
    with pytest.raises(NetError, match="MAX"):
        build(layer(pool("pool: AVE kernel_size: 2"), 2), [(1, 1, 4, 4)])


# SPP (spp_layer.cpp): level l pools into 2^l x 2^l bins; levels are flattened and concatenated
SPP = [
    # 1 level: the pooling output itself, (N, C, 1, 1)
    ('type: "SPP" spp_param { pyramid_height: 1 }', (2, 8, 13, 13), (2, 8, 1, 1)),
    # 2 levels: C * (1 + 4) = 40
    ('type: "SPP" spp_param { pyramid_height: 2 pool: AVE }', (2, 8, 13, 13), (2, 40)),
    # 3 levels: C * (1 + 4 + 16) = 8 * 21 = 168
    ('type: "SPP" spp_param { pyramid_height: 3 }', (2, 8, 13, 13), (2, 168)),
]


@pytest.mark.parametrize("body,bottom,top", SPP)
def test_spp(body, bottom, top):
    assert build(layer(body), [bottom]).top_shapes == [top]


def test_spp_errors():
    with pytest.raises(NetError, match="pyramid_height"):
        build(layer('type: "SPP" spp_param { pyramid_height: 0 }'), [(1, 1, 4, 4)])
    with pytest.raises(NetError, match="4-D"):
        build(layer('type: "SPP" spp_param { pyramid_height: 2 }'), [(1, 4, 4)])


# --- OpenCV's Caffe importer as an independent reference -----------------------------------------
OPENCV_CASES = [  # symmetric pads only: OpenCV clips per axis, Caffe on both axes when any pad is set
    ("pool: MAX kernel_size: 3 stride: 2", (1, 2, 13, 13)),
    ("pool: MAX kernel_size: 3 stride: 2", (1, 2, 14, 15)),
    ("pool: MAX kernel_size: 3 stride: 2 pad: 1", (1, 2, 7, 8)),
    ("pool: AVE kernel_size: 2 stride: 3 pad: 1", (1, 2, 4, 7)),
    ("pool: MAX kernel_size: 2 stride: 4 pad: 1", (1, 2, 7, 7)),
    ("pool: AVE kernel_size: 3 stride: 2 pad: 1 ceil_mode: false", (1, 2, 8, 9)),
    ("pool: MAX kernel_h: 2 kernel_w: 4 stride_h: 2 stride_w: 4", (1, 1, 10, 19)),
    ("pool: AVE global_pooling: true", (1, 2, 5, 6)),
]


@pytest.mark.skipif(not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"),
                    reason="cv2 without dnn.readNetFromCaffe")
@pytest.mark.parametrize("params,bottom", OPENCV_CASES)
def test_pool_shape_matches_opencv(params, bottom, tmp_path):
    dims = " ".join(f"dim: {d}" for d in bottom)
    text = (f'layer {{ name: "in" type: "Input" top: "b0" input_param {{ shape {{ {dims} }} }} }}\n'
            + layer(pool(params)))
    path = tmp_path / "pool.prototxt"
    path.write_text(text)
    net = cv2.dnn.readNetFromCaffe(str(path))
    net.setInput(np.random.default_rng(0).random(bottom, dtype=np.float32))
    ref = tuple(net.forward().shape)
    assert build(layer(pool(params)), [bottom]).top_shapes == [ref]
