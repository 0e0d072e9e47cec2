"""quantize: fp16 and static int8 (QDQ) ONNX models of a trained net, scored like `dnntool test`."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from dnntool.errors import UsageError
from dnntool.io.caffemodel import load_weights
from dnntool.net import Net
from dnntool.onnxgraph.runtime import make_session
from dnntool.slim.quantize import quantize_files, to_fp16
from dnntool.tools.evaluate import evaluate
from tests.slim import nets


def _types(model) -> dict[str, int]:
    return {i.name: i.type.tensor_type.elem_type for i in [*model.graph.input, *model.graph.output]}


def test_fp16_runs_on_cpu_with_float32_edges(tmp_path, digits_bn):
    rep = quantize_files(digits_bn.net, digits_bn.weights, tmp_path / "h.onnx", "fp16", batches=1)
    m = onnx.load(tmp_path / "h.onnx")
    assert set(_types(m).values()) == {TensorProto.FLOAT}
    inits = {i.name: i.data_type for i in m.graph.initializer}
    for n in m.graph.node:  # weights are float16; float32 constants only feed the loss and metric layers
        for i in n.input:
            if inits.get(i) == TensorProto.FLOAT:
                assert n.name.startswith(("accuracy/", "loss/")), n.name
            if n.op_type in ("Conv", "Gemm") and i in inits:
                assert inits[i] == TensorProto.FLOAT16
    _sess, provider = make_session(m, "cpu")
    assert provider == "CPUExecutionProvider"
    # the metric and loss layers stay float32: none of their Cast nodes casts to float16
    assert all(a.i != TensorProto.FLOAT16 for n in m.graph.node if n.name.startswith(("accuracy/", "loss/"))
               and n.op_type == "Cast" for a in n.attribute if a.name == "to")
    assert rep.output_diff["ip2"].max_rel < 1e-2 and rep.after.bytes < 0.6 * rep.before.bytes


def test_int8_is_qdq_with_per_channel_scales(tmp_path, digits_bn):
    rep = quantize_files(digits_bn.net, digits_bn.weights, tmp_path / "q.onnx", "int8", calib_batches=2,
                         per_channel=True, batches=1)
    m = onnx.load(tmp_path / "q.onnx")
    ops = [n.op_type for n in m.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    scales = {i.name: i for i in m.graph.initializer}
    conv2_w = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and "conv2" in n.input[0])
    assert list(scales[conv2_w.input[1]].dims) == [32]  # one scale per output channel
    assert not any(n.name.startswith(("accuracy/", "loss/")) for n in m.graph.node if n.op_type == "QuantizeLinear")
    assert rep.after.bytes < 0.4 * rep.before.bytes and rep.extra["per_channel"]


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_calibration_methods_and_db(tmp_path, digits_bn, method):
    rep = quantize_files(digits_bn.net, digits_bn.weights, tmp_path / "q.onnx", "int8",
                         calib_db=str(digits_bn.train_db), calib_batches=2, calib_method=method, batches=0)
    assert rep.extra["calib_method"] == method and (tmp_path / "q.onnx").exists()


def test_side_by_side_equals_dnntool_test(tmp_path, digits_bn):
    rep = quantize_files(digits_bn.net, digits_bn.weights, tmp_path / "q.onnx", "int8", calib_batches=4,
                         test_db=str(digits_bn.test_db), batches=0)
    rows = {r[0]: r for r in rep.rows}
    assert rep.columns == ["output", "float", "int8", "change"] and rep.extra["test_images"] == 400
    scored = evaluate(str(tmp_path / "q.onnx"), None, 4, "cpu", data=str(digits_bn.net))
    acc = next(s.values[0] for s in scored.scores if s.name == "accuracy")
    assert rows["accuracy"][2] == pytest.approx(acc)
    fl = evaluate(digits_bn.net, str(digits_bn.weights), 4, "cpu")
    assert rows["accuracy"][1] == pytest.approx(next(s.values[0] for s in fl.scores if s.name == "accuracy"))


def test_to_fp16_keeps_float32_nodes_and_inputs():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    w = onnx.numpy_helper.from_array(np.full((2, 3), 1 / 3, np.float32), "w")
    g = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["m"], name="a/Mul"),
                           helper.make_node("Add", ["m", "w"], ["y"], name="keep/Add")], "g", [x], [y], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    half = to_fp16(model, {"keep/Add"})
    onnx.checker.check_model(half)
    assert {i.name: i.data_type for i in half.graph.initializer} == {"w": TensorProto.FLOAT}  # Add needs it
    sess, _ = make_session(half, "cpu")
    out = sess.run(None, {"x": np.ones((2, 3), np.float32)})[0]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, float(np.float16(1 / 3)) + np.float32(1 / 3), rtol=1e-6)  # fp16 Mul, fp32 Add


def test_int8_needs_calibration_data(tmp_path):
    proto, model, *_ = nets.write(tmp_path, "r", nets.resnet_block())
    with pytest.raises(UsageError, match="int8 needs calibration data: net 'resnet_block' reads its input from"
                                         " a Input layer"):
        quantize_files(proto, model, tmp_path / "q.onnx", "int8")
    with pytest.raises(UsageError, match=r"name it \*\.onnx"):
        quantize_files(proto, model, tmp_path / "q.caffemodel", "fp16")


def test_deploy_net_calibrates_from_a_db(tmp_path, digits_bn):
    """A net with an Input layer takes --calib-db records resized to its input, unscaled."""
    deploy = tmp_path / "deploy.prototxt"
    text = digits_bn.net.read_text()
    body = text[text.index('layer { name: "conv1"'):text.index('layer { name: "accuracy"')]
    deploy.write_text(nets.input_layer((10, 1, 28, 28)) + body)
    rep = quantize_files(deploy, digits_bn.weights, tmp_path / "q.onnx", "int8", calib_db=str(digits_bn.test_db),
                         calib_batches=2, batches=1, db=str(digits_bn.test_db))
    assert rep.data == "digits_test_lmdb" and rep.batch == 10 and "ip2" in rep.output_diff
    assert Net.from_prototxt(deploy).layer("ip2").params[0].shape == load_weights(digits_bn.weights)["ip2"][0].shape


def test_fp16_overflow_is_reported(tmp_path, monkeypatch):
    """Whether float16 overflows depends on which ops ONNX Runtime runs in float16 on the device
    (on x86 CPUs it casts most back to float32), so the quantized run is made to overflow here."""
    import dnntool.slim.batches as batches

    real = batches.run_models

    def fake(*args, **kw):
        runs = real(*args, **kw)
        for k, v in runs[1].outputs.items():  # the fp16 model
            runs[1].outputs[k] = [np.full_like(v[0], np.inf)]
        return runs

    monkeypatch.setattr(batches, "run_models", fake)
    proto, model, *_ = nets.write(tmp_path, "r", nets.resnet_block())
    rep = quantize_files(proto, model, tmp_path / "h.onnx", "fp16", batches=1)
    assert ("the fp16 model gives non-finite values in prob: activations overflow float16 (above 65504); keep"
            " those layers in float32 or scale the input") in rep.notes


def test_outputs_are_deterministic(tmp_path, digits_bn):
    for dtype, kw in (("int8", {"calib_batches": 1}), ("fp16", {})):
        for name in ("a", "b"):
            quantize_files(digits_bn.net, digits_bn.weights, tmp_path / f"{name}.onnx", dtype, batches=0, **kw)
        assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes(), dtype


def test_side_by_side_reads_a_sharded_test_db(tmp_path, digits_bn):
    """--test-db DB@2: the shards of the test DB, read round-robin, score as the DB itself."""
    import lmdb

    from dnntool.io.shards import shard_name

    env = lmdb.open(str(digits_bn.test_db), readonly=True, lock=False)
    with env.begin() as txn:
        items = list(txn.cursor())
    env.close()
    for k in range(2):
        out = lmdb.open(shard_name(tmp_path / "test_lmdb", k, 2), map_size=1 << 24)
        with out.begin(write=True) as txn:
            for key, value in items[k::2]:
                txn.put(key, value)
        out.close()
    whole = quantize_files(digits_bn.net, digits_bn.weights, tmp_path / "a.onnx", "int8", calib_batches=2,
                           test_db=str(digits_bn.test_db), batches=0)
    shards = quantize_files(digits_bn.net, digits_bn.weights, tmp_path / "b.onnx", "int8", calib_batches=2,
                            test_db=f"{tmp_path / 'test_lmdb'}@2", batches=0)
    assert shards.rows == whole.rows and shards.extra["test_images"] == whole.extra["test_images"]
