"""Convolutions with input weights moved to onnxruntime's blocked layout give the plain Conv's
results: narrow and blocked inputs, strides, asymmetric pads, dilation, bias, chained convs
(their reorders cancel), and convolutions the kernels cannot take left alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from dnntool.onnxgraph.builder import IR_VERSION, OPSET
from dnntool.onnxgraph.nchwc import DOMAIN, convs_to_nchwc
from dnntool.onnxgraph.runtime import make_session, nchwc_block

BLOCK = nchwc_block()
needs_kernels = pytest.mark.skipif(not BLOCK, reason="this onnxruntime build has no NCHWc kernels")


def _model(convs: list[tuple], x_shape, constant: dict | None = None) -> onnx.ModelProto:
    """Convs in a chain from input x: (weight shape, attributes, with bias); a Relu after every
    second one; the last conv's output is the model's."""
    nodes, inputs = [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    inits = []
    prev = "x"
    for i, (wshape, attrs, bias) in enumerate(convs):
        w, b = f"w{i}", f"b{i}"
        if constant and i in constant:
            inits.append(onnx.numpy_helper.from_array(constant[i], w))
        else:
            inputs.append(helper.make_tensor_value_info(w, TensorProto.FLOAT, list(wshape)))
        ins = [prev, w]
        if bias:
            inputs.append(helper.make_tensor_value_info(b, TensorProto.FLOAT, [wshape[0]]))
            ins.append(b)
        nodes.append(helper.make_node("Conv", ins, [f"y{i}"], name=f"conv{i}", **attrs))
        if i < len(convs) - 1 and i % 2:
            nodes.append(helper.make_node("Relu", [f"y{i}"], [f"r{i}"]))
            prev = f"r{i}"
        else:
            prev = f"y{i}"
    outputs = [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)]
    g = helper.make_graph(nodes, "convs", inputs, outputs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = IR_VERSION
    return m


def _feeds(m: onnx.ModelProto, rng) -> dict:
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in m.graph.input}


def _run(m, feeds, nchwc: bool) -> list[np.ndarray]:
    sess, _ = make_session(m, "cpu", 2, nchwc=nchwc)
    return sess.run(None, feeds)


@needs_kernels
def test_blocked_convs_match_plain_conv():
    b = BLOCK
    convs = [
        ((2 * b, 3, 5, 5), {"pads": [2, 2, 2, 2]}, True),  # narrow input (an image): stays NCHW
        ((b, 2 * b, 3, 3), {"strides": [2, 2], "pads": [1, 0, 1, 1]}, False),  # blocked, strided
        ((2 * b, b, 3, 3), {"dilations": [2, 2], "pads": [2, 2, 2, 2]}, True),  # reads the blocked output
        ((b, 2 * b, 1, 1), {}, True),  # 1x1
    ]
    m = _model(convs, [3, 3, 17, 15])
    fast = convs_to_nchwc(m, b)
    ops = [(n.domain, n.op_type) for n in fast.graph.node]
    assert ops.count((DOMAIN, "Conv")) == 4 and ("", "Conv") not in ops
    # conv0 -> conv1 and conv2 -> conv3 directly: those ReorderOutput/ReorderInput pairs cancel;
    # conv1 -> Relu -> conv2 keeps both; conv3's output is the model's. Each weight is reordered
    # through a ReorderInput of its transpose.
    made = {o: n for n in fast.graph.node for o in n.output}
    reorders = [n for n in fast.graph.node if (n.domain, n.op_type) == (DOMAIN, "ReorderInput")]
    weights = [n for n in reorders if n.input[0] in made and made[n.input[0]].op_type == "Transpose"]
    assert len(weights) == 4 and len(reorders) - len(weights) == 1
    assert ops.count((DOMAIN, "ReorderOutput")) == 2
    feeds = _feeds(m, np.random.default_rng(0))
    for got, want in zip(_run(m, feeds, True), _run(m, feeds, False), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@needs_kernels
def test_what_the_kernels_cannot_take_is_left_alone():
    b = BLOCK
    w_const = np.ones((b, b, 3, 3), np.float32)
    m = _model([
        ((b + 1, 3, 3, 3), {}, False),  # output channels not a multiple of the block
        ((b, b + 1, 3, 3), {"group": 1}, False),  # input channels neither fewer nor a multiple
        ((b, b, 3, 3), {}, False),  # constant weights: onnxruntime's own transformer takes them
    ], [2, 3, 9, 9], constant={2: w_const})
    assert convs_to_nchwc(m, b) is m
    grouped = _model([((2 * b, b // 2, 3, 3), {"group": 2}, False)], [2, b, 9, 9])
    assert convs_to_nchwc(grouped, b) is grouped
    assert convs_to_nchwc(grouped, 0) is grouped


def test_inference_models_skip_shape_inference(monkeypatch):
    # Constant weights only (every inference model): returned as is, before any shape inference
    # (which would serialise a large model); a model shape inference refuses is left alone too.
    from dnntool.onnxgraph import nchwc

    b = BLOCK or 16
    m = _model([((b, b, 3, 3), {}, False)], [1, b, 8, 8], constant={0: np.ones((b, b, 3, 3), np.float32)})

    def refuse(model):
        raise ValueError("no shape inference expected")

    monkeypatch.setattr(nchwc, "_shapes", refuse)
    assert convs_to_nchwc(m, b) is m
    trained = _model([((b, b, 3, 3), {}, False)], [1, b, 8, 8])
    assert convs_to_nchwc(trained, b) is trained


@needs_kernels
def test_session_falls_back_to_plain_conv(monkeypatch):
    # The blocked ops are internal to onnxruntime: if a future release refuses the rewritten
    # model, the session is built from the original one.
    from dnntool.onnxgraph import nchwc

    b = BLOCK
    m = _model([((b, b, 3, 3), {}, False)], [1, b, 8, 8])
    real = nchwc.convs_to_nchwc

    def broken(model, block):
        out = real(model, block)
        for node in out.graph.node:
            if node.domain == DOMAIN and node.op_type == "Conv":
                node.attribute.append(helper.make_attribute("no_such_attribute", 1))
        return out

    monkeypatch.setattr(nchwc, "convs_to_nchwc", broken)
    feeds = _feeds(m, np.random.default_rng(3))
    sess, provider = make_session(m, "cpu", 1)
    assert provider == "CPUExecutionProvider"
    np.testing.assert_allclose(sess.run(None, feeds)[0], _run(m, feeds, False)[0], rtol=1e-5, atol=1e-5)
