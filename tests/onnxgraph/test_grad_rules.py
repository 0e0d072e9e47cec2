"""Gradient rules checked one op at a time, against numeric differences, where no layer case reaches them."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from dnntool.onnxgraph.builder import GraphBuilder
from dnntool.onnxgraph.grad_rules import NOT_DIFFERENTIABLE, RULES, GradCtx
from dnntool.translate.backward import static_shapes


def _check_op(build, x: np.ndarray, step: float = 1e-2):
    """build(g, 'x') -> output name; checks d sum(y * r) / dx of the rule against central differences."""
    g = GraphBuilder("rule")
    g.input("x", list(x.shape))
    y = build(g, "x")
    node = g.nodes[-1]
    shapes = static_shapes(g)
    r = np.random.default_rng(0).uniform(-1, 1, shapes[y]).astype(np.float32)
    rname = g.const(r)
    loss = g.op1("ReduceSum", [g.op1("Mul", [y, rname])], "L", keepdims=0)
    dx = RULES[node.op_type](GradCtx(node=node, g=g, shapes=shapes, out_grads=[rname]))[0]
    g.output(loss, [])
    g.output(g.op1("Identity", [dx], "dx"), list(x.shape))
    sess = ort.InferenceSession(g.model().SerializeToString(), providers=["CPUExecutionProvider"])
    analytic = sess.run(["dx"], {"x": x})[0]
    for i in range(x.size):
        xp, xm = x.copy(), x.copy()
        xp.flat[i] += step
        xm.flat[i] -= step
        num = (sess.run(["L"], {"x": xp})[0] - sess.run(["L"], {"x": xm})[0]) / (2 * step)
        assert abs(analytic.flat[i] - num) <= 1e-3 * max(1.0, abs(num)), (i, analytic.flat[i], num)


def test_pad_rule():
    x = np.random.default_rng(1).uniform(-1, 1, (1, 2, 3, 3)).astype(np.float32)
    _check_op(lambda g, x: g.op1("Pad", [x, g.const([0, 0, 1, 0, 0, 1, 2, 1]), g.scalar(-5.0)]), x)


def test_tile_rule():
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3)).astype(np.float32)
    _check_op(lambda g, x: g.op1("Tile", [x, g.const([2, 3])]), x)


def test_every_op_of_trainable_layers_has_a_rule_or_marker():
    """Each ONNX op the training-mode forward of the gradient-checked layers emits has a gradient
    rule or is explicitly marked non-differentiable (and no op is both)."""
    from dnntool.translate.forward import emit_layers
    from tests.engine.test_gradcheck import CASES, LOSSES
    from tests.layers.util import build_net

    assert not (set(RULES) & NOT_DIFFERENTIABLE)
    emitted = set()
    for case in [*CASES, *LOSSES]:
        net = build_net(case[1], case[2], phase="train")
        g = GraphBuilder("ops")
        g.reserve(net.blobs)
        emit_layers(g, net, list(net.layers), None, list(net.layers[-1].tops), params_as_inputs=True, train=True)
        emitted |= {n.op_type for n in g.nodes}
    missing = sorted(emitted - set(RULES) - NOT_DIFFERENTIABLE)
    assert not missing, f"ops without a gradient rule or marker: {missing}"
    assert {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "Gemm", "Softmax"} <= emitted


def _ops(build) -> list[str]:
    g = GraphBuilder("choice")
    build(g)
    return [n.op_type for n in g.nodes]


def test_convolution_gradient_formulations_chosen_per_shape(monkeypatch):
    """The static per-shape rules (benchmarks/RESULTS.md, Training) pick, for CIFAR10-quick conv2,
    the flipped-weight Conv for dX and for dW the blocked batch-transposed Conv where onnxruntime has
    NCHWc kernels (the split Gemm where it has none or the outputs do not fill whole blocks); for LeNet
    conv2 ConvTranspose and im2col; for CIFAR10-quick conv1 (3 channels) im2col, as patches x dY^T."""
    from dnntool.onnxgraph import grad_spatial
    from dnntool.onnxgraph.grad_spatial import conv_data_grad, conv_weight_grad

    cifar2 = ((100, 32, 16, 16), (100, 32, 16, 16), [5, 5], [2, 2, 2, 2])
    lenet2 = ((64, 20, 12, 12), (64, 50, 8, 8), [5, 5], [0, 0, 0, 0])
    cifar1 = ((100, 3, 32, 32), (100, 32, 32, 32), [5, 5], [2, 2, 2, 2])

    def dx(xs, ys, k, p):
        return _ops(lambda g: conv_data_grad(g, "dy", "w", xs, ys, k, [1, 1], [1, 1], p, 1))

    def dw(xs, ys, k, p):
        return _ops(lambda g: conv_weight_grad(g, "x", "dy", xs, ys, k, [1, 1], [1, 1], p, 1))

    assert "Conv" in dx(*cifar2) and "ConvTranspose" not in dx(*cifar2)
    assert "ConvTranspose" in dx(*lenet2)
    monkeypatch.setattr(grad_spatial, "_nchwc_block", lambda: 16)
    assert "Conv" in dw(*cifar2) and "Gemm" not in dw(*cifar2) and "Pad" in dw(*cifar2)  # the batch to 112
    assert "Gemm" in dw((64, 64, 14, 14), (64, 60, 14, 14), [3, 3], [1, 1, 1, 1])  # 60 outputs: not blocks
    monkeypatch.setattr(grad_spatial, "_nchwc_block", lambda: 0)
    assert "Gemm" in dw(*cifar2) and "Conv" not in dw(*cifar2)
    assert "Conv" in dw(*lenet2) and "Gemm" not in dw(*lenet2)
    g = GraphBuilder("choice")
    conv_weight_grad(g, "x", "dy", *cifar1[:3], [1, 1], [1, 1], cifar1[3], 1)
    made = {o: n for n in g.nodes for o in n.output}
    first = next(n for n in g.nodes if n.op_type == "Transpose")  # the MatMul's transposed operand
    assert "Conv" in [n.op_type for n in g.nodes] and made[first.input[0]].input[0] == "dy"


def test_relu_rule_multiplies_as_caffe():
    # Caffe's ReLU backward is top_diff * (bottom_data > 0): Inf or NaN in dY at an inactive unit
    # gives NaN (0 * Inf), not 0 as a select would; finite values pass or vanish exactly.
    g = GraphBuilder("relu")
    g.input("x", [5])
    g.input("dy", [5])
    y = g.op1("Relu", ["x"])
    node = g.nodes[-1]
    dx = RULES["Relu"](GradCtx(node=node, g=g, shapes=static_shapes(g), out_grads=["dy"]))[0]
    g.output(g.op1("Identity", [dx], "dx"), [5])
    g.output(y, [5])
    sess = ort.InferenceSession(g.model().SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([1.0, -1.0, 0.0, 2.0, -3.0], np.float32)
    dy = np.array([0.5, np.inf, 7.0, np.nan, -2.0], np.float32)
    got = sess.run(["dx"], {"x": x, "dy": dy})[0]
    with np.errstate(invalid="ignore"):
        want = dy * (np.maximum(x, 0) > 0)
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got[1]) and got[2] == 0.0 and np.isnan(got[3])
