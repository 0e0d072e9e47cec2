"""Data layers: where each gets its top shapes, as Caffe's DataLayerSetUp does, and --input-shape.

Input (``input_layer.cpp``): one shape for every top, or one per top. Data (``data_layer.cpp``):
(batch_size, C, H, W) from the first Datum, H = W = crop_size when cropping; label (batch_size,).
ImageData: the first listed image, resized to new_height x new_width when both are set. MemoryData:
(batch_size, channels, height, width). DummyData: ``shape`` or legacy num/channels/height/width,
each once or once per top.
"""

from __future__ import annotations

import cv2
import lmdb
import numpy as np
import pytest

from dnntool.errors import NeedsInputShape, NetError
from dnntool.io.prototxt import parse_net_text
from dnntool.net import Net
from dnntool.proto import caffe_pb2


def net_of(text: str, path: str = "case.prototxt", **kw) -> Net:
    src = parse_net_text(text, path)
    return Net.from_param(src.param, kw.pop("phase", "test"), layer_locs=src.layer_locs, path=path, **kw)


def shapes(net: Net) -> dict[str, tuple[int, ...]]:
    return {b.name: b.shape for b in net.blobs.values()}


# --- Input and legacy deploy headers ----------------------------------------------------------------
def test_input_one_shape_for_all_tops():
    net = net_of('layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 1 dim: 3 } } }')
    assert shapes(net) == {"a": (1, 3), "b": (1, 3)}
    assert net.input_names() == ["a", "b"]


def test_input_one_shape_per_top():
    net = net_of('layer { name: "in" type: "Input" top: "a" top: "b" '
                 'input_param { shape { dim: 1 dim: 3 } shape { dim: 2 dim: 5 dim: 7 } } }')
    assert shapes(net) == {"a": (1, 3), "b": (2, 5, 7)}


def test_input_errors():
    with pytest.raises(NeedsInputShape, match="--input-shape a="):
        net_of('layer { name: "in" type: "Input" top: "a" }')
    # "Must specify 'shape' once, once per top blob, or not at all"
    with pytest.raises(NetError, match="shapes for 3 tops"):
        net_of('layer { name: "in" type: "Input" top: "a" top: "b" top: "c" '
               'input_param { shape { dim: 1 } shape { dim: 2 } } }')


CONV = 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 4 kernel_size: 3 } }\n'


def test_legacy_input_dim_header():
    net = net_of('name: "n"\ninput: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 10\ninput_dim: 12\n' + CONV)
    assert net.blob("data").shape == (1, 3, 10, 12)
    assert net.blob("c").shape == (1, 4, 8, 10)
    assert net.input_names() == ["data"]


def test_legacy_input_shape_header_two_inputs():
    net = net_of('input: "data" input_shape { dim: 2 dim: 3 dim: 5 dim: 5 }\n'
                 'input: "im_info" input_shape { dim: 1 dim: 3 }\n' + CONV)
    assert net.blob("data").shape == (2, 3, 5, 5)
    assert net.blob("im_info").shape == (1, 3)
    assert net.blob("c").shape == (2, 4, 3, 3)


# --- Data (LMDB) ----------------------------------------------------------------------------------
def make_lmdb(path, datums: list[caffe_pb2.Datum]) -> str:
    env = lmdb.open(str(path), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for i, d in enumerate(datums):
            txn.put(f"{i:08d}_img{i}.png".encode(), d.SerializeToString())
    env.close()
    return str(path)


def raw_datum(c: int, h: int, w: int, label: int = 0) -> caffe_pb2.Datum:
    return caffe_pb2.Datum(channels=c, height=h, width=w, label=label, data=bytes(c * h * w))


def data_layer(source: str, extra: str = "", top: str = "data") -> str:
    return (f'layer {{ name: "d" type: "Data" top: "{top}" top: "label" {extra} '
            f'data_param {{ source: "{source}" batch_size: 16 backend: LMDB }} }}\n')


def test_data_reads_first_datum(tmp_path):
    db = make_lmdb(tmp_path / "db", [raw_datum(3, 32, 40), raw_datum(3, 7, 7)])
    net = net_of(data_layer(db))
    assert shapes(net) == {"data": (16, 3, 32, 40), "label": (16,)}


def test_data_crop_size(tmp_path):
    db = make_lmdb(tmp_path / "db", [raw_datum(3, 32, 40)])
    net = net_of(data_layer(db, "transform_param { crop_size: 28 mirror: true }"), phase="train")
    assert net.blob("data").shape == (16, 3, 28, 28)
    # data_transformer.cpp: CHECK_GE(datum_height, crop_size)
    with pytest.raises(NetError, match="crop_size 33"):
        net_of(data_layer(db, "transform_param { crop_size: 33 }"))


def test_data_encoded_datum(tmp_path):
    ok, png = cv2.imencode(".png", np.zeros((9, 11), np.uint8))  # grayscale 9 x 11
    assert ok
    db = make_lmdb(tmp_path / "db", [caffe_pb2.Datum(encoded=True, data=png.tobytes(), label=1)])
    assert net_of(data_layer(db)).blob("data").shape == (16, 1, 9, 11)
    forced = data_layer(db).replace("backend: LMDB", "backend: LMDB force_encoded_color: true")
    assert net_of(forced).blob("data").shape == (16, 3, 9, 11)


def test_data_source_next_to_prototxt(tmp_path):
    make_lmdb(tmp_path / "train_lmdb", [raw_datum(1, 28, 28)])
    net = net_of(data_layer("train_lmdb"), path=str(tmp_path / "net.prototxt"))
    assert net.blob("data").shape == (16, 1, 28, 28)


def test_data_absent_source_needs_input_shape():
    with pytest.raises(NeedsInputShape, match="--input-shape data=") as e:
        net_of(data_layer("/nonexistent/mnist_train_lmdb") + CONV)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith("case.prototxt:1:")


def test_input_shape_overrides_data_layer():
    text = data_layer("/nonexistent/db") + CONV
    net = net_of(text, input_shapes={"data": (2, 3, 8, 8)})
    assert shapes(net) == {"data": (2, 3, 8, 8), "label": (2,), "c": (2, 4, 6, 6)}
    # the bare form names no blob: it goes to the first input asked for
    net = net_of(text, input_shapes={"": (4, 3, 10, 10)})
    assert net.blob("data").shape == (4, 3, 10, 10) and net.blob("label").shape == (4,)
    # a label shape may be given too
    net = net_of(text, input_shapes={"data": (2, 3, 8, 8), "label": (2, 1)})
    assert net.blob("label").shape == (2, 1)


def test_input_shape_overrides_input_layer():
    net = net_of('layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 5 dim: 5 } } }\n'
                 + CONV, input_shapes={"data": (8, 3, 7, 7)})
    assert net.blob("c").shape == (8, 4, 5, 5)


def test_unused_input_shape_is_an_error():
    with pytest.raises(NetError, match="imgs"):
        net_of(data_layer("/nonexistent/db"), input_shapes={"data": (1, 3, 4, 4), "imgs": (1, 3, 4, 4)})


# --- MemoryData, DummyData, ImageData, WindowData, HDF5Data --------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ('layer { name: "m" type: "MemoryData" top: "data" top: "label" '
     'memory_data_param { batch_size: 5 channels: 3 height: 4 width: 6 } }',
     {"data": (5, 3, 4, 6), "label": (5,)}),
    ('layer { name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { shape { dim: 2 dim: 3 } } }',
     {"a": (2, 3), "b": (2, 3)}),
    ('layer { name: "d" type: "DummyData" top: "a" top: "b" '
     'dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }',
     {"a": (2, 3), "b": (2,)}),
    # legacy 4-D fields: each once (shared) or once per top
    ('layer { name: "d" type: "DummyData" top: "a" '
     'dummy_data_param { num: 10 channels: 3 height: 32 width: 32 } }',
     {"a": (10, 3, 32, 32)}),
    ('layer { name: "d" type: "DummyData" top: "a" top: "b" '
     'dummy_data_param { num: 10 channels: 3 channels: 1 height: 32 width: 32 width: 1 } }',
     {"a": (10, 3, 32, 32), "b": (10, 1, 32, 1)}),
    # WindowData: crops of crop_size
    ('layer { name: "w" type: "WindowData" top: "data" top: "label" '
     'window_data_param { source: "/nonexistent/windows.txt" batch_size: 128 crop_size: 227 } }',
     {"data": (128, 3, 227, 227), "label": (128,)}),
    # ImageData with new_height/new_width needs no image
    ('layer { name: "i" type: "ImageData" top: "data" top: "label" image_data_param { '
     'source: "/nonexistent/list.txt" batch_size: 8 new_height: 256 new_width: 320 } '
     'transform_param { crop_size: 224 } }',
     {"data": (8, 3, 224, 224), "label": (8,)}),
])
def test_data_layer_shapes(text, expected):
    assert shapes(net_of(text)) == expected


@pytest.mark.parametrize("text,match", [
    ('layer { name: "m" type: "MemoryData" top: "data" memory_data_param { batch_size: 5 channels: 3 } }',
     "positive"),
    # "Both shape and legacy fields were specified"
    ('layer { name: "d" type: "DummyData" top: "a" dummy_data_param { shape { dim: 2 } num: 2 } }', "both"),
    # "Must specify 'channels' once, or once per top blob (3); specified 2."
    ('layer { name: "d" type: "DummyData" top: "a" top: "b" top: "c" '
     'dummy_data_param { num: 1 channels: 1 channels: 2 height: 1 width: 1 } }', "'channels'"),
    ('layer { name: "d" type: "DummyData" top: "a" top: "b" top: "c" '
     'dummy_data_param { shape { dim: 1 } shape { dim: 2 } } }', "2 shapes for 3 tops"),
    # "Current implementation requires new_height and new_width to be set at the same time."
    ('layer { name: "i" type: "ImageData" top: "data" image_data_param { source: "x" new_height: 8 } }',
     "together"),
])
def test_data_layer_errors(text, match):
    with pytest.raises(NetError, match=match):
        net_of(text)


def test_image_data_reads_first_image(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (17, 23, 3), dtype=np.uint8)
    assert cv2.imwrite(str(tmp_path / "a.png"), img)
    (tmp_path / "list.txt").write_text("a.png 3\nmissing.png 1\n")
    base = (f'layer {{ name: "i" type: "ImageData" top: "data" top: "label" '
            f'image_data_param {{ source: "{tmp_path / "list.txt"}" root_folder: "{tmp_path}/" batch_size: 4 ')
    assert shapes(net_of(base + "} }")) == {"data": (4, 3, 17, 23), "label": (4,)}
    assert net_of(base + "is_color: false } }").blob("data").shape == (4, 1, 17, 23)
    assert net_of(base + "new_height: 9 new_width: 5 } }").blob("data").shape == (4, 3, 9, 5)
    assert net_of(base + "} transform_param { crop_size: 16 } }").blob("data").shape == (4, 3, 16, 16)
    (tmp_path / "list.txt").write_text("missing.png 1\n")
    with pytest.raises(NeedsInputShape, match="--input-shape data="):
        net_of(base + "} }")


def test_window_data_without_crop_needs_shape():
    with pytest.raises(NeedsInputShape, match="--input-shape data="):
        net_of('layer { name: "w" type: "WindowData" top: "data" top: "label" '
               'window_data_param { source: "/nonexistent/windows.txt" } }')


def test_hdf5_data_without_h5py_needs_input_shape(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    (tmp_path / "train.h5").write_bytes(b"")
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'train.h5'}\n")
    text = (f'layer {{ name: "h" type: "HDF5Data" top: "data" top: "label" '
            f'hdf5_data_param {{ source: "{tmp_path / "list.txt"}" batch_size: 10 }} }}')
    with pytest.raises(NeedsInputShape, match="h5py") as e:
        net_of(text)
    assert "--input-shape data=" in str(e.value) and "label=" in str(e.value)
    net = net_of(text, input_shapes={"data": (10, 4), "label": (10,)})
    assert shapes(net) == {"data": (10, 4), "label": (10,)}
