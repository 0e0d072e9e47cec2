"""ShuffleChannel, Interp and Upsample: shapes and costs worked out by hand from the forks' formulas."""

from __future__ import annotations

import pytest

import dnntool.layers.vision_ext  # noqa: F401  (registers the types before dnntool.layers.all does)
from dnntool.errors import NetError, ShapeError
from dnntool.net import Net
from tests.layers.util import build
from tests.zoo import zoo_dir


def layer(type_: str, body: str = "", bottoms: int = 1) -> str:
    b = "".join(f'  bottom: "b{i}"\n' for i in range(bottoms))
    return f'layer {{\n  name: "L"\n  type: "{type_}"\n{b}  top: "out"\n{body}\n}}\n'


# (id, layer text, bottom shapes, expected top shapes, expected param count, expected macs, expected flops)
CASES = [
    # ---- ShuffleChannel: top = bottom, channels divisible by group; pure data movement
    ("shuffle-g3", layer("ShuffleChannel", "shuffle_channel_param { group: 3 }"),
     [(1, 240, 28, 28)], [(1, 240, 28, 28)], 0, 0, 0),
    ("shuffle-default-g1", layer("ShuffleChannel"), [(2, 7, 5, 5)], [(2, 7, 5, 5)], 0, 0, 0),
    # ---- Interp (hszhao/PSPNet): H' = H + pad_beg + pad_end; 4 MACs (8 FLOPs) per output value
    # OpenCV's layer_interp test, step 1: height 9 width 8 -> (2, 3, 9, 8); MACs 4*2*3*9*8 = 1728
    ("interp-size", layer("Interp", "interp_param { height: 9 width: 8 }"),
     [(2, 3, 4, 5)], [(2, 3, 9, 8)], 0, 1728, 3456),
    # step 2: zoom 2 from 9x8 -> 9 + 8*1 = 17, 8 + 7*1 = 15; MACs 4*2*3*17*15 = 6120
    ("interp-zoom", layer("Interp", "interp_param { zoom_factor: 2 }"),
     [(2, 3, 9, 8)], [(2, 3, 17, 15)], 0, 6120, 12240),
    # shrink 8 from 473: (473-1)//8 + 1 = 60
    ("interp-shrink", layer("Interp", "interp_param { shrink_factor: 8 }"),
     [(1, 3, 473, 473)], [(1, 3, 60, 60)], 0, 4 * 3 * 3600, None),
    # zoom 8 from 60: 60 + 59*7 = 473 (PSPNet's 473 input, 1/8 feature map)
    ("interp-zoom8", layer("Interp", "interp_param { zoom_factor: 8 }"),
     [(1, 21, 60, 60)], [(1, 21, 473, 473)], 0, 4 * 21 * 473 * 473, None),
    # shrink 2 then zoom 3: (9-1)//2 + 1 = 5, 5 + 4*2 = 13
    ("interp-shrink-zoom", layer("Interp", "interp_param { shrink_factor: 2 zoom_factor: 3 }"),
     [(1, 1, 9, 9)], [(1, 1, 13, 13)], 0, 4 * 169, None),
    # crop one pixel each side: H' = 10 - 2 = 8, zoom 2 -> 8 + 7 = 15
    ("interp-pad-crop", layer("Interp", "interp_param { zoom_factor: 2 pad_beg: -1 pad_end: -1 }"),
     [(1, 1, 10, 12)], [(1, 1, 15, 19)], 0, 4 * 15 * 19, None),
    # size from a second bottom (yangguorun/SegStereo, OpenCV)
    ("interp-like-bottom", layer("Interp", "", 2),
     [(1, 21, 60, 60), (1, 3, 473, 473)], [(1, 21, 473, 473)], 0, 4 * 21 * 473 * 473, None),
    # ---- Upsample (alexgkendall/caffe-segnet): H*scale_h - pad_out_h; no arithmetic counted
    ("upsample-segnet", layer("Upsample", "upsample_param { scale: 2 }", 2),
     [(1, 64, 120, 160)] * 2, [(1, 64, 240, 320)], 0, 0, 0),
    ("upsample-size", layer("Upsample", "upsample_param { upsample_h: 45 upsample_w: 60 }", 2),
     [(1, 64, 23, 30)] * 2, [(1, 64, 45, 60)], 0, 0, 0),
    # pad_out_h: 23*2 - 1 = 45, 30*2 = 60
    ("upsample-pad-out", layer("Upsample", "upsample_param { scale: 2 pad_out_h: true }", 2),
     [(1, 64, 23, 30)] * 2, [(1, 64, 45, 60)], 0, 0, 0),
    ("upsample-scale-hw", layer("Upsample", "upsample_param { scale_h: 2 scale_w: 3 }", 2),
     [(1, 8, 10, 10)] * 2, [(1, 8, 20, 30)], 0, 0, 0),
    # default scale 2 (SegNet's proto default)
    ("upsample-default", layer("Upsample", "", 2), [(1, 4, 3, 5)] * 2, [(1, 4, 6, 10)], 0, 0, 0),
    # YOLOv3 port: one bottom, nearest neighbour x2
    ("upsample-yolo", layer("Upsample", "upsample_param { scale: 2 }"),
     [(1, 256, 13, 13)], [(1, 256, 26, 26)], 0, 0, 0),
]


@pytest.mark.parametrize(("text", "bottoms", "tops", "params", "macs", "flops"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_shapes_params_cost(text, bottoms, tops, params, macs, flops):
    lay = build(text, bottoms)
    assert lay.top_shapes == tops
    assert sum(p.count for p in lay.params) == params
    if macs is not None:
        assert lay.cost.macs == macs
    if flops is not None:
        assert lay.cost.flops == flops


# (id, layer text, bottom shapes, exception type, text the one-line message must contain)
ERRORS = [
    ("shuffle-not-divisible", layer("ShuffleChannel", "shuffle_channel_param { group: 3 }"),
     [(1, 100, 28, 28)], ShapeError, "100 channels are not divisible by group 3"),
    ("shuffle-group-0", layer("ShuffleChannel", "shuffle_channel_param { group: 0 }"),
     [(1, 6, 2, 2)], NetError, "group must be >= 1, got 0"),
    ("interp-no-spec", layer("Interp"), [(1, 3, 4, 4)], NetError, "give zoom_factor, shrink_factor, height and width"),
    ("interp-height-only", layer("Interp", "interp_param { height: 9 }"), [(1, 3, 4, 4)], NetError,
     "height and width must be given together"),
    ("interp-positive-pad", layer("Interp", "interp_param { zoom_factor: 2 pad_beg: 1 }"), [(1, 3, 4, 4)], NetError,
     "pad_beg 1 / pad_end 0: only non-positive padding"),
    ("interp-zoom-0", layer("Interp", "interp_param { zoom_factor: 0 }"), [(1, 3, 4, 4)], NetError,
     "zoom_factor must be >= 1, got 0"),
    ("interp-two-specs", layer("Interp", "interp_param { zoom_factor: 2 }", 2), [(1, 3, 4, 4)] * 2, NetError,
     "comes from the second bottom"),
    ("interp-crop-all", layer("Interp", "interp_param { zoom_factor: 2 pad_beg: -2 pad_end: -2 }"), [(1, 3, 4, 4)],
     ShapeError, "leaves an empty 0x0 input"),
    ("interp-3d", layer("Interp", "interp_param { zoom_factor: 2 }"), [(1, 3, 4)], ShapeError,
     "expects a 4-D bottom (N,C,H,W), got 1x3x4"),
    ("upsample-mask-shape", layer("Upsample", "upsample_param { scale: 2 }", 2), [(1, 64, 23, 30), (1, 64, 23, 31)],
     ShapeError, "the mask 1x64x23x31 must have the shape of the data 1x64x23x30"),
    ("upsample-scale-and-scale-h", layer("Upsample", "upsample_param { scale: 2 scale_h: 2 scale_w: 2 }", 2),
     [(1, 4, 3, 3)] * 2, NetError, "not scale with scale_h/scale_w"),
    ("upsample-pad-out-scale-3", layer("Upsample", "upsample_param { scale: 3 pad_out_w: true }", 2),
     [(1, 4, 3, 3)] * 2, NetError, "pad_out_w requires scale_w == 2, got 3"),
    ("upsample-size-1", layer("Upsample", "upsample_param { upsample_h: 1 upsample_w: 8 }", 2),
     [(1, 4, 3, 3)] * 2, NetError, "upsample_h/upsample_w must be > 1, got 1x8"),
    ("upsample-segnet-scale-1", layer("Upsample", "upsample_param { scale: 1 }", 2),
     [(1, 4, 3, 3)] * 2, NetError, "scale must be > 1, got 1x1"),
    ("upsample-three-bottoms", layer("Upsample", "", 3), [(1, 4, 3, 3)] * 3, NetError, "takes 1..2 bottom blob(s), got 3"),
]


@pytest.mark.parametrize(("text", "bottoms", "exc", "needle"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors(text, bottoms, exc, needle):
    with pytest.raises(exc) as info:
        build(text, bottoms)
    msg = str(info.value)
    assert needle in msg
    assert "layer 'L' (" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(("text", "bottoms", "summary"), [
    (layer("ShuffleChannel", "shuffle_channel_param { group: 3 }"), [(1, 6, 2, 2)], "g3"),
    (layer("Interp", "interp_param { zoom_factor: 8 }"), [(1, 3, 4, 4)], "zoom 8"),
    (layer("Interp", "interp_param { height: 64 width: 64 }"), [(1, 3, 4, 4)], "64x64"),
    (layer("Interp", "interp_param { shrink_factor: 2 zoom_factor: 3 pad_beg: -1 }"), [(1, 3, 9, 9)],
     "shrink 2, zoom 3, pad -1/0"),
    (layer("Upsample", "upsample_param { scale: 2 }", 2), [(1, 3, 4, 4)] * 2, "x2"),
    (layer("Upsample", "upsample_param { upsample_h: 45 upsample_w: 60 }", 2), [(1, 3, 23, 30)] * 2, "45x60"),
])
def test_summary(text, bottoms, summary):
    assert build(text, bottoms).impl.summary() == summary


def _zoo(rel: str):
    z = zoo_dir()
    if z is None or not (z / rel).exists():
        pytest.skip(f"zoo file {rel} not available")
    return z / rel


def test_opencv_interp_testdata():
    # opencv_extra layer_interp.prototxt: (2,3,4,5) -> height 9 width 8 -> zoom 2 -> (2,3,17,15)
    net = Net.from_prototxt(_zoo("opencv_extra/testdata/dnn/layers/layer_interp.prototxt"))
    assert net.blob("first").shape == (2, 3, 9, 8)
    assert net.blob("output").shape == (2, 3, 17, 15)


def test_pspnet_pyramid_interps():
    # se-resnet50 PSPNet deploy: pooled 1,2,4,8 maps back to 64x64, then score map to the 513x513 input
    net = Net.from_prototxt(_zoo("soeaver_caffe_model/seg/pspnet/models/pascal_voc/se-resnet50/"
                                 "deploy_psp_se-resnet50-hik-merge.prototxt"))
    for k in (1, 2, 4, 8):
        assert net.layer(f"psp_pool{k}_interp").top_shapes == [(1, 512, 64, 64)]
    assert net.layer("score_map_interp").top_shapes == [(1, 21, 513, 513)]


def test_shufflenet_shuffles_keep_shapes():
    net = Net.from_prototxt(_zoo("shufflenet/shufflenet_1x_g3_deploy.prototxt"))
    shuffles = [ly for ly in net.layers if ly.type == "ShuffleChannel"]
    assert shuffles and all(ly.top_shapes == ly.bottom_shapes for ly in shuffles)
    assert {ly.impl.summary() for ly in shuffles} == {"g3"}
