"""Record sources and the prefetching feeder: order, wrap-around, determinism, errors, data layers."""

from __future__ import annotations

import threading

import cv2
import lmdb
import numpy as np
import pytest

from dnntool.data.feeder import Feeder, feeder_for_layer
from dnntool.data.sources import ImageListSource, LmdbSource, parse_list_file
from dnntool.data.transform import Transformer
from dnntool.errors import FormatError, NetError
from dnntool.io.blob import write_binaryproto
from dnntool.net import Net
from tests.data.digits import digits, key, write_lmdb


@pytest.fixture(scope="module")
def db10(tmp_path_factory):
    path = tmp_path_factory.mktemp("feeder") / "db"
    x, y = digits(10)
    write_lmdb(path, x, y)
    return path, x, y


def test_lmdb_records_in_key_order(db10):
    path, x, y = db10
    src = LmdbSource(path)
    recs = list(src.records())
    assert len(src) == 10 and [r.key for r in recs] == [key(i) for i in range(10)]
    for r, img, lab in zip(recs, x, y, strict=True):
        np.testing.assert_array_equal(r.data, img)
        assert r.label == lab and r.data.dtype == np.uint8
    src.close()


def test_batches_wrap_around_at_the_end(db10):
    path, x, y = db10
    with Feeder(LmdbSource(path), Transformer(), 4, expect=(1, 8, 8)) as f:
        batches = [f.next() for _ in range(4)]
    order = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5]
    assert [k for b in batches for k in b.keys] == [key(i) for i in order]
    np.testing.assert_array_equal(np.concatenate([b.data for b in batches]), x[order].astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([b.label for b in batches]), y[order].astype(np.float32))
    assert batches[2].data.dtype == np.float32 and [b.index for b in batches] == [0, 1, 2, 3]


def test_prefetch_gives_the_same_batches_as_on_demand(db10):
    path, _, _ = db10
    t = Transformer(crop=(5, 5), mirror=True, train=True, scale=0.5)
    runs = []
    for prefetch in (0, 1, 4):
        with Feeder(LmdbSource(path), t, 3, seed=11, prefetch=prefetch) as f:
            runs.append([f.next().data for _ in range(7)])
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            np.testing.assert_array_equal(a, b)
    with Feeder(LmdbSource(path), t, 3, seed=12) as f:
        different = [f.next().data for _ in range(7)]
    assert any(not np.array_equal(a, b) for a, b in zip(runs[0], different, strict=True))


def test_close_stops_the_thread(db10):
    path, _, _ = db10
    f = Feeder(LmdbSource(path), Transformer(), 2, prefetch=2)
    f.next()
    thread = f._pf._thread
    assert thread is not None and thread.is_alive()
    f.close()
    assert not thread.is_alive()
    assert not any(t.name == "dnntool-feeder" and t.is_alive() for t in threading.enumerate())


def test_errors_reach_the_consumer_with_the_key(tmp_path):
    path = tmp_path / "bad"
    x, y = digits(3)
    write_lmdb(path, x, y)
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(key(1).encode(), b"\xff\xff\xff not a datum")
    env.close()
    with Feeder(LmdbSource(path), Transformer(), 2) as f, pytest.raises(FormatError, match=f"record '{key(1)}'"):
        f.next()


def test_records_of_different_sizes_in_one_batch(tmp_path):
    path = tmp_path / "mixed"
    imgs = [np.zeros((1, 8, 8), np.uint8), np.zeros((1, 6, 6), np.uint8)]
    env = lmdb.open(str(path), map_size=1 << 24)
    env.close()
    write_lmdb(path, np.stack([imgs[0]]), [0])
    from dnntool.proto import caffe_pb2

    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        d = caffe_pb2.Datum(channels=1, height=6, width=6, data=imgs[1].tobytes())
        txn.put(key(1).encode(), d.SerializeToString())
    env.close()
    with Feeder(LmdbSource(path), Transformer(), 2, prefetch=0) as f, \
            pytest.raises(FormatError, match=f"record '{key(1)}' is 1x6x6 but record '{key(0)}'"):
        f.next()
    with Feeder(LmdbSource(path), Transformer(), 1, expect=(1, 8, 8), prefetch=0) as f:
        f.next()
        with pytest.raises(FormatError, match="gives a 1x6x6 input but the net's data top is 1x8x8"):
            f.next()


def test_encoded_and_float_datums(tmp_path):
    x, y = digits(4)
    color = np.repeat(x, 3, axis=1)
    color[:, 0] //= 2  # make the channels differ so BGR order is checked
    write_lmdb(tmp_path / "png", color, y, encoded=True)
    write_lmdb(tmp_path / "float", x, y, floats=True)
    enc = list(LmdbSource(tmp_path / "png").records())
    np.testing.assert_array_equal(np.stack([r.data for r in enc]), color)
    gray = list(LmdbSource(tmp_path / "png", force_gray=True).records())
    assert gray[0].data.shape == (1, 8, 8)
    flt = list(LmdbSource(tmp_path / "float").records())
    assert flt[0].data.dtype == np.float32
    np.testing.assert_array_equal(np.stack([r.data for r in flt]), x.astype(np.float32))
    # the feeder's grouped reads give the same batches for every kind of record
    write_lmdb(tmp_path / "raw", color, y)
    for name in ("png", "float", "raw"):
        with Feeder(LmdbSource(tmp_path / name), Transformer(scale=0.5), 3, prefetch=0) as f:
            b = [f.next() for _ in range(2)]
        src = color if name != "float" else x
        np.testing.assert_array_equal(np.concatenate([bb.data for bb in b]), src[[0, 1, 2, 3, 0, 1]] * np.float32(0.5))


def test_lmdb_source_errors(tmp_path):
    with pytest.raises(FormatError, match="no such LMDB"):
        LmdbSource(tmp_path / "none")
    (tmp_path / "dir").mkdir()
    with pytest.raises(FormatError, match="not an LMDB"):
        LmdbSource(tmp_path / "dir")


def test_image_list_source(tmp_path):
    x, y = digits(5)
    root = tmp_path / "imgs"
    root.mkdir()
    lines = []
    for i, (img, lab) in enumerate(zip(x, y, strict=True)):
        name = f"d {i}.png"  # a space in the name: split at the last blank, as Caffe
        cv2.imwrite(str(root / name), img[0])
        lines.append(f"{name} {lab}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n\n")
    assert parse_list_file(tmp_path / "list.txt")[1] == ("d 1.png", int(y[1]))
    src = ImageListSource(tmp_path / "list.txt", str(root), is_color=False)
    recs = list(src.records())
    assert [r.key for r in recs] == [f"d {i}.png" for i in range(5)]
    np.testing.assert_array_equal(np.stack([r.data for r in recs]), x)
    big = ImageListSource(tmp_path / "list.txt", str(root), 16, 12, is_color=True)
    assert next(big.records()).data.shape == (3, 16, 12)
    import itertools

    a = [r.key for r in itertools.islice(
        ImageListSource(tmp_path / "list.txt", str(root), shuffle=True, seed=1).records(cycle=True), 10)]
    b = [r.key for r in ImageListSource(tmp_path / "list.txt", str(root), shuffle=True, seed=1).records()]
    assert sorted(b) == sorted(f"d {i}.png" for i in range(5)) and a[:5] == b
    assert sorted(a[5:]) == sorted(b)  # a new permutation for each pass
    (tmp_path / "bad.txt").write_text("x.png seven\n")
    with pytest.raises(FormatError, match=r"bad.txt:1: label 'seven' is not an integer"):
        parse_list_file(tmp_path / "bad.txt")
    (tmp_path / "missing.txt").write_text("nope.png 1\n")
    with pytest.raises(FormatError, match=r"image '.*nope.png' cannot be read"):
        next(ImageListSource(tmp_path / "missing.txt", str(root)).records())


def test_feeder_for_a_data_layer_resolves_paths_next_to_the_prototxt(tmp_path):
    x, y = digits(6)
    write_lmdb(tmp_path / "db", x, y)
    mean = np.full((1, 8, 8), 3.0, np.float32)
    write_binaryproto(tmp_path / "mean.binaryproto", mean[None])
    (tmp_path / "net.prototxt").write_text("""
layer { name: "d" type: "Data" top: "data" top: "label"
  transform_param { mean_file: "mean.binaryproto" crop_size: 6 scale: 0.5 }
  data_param { source: "db" batch_size: 4 backend: LMDB } }
""")
    import os

    cwd = os.getcwd()
    os.chdir("/")
    try:
        net = Net.from_prototxt(tmp_path / "net.prototxt")
        with feeder_for_layer(net.layers[0], net.source) as f:
            b = f.next()
    finally:
        os.chdir(cwd)
    assert b.data.shape == (4, 1, 6, 6)
    np.testing.assert_array_equal(b.data, (x[:4, :, 1:7, 1:7].astype(np.float32) - 3.0) * 0.5)


def test_feeder_for_an_input_layer_is_refused():
    from dnntool.io.prototxt import parse_net_text

    src = parse_net_text('layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 } } }')
    net = Net.from_param(src.param)
    with pytest.raises(NetError, match=r"layer 'in' \(Input\) cannot be fed: .*Data or ImageData"):
        feeder_for_layer(net.layers[0], None)
