"""BatchNorm, Scale, Bias, LRN, MVN and Normalize pinned to Caffe.

BatchNorm (``batch_norm_layer.cpp``): blobs mean (C), variance (C), scale factor (1), C = shape(1)
(1 for a 1-D bottom); they are statistics with lr_mult forced to 0. Scale/Bias
(``scale_layer.cpp``, ``bias_layer.cpp``): the parameter spans bottom[axis : axis + num_axes]
(num_axes -1: to the end), or comes from a second bottom that must match bottom 0 from ``axis``.
LRN (``lrn_layer.cpp``): odd local_size, 4-D input. Normalize (SSD ``normalize_layer.cpp``): scale
(C) or (1) when channel_shared.
"""

from __future__ import annotations

import pytest

from dnntool.errors import NetError
from tests.layers.util import build, build_net


def layer(body: str, nbottoms: int = 1) -> str:
    bottoms = "".join(f' bottom: "b{i}"' for i in range(nbottoms))
    return f'layer {{ name: "l"{bottoms} top: "t0" {body} }}\n'


# --- BatchNorm ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bottom,c", [((2, 16, 8, 8), 16), ((4, 10), 10), ((5,), 1), ((1, 3, 2, 2, 2), 3)])
def test_batchnorm_three_stored_blobs(bottom, c):
    lay = build(layer('type: "BatchNorm"'), [bottom])
    assert lay.top_shapes == [bottom]
    assert [p.shape for p in lay.params] == [(c,), (c,), (1,)]
    assert [p.blob.learnable for p in lay.params] == [False] * 3
    assert [(p.lr_mult, p.decay_mult) for p in lay.params] == [(0.0, 0.0)] * 3
    assert lay.learnable_count == 0 and lay.stored_count == 2 * c + 1


def test_batchnorm_old_three_param_specs_are_frozen():
    # Caffe's UpgradeNetBatchNorm: a BatchNorm with three param {} gets lr_mult 0 / decay_mult 0
    body = 'type: "BatchNorm" param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 1 decay_mult: 1 }'
    lay = build(layer(body), [(1, 8, 4, 4)])
    assert [(p.lr_mult, p.decay_mult) for p in lay.params] == [(0.0, 0.0)] * 3


def test_batchnorm_cost_test_vs_train():
    # test: subtract and multiply by a precomputed 1/std -> 2 per element; train: 5 per element
    b = (2, 4, 3, 3)  # 72 values
    assert build(layer('type: "BatchNorm"'), [b]).cost.flops == 2 * 72
    assert build(layer('type: "BatchNorm"'), [b], phase="train").cost.flops == 5 * 72
    body = 'type: "BatchNorm" batch_norm_param { use_global_stats: true }'
    assert build(layer(body), [b], phase="train").cost.flops == 2 * 72


# --- Scale and Bias -------------------------------------------------------------------------------
B = (2, 3, 4, 5)  # 120 values

# (layer body, bottom shapes, param shapes)
BROADCAST = [
    # default axis 1, num_axes 1: one value per channel
    ('type: "Scale"', [B], [(3,)]),
    ('type: "Scale" scale_param { bias_term: true }', [B], [(3,), (3,)]),
    # axis 1, num_axes 2: B[1:3]
    ('type: "Scale" scale_param { axis: 1 num_axes: 2 }', [B], [(3, 4)]),
    # axis 0, num_axes -1: the whole blob
    ('type: "Scale" scale_param { axis: 0 num_axes: -1 }', [B], [B]),
    # num_axes 0: one scalar
    ('type: "Scale" scale_param { num_axes: 0 bias_term: true }', [B], [(), ()]),
    # axis -1: the last axis
    ('type: "Scale" scale_param { axis: -1 }', [B], [(5,)]),
    # second bottom: the scale comes from it, no scale blob; a bias still spans its shape
    ('type: "Scale"', [B, (3, 4)], []),
    ('type: "Scale" scale_param { bias_term: true }', [B, (3, 4)], [(3, 4)]),
    ('type: "Scale" scale_param { axis: 0 }', [B, (2, 3)], []),
    ('type: "Scale" scale_param { axis: 2 }', [B, (4, 5)], []),
    ('type: "Bias"', [B], [(3,)]),
    ('type: "Bias" bias_param { axis: 1 num_axes: -1 }', [B], [(3, 4, 5)]),
    ('type: "Bias" bias_param { num_axes: 0 }', [B], [()]),
    ('type: "Bias"', [B, (3,)], []),
]


@pytest.mark.parametrize("body,bottoms,params", BROADCAST)
def test_scale_bias_params(body, bottoms, params):
    lay = build(layer(body, len(bottoms)), bottoms)
    assert lay.top_shapes == [B]
    assert [p.shape for p in lay.params] == params
    assert all(p.blob.learnable for p in lay.params)


def test_scale_bias_cost():
    # Scale: one multiply per element (MAC convention), + 1 add with a bias
    assert build(layer('type: "Scale"'), [B]).cost.macs == 120
    assert build(layer('type: "Scale"'), [B]).cost.flops == 120
    assert build(layer('type: "Scale" scale_param { bias_term: true }'), [B]).cost.flops == 240
    assert build(layer('type: "Bias"'), [B]).cost.flops == 120


def test_scale_in_place_after_batchnorm():
    text = (layer('type: "BatchNorm"').replace('top: "t0"', 'top: "b0"').replace('"l"', '"bn"')
            + 'layer { name: "sc" type: "Scale" bottom: "b0" top: "b0" scale_param { bias_term: true } }\n')
    net = build_net(text, [(1, 8, 4, 4)])
    assert [b.id for b in net.blobs.values()] == ["b0", "b0@bn", "b0@sc"]
    assert net.learnable_count == 16 and net.stored_count == 17


BROADCAST_ERRORS = [
    # scale_layer.cpp: CHECK_EQ(bottom[0]->shape(axis_ + i), scale->shape(i))
    ('type: "Scale"', [B, (4,)], "does not match"),
    ('type: "Scale" scale_param { axis: 2 }', [B, (4, 5, 6)], "does not match"),
    ('type: "Bias"', [B, (3, 5)], "does not match"),
    # CHECK_GE(num_axes, -1)
    ('type: "Scale" scale_param { num_axes: -2 }', [B], "num_axes"),
    # CHECK_GE(bottom[0]->num_axes(), axis_ + num_axes)
    ('type: "Scale" scale_param { axis: 2 num_axes: 3 }', [B], "exceeds"),
    ('type: "Bias" bias_param { axis: 4 }', [B], "out of range"),
]


@pytest.mark.parametrize("body,bottoms,match", BROADCAST_ERRORS)
def test_scale_bias_errors(body, bottoms, match):
    with pytest.raises(NetError, match=match):
        build(layer(body, len(bottoms)), bottoms)


# --- LRN, MVN, Normalize --------------------------------------------------------------------------
def test_lrn_regions():
    b = (1, 96, 55, 55)
    n = 96 * 55 * 55
    across = build(layer('type: "LRN" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }'), [b])
    assert across.top_shapes == [b] and across.params == []
    assert across.cost.macs == n * 5  # one square-accumulate per channel of the window
    within = build(layer('type: "LRN" lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL }'), [b])
    assert within.top_shapes == [b]
    assert within.cost.macs == n * 9  # a 3 x 3 spatial window


@pytest.mark.parametrize("body,bottom,match", [
    # lrn_layer.cpp: CHECK_EQ(size_ % 2, 1) << "LRN only supports odd values for local_size"
    ('type: "LRN" lrn_param { local_size: 4 }', (1, 8, 4, 4), "odd"),
    ('type: "LRN" lrn_param { local_size: 2 norm_region: WITHIN_CHANNEL }', (1, 8, 4, 4), "odd"),
    # CHECK_EQ(4, bottom[0]->num_axes())
    ('type: "LRN"', (1, 8, 4), "4-D"),
])
def test_lrn_errors(body, bottom, match):
    with pytest.raises(NetError, match=match):
        build(layer(body), [bottom])


@pytest.mark.parametrize("body,per_element", [
    ('type: "MVN"', 5),  # mean, subtract, square, mean, divide
    ('type: "MVN" mvn_param { normalize_variance: false }', 2),  # mean, subtract
    ('type: "MVN" mvn_param { across_channels: true }', 5),
])
def test_mvn(body, per_element):
    lay = build(layer(body), [B])
    assert lay.top_shapes == [B] and lay.params == []
    assert lay.cost.flops == per_element * 120


@pytest.mark.parametrize("body,scale", [
    ('type: "Normalize"', (1,)),  # SSD's caffe.proto: channel_shared defaults to true
    # SSD conv4_3_norm: one scale per channel
    ('type: "Normalize" norm_param { across_spatial: false channel_shared: false }', (512,)),
    ('type: "Normalize" norm_param { channel_shared: true }', (1,)),
])
def test_normalize(body, scale):
    lay = build(layer(body), [(1, 512, 38, 38)])
    assert lay.top_shapes == [(1, 512, 38, 38)]
    assert [p.shape for p in lay.params] == [scale]


def test_normalize_needs_channels():
    with pytest.raises(NetError, match="channels"):
        build(layer('type: "Normalize"'), [(8,)])
