"""Transformer against a hand-written reference of Caffe's DataTransformer::Transform(Datum).

The reference walks the C++ loops index by index in float32 (data_index / top_index arithmetic),
so crop offsets, the mean file read at the crop offset, mean values, scale after mean subtraction
and mirroring are each checked bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from dnntool.data.transform import Transformer, load_mean_file
from dnntool.errors import FormatError, NetError
from dnntool.io.blob import write_binaryproto
from dnntool.proto import caffe_pb2


def caffe_transform(datum: np.ndarray, *, scale=1.0, crop=0, mirror=False, mean=None, mean_values=(),
                    train=False, rng=None) -> np.ndarray:
    """data_transformer.cpp, loop for loop (mirror drawn in TRAIN only; see the module docstring)."""
    c_n, dh, dw = datum.shape
    flat = datum.reshape(-1)
    do_mirror = bool(mirror and train and rng.integers(2))
    height, width, h_off, w_off = dh, dw, 0, 0
    if crop:
        height = width = crop
        if train:
            h_off = int(rng.integers(dh - crop + 1))
            w_off = int(rng.integers(dw - crop + 1))
        else:
            h_off, w_off = (dh - crop) // 2, (dw - crop) // 2
    mv = list(mean_values) * c_n if len(mean_values) == 1 else list(mean_values)
    mean_flat = mean.reshape(-1) if mean is not None else None
    out = np.zeros(c_n * height * width, np.float32)
    s = np.float32(scale)
    for c in range(c_n):
        for h in range(height):
            for w in range(width):
                data_index = (c * dh + h_off + h) * dw + w_off + w
                top_index = (c * height + h) * width + ((width - 1 - w) if do_mirror else w)
                el = np.float32(flat[data_index])
                if mean_flat is not None:
                    out[top_index] = (el - np.float32(mean_flat[data_index])) * s
                elif mv:
                    out[top_index] = (el - np.float32(mv[c])) * s
                else:
                    out[top_index] = el * s
    return out.reshape(c_n, height, width)


@pytest.fixture(scope="module")
def record():
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (3, 9, 11), dtype=np.uint8)


@pytest.fixture(scope="module")
def mean():
    rng = np.random.default_rng(8)
    return rng.uniform(0, 255, (3, 9, 11)).astype(np.float32)


CASES = [
    ("identity", {}),
    ("scale", {"scale": 0.00390625}),
    ("one mean value for all channels", {"mean_values": (127.5,)}),
    ("mean value per channel, then scale", {"mean_values": (104.0, 117.0, 123.0), "scale": 0.017}),
    ("mean file", {"mean": True}),
    ("mean file, centre crop (odd margins)", {"mean": True, "crop": 6, "scale": 0.5}),
    ("crop without mean", {"crop": 5}),
    ("mirror is off in TEST", {"mirror": True, "crop": 4}),
]


@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_test_phase_matches_caffe(record, mean, name, kw):
    kw = dict(kw)
    m = mean if kw.pop("mean", False) else None
    t = Transformer(scale=kw.get("scale", 1.0), mirror=kw.get("mirror", False),
                    crop=(kw["crop"], kw["crop"]) if kw.get("crop") else None, mean=m,
                    mean_values=kw.get("mean_values", ()))
    ref = caffe_transform(record, mean=m, **kw)
    got = t(record)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(t.batch(np.stack([record, record]))[1], ref)


TRAIN_CASES = [
    ("random crop", {"crop": 5}),
    ("random crop + mean file at the same offset", {"crop": 6, "mean": True, "scale": 0.25}),
    ("mirror", {"mirror": True}),
    ("mirror + crop + mean values", {"mirror": True, "crop": 7, "mean_values": (10.0, 20.0, 30.0)}),
]


@pytest.mark.parametrize("name,kw", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_phase_matches_caffe_with_the_same_draws(record, mean, name, kw):
    kw = dict(kw)
    m = mean if kw.pop("mean", False) else None
    t = Transformer(scale=kw.get("scale", 1.0), mirror=kw.get("mirror", False),
                    crop=(kw["crop"], kw["crop"]) if kw.get("crop") else None, mean=m,
                    mean_values=kw.get("mean_values", ()), train=True)
    ours, theirs = np.random.default_rng(3), np.random.default_rng(3)
    batch = np.stack([record] * 6)
    got = t.batch(batch, ours)
    for i in range(6):
        np.testing.assert_array_equal(got[i], caffe_transform(record, mean=m, train=True, rng=theirs, **kw))
    # the draws actually vary from record to record
    assert len({got[i].tobytes() for i in range(6)}) > 1


def test_float_records(mean):
    x = np.random.default_rng(1).normal(size=(3, 9, 11)).astype(np.float32)
    t = Transformer(scale=2.0, crop=(4, 4), mean=mean)
    np.testing.assert_array_equal(t(x), caffe_transform(x, scale=2.0, crop=4, mean=mean))


def test_single_channel_record_with_one_mean_value():
    x = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    np.testing.assert_array_equal(Transformer(mean_values=(8.0,), scale=0.5)(x), (x.astype(np.float32) - 8) * 0.5)


def test_from_param_reads_the_mean_file(tmp_path, record, mean):
    write_binaryproto(tmp_path / "mean.binaryproto", mean[None])
    tp = caffe_pb2.TransformationParameter(mean_file="mean.binaryproto", crop_size=5, mirror=True, scale=0.5)
    t = Transformer.from_param(tp, "test", lambda p: str(tmp_path / p))
    assert t.crop == (5, 5) and not t.train and not t.random
    np.testing.assert_array_equal(t(record), caffe_transform(record, mean=mean, crop=5, scale=0.5))
    train = Transformer.from_param(tp, "train", lambda p: str(tmp_path / p))
    assert train.train and train.random
    np.testing.assert_array_equal(load_mean_file(tmp_path / "mean.binaryproto"), mean)


def test_errors(tmp_path, record, mean):
    tp = caffe_pb2.TransformationParameter(mean_file="m.binaryproto", mean_value=[1.0])
    with pytest.raises(NetError, match="cannot specify mean_file and mean_value at the same time"):
        Transformer.from_param(tp)
    with pytest.raises(NetError, match="mean_file and mean_value"):
        Transformer(mean=mean, mean_values=(1.0,))
    with pytest.raises(FormatError, match=r"record is 3x9x11 but the mean is 3x8x8"):
        Transformer(mean=np.zeros((3, 8, 8), np.float32))(record)
    with pytest.raises(NetError, match=r"2 mean_value.* for 3 channels"):
        Transformer(mean_values=(1.0, 2.0))(record)
    with pytest.raises(FormatError, match="smaller than the 10x10 crop"):
        Transformer(crop=(10, 10))(record)
    with pytest.raises(ValueError, match="seeded rng"):
        Transformer(crop=(4, 4), train=True)(record)
    with pytest.raises(FormatError, match="no such file"):
        Transformer.from_param(caffe_pb2.TransformationParameter(mean_file=str(tmp_path / "none.binaryproto")))
