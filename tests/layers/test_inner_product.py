"""InnerProduct and Embed pinned to Caffe.

``inner_product_layer.cpp``: K = bottom.count(axis), M = bottom.count(0, axis), N = num_output;
top = bottom.shape[:axis] + (N,); weights (N, K), or (K, N) with ``transpose``; bias (N,).
MACs = M*K*N. ``embed_layer.cpp``: top = bottom.shape + (num_output,), weights (input_dim, num_output).
"""

from __future__ import annotations

import pytest

from dnntool.errors import NetError
from tests.layers.util import build


def layer(body: str) -> str:
    return f'layer {{ name: "l" bottom: "b0" top: "t0" {body} }}\n'


# (body, bottom, top, param shapes, MACs)
IP = [
    # LeNet ip1: K = 50*4*4 = 800, M = 64; MACs = 64*800*500 = 25600000
    ('type: "InnerProduct" inner_product_param { num_output: 500 }',
     (64, 50, 4, 4), (64, 500), [(500, 800), (500,)], 25600000),
    # AlexNet fc6: K = 256*6*6 = 9216; MACs = 9216*4096 = 37748736
    ('type: "InnerProduct" inner_product_param { num_output: 4096 }',
     (1, 256, 6, 6), (1, 4096), [(4096, 9216), (4096,)], 37748736),
    # transpose: weights stored (K, N)
    ('type: "InnerProduct" inner_product_param { num_output: 500 transpose: true }',
     (64, 50, 4, 4), (64, 500), [(800, 500), (500,)], 25600000),
    ('type: "InnerProduct" inner_product_param { num_output: 10 bias_term: false }',
     (8, 20), (8, 10), [(10, 20)], 8 * 20 * 10),
    # axis 2: M = 2*3 = 6, K = 4*5 = 20; top (2, 3, 6); MACs = 6*20*6 = 720
    ('type: "InnerProduct" inner_product_param { num_output: 6 axis: 2 }',
     (2, 3, 4, 5), (2, 3, 6), [(6, 20), (6,)], 720),
    # axis -1 on a sequence (T, N, D): M = 5*2 = 10, K = 7; MACs = 10*7*3 = 210
    ('type: "InnerProduct" inner_product_param { num_output: 3 axis: -1 }',
     (5, 2, 7), (5, 2, 3), [(3, 7), (3,)], 210),
    # axis 0: M = 1, K = everything
    ('type: "InnerProduct" inner_product_param { num_output: 2 axis: 0 }',
     (3, 4), (2,), [(2, 12), (2,)], 24),
    # Embed: top = bottom + (num_output,); no MACs (a lookup)
    ('type: "Embed" embed_param { input_dim: 1000 num_output: 64 }',
     (4, 10), (4, 10, 64), [(1000, 64), (64,)], 0),
    ('type: "Embed" embed_param { input_dim: 50 num_output: 8 bias_term: false }',
     (7,), (7, 8), [(50, 8)], 0),
]


@pytest.mark.parametrize("body,bottom,top,params,macs", IP)
def test_inner_product_and_embed(body, bottom, top, params, macs):
    lay = build(layer(body), [bottom])
    assert lay.top_shapes == [top]
    assert [p.shape for p in lay.params] == params
    assert all(p.blob.learnable and p.lr_mult == 1.0 for p in lay.params)
    assert lay.cost.macs == macs


def test_inner_product_flops():
    # 2 per MAC + one bias add per output (M*N = 64*500)
    lay = build(layer('type: "InnerProduct" inner_product_param { num_output: 500 }'), [(64, 50, 4, 4)])
    assert lay.cost.flops == 2 * 25600000 + 64 * 500
    lay = build(layer('type: "InnerProduct" inner_product_param { num_output: 10 bias_term: false }'), [(8, 20)])
    assert lay.cost.flops == 2 * 1600


@pytest.mark.parametrize("body,bottom,match", [
    # inner_product_layer.cpp reads num_output; 0 output units make no layer
    ('type: "InnerProduct" inner_product_param { }', (2, 3), "num_output"),
    ('type: "InnerProduct" inner_product_param { num_output: 4 axis: 2 }', (2, 3), "out of range"),
    ('type: "InnerProduct" inner_product_param { num_output: 4 axis: -3 }', (2, 3), "out of range"),
    # embed_layer.cpp: CHECK_GT(K_, 0) << "EmbedLayer input_dim must be positive."
    ('type: "Embed" embed_param { num_output: 4 }', (2, 3), "input_dim"),
    ('type: "Embed" embed_param { input_dim: 4 }', (2, 3), "num_output"),
])
def test_errors(body, bottom, match):
    with pytest.raises(NetError, match=match):
        build(layer(body), [bottom])
