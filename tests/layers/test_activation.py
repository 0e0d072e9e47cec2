"""Element-wise layers and Softmax: shapes, parameter blobs, in-place use and parameter checks.

Caffe's neuron layers (``neuron_layer.cpp``) top = bottom shape. PReLU (``prelu_layer.cpp``) has one
slope per channel (shape (C,)) or one shared slope (shape (1,)). FLOPs per element follow the
convention documented in ``dnntool/layers/activation.py``: one per compare, multiply, add, exp, log
or division of Caffe's forward.
"""

from __future__ import annotations

import pytest

from dnntool.errors import NetError
from tests.layers.util import build, build_net


def layer(body: str, top: str = "t0") -> str:
    return f'layer {{ name: "l" bottom: "b0" top: "{top}" {body} }}\n'


B = (2, 3, 4, 5)  # 120 values

# (layer body, FLOPs per element)
ELEMENTWISE = [
    ('type: "ReLU"', 1),  # max(0, x)
    ('type: "ReLU" relu_param { negative_slope: 0.1 }', 2),  # compare, multiply
    ('type: "PReLU"', 2),
    ('type: "ELU" elu_param { alpha: 0.5 }', 3),  # compare, exp, multiply-subtract
    ('type: "Sigmoid"', 3),  # exp, add, divide
    ('type: "TanH"', 3),
    ('type: "AbsVal"', 1),
    ('type: "BNLL"', 3),  # exp, add, log
    ('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', 3),  # multiply, add, pow
    ('type: "Exp" exp_param { base: 2 }', 3),
    ('type: "Log" log_param { base: 10 }', 3),
    ('type: "Threshold" threshold_param { threshold: 0.5 }', 1),
    ('type: "Clip" clip_param { min: -1 max: 1 }', 2),
    ('type: "Swish" swish_param { beta: 1.5 }', 5),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.5 }', 0),  # identity at test
    ('type: "Softmax"', 4),  # max, subtract+exp, sum, divide
]


@pytest.mark.parametrize("body,per_element", ELEMENTWISE)
def test_elementwise_keeps_shape(body, per_element):
    lay = build(layer(body), [B])
    assert lay.top_shapes == [B]
    assert lay.cost.macs == 0
    assert lay.cost.flops == per_element * 120


def test_dropout_costs_in_training_only():
    # training draws a mask and scales kept units by 1/(1-ratio): 2 per element
    lay = build(layer('type: "Dropout" dropout_param { dropout_ratio: 0.3 }'), [B], phase="train")
    assert lay.cost.flops == 2 * 120


PRELU = [
    # one slope per channel (axis 1)
    ('type: "PReLU"', (2, 16, 4, 4), [(16,)]),
    ('type: "PReLU" prelu_param { channel_shared: false }', (2, 16), [(16,)]),
    ('type: "PReLU" prelu_param { channel_shared: true }', (2, 16, 4, 4), [(1,)]),
]


@pytest.mark.parametrize("body,bottom,params", PRELU)
def test_prelu_slopes(body, bottom, params):
    lay = build(layer(body), [bottom])
    assert [p.shape for p in lay.params] == params
    assert all(p.blob.learnable and p.lr_mult == 1.0 for p in lay.params)


def test_prelu_needs_channels():
    with pytest.raises(NetError, match="channel"):
        build(layer('type: "PReLU"'), [(7,)])


@pytest.mark.parametrize("body", [
    'type: "ReLU"', 'type: "PReLU"', 'type: "Sigmoid"', 'type: "TanH"', 'type: "ELU"', 'type: "Dropout"',
    'type: "Power"', 'type: "BNLL"', 'type: "Clip" clip_param { min: 0 max: 6 }', 'type: "Swish"',
])
def test_in_place_gets_new_ssa_version(body):
    net = build_net(layer(body, top="b0"), [B])
    lay = net.layers[-1]
    assert lay.in_place
    assert lay.bottoms == ["b0"] and lay.tops == ["b0@l"]
    assert net.blob("b0").id == "b0@l"
    assert net.blob("b0").shape == B


def test_inplace_flags_follow_caffe():
    # AbsVal and Threshold refuse in-place in Caffe (CHECK_NE(top[0], bottom[0]) / backward reads x)
    assert not build(layer('type: "AbsVal"'), [B]).impl.inplace
    assert not build(layer('type: "Threshold"'), [B]).impl.inplace
    assert build(layer('type: "ReLU"'), [B]).impl.inplace


@pytest.mark.parametrize("axis,ok", [(1, True), (-1, True), (3, True), (4, False), (-5, False)])
def test_softmax_axis(axis, ok):
    body = f'type: "Softmax" softmax_param {{ axis: {axis} }}'
    if ok:
        assert build(layer(body), [B]).top_shapes == [B]
    else:
        with pytest.raises(NetError, match="out of range"):
            build(layer(body), [B])


ERRORS = [
    # Caffe exp_layer.cpp: CHECK(base > 0 || base == -1) "base_ must be strictly positive."
    ('type: "Exp" exp_param { base: 0 }', "strictly positive"),
    ('type: "Exp" exp_param { base: -2 }', "strictly positive"),
    ('type: "Log" log_param { base: 0 }', "strictly positive"),
    # clip_layer.cpp: min <= max
    ('type: "Clip" clip_param { min: 2 max: 1 }', "min"),
    # dropout_layer.cpp: DCHECK(threshold_ > 0.) DCHECK(threshold_ < 1.)
    ('type: "Dropout" dropout_param { dropout_ratio: 1.0 }', "dropout_ratio"),
    ('type: "Dropout" dropout_param { dropout_ratio: -0.1 }', "dropout_ratio"),
]


@pytest.mark.parametrize("body,match", ERRORS)
def test_parameter_errors(body, match):
    with pytest.raises(NetError, match=match):
        build(layer(body), [B])


def test_neuron_layers_take_one_bottom():
    text = 'layer { name: "l" type: "ReLU" bottom: "b0" bottom: "b1" top: "t" }\n'
    with pytest.raises(NetError, match="bottom"):
        build(text, [B, B])
