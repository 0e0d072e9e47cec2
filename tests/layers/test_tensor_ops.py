"""Wiring and shape layers pinned to Caffe's Reshape() of each layer (shapes worked by hand).

Reshape rows come from BVLC ``src/caffe/test/test_reshape_layer.cpp`` (bottom 2x3x6x5).
"""

from __future__ import annotations

import pytest

from dnntool.errors import NetError
from tests.layers.util import build, build_net


def layer(body: str, nbottoms: int = 1, ntops: int = 1) -> str:
    bottoms = "".join(f' bottom: "b{i}"' for i in range(nbottoms))
    tops = "".join(f' top: "t{i}"' for i in range(ntops))
    return f'layer {{ name: "l"{bottoms}{tops} {body} }}\n'


R = (2, 3, 6, 5)  # test_reshape_layer.cpp's bottom, 180 values

# (layer body, bottom shapes, number of tops, top shapes)
CASES = [
    # Concat: sum along axis 1 (default)
    ('type: "Concat"', [(2, 3, 4, 4), (2, 5, 4, 4)], 1, [(2, 8, 4, 4)]),
    ('type: "Concat" concat_param { axis: 0 }', [(2, 3), (4, 3), (1, 3)], 1, [(7, 3)]),
    ('type: "Concat" concat_param { axis: -1 }', [(2, 3, 4), (2, 3, 1)], 1, [(2, 3, 5)]),
    # legacy concat_dim
    ('type: "Concat" concat_param { concat_dim: 0 }', [(2, 3, 4, 4), (1, 3, 4, 4)], 1, [(3, 3, 4, 4)]),
    ('type: "Concat"', [(2, 3, 4, 4)], 1, [(2, 3, 4, 4)]),
    # Slice at points 2 and 5 of axis 1 (size 8): [0,2) [2,5) [5,8)
    ('type: "Slice" slice_param { slice_point: 2 slice_point: 5 }', [(2, 8, 4)], 3,
     [(2, 2, 4), (2, 3, 4), (2, 3, 4)]),
    # no points: equal parts, 9 / 3
    ('type: "Slice" slice_param { axis: 1 }', [(2, 9, 4)], 3, [(2, 3, 4)] * 3),
    ('type: "Slice" slice_param { axis: 0 slice_point: 1 }', [(4, 3)], 2, [(1, 3), (3, 3)]),
    ('type: "Slice" slice_param { axis: -1 slice_point: 4 }', [(2, 3, 10)], 2, [(2, 3, 4), (2, 3, 6)]),
    # legacy slice_dim
    ('type: "Slice" slice_param { slice_dim: 2 slice_point: 1 }', [(2, 3, 4, 4)], 2,
     [(2, 3, 1, 4), (2, 3, 3, 4)]),
    # Split: copies
    ('type: "Split"', [(2, 3, 4)], 3, [(2, 3, 4)] * 3),
    # Flatten: axes axis..end_axis (1..-1) into one
    ('type: "Flatten"', [(2, 3, 4, 5)], 1, [(2, 60)]),
    ('type: "Flatten" flatten_param { axis: 2 }', [(2, 3, 4, 5)], 1, [(2, 3, 20)]),
    ('type: "Flatten" flatten_param { axis: 1 end_axis: 2 }', [(2, 3, 4, 5)], 1, [(2, 12, 5)]),
    ('type: "Flatten" flatten_param { end_axis: -2 }', [(2, 3, 4, 5)], 1, [(2, 12, 5)]),
    ('type: "Flatten" flatten_param { axis: 0 }', [(2, 3, 4, 5)], 1, [(120,)]),
    ('type: "Flatten" flatten_param { axis: 2 end_axis: 2 }', [(2, 3, 4, 5)], 1, [(2, 3, 4, 5)]),
    # Reshape, test_reshape_layer.cpp: TestFlattenOutputSizes {0,-1,1,1} -> 2 x 90 x 1 x 1
    ('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 1 dim: 1 } }', [R], 1, [(2, 90, 1, 1)]),
    # TestCopyDimensions
    ('type: "Reshape" reshape_param { shape { dim: 0 dim: 0 dim: 0 dim: 0 } }', [R], 1, [R]),
    # TestInferenceOfUnspecified: 180 / (2*3*10) = 3
    ('type: "Reshape" reshape_param { shape { dim: 0 dim: 3 dim: 10 dim: -1 } }', [R], 1, [(2, 3, 10, 3)]),
    # TestInferenceOfUnspecifiedWithStartAxis
    ('type: "Reshape" reshape_param { axis: 1 shape { dim: 3 dim: 10 dim: -1 } }', [R], 1, [(2, 3, 10, 3)]),
    # TestInsertSingletonAxesStart / Middle / End
    ('type: "Reshape" reshape_param { axis: 0 num_axes: 0 shape { dim: 1 dim: 1 dim: 1 } }', [R], 1,
     [(1, 1, 1, 2, 3, 6, 5)]),
    ('type: "Reshape" reshape_param { axis: 2 num_axes: 0 shape { dim: 1 dim: 1 dim: 1 } }', [R], 1,
     [(2, 3, 1, 1, 1, 6, 5)]),
    ('type: "Reshape" reshape_param { axis: -1 num_axes: 0 shape { dim: 1 dim: 1 dim: 1 } }', [R], 1,
     [(2, 3, 6, 5, 1, 1, 1)]),
    # TestFlattenMiddle: axis 1, num_axes 2, {-1} -> 2 x 18 x 5
    ('type: "Reshape" reshape_param { axis: 1 num_axes: 2 shape { dim: -1 } }', [R], 1, [(2, 18, 5)]),
    # TestForward
    ('type: "Reshape" reshape_param { shape { dim: 6 dim: 2 dim: 3 dim: 5 } }', [R], 1, [(6, 2, 3, 5)]),
    # a 0 copies bottom axis start+i even outside [axis, axis+num_axes): Caffe only checks
    # bottom.num_axes() > start_axis + i.  (2,1,3), axis 1, num_axes 0, {0}: copies shape(1) = 1
    ('type: "Reshape" reshape_param { axis: 1 num_axes: 0 shape { dim: 0 } }', [(2, 1, 3)], 1, [(2, 1, 1, 3)]),
    # Crop (FCN score): axis 2, offset 5 on both spatial axes; axes before `axis` keep bottom 0's
    ('type: "Crop" crop_param { axis: 2 offset: 5 }', [(1, 21, 44, 44), (1, 3, 34, 34)], 1, [(1, 21, 34, 34)]),
    # one offset per cropped axis (axis 1: 5 >= 3 + 0, 10 >= 4 + 1, 10 >= 4 + 2)
    ('type: "Crop" crop_param { axis: 1 offset: 0 offset: 1 offset: 2 }', [(1, 5, 10, 10), (9, 3, 4, 4)], 1,
     [(1, 3, 4, 4)]),
    ('type: "Crop"', [(1, 3, 10, 10), (9, 9, 5, 6)], 1, [(1, 3, 5, 6)]),
    # Permute (SSD mbox_loc_perm): NCHW -> NHWC
    ('type: "Permute" permute_param { order: 0 order: 2 order: 3 order: 1 }', [(1, 12, 19, 19)], 1,
     [(1, 19, 19, 12)]),
    # unlisted axes follow in order: [0, 2] + [1, 3]
    ('type: "Permute" permute_param { order: 0 order: 2 }', [(1, 2, 3, 4)], 1, [(1, 3, 2, 4)]),
    # Tile: axis 1 by default
    ('type: "Tile" tile_param { tiles: 3 }', [(2, 3, 4)], 1, [(2, 9, 4)]),
    ('type: "Tile" tile_param { axis: -1 tiles: 2 }', [(2, 3, 4)], 1, [(2, 3, 8)]),
    # Eltwise
    ('type: "Eltwise"', [(2, 3, 4, 4)] * 2, 1, [(2, 3, 4, 4)]),
    ('type: "Eltwise" eltwise_param { operation: PROD }', [(2, 3)] * 3, 1, [(2, 3)]),
    ('type: "Eltwise" eltwise_param { operation: MAX }', [(2, 3)] * 2, 1, [(2, 3)]),
    ('type: "Eltwise" eltwise_param { operation: SUM coeff: 1 coeff: -1 }', [(2, 3)] * 2, 1, [(2, 3)]),
    # Reduction: drops every axis from `axis` (0 by default: a scalar)
    ('type: "Reduction"', [(2, 3, 4)], 1, [()]),
    ('type: "Reduction" reduction_param { operation: MEAN axis: 1 }', [(2, 3, 4)], 1, [(2,)]),
    ('type: "Reduction" reduction_param { operation: ASUM axis: -1 }', [(2, 3, 4)], 1, [(2, 3)]),
    # ArgMax without axis: max(3, num_axes) axes of 1, shape[0] = N, shape[2] = top_k
    ('type: "ArgMax"', [(10, 20, 5, 5)], 1, [(10, 1, 1, 1)]),
    ('type: "ArgMax" argmax_param { top_k: 5 }', [(10, 20)], 1, [(10, 1, 5)]),
    # ... and shape[1] = 2 with out_max_val (index and value)
    ('type: "ArgMax" argmax_param { top_k: 3 out_max_val: true }', [(10, 20, 5, 5)], 1, [(10, 2, 3, 1)]),
    # with axis: shape[axis] = top_k (values instead of indices with out_max_val, same shape)
    ('type: "ArgMax" argmax_param { axis: 1 top_k: 2 }', [(10, 20, 5, 5)], 1, [(10, 2, 5, 5)]),
    ('type: "ArgMax" argmax_param { axis: -1 out_max_val: true }', [(10, 20, 5, 5)], 1, [(10, 20, 5, 1)]),
    # Silence: no tops
    ('type: "Silence"', [(2, 3), (4,)], 0, []),
    # Parameter: a learnable blob as top
    ('type: "Parameter" parameter_param { shape { dim: 3 dim: 4 } }', [], 1, [(3, 4)]),
]


@pytest.mark.parametrize("body,bottoms,ntops,tops", CASES)
def test_shapes(body, bottoms, ntops, tops):
    lay = build(layer(body, len(bottoms), ntops), bottoms)
    assert lay.top_shapes == tops


def test_parameter_layer_blob():
    lay = build(layer('type: "Parameter" parameter_param { shape { dim: 3 dim: 4 } }', 0), [])
    assert [p.shape for p in lay.params] == [(3, 4)] and lay.params[0].blob.learnable


def test_silence_consumes_outputs():
    net = build_net(layer('type: "Silence"', 2, 0), [(2, 3), (4,)])
    assert net.output_ids() == []


@pytest.mark.parametrize("body,bottoms,macs,flops", [
    # SUM of k bottoms: (k-1) adds per element; coefficients other than 1: + k multiplies
    ('type: "Eltwise"', [(2, 3)] * 3, 0, 6 * 2),
    ('type: "Eltwise" eltwise_param { coeff: 1 coeff: 1 }', [(2, 3)] * 2, 0, 6),
    ('type: "Eltwise" eltwise_param { coeff: 0.5 coeff: -1 }', [(2, 3)] * 2, 0, 6 + 12),
    ('type: "Eltwise" eltwise_param { operation: PROD }', [(2, 3)] * 3, 12, 12),
    ('type: "Eltwise" eltwise_param { operation: MAX }', [(2, 3)] * 2, 0, 6),
    ('type: "Reduction" reduction_param { operation: SUMSQ }', [(2, 3)], 6, 12),
    ('type: "Reduction" reduction_param { operation: SUM }', [(2, 3)], 0, 6),
])
def test_costs(body, bottoms, macs, flops):
    cost = build(layer(body, len(bottoms)), bottoms).cost
    assert (cost.macs, cost.flops) == (macs, flops)


ERRORS = [
    # concat_layer.cpp: "All inputs must have the same shape, except at concat_axis."
    ('type: "Concat"', [(2, 3, 4, 4), (2, 3, 5, 4)], 1, "does not match"),
    ('type: "Concat"', [(2, 3, 4, 4), (2, 3, 4)], 1, "does not match"),
    # "Either axis or concat_dim should be specified; not both."
    ('type: "Concat" concat_param { axis: 1 concat_dim: 1 }', [(2, 3), (2, 3)], 1, "not both"),
    ('type: "Concat" concat_param { axis: 2 }', [(2, 3), (2, 3)], 1, "out of range"),
    # slice_layer.cpp: CHECK_EQ(slice_point_.size(), top.size() - 1)
    ('type: "Slice" slice_param { slice_point: 2 }', [(2, 8)], 3, "slice_point"),
    # CHECK_GT(slice_point_[i], prev)
    ('type: "Slice" slice_param { slice_point: 5 slice_point: 2 }', [(2, 8)], 3, "increase"),
    ('type: "Slice" slice_param { slice_point: 8 }', [(2, 8)], 2, "increase"),
    # CHECK_EQ(bottom_slice_axis % top.size(), 0)
    ('type: "Slice"', [(2, 8)], 3, "equal"),
    ('type: "Slice" slice_param { axis: 1 slice_dim: 1 }', [(2, 8)], 2, "not both"),
    # flatten: Blob::count(start, end) needs start <= end
    ('type: "Flatten" flatten_param { axis: 2 end_axis: 1 }', [(2, 3, 4)], 1, "end_axis"),
    ('type: "Flatten" flatten_param { end_axis: 3 }', [(2, 3, 4)], 1, "out of range"),
    # reshape_layer.cpp: "new shape contains multiple -1 dims"
    ('type: "Reshape" reshape_param { shape { dim: -1 dim: -1 } }', [R], 1, "-1"),
    # "bottom count (180) must be divisible by the product of the specified dimensions (7)"
    ('type: "Reshape" reshape_param { shape { dim: 7 dim: -1 } }', [R], 1, "infer"),
    # "output count must match input count"
    ('type: "Reshape" reshape_param { shape { dim: 4 dim: 4 } }', [R], 1, "values"),
    # "new shape contains a 0, but there was no corresponding bottom axis to copy"
    ('type: "Reshape" reshape_param { shape { dim: 0 dim: 0 dim: 0 dim: 0 dim: 0 } }', [R], 1, "copy"),
    ('type: "Reshape" reshape_param { axis: 5 shape { dim: 1 } }', [R], 1, "out of range"),
    ('type: "Reshape" reshape_param { axis: -6 shape { dim: 1 } }', [R], 1, "out of range"),
    ('type: "Reshape" reshape_param { num_axes: -2 shape { dim: 1 } }', [R], 1, "num_axes"),
    ('type: "Reshape" reshape_param { axis: 2 num_axes: 3 shape { dim: -1 } }', [R], 1, "exceeds"),
    # crop_layer.cpp: CHECK_GE(bottom[0]->shape(i) - crop_offset, bottom[1]->shape(i))
    ('type: "Crop" crop_param { offset: 3 }', [(1, 3, 10, 10), (1, 3, 8, 8)], 1, "exceeds"),
    # "number of offset values specified must be equal to the number of dimensions following axis"
    ('type: "Crop" crop_param { offset: 1 offset: 1 offset: 1 }', [(1, 3, 10, 10), (1, 3, 8, 8)], 1, "offsets"),
    ('type: "Crop"', [(1, 3, 10, 10), (1, 8, 8)], 1, "number of axes"),
    # permute_layer.cpp: "there are duplicate orders" / "order should be less than the input dimension."
    ('type: "Permute" permute_param { order: 0 order: 0 }', [(1, 2, 3)], 1, "permutation"),
    ('type: "Permute" permute_param { order: 3 }', [(1, 2, 3)], 1, "permutation"),
    # tile_layer.cpp: "Number of tiles must be positive."
    ('type: "Tile" tile_param { tiles: 0 }', [(2, 3)], 1, "tiles"),
    # eltwise_layer.cpp: "Eltwise layer only takes coefficients for summation."
    ('type: "Eltwise" eltwise_param { operation: PROD coeff: 1 coeff: 2 }', [(2, 3)] * 2, 1, "SUM"),
    # "Eltwise Layer takes one coefficient per bottom blob."
    ('type: "Eltwise" eltwise_param { coeff: 1 }', [(2, 3)] * 2, 1, "coefficients"),
    # CHECK(bottom[i]->shape() == bottom[0]->shape())
    ('type: "Eltwise"', [(2, 3), (3, 2)], 1, "differs"),
    # MinBottomBlobs 2
    ('type: "Eltwise"', [(2, 3)], 1, "bottom"),
    ('type: "Reduction" reduction_param { axis: 3 }', [(2, 3, 4)], 1, "out of range"),
    # argmax_layer.cpp: "top k must not be less than 1."
    ('type: "ArgMax" argmax_param { top_k: 0 }', [(2, 3)], 1, "top_k"),
    # "top_k must be less than or equal to the dimension of the axis."
    ('type: "ArgMax" argmax_param { axis: 1 top_k: 4 }', [(2, 3)], 1, "top_k"),
    # "top_k must be less than or equal to the dimension of the flattened bottom blob per instance."
    ('type: "ArgMax" argmax_param { top_k: 13 }', [(2, 3, 4)], 1, "top_k"),
]


@pytest.mark.parametrize("body,bottoms,ntops,match", ERRORS)
def test_errors(body, bottoms, ntops, match):
    with pytest.raises(NetError, match=match):
        build(layer(body, len(bottoms), ntops), bottoms)
