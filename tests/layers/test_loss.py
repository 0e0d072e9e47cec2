"""Loss layers and Accuracy pinned to Caffe: bottom checks, top shapes and loss weights.

``loss_layer.cpp``: every LossLayer checks that data and label share the first dimension, its top 0
is a scalar and gets ``loss_weight`` 1 unless the layer sets one. ``softmax_loss_layer.cpp`` /
``accuracy_layer.cpp``: outer_num * inner_num labels (N*H*W for classes on axis 1).
Accuracy is not a loss: weight 0.
"""

from __future__ import annotations

import pytest

from dnntool.errors import NetError
from tests.layers.util import build


def layer(body: str, nbottoms: int = 2, ntops: int = 1) -> str:
    bottoms = "".join(f' bottom: "b{i}"' for i in range(nbottoms))
    tops = "".join(f' top: "t{i}"' for i in range(ntops))
    return f'layer {{ name: "l"{bottoms}{tops} {body} }}\n'


# (layer body, bottom shapes, number of tops, top shapes, loss weights)
CASES = [
    # classification: 64 labels for 64 x 10 scores
    ('type: "SoftmaxWithLoss"', [(64, 10), (64,)], 1, [()], [1.0]),
    # the optional second top is the softmax output, weight 0
    ('type: "SoftmaxWithLoss"', [(64, 10), (64,)], 2, [(), (64, 10)], [1.0, 0.0]),
    # spatial labels (FCN): N*H*W = 2*8*8 = 128 labels, as (N,1,H,W) or (N,H,W)
    ('type: "SoftmaxWithLoss"', [(2, 21, 8, 8), (2, 1, 8, 8)], 1, [()], [1.0]),
    ('type: "SoftmaxWithLoss" loss_param { ignore_label: 255 normalization: VALID }',
     [(2, 21, 8, 8), (2, 8, 8)], 1, [()], [1.0]),
    # classes on axis 3: outer 2*4*5 = 40, inner 1
    ('type: "SoftmaxWithLoss" softmax_param { axis: 3 }', [(2, 4, 5, 6), (2, 4, 5)], 1, [()], [1.0]),
    # explicit loss_weight respected (values exact in float32)
    ('type: "SoftmaxWithLoss" loss_weight: 0.25', [(4, 10), (4,)], 1, [()], [0.25]),
    ('type: "SoftmaxWithLoss" loss_weight: 1 loss_weight: 0', [(4, 10), (4,)], 2, [(), (4, 10)], [1.0, 0.0]),
    # EuclideanLoss: same count(1) per sample
    ('type: "EuclideanLoss"', [(8, 3), (8, 3)], 1, [()], [1.0]),
    ('type: "EuclideanLoss"', [(8, 3), (8, 1, 3)], 1, [()], [1.0]),
    ('type: "SigmoidCrossEntropyLoss"', [(8, 5), (8, 5)], 1, [()], [1.0]),
    ('type: "SigmoidCrossEntropyLoss" loss_weight: 2', [(8, 5, 2), (8, 10)], 1, [()], [2.0]),
    # ContrastiveLoss: two (N, C, 1, 1) features and one similarity per pair
    ('type: "ContrastiveLoss" contrastive_loss_param { margin: 1 }', [(8, 16), (8, 16), (8,)], 1, [()], [1.0]),
    ('type: "ContrastiveLoss"', [(8, 16, 1, 1), (8, 16, 1, 1), (8, 1, 1, 1)], 1, [()], [1.0]),
    ('type: "HingeLoss"', [(8, 10), (8,)], 1, [()], [1.0]),
    ('type: "HingeLoss" hinge_loss_param { norm: L2 }', [(8, 10, 1, 1), (8, 1)], 1, [()], [1.0]),
    ('type: "MultinomialLogisticLoss"', [(8, 10), (8, 1, 1, 1)], 1, [()], [1.0]),
    ('type: "InfogainLoss" infogain_loss_param { source: "H.binaryproto" }', [(8, 10), (8,)], 1, [()], [1.0]),
    # the infogain matrix as a third bottom: 10 x 10 values
    ('type: "InfogainLoss"', [(8, 10), (8,), (1, 1, 10, 10)], 1, [()], [1.0]),
    ('type: "InfogainLoss"', [(8, 10), (8,), (10, 10)], 2, [(), (8, 10)], [1.0, 0.0]),
    # Accuracy: a metric, weight 0; second top is per-class accuracy (num classes)
    ('type: "Accuracy"', [(64, 10), (64,)], 1, [()], [0.0]),
    ('type: "Accuracy" accuracy_param { top_k: 5 }', [(64, 10), (64,)], 1, [()], [0.0]),
    ('type: "Accuracy"', [(64, 10), (64,)], 2, [(), (10,)], [0.0, 0.0]),
    ('type: "Accuracy" accuracy_param { ignore_label: 255 }', [(2, 21, 8, 8), (2, 1, 8, 8)], 2,
     [(), (21,)], [0.0, 0.0]),
    ('type: "Accuracy" accuracy_param { axis: -1 }', [(3, 4, 7), (3, 4)], 2, [(), (7,)], [0.0, 0.0]),
    # a metric may be given a weight explicitly
    ('type: "Accuracy" loss_weight: 0.5', [(4, 10), (4,)], 1, [()], [0.5]),
]


@pytest.mark.parametrize("body,bottoms,ntops,tops,weights", CASES)
def test_loss_shapes_and_weights(body, bottoms, ntops, tops, weights):
    lay = build(layer(body, len(bottoms), ntops), bottoms)
    assert lay.top_shapes == tops
    assert lay.loss_weights == weights
    assert lay.params == []


def test_any_layer_can_carry_a_loss_weight():
    text = 'layer { name: "l" type: "InnerProduct" bottom: "b0" top: "t0" loss_weight: 0.125 ' \
           'inner_product_param { num_output: 2 } }\n'
    assert build(text, [(4, 3)]).loss_weights == [0.125]
    text = 'layer { name: "l" type: "InnerProduct" bottom: "b0" top: "t0" inner_product_param { num_output: 2 } }\n'
    assert build(text, [(4, 3)]).loss_weights == [0.0]


def test_loss_weight_count_must_match_tops():
    # layer.hpp SetLossWeights: "loss_weight must be unspecified or specified once per top blob."
    with pytest.raises(NetError, match="loss_weight"):
        build(layer('type: "SoftmaxWithLoss" loss_weight: 1 loss_weight: 0 loss_weight: 0'), [(4, 10), (4,)])


ERRORS = [
    # "Number of labels must match number of predictions; ... label count must be N*H*W"
    ('type: "SoftmaxWithLoss"', [(2, 21, 8, 8), (2,)], "N\\*H\\*W"),
    ('type: "SoftmaxWithLoss"', [(64, 10), (64, 2)], "N\\*H\\*W"),
    # LossLayer::Reshape: "The data and label should have the same first dimension." (40 = 2*4*5 labels)
    ('type: "SoftmaxWithLoss"', [(2, 3, 4, 5), (40,)], "first dimension"),
    ('type: "SoftmaxWithLoss" softmax_param { axis: 4 }', [(2, 3, 4, 5), (2,)], "out of range"),
    # euclidean_loss_layer.cpp: "Inputs must have the same dimension."
    ('type: "EuclideanLoss"', [(8, 3), (8, 4)], "same dimensions"),
    ('type: "EuclideanLoss"', [(8, 3), (4, 6)], "first dimension"),
    # "SIGMOID_CROSS_ENTROPY_LOSS layer inputs must have the same count."
    ('type: "SigmoidCrossEntropyLoss"', [(8, 5), (8, 4)], "same count"),
    ('type: "SigmoidCrossEntropyLoss"', [(8, 5), (4, 10)], "first dimension"),
    # contrastive_loss_layer.cpp: channels equal, height() == width() == 1, one similarity per pair
    ('type: "ContrastiveLoss"', [(8, 16), (8, 15), (8,)], "must match"),
    ('type: "ContrastiveLoss"', [(8, 16), (8, 16), (4,)], "one per pair"),
    ('type: "ContrastiveLoss"', [(8, 4, 2, 2), (8, 4, 2, 2), (8,)], "\\(N, C\\)"),
    ('type: "HingeLoss"', [(8, 10), (4,)], "first dimension"),
    ('type: "HingeLoss"', [(8, 10), (8, 2)], "one per sample"),
    # multinomial_logistic_loss_layer.cpp: label channels == height == width == 1
    ('type: "MultinomialLogisticLoss"', [(8, 10), (8, 2)], "one per sample"),
    ('type: "InfogainLoss"', [(8, 10), (8, 3)], "N\\*H\\*W"),
    # CHECK_EQ(infogain->count(), num_labels_*num_labels_)
    ('type: "InfogainLoss"', [(8, 10), (8,), (9, 9)], "10x10"),
    # accuracy_layer.cpp: "top_k must be less than or equal to the number of classes."
    ('type: "Accuracy" accuracy_param { top_k: 11 }', [(64, 10), (64,)], "top_k"),
    ('type: "Accuracy"', [(2, 21, 8, 8), (2, 8)], "N\\*H\\*W"),
]


@pytest.mark.parametrize("body,bottoms,match", ERRORS)
def test_loss_errors(body, bottoms, match):
    with pytest.raises(NetError, match=match):
        build(layer(body, len(bottoms)), bottoms)


@pytest.mark.parametrize("body,nbottoms", [
    ('type: "SoftmaxWithLoss"', 1),  # ExactNumBottomBlobs 2
    ('type: "SoftmaxWithLoss"', 3),
    ('type: "ContrastiveLoss"', 2),  # ExactNumBottomBlobs 3
    ('type: "InfogainLoss"', 4),  # MaxBottomBlobs 3
    ('type: "Accuracy"', 1),
])
def test_bottom_counts(body, nbottoms):
    with pytest.raises(NetError, match="bottom"):
        build(layer(body, nbottoms), [(4, 10)] + [(4,)] * (nbottoms - 1))
