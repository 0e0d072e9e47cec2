"""Convolution, Deconvolution and depthwise convolution pinned to Caffe's arithmetic.

Expected values are worked by hand from BVLC's ``base_conv_layer.cpp`` /
``conv_layer.cpp::compute_output_shape`` (out = (H + 2p - (d(k-1)+1)) / s + 1) and
``deconv_layer.cpp`` (out = s(H-1) + d(k-1) + 1 - 2p), never by calling dnntool.
"""

from __future__ import annotations

import pytest

from dnntool.errors import NetError
from tests.layers.util import build


def layer(body: str, nbottoms: int = 1, ntops: int = 1) -> str:
    bottoms = "".join(f' bottom: "b{i}"' for i in range(nbottoms))
    tops = "".join(f' top: "t{i}"' for i in range(ntops))
    return f'layer {{ name: "l"{bottoms}{tops} {body} }}\n'


# (layer body, bottom shape, top shape, param shapes, MACs)
CONV = [
    # ResNet conv1: (224 + 6 - 7) // 2 + 1 = 112; MACs = 64*112*112 outputs x 3*7*7 = 118013952
    ('type: "Convolution" convolution_param { num_output: 64 kernel_size: 7 stride: 2 pad: 3 }',
     (1, 3, 224, 224), (1, 64, 112, 112), [(64, 3, 7, 7), (64,)], 118013952),
    # LeNet conv1: (28 - 5) + 1 = 24; MACs = 20*24*24 x 1*25 = 288000
    ('type: "Convolution" convolution_param { num_output: 20 kernel_size: 5 }',
     (1, 1, 28, 28), (1, 20, 24, 24), [(20, 1, 5, 5), (20,)], 288000),
    # floor: (8 - 3) // 2 + 1 = 3; MACs = 2*4*3*3 x 2*9 = 1296
    ('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 stride: 2 }',
     (2, 2, 8, 8), (2, 4, 3, 3), [(4, 2, 3, 3), (4,)], 1296),
    # H: (10 + 2 - 3) // 2 + 1 = 5; W: (12 + 4 - 5) // 1 + 1 = 12; MACs = 2*6*5*12 x 4*3*5 = 43200
    ('type: "Convolution" convolution_param { num_output: 6 kernel_h: 3 kernel_w: 5 pad_h: 1 pad_w: 2'
     ' stride_h: 2 stride_w: 1 }',
     (2, 4, 10, 12), (2, 6, 5, 12), [(6, 4, 3, 5), (6,)], 43200),
    # dilation 2: extent 2*(3-1)+1 = 5; (16 + 4 - 5) + 1 = 16; MACs = 8*16*16 x 8*9 = 147456
    ('type: "Convolution" convolution_param { num_output: 8 kernel_size: 3 pad: 2 dilation: 2 }',
     (1, 8, 16, 16), (1, 8, 16, 16), [(8, 8, 3, 3), (8,)], 147456),
    # group 2: weights (4, 8/2, 3, 3); (9 - 3) + 1 = 7; MACs = 4*7*7 x (8/2)*9 = 7056
    ('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 group: 2 }',
     (1, 8, 9, 9), (1, 4, 7, 7), [(4, 4, 3, 3), (4,)], 7056),
    # bias_term false: the weights only
    ('type: "Convolution" convolution_param { num_output: 4 kernel_size: 1 bias_term: false }',
     (1, 3, 5, 5), (1, 4, 5, 5), [(4, 3, 1, 1)], 4 * 25 * 3),
    # 3-D: one kernel_size for all axes; (8+2-3)//2+1 = 4, (10+2-3)//2+1 = 5, (12+2-3)//2+1 = 6
    # MACs = 2*16*4*5*6 x 3*27 = 311040
    ('type: "Convolution" convolution_param { num_output: 16 kernel_size: 3 pad: 1 stride: 2 }',
     (2, 3, 8, 10, 12), (2, 16, 4, 5, 6), [(16, 3, 3, 3, 3), (16,)], 311040),
    # 3-D, one kernel per axis: (4-1)+1 = 4, (10-3)+1 = 8, (12-3)+1 = 10; MACs = 5*4*8*10 x 2*9 = 28800
    ('type: "Convolution" convolution_param { num_output: 5 kernel_size: 1 kernel_size: 3 kernel_size: 3 }',
     (1, 2, 4, 10, 12), (1, 5, 4, 8, 10), [(5, 2, 1, 3, 3), (5,)], 28800),
    # 1-D over (N, C, L): (20 - 3) + 1 = 18; MACs = 2*7*18 x 3*3 = 2268
    ('type: "Convolution" convolution_param { num_output: 7 kernel_size: 3 }',
     (2, 3, 20), (2, 7, 18), [(7, 3, 3), (7,)], 2268),
    # axis 2: channels are axis 2 (3), one spatial axis (12): (12-3)+1 = 10; MACs = 2*5*4*10 x 3*3 = 3600
    ('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 axis: 2 }',
     (2, 5, 3, 12), (2, 5, 4, 10), [(4, 3, 3), (4,)], 3600),
    # axis -3 is axis 1 of a 4-D blob
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 axis: -3 }',
     (1, 3, 5, 5), (1, 2, 3, 3), [(2, 3, 3, 3), (2,)], 2 * 9 * 27),
    # Deconvolution (FCN/FSRCNN upsample x2): 2*(8-1) + (4-1) + 1 - 2 = 16; weights (C_in, C_out, k, k)
    # MACs = inputs 16*8*8 x C_out 8 x 16 = 131072
    ('type: "Deconvolution" convolution_param { num_output: 8 kernel_size: 4 stride: 2 pad: 1 }',
     (1, 16, 8, 8), (1, 8, 16, 16), [(16, 8, 4, 4), (8,)], 131072),
    # Deconvolution group 2: 1*(5-1) + 2 + 1 = 7; weights (16, 8/2, 3, 3); MACs = 16*25 x 4 x 9 = 14400
    ('type: "Deconvolution" convolution_param { num_output: 8 kernel_size: 3 group: 2 }',
     (1, 16, 5, 5), (1, 8, 7, 7), [(16, 4, 3, 3), (8,)], 14400),
    # Deconvolution dilation 2, stride 2: 2*(4-1) + 2*(3-1) + 1 = 11; MACs = 2*16 x 3 x 9 = 864
    ('type: "Deconvolution" convolution_param { num_output: 3 kernel_size: 3 stride: 2 dilation: 2'
     ' bias_term: false }',
     (1, 2, 4, 4), (1, 3, 11, 11), [(2, 3, 3, 3)], 864),
    # Deconvolution kernel_h/w: H 3*(4-1) + 3 - 0 = 12, W 1*(5-1) + 1 = 5
    ('type: "Deconvolution" convolution_param { num_output: 1 kernel_h: 3 kernel_w: 1 stride_h: 3'
     ' stride_w: 1 }',
     (1, 1, 4, 5), (1, 1, 12, 5), [(1, 1, 3, 1), (1,)], 20 * 3),
    # depthwise (MobileNet fork): group = C_in = 32; (14 + 2 - 3) // 2 + 1 = 7; weights (32, 1, 3, 3)
    # MACs = 32*7*7 x 1*9 = 14112
    ('type: "ConvolutionDepthwise" convolution_param { num_output: 32 kernel_size: 3 pad: 1 stride: 2 }',
     (1, 32, 14, 14), (1, 32, 7, 7), [(32, 1, 3, 3), (32,)], 14112),
    ('type: "DepthwiseConvolution" convolution_param { num_output: 32 kernel_size: 3 pad: 1 stride: 2 }',
     (1, 32, 14, 14), (1, 32, 7, 7), [(32, 1, 3, 3), (32,)], 14112),
    # depth multiplier 2: weights (64, 32/32, 3, 3); MACs = 64*7*7 x 9 = 28224
    ('type: "DepthwiseConvolution" convolution_param { num_output: 64 kernel_size: 3 pad: 1 stride: 2'
     ' bias_term: false }',
     (1, 32, 14, 14), (1, 64, 7, 7), [(64, 1, 3, 3)], 28224),
]


@pytest.mark.parametrize("body,bottom,top,params,macs", CONV)
def test_conv_shapes_params_macs(body, bottom, top, params, macs):
    lay = build(layer(body), [bottom])
    assert lay.top_shapes == [top]
    assert [p.shape for p in lay.params] == params
    assert all(p.blob.learnable and p.lr_mult == 1.0 for p in lay.params)
    assert lay.cost.macs == macs


def test_conv_flops_are_two_per_mac_plus_bias():
    # LeNet conv1: 2 * 288000 + 20*24*24 bias additions = 587520
    lay = build(layer('type: "Convolution" convolution_param { num_output: 20 kernel_size: 5 }'), [(1, 1, 28, 28)])
    assert lay.cost.flops == 2 * 288000 + 20 * 24 * 24


def test_conv_several_bottoms_share_weights():
    # Caffe convolves each bottom with the same filters: one top per bottom, one set of blobs
    lay = build(layer('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 }', 2, 2),
                [(1, 2, 5, 5), (1, 2, 5, 5)])
    assert lay.top_shapes == [(1, 4, 3, 3), (1, 4, 3, 3)]
    assert [p.shape for p in lay.params] == [(4, 2, 3, 3), (4,)]
    assert lay.cost.macs == 2 * (4 * 9 * 2 * 9)


def test_conv_param_lr_mult_from_param_spec():
    body = ('type: "Convolution" param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }'
            ' convolution_param { num_output: 4 kernel_size: 1 }')
    lay = build(layer(body), [(1, 3, 2, 2)])
    assert [(p.lr_mult, p.decay_mult) for p in lay.params] == [(1.0, 1.0), (2.0, 0.0)]


CONV_ERRORS = [
    ('type: "Convolution" convolution_param { kernel_size: 3 }', (1, 3, 8, 8), "num_output"),
    ('type: "Deconvolution" convolution_param { kernel_size: 3 }', (1, 3, 8, 8), "num_output"),
    # 6 channels, group 4
    ('type: "Convolution" convolution_param { num_output: 8 kernel_size: 3 group: 4 }', (1, 6, 8, 8),
     "not divisible by group"),
    # num_output 6, group 4 (Caffe: "Number of output should be multiples of group.")
    ('type: "Convolution" convolution_param { num_output: 6 kernel_size: 3 group: 4 }', (1, 8, 8, 8),
     "not divisible by group"),
    # kernel 7 > padded input 4 + 2*1 = 6
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 7 pad: 1 }', (1, 3, 4, 4),
     "empty"),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3 }',
     (1, 3, 8, 8), "not both"),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_h: 3 }', (1, 3, 8, 8), "together"),
    ('type: "Convolution" convolution_param { num_output: 2 }', (1, 3, 8, 8), "kernel_size"),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 0 }', (1, 3, 8, 8), "kernel"),
    # kernel_h/kernel_w are 2-D only (Caffe: "kernel_h & kernel_w can only be used for 2D convolution.")
    ('type: "Convolution" convolution_param { num_output: 2 kernel_h: 3 kernel_w: 3 }', (1, 3, 8, 8, 8),
     "2-D"),
    # two kernel sizes for three spatial axes
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 kernel_size: 3 }',
     (1, 3, 8, 8, 8), "once or 3 times"),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 stride: 0 }', (1, 3, 8, 8),
     "stride"),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 axis: 4 }', (1, 3, 8, 8),
     "out of range"),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 axis: 3 }', (1, 3, 8, 8),
     "no spatial axes"),
]


@pytest.mark.parametrize("body,bottom,match", CONV_ERRORS)
def test_conv_errors(body, bottom, match):
    with pytest.raises(NetError, match=match):
        build(layer(body), [bottom])


def test_conv_bottoms_must_share_shape():
    with pytest.raises(NetError, match="same shape"):
        build(layer('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 }', 2, 2),
              [(1, 2, 5, 5), (1, 2, 6, 6)])


def test_conv_one_top_per_bottom():
    # Caffe's BaseConvolutionLayer: EqualNumBottomTopBlobs
    with pytest.raises(NetError, match="one top per bottom"):
        build(layer('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 }', 2, 1),
              [(1, 2, 5, 5), (1, 2, 5, 5)])
