"""Binary files: .caffemodel (V1 and current, any size), .solverstate and .binaryproto."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dnntool.errors import FormatError
from dnntool.io.blob import (
    array_to_blob,
    blob_shape,
    blob_to_array,
    read_binaryproto,
    write_binaryproto,
)
from dnntool.io.caffemodel import (
    history_arrays,
    load_weights,
    read_caffemodel,
    read_solverstate,
    save_caffemodel,
    weights_from_netparameter,
    write_solverstate,
)
from dnntool.proto import caffe_pb2
from tests.zoo import zoo_dir

ZOO = zoo_dir()
needs_zoo = pytest.mark.skipif(ZOO is None, reason="zoo corpus not available")


def _summary() -> list[dict]:
    if ZOO is None:
        return []
    return json.loads((ZOO / "reference/caffemodel_blob_summary.json").read_text())["models"]


SUMMARY = _summary()


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# -- zoo caffemodels -----------------------------------------------------------------------------

@needs_zoo
def test_summary_covers_every_zoo_caffemodel():
    files = {m["file"] for m in SUMMARY}
    on_disk = {str(p.relative_to(ZOO)) for p in ZOO.rglob("*.caffemodel")}
    assert on_disk <= files
    assert len(files) >= 15


@pytest.mark.parametrize("model", SUMMARY, ids=[m["file"] for m in SUMMARY])
def test_zoo_caffemodel_totals_and_shapes(model):
    w = load_weights(ZOO / model["file"])
    assert w.total() == model["total_blob_elements"]
    assert [(name, [list(a.shape) for a in arrays]) for name, arrays in w.blobs.items()] == \
        [(b["layer"], b["shapes"]) for b in model["blob_shapes"]]
    assert all(a.dtype == np.float32 for arrays in w.blobs.values() for a in arrays)
    raw = caffe_pb2.NetParameter.FromString((ZOO / model["file"]).read_bytes())
    assert len(raw.layer) + len(raw.layers) == model["n_layers"]
    net = read_caffemodel(ZOO / model["file"])
    assert not net.layers and net.name == model["net_name"]
    extra = 1 if raw.input else 0  # legacy input fields become a leading Input layer
    assert len(net.layer) == model["n_layers"] + extra
    if model["format"].startswith("V2"):
        assert w.types == {b["layer"]: b["type"] for b in model["blob_shapes"]}


# -- save / load round trips ---------------------------------------------------------------------

def _layers(*specs: tuple[str, str]) -> list[caffe_pb2.LayerParameter]:
    return [caffe_pb2.LayerParameter(name=n, type=t) for n, t in specs]


def test_save_caffemodel_roundtrip_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -3.4028235e38, 1.0 / 3], dtype=np.float32)
    blobs = {
        "conv": [rng.standard_normal((8, 3, 3, 3)).astype(np.float32), special],
        "ip": [rng.standard_normal((10, 72)).astype(np.float32), np.zeros(10, np.float32)],
        "bn": [rng.random(4).astype(np.float32), rng.random(4).astype(np.float32), np.ones(1, np.float32)],
        "dbl": [rng.standard_normal((2, 5)).astype(np.float32)],
        "empty": [np.zeros((0, 4), np.float32)],
    }
    layers = _layers(("data", "Input"), ("conv", "Convolution"), ("relu", "ReLU"), ("ip", "InnerProduct"),
                     ("bn", "BatchNorm"), ("dbl", "Scale"), ("empty", "InnerProduct"))
    layers[0].input_param.shape.add().dim.extend([1, 3, 5, 5])
    out = tmp_path / "m.caffemodel"
    save_caffemodel(out, layers, blobs, name="roundtrip")
    w = load_weights(out)
    assert list(w.blobs) == ["conv", "ip", "bn", "dbl", "empty"]
    assert w.types["conv"] == "Convolution" and w.types["dbl"] == "Scale"
    assert all(len(lp.blobs) == 0 or not lp.blobs[0].double_data for lp in read_caffemodel(out).layer)
    for name, arrays in blobs.items():
        assert len(w[name]) == len(arrays)
        for got, want in zip(w[name], arrays, strict=True):
            assert got.shape == want.shape and got.dtype == want.dtype
            assert got.tobytes() == want.tobytes(), name
    net = read_caffemodel(out)
    assert net.name == "roundtrip" and [lp.name for lp in net.layer] == [lp.name for lp in layers]
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 5, 5]
    assert not [q for q in tmp_path.iterdir() if q.name != "m.caffemodel"]


def test_save_caffemodel_replaces_stale_blobs(tmp_path):
    lp = caffe_pb2.LayerParameter(name="ip", type="InnerProduct")
    lp.blobs.append(array_to_blob(np.ones((3, 3), np.float32)))
    save_caffemodel(tmp_path / "m.caffemodel", [lp], {"ip": [np.full(2, 7, np.float32)]})
    (got,) = load_weights(tmp_path / "m.caffemodel")["ip"]
    np.testing.assert_array_equal(got, [7, 7])


@needs_zoo
@pytest.mark.parametrize("rel", ["mtcnn/MTCNNv2/model/det2.caffemodel",
                                 "legacy_v1_2014_everpeace/examples/cifar10/cifar10_quick_iter_5000.caffemodel"])
def test_zoo_caffemodel_resave_bit_exact(tmp_path, rel):
    net = read_caffemodel(ZOO / rel)
    w = weights_from_netparameter(net)
    out = tmp_path / "again.caffemodel"
    save_caffemodel(out, net.layer, w.blobs, name=net.name)
    w2 = load_weights(out)
    assert list(w2.blobs) == list(w.blobs) and w2.types == w.types
    for name in w.blobs:
        for a, b in zip(w[name], w2[name], strict=True):
            assert a.shape == b.shape and a.tobytes() == b.tobytes()
    again = read_caffemodel(out)
    for a, b in zip(net.layer, again.layer, strict=True):
        a2, b2 = caffe_pb2.LayerParameter(), caffe_pb2.LayerParameter()
        a2.CopyFrom(a)
        b2.CopyFrom(b)
        del a2.blobs[:], b2.blobs[:]
        assert a2 == b2


def test_duplicate_layer_name_keeps_first_blobs():
    net = caffe_pb2.NetParameter()
    for v in (1.0, 2.0):
        lp = net.layer.add(name="shared", type="InnerProduct")
        lp.blobs.append(array_to_blob(np.full(3, v, np.float32)))
    np.testing.assert_array_equal(weights_from_netparameter(net)["shared"][0], [1, 1, 1])


# -- big files ------------------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_caffemodel_over_64mb(tmp_path):
    """Protobuf's old default limit was 64 MB; Caffe raised it to 2 GB. Written by hand, in chunks."""
    rows, cols = 4500, 4000  # 18M floats = 72 MB
    n = rows * cols
    shape = _field(7, _field(1, b"".join(_varint(d) for d in (rows, cols))))  # BlobProto.shape (packed dim)
    data_head = _varint(5 << 3 | 2) + _varint(4 * n)  # BlobProto.data, packed float
    blob_len = len(shape) + len(data_head) + 4 * n
    head = _field(1, b"big") + _field(2, b"InnerProduct") + _varint(7 << 3 | 2) + _varint(blob_len)
    layer = _varint(100 << 3 | 2) + _varint(len(head) + blob_len)  # NetParameter.layer
    path = tmp_path / "big.caffemodel"
    chunk = 1 << 20
    with open(path, "wb") as f:
        f.write(_field(1, b"Big") + layer + head + shape + data_head)
        for start in range(0, n, chunk):
            idx = np.arange(start, min(n, start + chunk), dtype=np.int64)
            f.write(((idx % 4093) - 2000).astype("<f4").tobytes())
    assert path.stat().st_size > 64 * 2**20
    w = load_weights(path)
    (a,) = w["big"]
    assert a.shape == (rows, cols) and a.dtype == np.float32
    flat = a.reshape(-1)
    for i in (0, 1, 4092, 4093, n // 2, n - 1):
        assert flat[i] == (i % 4093) - 2000
    assert w.total() == n and w.types["big"] == "InnerProduct"


# -- corrupt and wrong files ---------------------------------------------------------------------

def _small_model(path: Path) -> None:
    save_caffemodel(path, _layers(("ip", "InnerProduct")),
                    {"ip": [np.arange(1000, dtype=np.float32).reshape(10, 100), np.zeros(10, np.float32)]})


@pytest.mark.parametrize("frac", [0.1, 0.5, 0.9])
def test_truncated_caffemodel(tmp_path, frac):
    full = tmp_path / "full.caffemodel"
    _small_model(full)
    data = full.read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[: int(len(data) * frac)])
    for reader in (read_caffemodel, load_weights):
        with pytest.raises(FormatError) as ei:
            reader(cut)
        msg = _one_line(ei)
        assert msg.startswith(f"{cut}: ") and "truncated or corrupt" in msg


@needs_zoo
def test_truncated_zoo_caffemodel(tmp_path):
    data = (ZOO / "mtcnn/MTCNNv2/model/det3.caffemodel").read_bytes()
    cut = tmp_path / "det3.caffemodel"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError) as ei:
        load_weights(cut)
    assert str(cut) in _one_line(ei)


def test_text_prototxt_as_caffemodel(tmp_path):
    p = tmp_path / "deploy.prototxt"
    p.write_text('name: "x"\nlayer {\n  name: "data"\n  type: "Input"\n  top: "data"\n}\n')
    with pytest.raises(FormatError) as ei:
        load_weights(p)
    msg = _one_line(ei)
    assert msg.startswith(f"{p}: ") and "looks like a text prototxt" in msg


@needs_zoo
@pytest.mark.parametrize("rel", ["mtcnn/MTCNNv2/model/det1.prototxt", "bvlc/models/bvlc_googlenet/deploy.prototxt",
                                 "legacy_v1_2014_everpeace/examples/mnist/lenet.prototxt"])
def test_zoo_prototxt_as_caffemodel(rel):
    with pytest.raises(FormatError) as ei:
        read_caffemodel(ZOO / rel)
    assert "looks like a text prototxt" in _one_line(ei)


def test_missing_empty_and_directory(tmp_path):
    for reader in (read_caffemodel, load_weights, read_solverstate, read_binaryproto):
        with pytest.raises(FormatError, match="no such file"):
            reader(tmp_path / "nope")
        (tmp_path / "empty").write_bytes(b"")
        with pytest.raises(FormatError, match="empty file"):
            reader(tmp_path / "empty")
        with pytest.raises(FormatError):
            reader(tmp_path)


def test_no_layers_is_not_a_caffemodel(tmp_path):
    p = tmp_path / "x.caffemodel"
    p.write_bytes(caffe_pb2.NetParameter(name="nothing").SerializeToString())
    with pytest.raises(FormatError, match="no layers found"):
        read_caffemodel(p)


def test_blob_data_count_mismatch_names_layer_and_file(tmp_path):
    net = caffe_pb2.NetParameter()
    lp = net.layer.add(name="conv1", type="Convolution")
    b = lp.blobs.add()
    b.shape.dim.extend([2, 3])
    b.data.extend([1.0] * 5)
    p = tmp_path / "bad.caffemodel"
    p.write_bytes(net.SerializeToString())
    with pytest.raises(FormatError) as ei:
        load_weights(p)
    msg = _one_line(ei)
    assert msg.startswith(f"{p}: ") and "conv1" in msg and "6 values" in msg and "5" in msg


def test_v0_caffemodel_refused_with_file_name(tmp_path):
    net = caffe_pb2.NetParameter()
    net.layers.add().layer.name = "conv1"
    p = tmp_path / "v0.caffemodel"
    p.write_bytes(net.SerializeToString())
    with pytest.raises(FormatError) as ei:
        read_caffemodel(p)
    assert _one_line(ei).startswith(f"{p}: ") and "V0" in str(ei.value)


# -- solver states -------------------------------------------------------------------------------

SOLVERSTATES = [  # (file, iter, learned_net recorded in it, the zoo caffemodel of the same net)
    ("legacy_v1_2014_everpeace/examples/mnist/lenet_iter_10000.solverstate", 10000,
     "examples/mnist/lenet_iter_10000.caffemodel", "lenet_iter_10000.caffemodel"),
    ("legacy_v1_2014_everpeace/examples/cifar10/cifar10_quick_iter_5000.solverstate", 5000,
     "examples/cifar10/cifar10_quick_lr1_iter_5000.caffemodel", "cifar10_quick_iter_5000.caffemodel"),
    ("legacy_v1_2014_everpeace/examples/cifar10/cifar10_full_iter_70000.solverstate", 70000,
     "examples/cifar10/cifar10_full_lr2_iter_70000.caffemodel", "cifar10_full_iter_70000.caffemodel"),
]


@needs_zoo
@pytest.mark.parametrize("rel,iteration,learned_net,learned", SOLVERSTATES)
def test_zoo_solverstate_roundtrip(tmp_path, rel, iteration, learned_net, learned):
    state = read_solverstate(ZOO / rel)
    assert state.iter == iteration and state.learned_net == learned_net
    hist = history_arrays(state, str(ZOO / rel))
    # One history blob per learnable blob of the matching caffemodel, same sizes.
    w = load_weights(ZOO / Path(rel).parent / learned)
    sizes = [a.size for arrays in w.blobs.values() for a in arrays]
    assert [h.size for h in hist] == sizes
    out = tmp_path / "again.solverstate"
    write_solverstate(out, state.iter, state.learned_net, hist, state.current_step)
    again = read_solverstate(out)
    assert (again.iter, again.learned_net, again.current_step) == (state.iter, state.learned_net, state.current_step)
    hist2 = history_arrays(again)
    assert len(hist2) == len(hist)
    for a, b in zip(hist, hist2, strict=True):
        assert a.shape == b.shape and a.tobytes() == b.tobytes()


def test_solverstate_roundtrip_synthetic(tmp_path):
    rng = np.random.default_rng(1)
    hist = [rng.standard_normal((4, 3, 2, 2)).astype(np.float32), rng.standard_normal(4).astype(np.float32)]
    p = tmp_path / "s.solverstate"
    write_solverstate(p, 1234, "net_iter_1234.caffemodel", hist, current_step=3)
    s = read_solverstate(p)
    assert (s.iter, s.learned_net, s.current_step) == (1234, "net_iter_1234.caffemodel", 3)
    for a, b in zip(hist, history_arrays(s), strict=True):
        assert a.tobytes() == b.tobytes() and a.shape == b.shape


def test_corrupt_solverstate(tmp_path):
    p = tmp_path / "s.solverstate"
    write_solverstate(p, 5, "x.caffemodel", [np.ones((100,), np.float32)])
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(FormatError) as ei:
        read_solverstate(p)
    assert _one_line(ei).startswith(f"{p}: ")


# -- binaryproto ---------------------------------------------------------------------------------

MEANS = [
    ("ilsvrc12_aux/imagenet_mean.binaryproto", (1, 3, 256, 256), (104.007, 116.669, 122.679)),
    ("age_gender/models/mean.binaryproto", (1, 3, 256, 256), (78.426, 87.769, 114.896)),
    ("zynqnet/_TRAINED_MODEL/mean.binaryproto", (1, 3, 300, 300), None),
    ("opencv_contrib/modules/cnn_3dobj/samples/data/images_mean/triplet_mean.binaryproto", (1, 1, 64, 64), None),
    ("opencv_contrib/modules/dnns_easily_fooled/model/lenet/mnist_mean.binaryproto", (1, 1, 28, 28), None),
]


@needs_zoo
@pytest.mark.parametrize("rel,shape,means", MEANS)
def test_zoo_mean_files(rel, shape, means):
    a = read_binaryproto(ZOO / rel)
    assert a.shape == shape and a.dtype == np.float32
    assert np.isfinite(a).all() and a.min() >= 0 and a.max() <= 255
    if means is not None:
        np.testing.assert_allclose(a.mean(axis=(0, 2, 3), dtype=np.float64), means, atol=1e-3)
    blob = caffe_pb2.BlobProto.FromString((ZOO / rel).read_bytes())
    assert blob.HasField("num") and not blob.shape.dim  # legacy num/channels/height/width


@needs_zoo
def test_imagenet_mean_equals_npy():
    a = read_binaryproto(ZOO / "ilsvrc12_aux/imagenet_mean.binaryproto")
    ref = np.load(ZOO / "bvlc/python/caffe/imagenet/ilsvrc_2012_mean.npy")
    assert ref.shape == (3, 256, 256)
    assert np.array_equal(a[0].astype(ref.dtype), ref)


def test_binaryproto_write_legacy_and_shape(tmp_path):
    rng = np.random.default_rng(2)
    chw = rng.random((3, 5, 7)).astype(np.float32) * 255
    legacy = tmp_path / "legacy.binaryproto"
    write_binaryproto(legacy, chw)  # legacy by default, as Caffe's compute_image_mean
    blob = caffe_pb2.BlobProto.FromString(legacy.read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 5, 7) and not blob.shape.dim
    back = read_binaryproto(legacy)
    assert back.shape == (1, 3, 5, 7) and back.tobytes() == chw.tobytes()

    shaped = tmp_path / "shape.binaryproto"
    nd = rng.random((2, 3, 4, 5, 6)).astype(np.float32)
    write_binaryproto(shaped, nd, legacy=False)
    blob = caffe_pb2.BlobProto.FromString(shaped.read_bytes())
    assert list(blob.shape.dim) == [2, 3, 4, 5, 6] and not blob.HasField("num")
    back = read_binaryproto(shaped)
    assert back.shape == nd.shape and back.tobytes() == nd.tobytes()

    dbl = tmp_path / "double.binaryproto"
    write_binaryproto(dbl, rng.random((1, 2, 3, 3)), legacy=False)
    assert read_binaryproto(dbl).dtype == np.float64

    with pytest.raises(ValueError):
        write_binaryproto(tmp_path / "x.binaryproto", nd, legacy=True)


def test_blob_shape_rules():
    b = caffe_pb2.BlobProto(num=2, channels=3)
    assert blob_shape(b) == (2, 3, 0, 0)
    b = caffe_pb2.BlobProto()
    b.data.extend([1, 2, 3])
    assert blob_to_array(b).shape == (3,)  # shapeless blobs are 1-D
    assert blob_to_array(caffe_pb2.BlobProto()).shape == (0,)
    b = caffe_pb2.BlobProto()
    b.shape.dim.extend([-1, -2])
    b.data.extend([1, 2])
    with pytest.raises(FormatError, match="negative"):
        blob_to_array(b, "layer 'x' blob 0")


def test_bad_binaryproto(tmp_path):
    p = tmp_path / "m.binaryproto"
    p.write_bytes(b"\xff\xff\xff\xff\xff")
    with pytest.raises(FormatError) as ei:
        read_binaryproto(p)
    assert _one_line(ei).startswith(f"{p}: ")
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=2, width=2)
    blob.data.extend([0.0] * 11)
    p.write_bytes(blob.SerializeToString())
    with pytest.raises(FormatError) as ei:
        read_binaryproto(p)
    assert "12 values" in _one_line(ei) and str(p) in str(ei.value)
    p.write_bytes(caffe_pb2.BlobProto(diff=[1.0]).SerializeToString())
    with pytest.raises(FormatError, match="not a BlobProto"):
        read_binaryproto(p)


@needs_zoo
def test_caffemodel_is_not_a_binaryproto(tmp_path):
    shutil.copy(ZOO / "mtcnn/MTCNNv2/model/det1.caffemodel", tmp_path / "det1.binaryproto")
    with pytest.raises(FormatError) as ei:
        read_binaryproto(tmp_path / "det1.binaryproto")
    _one_line(ei)
