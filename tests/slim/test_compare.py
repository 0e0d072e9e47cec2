"""compare: two models on the same inputs, blob by blob (Caffe or ONNX on either side)."""

from __future__ import annotations

import numpy as np
import pytest

from dnntool.errors import UsageError
from dnntool.net import Net
from dnntool.slim.compare import compare, split_models
from dnntool.slim.fold_bn import fold_bn_files
from dnntool.tools.export import export_onnx
from tests.slim import nets


def test_a_model_against_itself_is_zero_everywhere(tmp_path):
    proto, model, *_ = nets.write(tmp_path, "r", nets.resnet_block())
    res = compare([proto, model], [proto, model], batches=2)
    assert [r.name for r in res.rows] == ["conv1", "res2a_branch1", "bn2a_branch1", "res2a_branch2a",
                                          "res2a_branch2b", "bn2a_branch2b", "sc2a_branch2b", "res2a", "pool",
                                          "fc", "prob"]
    assert all(r.diff.max_abs == 0 for r in res.rows) and res.batches == 2 and res.data == "random"
    assert res.rows[0].shape == [2, 8, 16, 16]


def test_folded_net_matches_by_name(tmp_path):
    proto, model, *_ = nets.write(tmp_path, "r", nets.resnet_block(), factor=3.0)
    fold_bn_files(proto, model, tmp_path / "f", batches=0)
    res = compare([proto, model], [tmp_path / "f.prototxt", tmp_path / "f.caffemodel"])
    assert [r.name for r in res.rows] == ["conv1", "bn2a_branch1", "res2a_branch2a", "sc2a_branch2b", "res2a",
                                          "pool", "fc", "prob"]
    assert all(r.diff.max_rel < 1e-4 for r in res.rows)
    assert res.only_a == ["res2a_branch1", "res2a_branch2b", "bn2a_branch2b"] and res.only_b == []
    text = "\n".join(res.lines())
    assert text.startswith("f.prototxt vs r.prototxt: 8 blobs in both, 1 random batch(es) of 2 on ")
    assert "only in r.prototxt: res2a_branch1, res2a_branch2b, bn2a_branch2b" in text


def test_an_onnx_model_on_either_side(tmp_path):
    proto, model, *_ = nets.write(tmp_path, "m", nets.mobilenet_block())
    net = Net.from_prototxt(proto, "test")
    export_onnx(net, model, tmp_path / "m.onnx", outputs=["conv1", "conv2_pw", "fc2"])
    res = compare([tmp_path / "m.onnx"], [proto, model])
    assert {r.name for r in res.rows} >= {"conv1", "conv2_pw", "fc1", "fc2"}
    assert all(r.diff.max_abs < 1e-5 for r in res.rows)
    both = compare([tmp_path / "m.onnx"], [tmp_path / "m.onnx"], batches=1)
    assert both.rows and all(r.diff.max_abs == 0 for r in both.rows)


def test_real_inputs_from_a_db_and_from_images(tmp_path):
    import cv2

    from tests.data.digits import digits, digits_lmdb, lenet_like
    from tests.slim.nets import write

    digits_lmdb(tmp_path / "db", 60)
    proto, model, *_ = write(tmp_path, "lenet", lenet_like(str(tmp_path / "db"), batch=20))
    res = compare([proto, model], [proto, model], db=str(tmp_path / "db"), batches=3)
    assert res.data == "db" and res.batches == 3 and res.batch == 20
    assert {r.name for r in res.rows} == {"conv1", "pool1", "ip", "accuracy", "loss"}
    x, _ = digits(3)
    paths = []
    for i, img in enumerate(x):
        paths.append(str(tmp_path / f"{i}.png"))
        cv2.imwrite(paths[-1], img[0])
    res = compare([proto, model], [proto, model], images=paths)
    assert res.data == "image" and res.batches == 1


def test_model_arguments():
    assert split_models(["a.prototxt", "a.caffemodel", "b.onnx"]) == [["a.prototxt", "a.caffemodel"], ["b.onnx"]]
    assert split_models(["a.onnx", "b.prototxt", "b.caffemodel"]) == [["a.onnx"], ["b.prototxt", "b.caffemodel"]]
    with pytest.raises(UsageError, match=r"'b\.prototxt' needs its \.caffemodel after it"):
        split_models(["a.onnx", "b.prototxt"])
    with pytest.raises(UsageError, match="give two models"):
        split_models(["a.onnx", "b.onnx", "c.onnx"])


def test_batch_sizes_are_aligned(tmp_path):
    proto, model, *_ = nets.write(tmp_path, "r", nets.resnet_block())
    other = tmp_path / "r4.prototxt"
    other.write_text(nets.resnet_block().replace("dim: 2 ", "dim: 4 "))
    res = compare([proto, model], [other, model])
    assert res.batch == 2 and all(r.diff.max_abs == 0 for r in res.rows)
    assert np.isfinite([r.diff.mean_rel for r in res.rows]).all()
