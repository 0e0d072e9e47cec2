"""Fork layers (PSPNet Interp, SegNet/YOLO Upsample, Fast R-CNN ROIPooling, R-FCN PSROIPooling,
FlowNet Correlation, DeepLab SegAccuracy, smooth L1 and infogain losses) through ONNX Runtime,
against numpy ports of the forks' loops (tests/engine/caffe_ref.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.engine import caffe_ref
from tests.engine.oracle import run_ours
from tests.layers.util import build_net


def _run(text: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    net = build_net(text, [v.shape for v in feeds.values()], names=list(feeds))
    got = run_ours(net, {}, feeds, outputs)
    return [got[o] for o in outputs]


def _rand(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


INTERP = 'layer {{ name: "l" type: "Interp" bottom: "x" {b2} top: "y" interp_param {{ {p} }} }}'
INTERP_CASES = [  # id, param, input shape, (out h, out w, pad_beg, pad_end)
    ("zoom2", "zoom_factor: 2", (1, 2, 5, 7), (9, 13, 0, 0)),
    ("shrink3", "shrink_factor: 3", (1, 2, 10, 8), (4, 3, 0, 0)),
    ("size_up", "height: 11 width: 6", (2, 3, 4, 5), (11, 6, 0, 0)),
    ("size_down", "height: 3 width: 4", (1, 2, 9, 10), (3, 4, 0, 0)),
    ("to_one_row", "height: 1 width: 5", (1, 1, 4, 3), (1, 5, 0, 0)),
    ("from_one_row", "height: 4 width: 4", (1, 1, 1, 3), (4, 4, 0, 0)),
    ("same_size_copy", "height: 5 width: 6", (1, 2, 5, 6), (5, 6, 0, 0)),
    ("crop_zoom", "zoom_factor: 3 pad_beg: -1 pad_end: -2", (1, 2, 8, 9), (13, 16, -1, -2)),
    ("shrink_zoom", "shrink_factor: 2 zoom_factor: 3", (1, 1, 9, 8), (13, 10, 0, 0)),
]


@pytest.mark.parametrize(("param", "shape", "ref"), [c[1:] for c in INTERP_CASES], ids=[c[0] for c in INTERP_CASES])
def test_interp_matches_caffe_cpu_interp2(param, shape, ref):
    x = _rand(shape, 1)
    (y,) = _run(INTERP.format(b2="", p=param), {"x": x}, ["y"])
    np.testing.assert_allclose(y, caffe_ref.caffe_interp2(x, *ref), rtol=1e-5, atol=1e-5)


def test_interp_size_from_second_bottom():
    x, ref = _rand((1, 2, 4, 5), 2), np.zeros((1, 7, 9, 3), np.float32)
    (y,) = _run(INTERP.format(b2='bottom: "r"', p=""), {"x": x, "r": ref}, ["y"])
    np.testing.assert_allclose(y, caffe_ref.caffe_interp2(x, 9, 3), rtol=1e-5, atol=1e-5)


def test_segnet_upsample_scatters_pooling_mask():
    x = np.random.default_rng(3).permutation(150).astype(np.float32).reshape(1, 2, 75 // 5, 5)[:, :, :5]
    text = ('layer { name: "p" type: "Pooling" bottom: "x" top: "p" top: "m" pooling_param { pool: MAX kernel_size: 2'
            ' stride: 2 } }\nlayer { name: "u" type: "Upsample" bottom: "p" bottom: "m" top: "y"'
            ' upsample_param { scale: 2 pad_out_h: true } }')
    p, m, y = _run(text, {"x": x}, ["p", "m", "y"])
    assert y.shape == (1, 2, 5, 6)
    np.testing.assert_array_equal(y, caffe_ref.segnet_unpool(p, m, 5, 6))


def test_nearest_upsample_one_bottom():
    x = _rand((1, 3, 2, 3), 4)
    text = 'layer { name: "u" type: "Upsample" bottom: "x" top: "y" upsample_param { scale_h: 2 scale_w: 3 } }'
    (y,) = _run(text, {"x": x}, ["y"])
    np.testing.assert_array_equal(y, x.repeat(2, axis=2).repeat(3, axis=3))


def test_shuffle_channel():
    x = _rand((2, 6, 2, 3), 5)
    text = 'layer { name: "s" type: "ShuffleChannel" bottom: "x" top: "y" shuffle_channel_param { group: 2 } }'
    (y,) = _run(text, {"x": x}, ["y"])
    np.testing.assert_array_equal(y, x.reshape(2, 2, 3, 2, 3).transpose(0, 2, 1, 3, 4).reshape(x.shape))


# rois [batch, x1, y1, x2, y2]: halves (C round() goes away from zero), outside, reversed, negative
ROIS = np.asarray([[0, 0, 0, 15, 15], [1, 2.5, 3.5, 9.5, 12.49], [0, 4, 4, 4, 4], [1, -6, -3, 40, 7],
                   [0, 30, 30, 50, 60], [1, 12, 10, 3, 2], [0, 5.5, 0.5, 14.5, 6.5]], np.float32)


@pytest.mark.parametrize("scale", [0.5, 0.25, 1.0])
def test_roi_pooling_matches_fast_rcnn(scale):
    x = _rand((2, 3, 9, 11), 6)
    x[0, 1] = -np.abs(x[0, 1]) - 0.5  # an all-negative channel: ONNX MaxRoiPool alone would give FLT_MIN
    text = ('layer { name: "r" type: "ROIPooling" bottom: "x" bottom: "rois" top: "y"'
            f' roi_pooling_param {{ pooled_h: 3 pooled_w: 2 spatial_scale: {scale:g} }} }}')
    (y,) = _run(text, {"x": x, "rois": ROIS}, ["y"])
    np.testing.assert_allclose(y, caffe_ref.caffe_roi_pool(x, ROIS, 3, 2, scale), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scale", [0.5, 0.0625])
def test_psroi_pooling_matches_rfcn(scale):
    k, dim = 3, 2
    x = _rand((2, dim * k * k, 8, 10), 7)
    rois = np.concatenate([ROIS, [[1, 60, 40, 80, 70]]]).astype(np.float32)  # the last one is off the map
    rois[:, 1:] /= 4 * scale
    text = ('layer { name: "r" type: "PSROIPooling" bottom: "x" bottom: "rois" top: "y"'
            f' psroi_pooling_param {{ spatial_scale: {scale:g} output_dim: {dim} group_size: {k} }} }}')
    (y,) = _run(text, {"x": x, "rois": rois.reshape(-1, 5, 1, 1)}, ["y"])
    np.testing.assert_allclose(y, caffe_ref.rfcn_psroi_pool(x, rois, dim, k, scale), rtol=1e-5, atol=1e-6)


CORR_CASES = [  # id, correlation_param, (pad, k, d, s1, s2, subtract)
    ("flownetc", "pad: 4 kernel_size: 1 max_displacement: 4 stride_1: 1 stride_2: 2", (4, 1, 4, 1, 2, False)),
    ("kernel3_stride2", "pad: 3 kernel_size: 3 max_displacement: 2 stride_1: 2 stride_2: 1", (3, 3, 2, 2, 1, False)),
    ("subtract", "pad: 1 kernel_size: 3 max_displacement: 1 correlation_type: SUBTRACT", (1, 3, 1, 1, 1, True)),
]


@pytest.mark.parametrize(("param", "ref"), [c[1:] for c in CORR_CASES], ids=[c[0] for c in CORR_CASES])
def test_correlation_matches_flownet(param, ref):
    a, b = _rand((2, 3, 7, 9), 8), _rand((2, 3, 7, 9), 9)
    text = f'layer {{ name: "c" type: "Correlation" bottom: "a" bottom: "b" top: "y" correlation_param {{ {param} }} }}'
    (y,) = _run(text, {"a": a, "b": b}, ["y"])
    np.testing.assert_allclose(y, caffe_ref.flownet_correlation(a, b, *ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("channels", "ignore", "outputs"), [(4, [255], [0, 2]), (1, [], [1]), (3, [1], [1])])
def test_seg_accuracy_matches_confusion_matrix(channels, ignore, outputs):
    rng = np.random.default_rng(channels)
    pred = rng.standard_normal((2, channels, 4, 5)).astype(np.float32)
    label = rng.integers(0, max(channels, 2), (2, 1, 4, 5)).astype(np.float32)
    label[0, 0, 0, :3] = ignore[0] if ignore else 0
    if channels == 4:
        label[label == 3] = 0  # class 3 absent: recall skips it, precision of others unchanged
    p = " ".join([f"ignore_label: {i}" for i in ignore] + [f"output_label: {o}" for o in outputs])
    tops = "".join(f' top: "t{i}"' for i in range(len(outputs) + 1))
    text = f'layer {{ name: "a" type: "SegAccuracy" bottom: "p" bottom: "l"{tops} seg_accuracy_param {{ {p} }} }}'
    got = _run(text, {"p": pred, "l": label}, [f"t{i}" for i in range(len(outputs) + 1)])
    for ours, want in zip(got, caffe_ref.seg_accuracy(pred, label, ignore, outputs), strict=True):
        np.testing.assert_allclose(ours, want, rtol=1e-6, equal_nan=True)


def _smooth_l1(d, sigma2):
    ad = np.abs(d)
    return np.where(ad < 1 / sigma2, 0.5 * d * d * sigma2, ad - 0.5 / sigma2)


def test_smooth_l1_loss_rbg_four_bottoms():
    pred, target = _rand((3, 8, 2, 2), 10, 2), _rand((3, 8, 2, 2), 11, 2)
    w_in, w_out = np.abs(_rand((3, 8, 2, 2), 12)), np.abs(_rand((3, 8, 2, 2), 13))
    text = ('layer { name: "s" type: "SmoothL1Loss" bottom: "a" bottom: "b" bottom: "wi" bottom: "wo" top: "y"'
            ' smooth_l1_loss_param { sigma: 3 } }')
    (y,) = _run(text, {"a": pred, "b": target, "wi": w_in, "wo": w_out}, ["y"])
    want = np.abs(w_out * _smooth_l1(w_in * (pred - target), 9.0)).sum() / 3
    np.testing.assert_allclose(y, want, rtol=1e-5)


def test_smooth_l1_ohem_and_softmax_ohem_per_roi_tops():
    pred, target, w = _rand((4, 8), 14, 2), _rand((4, 8), 15, 2), np.abs(_rand((4, 8), 16))
    text = ('layer { name: "s" type: "SmoothL1LossOHEM" bottom: "a" bottom: "b" bottom: "w" top: "y" top: "per" }\n'
            'layer { name: "c" type: "SoftmaxWithLossOHEM" bottom: "a" bottom: "lab" top: "l" top: "prob" top: "nll"'
            ' loss_param { ignore_label: 2 } }')
    lab = np.asarray([1, 2, 7, 0], np.float32)
    y, per, loss, nll = _run(text, {"a": pred, "b": target, "w": w, "lab": lab}, ["y", "per", "l", "nll"])
    err = _smooth_l1(w * (pred - target), 1.0)
    np.testing.assert_allclose(y, err.sum() / 4, rtol=1e-5)
    np.testing.assert_allclose(per, err.sum(1, keepdims=True), rtol=1e-5)
    p = np.exp(pred - pred.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want = np.where(lab == 2, 0, -np.log(p[np.arange(4), lab.astype(int)]))
    np.testing.assert_allclose(nll, want, rtol=1e-5)
    np.testing.assert_allclose(loss, want.sum() / 3, rtol=1e-5)


def test_infogain_loss_third_bottom_and_file(tmp_path):
    from dnntool.io.blob import write_binaryproto

    x = _rand((2, 3, 2, 2), 17)
    lab = np.asarray([[[0, 2], [1, 1]], [[2, 0], [1, 2]]], np.float32).reshape(2, 1, 2, 2)
    h = np.abs(_rand((3, 3), 18))
    p = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    rows, labs = p.transpose(0, 2, 3, 1).reshape(-1, 3), lab.reshape(-1).astype(int)
    want = -(h[labs] * np.log(rows)).sum() / len(labs)
    text = 'layer { name: "i" type: "InfogainLoss" bottom: "x" bottom: "lab" bottom: "h" top: "y" top: "prob" }'
    y, prob = _run(text, {"x": x, "lab": lab, "h": h.reshape(1, 1, 3, 3)}, ["y", "prob"])
    np.testing.assert_allclose(y, want, rtol=1e-5)
    np.testing.assert_allclose(prob, p, rtol=1e-5)
    write_binaryproto(tmp_path / "H.binaryproto", h.reshape(1, 1, 3, 3))
    text = ('layer { name: "i" type: "InfogainLoss" bottom: "x" bottom: "lab" top: "y"'
            f' infogain_loss_param {{ source: "{tmp_path / "H.binaryproto"}" }} }}')
    (y,) = _run(text, {"x": x, "lab": lab}, ["y"])
    np.testing.assert_allclose(y, want, rtol=1e-5)


def test_priorbox_ssd_truncates_sizes_to_int():
    """weiliu89's loop: int min_size_/max_size_, then min*sqrt(r) x min/sqrt(r); corners / image size."""
    text = ('layer { name: "p" type: "PriorBox" bottom: "f" bottom: "img" top: "y" prior_box_param {'
            ' min_size: 10.7 max_size: 20.9 aspect_ratio: 2 flip: false variance: 0.1 img_h: 40 img_w: 50'
            ' step_h: 8 step_w: 10 offset: 0.25 } }')
    (y,) = _run(text, {"f": np.zeros((1, 1, 2, 3), np.float32), "img": np.zeros((1, 3, 7, 7), np.float32)}, ["y"])
    boxes = []
    for h in range(2):
        for w in range(3):
            cx, cy = (w + 0.25) * 10, (h + 0.25) * 8
            for bw, bh in [(10, 10), (200 ** 0.5,) * 2, (10 * 2 ** 0.5, 10 / 2 ** 0.5)]:
                boxes += [(cx - bw / 2) / 50, (cy - bh / 2) / 40, (cx + bw / 2) / 50, (cy + bh / 2) / 40]
    np.testing.assert_allclose(y[0, 0], boxes, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(y[0, 1], 0.1)


def test_priorbox_opencv_explicit_sizes_and_offsets(tmp_path):
    from tests.engine.oracle import has_opencv_caffe
    from tests.engine.test_opencv_nets import _text_net, compare_with_opencv, inp, lay

    if not has_opencv_caffe():
        pytest.skip("needs opencv-python with cv2.dnn")
    prior = ('prior_box_param { width: 12 width: 30.5 height: 20 height: 7.25 offset_h: 0.2 offset_h: 0.7'
             ' offset_w: 0.5 offset_w: 0.1 clip: true variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }')
    net = _text_net(inp((1, 3, 40, 36)) + inp((1, 4, 5, 6), "feat") + lay("prior", "PriorBox", ["feat", "data"],
                                                                         params=prior))
    assert compare_with_opencv(net, {}, tmp_path) == 1
