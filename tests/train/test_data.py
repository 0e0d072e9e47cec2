"""Data for training: in-memory arrays, DummyData fillers, HDF5Data files, resumable positions."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from dnntool.net import Net
from dnntool.proto import caffe_pb2
from dnntool.train.data import net_data
from tests.train.nets import write_lmdb


def build(text: str, phase: str = "train") -> Net:
    return Net.from_param(text_format.Parse(text, caffe_pb2.NetParameter()), phase)


SINK = 'layer { name: "sink" type: "Silence" %s }'


def test_memory_data_arrays_cycle_in_batches():
    net = build('layer { name: "m" type: "MemoryData" top: "data" top: "label" memory_data_param {'
                ' batch_size: 4 channels: 1 height: 2 width: 2 } }\n' + SINK % 'bottom: "data" bottom: "label"')
    x = np.arange(6 * 4, dtype=np.float32).reshape(6, 1, 2, 2)
    y = np.arange(6, dtype=np.float32)
    with net_data(net, "train", 0, {"data": x, "label": y}, start=1) as d:
        b = d.next()
        np.testing.assert_array_equal(b["label"], [4, 5, 0, 1])  # batch 1 of a wrapping stream
        np.testing.assert_array_equal(b["data"], x[[4, 5, 0, 1]])
        np.testing.assert_array_equal(d.next()["label"], [2, 3, 4, 5])


def test_dummy_data_fills_from_its_filler_every_batch():
    net = build('layer { name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param {'
                ' shape { dim: 2 dim: 3 } shape { dim: 2 }'
                ' data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 7 } } }\n'
                + SINK % 'bottom: "a" bottom: "b"')
    with net_data(net, "train", 3) as d:
        first, second = d.next(), d.next()
    np.testing.assert_array_equal(first["b"], np.full(2, 7, np.float32))
    assert first["a"].shape == (2, 3) and not np.array_equal(first["a"], second["a"])
    with net_data(net, "train", 3, start=1) as d:  # resumable: batch 1 is batch 1
        np.testing.assert_array_equal(d.next()["a"], second["a"])


def test_data_layer_batch_k_is_the_same_after_a_restart(tmp_path):
    db = write_lmdb(tmp_path / "db", 10)
    net = build(f'layer {{ name: "d" type: "Data" top: "data" top: "label" transform_param {{ crop_size: 5'
                f' mirror: true }} data_param {{ source: "{db}" batch_size: 4 }} }}\n'
                + SINK % 'bottom: "data" bottom: "label"')
    with net_data(net, "train", 1) as d:
        batches = [d.next() for _ in range(4)]
    with net_data(net, "train", 1, start=3, prefetch=0) as d:
        again = d.next()
    for k in ("data", "label"):
        np.testing.assert_array_equal(again[k], batches[3][k])
    np.testing.assert_array_equal(batches[2]["label"], [8 % 3, 9 % 3, 0, 1])  # wraps like Caffe's reader


def test_image_data_with_shuffle_resumes(tmp_path):
    import cv2

    lines = []
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((4, 4), i * 40, np.uint8))
        lines.append(f"{i}.png {i}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    net = build(f'layer {{ name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{'
                f' source: "{tmp_path / "list.txt"}" root_folder: "{tmp_path}/" batch_size: 3 shuffle: true'
                f' is_color: false }} }}\n' + SINK % 'bottom: "data" bottom: "label"')
    with net_data(net, "train", 2) as d:
        labels = [d.next()["label"].tolist() for _ in range(4)]
    assert sorted(labels[0] + labels[1][:2]) == [0, 1, 2, 3, 4]  # a permutation per pass
    with net_data(net, "train", 2, start=3) as d:
        assert d.next()["label"].tolist() == labels[3]


def test_hdf5_data(tmp_path):
    h5py = pytest.importorskip("h5py")
    for i in range(2):
        with h5py.File(tmp_path / f"part{i}.h5", "w") as f:
            f["data"] = np.arange(3 * 2, dtype=np.float32).reshape(3, 2) + 100 * i
            f["label"] = np.arange(3, dtype=np.float32) + 10 * i
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'part0.h5'}\n{tmp_path / 'part1.h5'}\n")
    net = build(f'layer {{ name: "h" type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{'
                f' source: "{tmp_path / "list.txt"}" batch_size: 4 }} }}\n' + SINK % 'bottom: "data" bottom: "label"')
    with net_data(net, "train", 0) as d:
        assert d.next()["label"].tolist() == [0, 1, 2, 10]  # batches run across files
        assert d.next()["label"].tolist() == [11, 12, 0, 1]
    with net_data(net, "train", 0, start=1) as d:
        b = d.next()
    assert b["label"].tolist() == [11, 12, 0, 1] and b["data"][0].tolist() == [102, 103]


def test_unfeedable_layer_and_partial_arrays_are_errors():
    from dnntool.errors import NetError

    net = build('layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 } } }\n'
                + SINK % 'bottom: "x" bottom: "y"')
    with pytest.raises(NetError, match=r"arrays were given for some of its tops but not for 'y'"):
        net_data(net, "train", 0, {"x": np.zeros(2, np.float32)})
