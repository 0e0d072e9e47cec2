"""Text-format readers and writer: file:line:col errors, layer block scanning, round trips, solvers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dnntool.errors import FormatError
from dnntool.io.prototxt import (
    LayerBlock,
    parse_net_text,
    read_net,
    read_solver,
    scan_layer_blocks,
    to_text,
    write_prototxt,
)
from dnntool.proto import caffe_pb2
from tests.zoo import zoo_dir

ZOO = zoo_dir()
needs_zoo = pytest.mark.skipif(ZOO is None, reason="zoo corpus not available")
SAMPLES = Path(__file__).resolve().parents[2] / "dnntool" / "samples"


def _write(tmp_path: Path, text: str | bytes, name: str = "net.prototxt") -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def _format_error(fn, *args) -> str:
    with pytest.raises(FormatError) as ei:
        fn(*args)
    msg = str(ei.value)
    assert "\n" not in msg, f"multi-line message: {msg!r}"
    return msg


# -- syntax errors ---------------------------------------------------------------------------

TYPO_NET = """\
name: "typo"
input: "data"
input_shape { dim: 1 dim: 1 dim: 8 dim: 8 }
layer {
  name: "conv"
  type: "Convolution"
  convolution_param { num_output: 2 kernal_size: 3 }
  bottom: "data"
  top: "conv"
}
"""


def test_unknown_field_reports_line_and_column(tmp_path):
    p = _write(tmp_path, TYPO_NET)
    msg = _format_error(read_net, p)
    assert msg.startswith(f"{p}:7:"), msg
    m = re.match(re.escape(str(p)) + r":7:(\d+): ", msg)
    assert m, msg
    assert int(m.group(1)) == TYPO_NET.splitlines()[6].index("kernal_size") + 1
    assert "kernal_size" in msg


def test_missing_closing_brace(tmp_path):
    p = _write(tmp_path, 'name: "x"\nlayer {\n  name: "r"\n  type: "ReLU"\n')
    msg = _format_error(read_net, p)
    assert re.match(re.escape(str(p)) + r":\d+:\d+: ", msg), msg
    assert '"}"' in msg


def test_stray_closing_brace_line(tmp_path):
    p = _write(tmp_path, 'name: "x"\nlayer {\n  name: "r"\n}\n}\n')
    msg = _format_error(read_net, p)
    assert msg.startswith(f"{p}:5:"), msg


def test_bad_value_and_bad_enum_report_line(tmp_path):
    p = _write(tmp_path, 'name: "x"\nlayer {\n  name: "c"\n  convolution_param {\n    num_output: abc\n  }\n}\n')
    assert _format_error(read_net, p).startswith(f"{p}:5:")
    p = _write(tmp_path, 'layer {\n  name: "p"\n  type: "Pooling"\n  pooling_param { pool: MAXX }\n}\n')
    msg = _format_error(read_net, p)
    assert msg.startswith(f"{p}:4:") and "MAXX" in msg, msg


def test_error_lines_count_comments_and_blank_lines(tmp_path):
    text = "# a comment\n\n# another { with a brace\nname: 'x'\n\nbogus_field: 1\n"
    p = _write(tmp_path, text)
    assert _format_error(read_net, p).startswith(f"{p}:6:")


@pytest.mark.parametrize("text", ["", "   \n\n\t\n"])
def test_empty_file(tmp_path, text):
    p = _write(tmp_path, text)
    msg = _format_error(read_net, p)
    assert msg.startswith(str(p)) and "empty file" in msg
    assert "empty file" in _format_error(read_solver, p)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.prototxt"
    msg = _format_error(read_net, p)
    assert msg == f"{p}: no such file (expected a net prototxt)"
    assert "no such file" in _format_error(read_solver, p)


def test_directory(tmp_path):
    assert "directory" in _format_error(read_net, tmp_path)


def test_binary_file_passed_as_prototxt(tmp_path):
    if ZOO is not None:
        data = (ZOO / "mtcnn/MTCNNv2/model/det1.caffemodel").read_bytes()
    else:
        data = b"\n\x04det1\xa2\x06\x00\x00\x01\x02"
    p = _write(tmp_path, data, "det1.caffemodel")
    msg = _format_error(read_net, p)
    assert msg.startswith(f"{p}: ") and "not a text" in msg and "caffemodel" in msg


def test_invalid_utf8_reports_position(tmp_path):
    p = _write(tmp_path, b'name: "x"\nlayer { name: "\xff" }\n')
    msg = _format_error(read_net, p)
    assert msg.startswith(f"{p}:2:16: ") and "UTF-8" in msg, msg


# -- layer block scanning ------------------------------------------------------------------------

def test_scan_layer_blocks_lines_and_columns():
    text = (
        'name: "n"  # layer { in a comment\n'   # 1
        'input: "data"\n'                        # 2
        "layer {\n"                              # 3
        '  name: "a { b"\n'                      # 4  brace inside a string
        "  param { name: 'layer' }\n"            # 5
        "}\n"                                    # 6
        "   layers {\n"                          # 7
        "  name: 'v1'\n"                         # 8
        "  layer { name: 'v0' }\n"               # 9  nested: not top-level
        "}\n"                                    # 10
        "layer<name: 'angle'>\n"                 # 11
        "layer: { name: 'colon' }\n"             # 12
    )
    assert scan_layer_blocks(text) == [
        LayerBlock("layer", 3, 1),
        LayerBlock("layers", 7, 4),
        LayerBlock("layer", 11, 1),
        LayerBlock("layer", 12, 1),
    ]


def test_layer_locs_follow_file_lines(tmp_path):
    text = (
        'name: "n"\n'
        'input: "data"\n'
        "input_dim: 1\ninput_dim: 3\ninput_dim: 4\ninput_dim: 4\n"
        'layer { name: "r1" type: "ReLU" bottom: "data" top: "r1" }\n'   # line 7
        "\n"
        '  layer { name: "r2" type: "ReLU" bottom: "r1" top: "r2" }\n'   # line 9, col 3
    )
    p = _write(tmp_path, text)
    src = read_net(p)
    assert [lp.name for lp in src.param.layer] == ["input", "r1", "r2"]
    assert [(loc.path, loc.line, loc.col) for loc in src.layer_locs] == [
        (str(p), 1, None), (str(p), 7, 1), (str(p), 9, 3),
    ]


def test_parse_net_text_without_path():
    src = parse_net_text('layer { name: "a" type: "Input" top: "x" }')
    assert src.path is None and src.param.layer[0].name == "a"
    with pytest.raises(FormatError) as ei:
        parse_net_text("layer { nme: 'a' }")
    assert str(ei.value).startswith("<string>:1:")


# -- write round trips ---------------------------------------------------------------------------

def _roundtrip(src_path: Path, tmp_path: Path) -> None:
    first = read_net(src_path).param
    out = tmp_path / (src_path.stem + ".out.prototxt")
    write_prototxt(first, out)
    second = read_net(out).param
    assert second == first, src_path
    assert to_text(second) == out.read_text()
    assert not [q for q in tmp_path.iterdir() if q.name.endswith(".tmp")]  # no leftovers


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.prototxt")))
def test_write_roundtrip_samples(tmp_path, name):
    if "solver" in name:  # solvers round-trip as SolverParameter
        first = read_solver(SAMPLES / name)
        out = tmp_path / name
        write_prototxt(first, out)
        assert read_solver(out) == first
        return
    _roundtrip(SAMPLES / name, tmp_path)


ROUNDTRIP_ZOO = [
    "bvlc/models/bvlc_googlenet/deploy.prototxt",
    "bvlc/examples/mnist/lenet_train_test.prototxt",
    "resnet/prototxt/ResNet-50-deploy.prototxt",
    "mobilenet_ssd/voc/MobileNetSSD_deploy.prototxt",
    "legacy_v1_2014_everpeace/models/bvlc_alexnet/train_val.prototxt",
    "netscope/dgschwend/presets/vgg-16.prototxt",
    "colorization/models/colorization_deploy_v2.prototxt",
    "opencv_extra/testdata/dnn/layers/layer_convolution.prototxt",
]


@needs_zoo
@pytest.mark.parametrize("rel", ROUNDTRIP_ZOO)
def test_write_roundtrip_zoo(tmp_path, rel):
    p = ZOO / rel
    _roundtrip(p, tmp_path)


def test_write_prototxt_replaces_atomically(tmp_path):
    out = tmp_path / "sub" / "net.prototxt"
    write_prototxt(caffe_pb2.NetParameter(name="a"), out)
    write_prototxt(caffe_pb2.NetParameter(name="b"), out)
    assert out.read_text() == 'name: "b"\n'
    assert sorted(q.name for q in out.parent.iterdir()) == ["net.prototxt"]


# -- solvers -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "enum,name",
    [("SGD", "SGD"), ("NESTEROV", "Nesterov"), ("ADAGRAD", "AdaGrad"), ("RMSPROP", "RMSProp"),
     ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")],
)
def test_read_solver_upgrades_solver_type(tmp_path, enum, name):
    p = _write(tmp_path, f'net: "train.prototxt"\nbase_lr: 0.01\nsolver_type: {enum}\n', "solver.prototxt")
    s = read_solver(p)
    assert s.type == name
    assert not s.HasField("solver_type")
    assert s.net == "train.prototxt" and s.base_lr == pytest.approx(0.01)


def test_read_solver_same_type_twice_is_fine(tmp_path):
    p = _write(tmp_path, 'solver_type: NESTEROV\ntype: "Nesterov"\n', "solver.prototxt")
    assert read_solver(p).type == "Nesterov"


def test_read_solver_conflicting_types(tmp_path):
    p = _write(tmp_path, 'base_lr: 0.1\nsolver_type: NESTEROV\ntype: "Adam"\n', "solver.prototxt")
    msg = _format_error(read_solver, p)
    assert msg.startswith(f"{p}: ") and "Nesterov" in msg and "Adam" in msg


def test_read_solver_syntax_error_line(tmp_path):
    p = _write(tmp_path, "base_lr: 0.1\nmomentum 0.9\n", "solver.prototxt")
    assert _format_error(read_solver, p).startswith(f"{p}:2:")


def test_read_solver_upgrades_inline_nets(tmp_path):
    text = (
        "solver_type: ADAM\n"
        "net_param { layers { name: 'ip' type: INNER_PRODUCT blobs_lr: 1 blobs_lr: 2 } }\n"
        "test_net_param { input: 'data' input_dim: 1 input_dim: 1 input_dim: 2 input_dim: 2 }\n"
    )
    s = read_solver(_write(tmp_path, text, "solver.prototxt"))
    assert s.type == "Adam"
    assert not s.net_param.layers and s.net_param.layer[0].type == "InnerProduct"
    assert [p.lr_mult for p in s.net_param.layer[0].param] == [1.0, 2.0]
    assert s.test_net_param[0].layer[0].type == "Input"


@needs_zoo
def test_zoo_solvers_all_read():
    paths = sorted(ZOO.rglob("*solver*.prototxt"))
    assert len(paths) > 20
    types = set()
    for p in paths:
        s = read_solver(p)
        assert not s.HasField("solver_type"), p
        types.add(s.type or "SGD")
    assert {"SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"} <= types


@needs_zoo
def test_zoo_legacy_nesterov_solver():
    s = read_solver(ZOO / "legacy_v1_2014_everpeace/examples/mnist/mnist_autoencoder_solver_nesterov.prototxt")
    assert s.type == "Nesterov"


@needs_zoo
def test_zoo_consolidated_solver_inline_net_is_upgraded():
    s = read_solver(ZOO / "bvlc/examples/mnist/lenet_consolidated_solver.prototxt")
    assert s.HasField("net_param") and not s.net_param.layers
    assert "Convolution" in [lp.type for lp in s.net_param.layer]


# -- Python-style booleans -----------------------------------------------------------------------

@pytest.mark.parametrize("word,value", [("False", False), ("True", True), ("false", False), ("true", True)])
def test_python_style_bool(tmp_path, word, value):
    text = f'layer {{ name: "c" type: "Convolution" convolution_param {{ num_output: 1 bias_term: {word} }} }}\n'
    layer = read_net(_write(tmp_path, text)).param.layer[0]
    assert layer.convolution_param.HasField("bias_term")
    assert layer.convolution_param.bias_term is value


@needs_zoo
def test_colorization_bias_term_False():
    p = ZOO / "colorization/models/colorization_deploy_v2.prototxt"
    assert "bias_term: False" in p.read_text()
    layers = read_net(p).param.layer
    scale = next(lp for lp in layers if lp.name == "conv8_313_rh")
    assert scale.scale_param.HasField("bias_term") and scale.scale_param.bias_term is False
