"""Upgrading old nets (V1 ``layers {}``, legacy input headers, old BatchNorm) as Caffe's upgrade_proto."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from dnntool.errors import FormatError, NeedsInputShape, NetError
from dnntool.io.blob import blob_to_array
from dnntool.io.caffemodel import load_weights, read_caffemodel
from dnntool.io.prototxt import parse_text, read_net, scan_layer_blocks
from dnntool.io.upgrade import V1_TYPE_NAMES, upgrade_net
from dnntool.net import Net
from dnntool.proto import caffe_pb2
from dnntool.tools.stats import check_weights
from tests.zoo import zoo_dir

ZOO = zoo_dir()
needs_zoo = pytest.mark.skipif(ZOO is None, reason="zoo corpus not available")


def _net(text: str) -> caffe_pb2.NetParameter:
    """Parse without upgrading."""
    return parse_text(text, caffe_pb2.NetParameter(), "test.prototxt")


# -- V1 layers -----------------------------------------------------------------------------------

V1_NET = """\
name: "v1"
layers {
  name: "data" type: DATA top: "data" top: "label"
  data_param { source: "train_lmdb" batch_size: 64 scale: 0.00390625 mean_file: "mean.binaryproto"
               crop_size: 227 mirror: true }
  include { phase: TRAIN }
}
layers {
  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  param: "conv1_w" param: "conv1_b"
  convolution_param { num_output: 8 kernel_size: 3 }
}
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "ip" type: INNER_PRODUCT bottom: "pool1" top: "ip" blobs_lr: 1 inner_product_param { num_output: 10 } }
layers { name: "acc" type: ACCURACY bottom: "ip" bottom: "label" top: "acc" exclude { phase: TRAIN } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip" bottom: "label" top: "loss" loss_weight: 2 }
"""


def test_v1_enum_types_become_strings():
    net, notes = upgrade_net(_net(V1_NET))
    assert not net.layers
    assert [(lp.name, lp.type) for lp in net.layer] == [
        ("data", "Data"), ("conv1", "Convolution"), ("relu1", "ReLU"), ("pool1", "Pooling"),
        ("ip", "InnerProduct"), ("acc", "Accuracy"), ("loss", "SoftmaxWithLoss"),
    ]
    assert list(net.layer[2].bottom) == ["conv1"] and list(net.layer[2].top) == ["conv1"]
    assert net.layer[3].pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    assert list(net.layer[6].loss_weight) == [2.0]
    assert any("V1" in n for n in notes)


def test_v1_blobs_lr_weight_decay_and_param_names():
    net, _ = upgrade_net(_net(V1_NET))
    conv = net.layer[1]
    assert [(p.name, p.lr_mult, p.decay_mult) for p in conv.param] == [
        ("conv1_w", 1.0, 1.0), ("conv1_b", 2.0, 0.0),
    ]
    ip = net.layer[4]
    assert len(ip.param) == 1 and ip.param[0].lr_mult == 1.0 and not ip.param[0].HasField("decay_mult")
    assert conv.convolution_param.num_output == 8 and conv.convolution_param.kernel_size == [3]


def test_v1_uneven_param_lists_and_share_mode():
    net, _ = upgrade_net(_net(
        'layers { name: "ip" type: INNER_PRODUCT blobs_lr: 0 weight_decay: 1 weight_decay: 2 '
        'param: "w" blob_share_mode: PERMISSIVE }'
    ))
    ps = net.layer[0].param
    assert len(ps) == 2
    assert ps[0].name == "w" and ps[0].share_mode == caffe_pb2.ParamSpec.PERMISSIVE
    assert ps[0].lr_mult == 0.0 and ps[0].decay_mult == 1.0
    assert not ps[1].HasField("lr_mult") and ps[1].decay_mult == 2.0 and ps[1].name == ""


def test_v1_include_exclude_kept():
    net, _ = upgrade_net(_net(V1_NET))
    data, acc = net.layer[0], net.layer[5]
    assert [r.phase for r in data.include] == [caffe_pb2.TRAIN] and not data.exclude
    assert [r.phase for r in acc.exclude] == [caffe_pb2.TRAIN] and not acc.include


def test_v1_data_transform_fields_move_to_transform_param():
    data = upgrade_net(_net(V1_NET))[0].layer[0]
    tp, dp = data.transform_param, data.data_param
    assert tp.scale == pytest.approx(0.00390625)
    assert tp.mean_file == "mean.binaryproto" and tp.crop_size == 227 and tp.mirror is True
    for f in ("scale", "mean_file", "crop_size", "mirror"):
        assert not dp.HasField(f), f
    assert dp.source == "train_lmdb" and dp.batch_size == 64


@pytest.mark.parametrize("v1type,pname", [("IMAGE_DATA", "image_data_param"), ("WINDOW_DATA", "window_data_param")])
def test_other_data_layers_transform_fields(v1type, pname):
    lp = upgrade_net(_net(
        f'layers {{ name: "d" type: {v1type} top: "data" top: "label" '
        f'{pname} {{ source: "list.txt" crop_size: 32 mirror: true mean_file: "m" }} }}'
    ))[0].layer[0]
    assert lp.transform_param.crop_size == 32 and lp.transform_param.mirror and lp.transform_param.mean_file == "m"
    assert not getattr(lp, pname).HasField("crop_size") and getattr(lp, pname).source == "list.txt"


def test_current_format_data_layer_transform_fields_also_moved():
    lp = upgrade_net(_net('layer { name: "d" type: "Data" top: "data" data_param { source: "x" scale: 0.5 } }'))[0].layer[0]
    assert lp.transform_param.scale == 0.5 and not lp.data_param.HasField("scale")


def test_every_v1_enum_has_a_name():
    values = {v.number for v in caffe_pb2.V1LayerParameter.LayerType.DESCRIPTOR.values} - {0}
    assert values <= set(V1_TYPE_NAMES)
    assert V1_TYPE_NAMES[caffe_pb2.V1LayerParameter.CROP] == "Crop"
    assert V1_TYPE_NAMES[caffe_pb2.V1LayerParameter.DECONVOLUTION] == "Deconvolution"


def test_v1_layer_without_type_keeps_empty_type():
    net, _ = upgrade_net(_net('layers { name: "x" }'))
    assert net.layer[0].type == "" and net.layer[0].name == "x"


def test_v0_layers_are_refused():
    with pytest.raises(FormatError) as ei:
        upgrade_net(_net('layers { layer { name: "conv1" type: "conv" } }'))
    assert "V0" in str(ei.value) and "\n" not in str(ei.value)


def test_v1_blobs_are_kept():
    net = caffe_pb2.NetParameter()
    v1 = net.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    b = v1.blobs.add(num=1, channels=1, height=2, width=3)
    b.data.extend([1, 2, 3, 4, 5, 6])
    up, _ = upgrade_net(net)
    np.testing.assert_array_equal(blob_to_array(up.layer[0].blobs[0]), np.arange(1, 7, dtype=np.float32).reshape(1, 1, 2, 3))


# -- legacy input headers ------------------------------------------------------------------------

def test_input_dim_header_becomes_input_layer():
    net, notes = upgrade_net(_net(
        'input: "data"\ninput_dim: 10\ninput_dim: 3\ninput_dim: 227\ninput_dim: 227\n'
        'input: "im_info"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 1\ninput_dim: 1\n'
        'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n'
    ))
    first = net.layer[0]
    assert (first.name, first.type) == ("input", "Input")
    assert list(first.top) == ["data", "im_info"]
    assert [list(s.dim) for s in first.input_param.shape] == [[10, 3, 227, 227], [1, 3, 1, 1]]
    assert net.layer[1].name == "r"
    assert not net.input and not net.input_dim and not net.input_shape
    assert any("Input layer" in n for n in notes)


def test_input_shape_header_becomes_input_layer():
    net, _ = upgrade_net(_net(
        'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 224 dim: 224 }\n'
        'input: "rois"\ninput_shape { dim: 5 dim: 5 }\n'
    ))
    assert [(lp.name, lp.type) for lp in net.layer] == [("input", "Input")]
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[1, 3, 224, 224], [5, 5]]


def test_input_without_shape_gives_shapeless_input_layer():
    net, _ = upgrade_net(_net('input: "data"\n'))
    assert list(net.layer[0].top) == ["data"] and not net.layer[0].input_param.shape


def test_legacy_input_with_v1_layers_builds():
    net = Net.from_param(_net(
        'input: "data"\ninput_dim: 2\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n'
        'layers { name: "c" type: CONVOLUTION bottom: "data" top: "c" convolution_param { num_output: 4 kernel_size: 3 } }\n'
    ))
    assert [layer.name for layer in net.layers] == ["input", "c"]
    assert net.layers[-1].top_shapes == [(2, 4, 6, 6)]


@pytest.mark.parametrize("dims", [3, 5, 7])
def test_wrong_input_dim_count(dims):
    text = 'input: "data"\n' + "".join(f"input_dim: {i + 1}\n" for i in range(dims))
    with pytest.raises(FormatError) as ei:
        upgrade_net(_net(text))
    assert "4 input_dim values" in str(ei.value) and f"found {dims}" in str(ei.value)


def test_wrong_input_dim_count_from_file(tmp_path):
    p = tmp_path / "deploy.prototxt"
    p.write_text('input: "a"\ninput: "b"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 4\ninput_dim: 4\n')
    with pytest.raises(FormatError) as ei:
        read_net(p)
    assert "need 8 input_dim values, found 4" in str(ei.value)


def test_input_shape_count_mismatch_and_dims_without_input():
    with pytest.raises(FormatError, match="input_shape"):
        upgrade_net(_net('input: "a"\ninput: "b"\ninput_shape { dim: 1 }\n'))
    with pytest.raises(FormatError, match="without any 'input:'"):
        upgrade_net(_net("input_dim: 1\ninput_dim: 1\ninput_dim: 1\ninput_dim: 1\n"))


# -- mixed V1 + V2 files -------------------------------------------------------------------------

MIXED = """\
name: "mixed"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "prob" type: "Softmax" bottom: "pool1" top: "prob" }
"""


def test_mixed_file_merged_in_file_order(tmp_path):
    p = tmp_path / "mixed.prototxt"
    p.write_text(MIXED)
    src = read_net(p)
    assert [lp.name for lp in src.param.layer] == ["data", "conv1", "relu1", "pool1", "prob"]
    assert [loc.line for loc in src.layer_locs] == [2, 3, 4, 5, 6]
    assert any("mixes" in n for n in src.notes)
    net = Net.from_param(src.param, layer_locs=src.layer_locs, path=str(p))
    assert net.layers[-1].top_shapes == [(1, 4, 3, 3)]


def test_mixed_without_order_puts_v2_first():
    net, _ = upgrade_net(_net(MIXED))
    assert [lp.name for lp in net.layer] == ["data", "relu1", "prob", "conv1", "pool1"]


@needs_zoo
@pytest.mark.parametrize("rel", ["netscope/dgschwend/presets/vgg-16.prototxt", "zynqnet/prototxt_models/vgg-16.prototxt"])
def test_zoo_mixed_vgg16(rel):
    p = ZOO / rel
    kinds = [b.keyword for b in scan_layer_blocks(p.read_text())]
    assert kinds[0] == "layer" and set(kinds[1:]) == {"layers"}
    src = read_net(p)
    assert [lp.name for lp in src.param.layer[:3]] == ["data", "conv1_1", "relu1_1"]
    assert src.param.layer[0].type == "data" and src.param.layer[1].type == "Convolution"
    assert len(src.param.layer) == len(kinds) and src.layer_locs[1].line == 16
    net = Net.from_param(src.param, layer_locs=src.layer_locs, path=str(p))
    assert net.layer("fc8").top_shapes == [(10, 1000)]


# -- old BatchNorm ------------------------------------------------------------------------------

def test_old_batchnorm_three_params_frozen():
    net, _ = upgrade_net(_net(
        'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" '
        "param { lr_mult: 1 } param { lr_mult: 1 decay_mult: 1 } param {} }\n"
        'layer { name: "bn2" type: "BatchNorm" bottom: "x" top: "x" }\n'
    ))
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[0].param] == [(0.0, 0.0)] * 3
    assert all(p.HasField("lr_mult") for p in net.layer[0].param)
    assert not net.layer[1].param


# -- every V1 prototxt of the zoo ----------------------------------------------------------------

def _v1_zoo_files() -> list[str]:
    if ZOO is None:
        return []
    out = []
    for p in sorted(ZOO.rglob("*.prototxt")):
        text = p.read_text(errors="replace")
        if "layers" in text and any(b.keyword == "layers" for b in scan_layer_blocks(text)):
            out.append(str(p.relative_to(ZOO)))
    return out


V1_FILES = _v1_zoo_files()

# Files that do not build, for reasons of their own.
V1_BROKEN = {
    # A typo in the file: the CROP layer's top is 'score-pool44c' but the next layer reads 'score-pool4c'.
    "netscope/dgschwend/presets/fcn-16s.prototxt": "score-pool4c",
    "zynqnet/prototxt_models/fcn-16s.prototxt": "score-pool4c",
}
V1_PHASE = {"legacy_v1_2014_everpeace/examples/mnist/mnist_autoencoder.prototxt": "train"}


def _default_dims(rel: str) -> tuple[int, ...]:
    if "cifar" in rel:
        return (1, 3, 32, 32)
    if "mnist" in rel or "lenet" in rel:
        return (1, 1, 28, 28)
    return (1, 3, 227, 227)


def build_with_shapes(param: caffe_pb2.NetParameter, rel: str, path: str, phase: str = "test",
                      layer_locs=None) -> Net:
    """Net.from_param, adding the --input-shape each NeedsInputShape error asks for."""
    shapes: dict[str, tuple[int, ...]] = {}
    for _ in range(6):
        try:
            return Net.from_param(param, phase, input_shapes=shapes, layer_locs=layer_locs, path=path)
        except NeedsInputShape as e:
            m = re.search(r"--input-shape (\S+?)=(\S+)", str(e))
            assert m, f"NeedsInputShape does not say which shape: {e}"
            name, dims = m.group(1), m.group(2)
            assert name not in shapes, str(e)
            shapes[name] = (tuple(int(d) for d in dims.split(","))
                            if re.fullmatch(r"[0-9,]+", dims) else _default_dims(rel))
    raise AssertionError(f"{rel}: too many NeedsInputShape rounds")


@needs_zoo
def test_v1_zoo_files_found():
    assert len(V1_FILES) >= 35
    assert "legacy_v1_2014_everpeace/examples/mnist/lenet.prototxt" in V1_FILES


@pytest.mark.parametrize(
    "rel",
    V1_FILES,
)
def test_v1_zoo_prototxt_upgrades_and_builds(rel):
    p = ZOO / rel
    src = read_net(p)
    assert not src.param.layers and src.param.layer
    assert all(lp.type for lp in src.param.layer), rel
    assert not any(lp.type.isupper() and "_" in lp.type for lp in src.param.layer)
    assert not any(lp.blobs for lp in src.param.layer)
    if rel in V1_BROKEN:
        with pytest.raises(NetError) as ei:
            build_with_shapes(src.param, rel, str(p), layer_locs=src.layer_locs)
        assert V1_BROKEN[rel] in str(ei.value) and str(ei.value).startswith(f"{p}:")
        return
    net = build_with_shapes(src.param, rel, str(p), V1_PHASE.get(rel, "test"), src.layer_locs)
    assert net.layers
    assert all(s and all(d > 0 for d in s) for layer in net.layers for s in layer.top_shapes
               if not layer.impl.is_loss and layer.type not in ("Accuracy", "Silence"))


@needs_zoo
def test_lenet_v1_deploy_shapes():
    src = read_net(ZOO / "legacy_v1_2014_everpeace/examples/mnist/lenet.prototxt")
    net = Net.from_param(src.param)
    assert [layer.name for layer in net.layers][:2] == ["input", "conv1"]
    assert net.layer("input").top_shapes == [(64, 1, 28, 28)]
    assert net.layer("ip2").top_shapes == [(64, 10)]
    assert [p.lr_mult for p in net.layer("conv1").params] == [1.0, 2.0]


# -- V1 caffemodel vs V2 caffemodel --------------------------------------------------------------

def _legacy_equal(v2_shape, v1_shape) -> bool:
    v2_shape, v1_shape = tuple(v2_shape), tuple(v1_shape)
    return v1_shape == v2_shape or (len(v1_shape) == 4 and (1,) * (4 - len(v2_shape)) + v2_shape == v1_shape)


@needs_zoo
def test_lenet_v1_caffemodel_matches_v2_layout():
    v1_path = ZOO / "legacy_v1_2014_everpeace/examples/mnist/lenet_iter_10000.caffemodel"
    v2_path = ZOO / "caffe_tensorflow/examples/mnist/lenet_iter_10000.caffemodel"
    up, v2 = read_caffemodel(v1_path), read_caffemodel(v2_path)
    assert not up.layers
    assert [(lp.name, lp.type, list(lp.bottom), list(lp.top)) for lp in up.layer] == \
        [(lp.name, lp.type, list(lp.bottom), list(lp.top)) for lp in v2.layer]
    w1, w2 = load_weights(v1_path), load_weights(v2_path)
    assert list(w1.blobs) == list(w2.blobs) == ["conv1", "conv2", "ip1", "ip2"]
    assert w1.types == w2.types
    for name in w2.blobs:
        assert len(w1[name]) == len(w2[name])
        for a1, a2 in zip(w1[name], w2[name], strict=True):
            assert _legacy_equal(a2.shape, a1.shape), (name, a1.shape, a2.shape)
            assert a1.size == a2.size
            assert np.isfinite(a1).all()
    assert w1.total() == w2.total() == 431080
    # Both fit either prototxt (Caffe's lenient legacy shape check).
    v2_net = Net.from_prototxt(ZOO / "caffe_tensorflow/examples/mnist/lenet.prototxt")
    v1_net = Net.from_prototxt(ZOO / "legacy_v1_2014_everpeace/examples/mnist/lenet.prototxt")
    for net in (v1_net, v2_net):
        for w in (w1, w2):
            assert list(check_weights(net, w)) == ["conv1", "conv2", "ip1", "ip2"]


@needs_zoo
def test_lenet_v1_caffemodel_upgrade_keeps_values():
    path = ZOO / "legacy_v1_2014_everpeace/examples/mnist/lenet_iter_10000.caffemodel"
    raw = caffe_pb2.NetParameter.FromString(Path(path).read_bytes())
    assert raw.layers and not raw.layer
    up = read_caffemodel(path)
    for v1, lp in zip(raw.layers, up.layer, strict=True):
        assert v1.name == lp.name
        assert len(v1.blobs) == len(lp.blobs)
        for b1, b2 in zip(v1.blobs, lp.blobs, strict=True):
            assert blob_to_array(b1).tobytes() == blob_to_array(b2).tobytes()
        assert [p.lr_mult for p in lp.param][: len(v1.blobs_lr)] == list(v1.blobs_lr)
        assert [p.decay_mult for p in lp.param][: len(v1.weight_decay)] == list(v1.weight_decay)
    assert [p.lr_mult for p in up.layer[1].param] == [1.0, 2.0]
