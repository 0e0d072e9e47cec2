"""``dnntool upgrade-net``: text and binary upgrades, errors at the CLI boundary, help."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from dnntool.cli import cli
from dnntool.io.caffemodel import load_weights
from dnntool.io.prototxt import read_net, scan_layer_blocks
from dnntool.net import Net
from dnntool.proto import caffe_pb2
from tests.zoo import zoo_dir

ZOO = zoo_dir()
needs_zoo = pytest.mark.skipif(ZOO is None, reason="zoo corpus not available")
MNIST = "legacy_v1_2014_everpeace/examples/mnist"

V1_TEXT = """\
name: "tiny"
input: "data"
input_dim: 1
input_dim: 1
input_dim: 6
input_dim: 6
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2
         convolution_param { num_output: 2 kernel_size: 3 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
"""


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def _assert_one_error_line(res) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_text_upgrade_synthetic(tmp_path):
    src, out = tmp_path / "old.prototxt", tmp_path / "new.prototxt"
    src.write_text(V1_TEXT)
    res = _invoke("upgrade-net", str(src), "-o", str(out))
    assert res.exit_code == 0, res.output
    assert f"wrote {out} (3 layers)" in res.stderr
    text = out.read_text()
    assert "layers {" not in text and "input_dim" not in text and "blobs_lr" not in text
    assert [b.keyword for b in scan_layer_blocks(text)] == ["layer"] * 3
    param = read_net(out).param
    assert [(lp.name, lp.type) for lp in param.layer] == [("input", "Input"), ("conv", "Convolution"), ("relu", "ReLU")]
    assert [p.lr_mult for p in param.layer[1].param] == [1.0, 2.0]


@needs_zoo
@pytest.mark.parametrize("rel", [f"{MNIST}/lenet.prototxt", "legacy_v1_2014_everpeace/models/bvlc_alexnet/deploy.prototxt"])
def test_text_upgrade_zoo(tmp_path, rel):
    out = tmp_path / "upgraded.prototxt"
    res = _invoke("upgrade-net", str(ZOO / rel), "-o", str(out))
    assert res.exit_code == 0, res.output
    assert "V1 'layers {}' upgraded" in res.stderr
    text = out.read_text()
    blocks = scan_layer_blocks(text)
    assert blocks and all(b.keyword == "layer" for b in blocks)
    assert "input_dim" not in text
    # Same net as reading the V1 file directly.
    assert read_net(out).param == read_net(ZOO / rel).param
    assert Net.from_prototxt(out).layers[-1].top_shapes == Net.from_prototxt(ZOO / rel).layers[-1].top_shapes


@needs_zoo
def test_binary_upgrade_v1_caffemodel(tmp_path):
    src = ZOO / f"{MNIST}/lenet_iter_10000.caffemodel"
    out = tmp_path / "lenet_v2.caffemodel"
    res = _invoke("upgrade-net", str(src), "-o", str(out))
    assert res.exit_code == 0, res.output
    raw = caffe_pb2.NetParameter.FromString(out.read_bytes())
    assert raw.layer and not raw.layers
    assert [lp.type for lp in raw.layer][:2] == ["Data", "Convolution"]
    before, after = load_weights(src), load_weights(out)
    assert list(before.blobs) == list(after.blobs) and after.total() == 431080
    for name in before.blobs:
        for a, b in zip(before[name], after[name], strict=True):
            assert a.shape == b.shape and a.tobytes() == b.tobytes()


@needs_zoo
def test_binary_detected_by_content(tmp_path):
    # dnns_easily_fooled's LeNet caffemodel has no extension; its NUL bytes mark it binary.
    src = tmp_path / "lenet_iter_10000"
    shutil.copy(ZOO / "opencv_contrib/modules/dnns_easily_fooled/model/lenet/lenet_iter_10000", src)
    out = tmp_path / "out.caffemodel"
    res = _invoke("upgrade-net", str(src), "-o", str(out))
    assert res.exit_code == 0, res.output
    raw = caffe_pb2.NetParameter.FromString(out.read_bytes())
    assert raw.layer and not raw.layers


def test_binary_flag_on_text_file_is_a_clean_error(tmp_path):
    src = tmp_path / "old.prototxt"
    src.write_text(V1_TEXT)
    line = _assert_one_error_line(_invoke("upgrade-net", "--binary", str(src), "-o", str(tmp_path / "o")))
    assert str(src) in line and "looks like a text prototxt" in line
    assert not (tmp_path / "o").exists()


def test_missing_input(tmp_path):
    out = tmp_path / "out.prototxt"
    line = _assert_one_error_line(_invoke("upgrade-net", str(tmp_path / "missing.prototxt"), "-o", str(out)))
    assert line == f"Error: {tmp_path / 'missing.prototxt'}: no such file (expected a net prototxt)"
    assert not out.exists()


def test_missing_caffemodel_input(tmp_path):
    line = _assert_one_error_line(_invoke("upgrade-net", str(tmp_path / "m.caffemodel"), "-o", str(tmp_path / "o")))
    assert "no such file" in line and ".caffemodel" in line


def test_syntax_error_names_line(tmp_path):
    src = tmp_path / "bad.prototxt"
    src.write_text(V1_TEXT.replace("kernel_size", "kernal_size"))
    line = _assert_one_error_line(_invoke("upgrade-net", str(src), "-o", str(tmp_path / "o.prototxt")))
    assert line.startswith(f"Error: {src}:8:") and "kernal_size" in line


def test_missing_output_option_is_usage_error(tmp_path):
    res = _invoke("upgrade-net", str(tmp_path / "x.prototxt"))
    assert res.exit_code == 2 and "--output" in res.output


def test_help_shows_an_example():
    res = _invoke("upgrade-net", "--help")
    assert res.exit_code == 0
    assert "Example" in res.output
    assert "dnntool upgrade-net old_deploy.prototxt -o deploy.prototxt" in res.output
    assert "--binary / --text" in res.output
    assert "upgrade-net" in _invoke("--help").output
