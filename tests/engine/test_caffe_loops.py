"""Pooling and LRN edge cases: the ONNX translation (through ONNX Runtime) against numpy ports of
Caffe's own loops (tests/engine/caffe_ref.py), within 1e-5."""

from __future__ import annotations

import numpy as np
import pytest

from tests.engine import caffe_ref
from tests.engine.oracle import run_ours
from tests.layers.util import build_net

POOL = 'layer {{ name: "l" type: "Pooling" bottom: "b0" top: "y" {tops} pooling_param {{ {p} }} }}'

# id, pooling_param, input shape, reference (kernel, stride, pad, pool[, ceil])
POOL_CASES = [
    ("max_ceil_overhang", "pool: MAX kernel_size: 3 stride: 2", (2, 3, 7, 8), ((3, 3), (2, 2), (0, 0), "MAX")),
    ("max_pad_clip", "pool: MAX kernel_size: 3 stride: 2 pad: 1", (1, 2, 6, 6), ((3, 3), (2, 2), (1, 1), "MAX")),
    ("max_pad_even", "pool: MAX kernel_size: 2 stride: 2 pad: 1", (1, 2, 5, 5), ((2, 2), (2, 2), (1, 1), "MAX")),
    ("max_odd", "pool: MAX kernel_size: 3 stride: 3", (1, 2, 9, 11), ((3, 3), (3, 3), (0, 0), "MAX")),
    ("max_hw", "pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0", (1, 2, 7, 5),
     ((3, 2), (2, 1), (1, 0), "MAX")),
    ("max_pad_one_axis", "pool: MAX kernel_size: 3 stride: 2 pad_h: 0 pad_w: 1", (1, 1, 6, 7),
     ((3, 3), (2, 2), (0, 1), "MAX")),
    ("max_stride_gt_kernel", "pool: MAX kernel_size: 2 stride: 3", (1, 2, 7, 7), ((2, 2), (3, 3), (0, 0), "MAX")),
    ("max_window_past_image", "pool: MAX kernel_size: 1 stride: 2", (1, 2, 6, 5), ((1, 1), (2, 2), (0, 0), "MAX")),
    ("max_1x1", "pool: MAX kernel_size: 3 stride: 2 pad: 1", (1, 3, 1, 1), ((3, 3), (2, 2), (1, 1), "MAX")),
    ("max_wide_rows", "pool: MAX kernel_size: 3 stride: 2", (1, 2, 5, 37), ((3, 3), (2, 2), (0, 0), "MAX")),
    ("max_floor", "pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR", (1, 2, 8, 8),
     ((3, 3), (2, 2), (0, 0), "MAX", False)),
    ("ave_ceil_overhang", "pool: AVE kernel_size: 3 stride: 2", (2, 2, 6, 6), ((3, 3), (2, 2), (0, 0), "AVE")),
    ("ave_pad", "pool: AVE kernel_size: 3 stride: 2 pad: 1", (1, 2, 7, 6), ((3, 3), (2, 2), (1, 1), "AVE")),
    ("ave_pad_even", "pool: AVE kernel_size: 2 stride: 2 pad: 1", (1, 2, 5, 5), ((2, 2), (2, 2), (1, 1), "AVE")),
    ("ave_hw", "pool: AVE kernel_h: 2 kernel_w: 3 stride: 2 pad_h: 1 pad_w: 1", (1, 2, 5, 6),
     ((2, 3), (2, 2), (1, 1), "AVE")),
    ("ave_stride_gt_kernel", "pool: AVE kernel_size: 2 stride: 3", (1, 1, 8, 7), ((2, 2), (3, 3), (0, 0), "AVE")),
    ("ave_window_past_image", "pool: AVE kernel_size: 1 stride: 2", (1, 2, 6, 5), ((1, 1), (2, 2), (0, 0), "AVE")),
    ("ave_1x1", "pool: AVE kernel_size: 3 stride: 2 pad: 1", (1, 3, 1, 1), ((3, 3), (2, 2), (1, 1), "AVE")),
    ("sto_ceil", "pool: STOCHASTIC kernel_size: 3 stride: 2", (1, 3, 7, 6), ((3, 3), (2, 2), (0, 0), "STO")),
    ("sto_stride_gt_kernel", "pool: STOCHASTIC kernel_size: 1 stride: 2", (1, 2, 4, 5),
     ((1, 1), (2, 2), (0, 0), "STO")),
]
GLOBAL_CASES = [("global_max", "MAX", (2, 3, 5, 7)), ("global_ave", "AVE", (1, 2, 4, 3)),
                ("global_max_1x1", "MAX", (1, 2, 1, 1)), ("global_ave_1x9", "AVE", (1, 2, 1, 9))]


def _run(text: str, x: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
    net = build_net(text, [x.shape])
    got = run_ours(net, {}, {"b0": x}, outputs)
    return [got[o] for o in outputs]


def _close(ours, ref, what: str) -> None:
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(np.nanmax(np.abs(
        np.where(np.abs(ref) >= caffe_ref.FLT_MAX, 0, ref))))), equal_nan=True, err_msg=what)


@pytest.mark.parametrize(("param", "shape", "ref"), [c[1:] for c in POOL_CASES], ids=[c[0] for c in POOL_CASES])
def test_pooling_matches_caffe_loops(param, shape, ref):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    (y,) = _run(POOL.format(tops="", p=param), x, ["y"])
    want, _ = caffe_ref.caffe_pool(x, *ref)
    _close(y, want, param)


@pytest.mark.parametrize(("param", "shape", "ref"),
                         [c[1:] for c in POOL_CASES if "MAX" in c[1]], ids=[c[0] for c in POOL_CASES if "MAX" in c[1]])
def test_max_pooling_mask_top(param, shape, ref):
    rng = np.random.default_rng(7)
    x = rng.permutation(np.arange(np.prod(shape), dtype=np.float32)).reshape(shape) - 10  # no ties
    y, mask = _run(POOL.format(tops='top: "mask"', p=param), x, ["y", "mask"])
    want, want_mask = caffe_ref.caffe_pool(x, *ref)
    _close(y, want, param)
    np.testing.assert_array_equal(mask, want_mask)


@pytest.mark.parametrize("form", ["separable", "indices"])
@pytest.mark.parametrize(("param", "shape", "ref"),
                         [c[1:] for c in POOL_CASES if "MAX" in c[1]], ids=[c[0] for c in POOL_CASES if "MAX" in c[1]])
def test_max_pooling_backward_routes_ties_like_caffe(param, shape, ref, form, monkeypatch):
    """Caffe's Backward_cpu: bottom_diff[mask] += top_diff, the mask the first maximum in scan order;
    inputs of few distinct values, so most windows hold ties. Both gradient formulations."""
    import onnxruntime as ort

    from dnntool.onnxgraph import grad_spatial
    from tests.engine.gradcheck import build_check_model

    monkeypatch.setattr(grad_spatial, "MAXPOOL_FORM", form)
    x = np.random.default_rng(sum(shape)).integers(-2, 3, shape).astype(np.float32)
    net = build_net(POOL.format(tops="", p=param), [x.shape], phase="train")
    model, _, _, _ = build_check_model(net)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    dx = sess.run(["grad::b0"], {"b0": x})[0]
    from onnx import numpy_helper

    r = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "R::y"))
    _, mask = caffe_ref.caffe_pool(x, *ref)
    want = np.zeros(x.shape, np.float32).reshape(shape[0], shape[1], -1)
    for (i, ch, u, v), m in np.ndenumerate(mask):
        if m >= 0:
            want[i, ch, int(m)] += r[i, ch, u, v]
    np.testing.assert_allclose(dx, want.reshape(shape), rtol=1e-6, atol=1e-6, err_msg=param)


@pytest.mark.parametrize(("pool", "shape"), [c[1:] for c in GLOBAL_CASES], ids=[c[0] for c in GLOBAL_CASES])
def test_global_pooling(pool, shape):
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    (y,) = _run(POOL.format(tops="", p=f"pool: {pool} global_pooling: true"), x, ["y"])
    want, _ = caffe_ref.caffe_pool(x, shape[2:], (1, 1), (0, 0), pool)
    _close(y, want, pool)


def test_stochastic_pooling_nonpositive_window_is_zero():
    x = -np.abs(np.random.default_rng(5).standard_normal((1, 2, 5, 5))).astype(np.float32)
    x[0, 0, :2, :2] = 3.0
    (y,) = _run(POOL.format(tops="", p="pool: STOCHASTIC kernel_size: 2 stride: 2"), x, ["y"])
    want, _ = caffe_ref.caffe_pool(x, (2, 2), (2, 2), (0, 0), "STO")
    assert (want == 0).sum() > 5
    _close(y, want, "stochastic")


LRN = 'layer {{ name: "l" type: "LRN" bottom: "b0" top: "y" lrn_param {{ {p} }} }}'
# id, lrn_param, shape, reference (size, alpha, beta, k, within)
LRN_CASES = [
    ("across_5", "local_size: 5 alpha: 0.0001 beta: 0.75", (2, 7, 4, 3), (5, 1e-4, 0.75, 1.0, False)),
    ("across_3_k2", "local_size: 3 alpha: 0.5 beta: 0.75 k: 2", (1, 6, 5, 5), (3, 0.5, 0.75, 2.0, False)),
    ("across_size_gt_channels", "local_size: 5 alpha: 0.3 beta: 0.5", (1, 2, 3, 3), (5, 0.3, 0.5, 1.0, False)),
    ("across_1x1", "local_size: 3 alpha: 1 beta: 1", (1, 4, 1, 1), (3, 1.0, 1.0, 1.0, False)),
    ("within_3", "local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL", (1, 2, 5, 4),
     (3, 0.5, 0.75, 1.0, True)),
    ("within_5_odd", "local_size: 5 alpha: 2 beta: 0.6 norm_region: WITHIN_CHANNEL", (2, 3, 7, 9),
     (5, 2.0, 0.6, 1.0, True)),
    ("within_1x1", "local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL", (1, 2, 1, 1),
     (3, 0.5, 0.75, 1.0, True)),
]


@pytest.mark.parametrize(("param", "shape", "ref"), [c[1:] for c in LRN_CASES], ids=[c[0] for c in LRN_CASES])
def test_lrn_matches_caffe_loops(param, shape, ref):
    x = np.random.default_rng(11).standard_normal(shape).astype(np.float32) * 2
    (y,) = _run(LRN.format(p=param), x, ["y"])
    _close(y, caffe_ref.caffe_lrn(x, *ref), param)
