"""Data for training: in-memory arrays, DummyData fillers, HDF5Data files, resumable positions."""

from __future__ import annotations

import importlib.util

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


# -- data-parallel ranks: rank r of world n ----------------------------------------------------------
def data_net(layer: str) -> Net:
    return build(layer + "\n" + SINK % 'bottom: "data" bottom: "label"')


def ranked(net: Net, world: int, batches: int, start: int = 0, **kw) -> list[list[dict]]:
    """``batches`` batches of every rank (rank-major), the ranks' streams open at the same time."""
    streams = [net_data(net, "train", 5, start=start, rank=rank, world=world, **kw) for rank in range(world)]
    try:
        return [[d.next() for _ in range(batches)] for d in streams]
    finally:
        for d in streams:
            d.close()


def single(net: Net, batches: int, **kw) -> list[dict]:
    with net_data(net, "train", 5, **kw) as d:
        return [d.next() for _ in range(batches)]


def interleaved(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty((len(a) + len(b), *a.shape[1:]), a.dtype)
    out[0::2], out[1::2] = a, b
    return out


def check_record_striding(net: Net, batches: int = 4) -> None:
    """Rank 0 and rank 1 batch k together hold single-process batches 2k and 2k + 1 (what iter_size 2
    reads), record by record: rank r has positions r, r + 2, ...; and resuming at batch k of a rank
    gives that rank's batch k."""
    one = single(net, 2 * batches)
    ranks = ranked(net, 2, batches)
    for k in range(batches):
        for top in ("data", "label"):
            both = np.concatenate([one[2 * k][top], one[2 * k + 1][top]])
            np.testing.assert_array_equal(interleaved(ranks[0][k][top], ranks[1][k][top]), both)
    for rank in range(2):
        resumed = ranked(net, 2, 1, start=batches - 1, prefetch=0)[rank][0]
        for top in ("data", "label"):
            np.testing.assert_array_equal(resumed[top], ranks[rank][batches - 1][top])


def test_ranks_stride_an_lmdb_record_by_record(tmp_path):
    db = write_lmdb(tmp_path / "db", 10)  # 10 records, batch 3: the ranks wrap at different points
    check_record_striding(data_net(f'layer {{ name: "d" type: "Data" top: "data" top: "label"'
                                   f' data_param {{ source: "{db}" batch_size: 3 }} }}'))


def test_ranks_stride_a_sharded_source_and_a_rank_per_shard_reads_one_shard(tmp_path):
    from tests.data.digits import write_shards

    x = np.random.default_rng(0).integers(0, 255, (12, 1, 4, 4), dtype=np.uint8)
    y = np.arange(12) % 5
    write_shards(tmp_path / "db", x, y, 2)
    net = data_net(f'layer {{ name: "d" type: "Data" top: "data" top: "label"'
                   f' data_param {{ source: "{tmp_path / "db"}@2" batch_size: 4 }} }}')
    check_record_striding(net)
    one = single(net, 4)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in one]), y[np.arange(16) % 12])
    for rank, b in enumerate(ranked(net, 2, 3)):  # rank r: records r, r + 2, ...: all of shard r
        assert np.concatenate([bb["label"] for bb in b]).tolist() == y[rank::2].tolist() * 2


@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_stride_an_image_list(tmp_path, shuffle):
    import cv2

    lines = []
    for i in range(7):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((3, 3), i * 30, np.uint8))
        lines.append(f"{i}.png {i}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    check_record_striding(data_net(
        f'layer {{ name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{'
        f' source: "{tmp_path / "list.txt"}" root_folder: "{tmp_path}/" batch_size: 3'
        f' shuffle: {"true" if shuffle else "false"} is_color: false }} }}'), batches=5)


def test_arrays_dummy_data_and_hdf5_stride_by_batch(tmp_path):
    """Rank r batch k is single-process batch k world + r; resuming at k gives it too."""
    mem = data_net('layer { name: "m" type: "MemoryData" top: "data" top: "label" memory_data_param {'
                   ' batch_size: 2 channels: 1 height: 1 width: 2 } }')
    x = np.arange(7 * 2, dtype=np.float32).reshape(7, 1, 1, 2)
    y = np.arange(7, dtype=np.float32)
    calls: list[int] = []
    feeds = [{"data": x, "label": y},
             {"data": lambda k: calls.append(k) or np.full((2, 1, 1, 2), k, np.float32), "label": y}]
    dummy = data_net('layer { name: "d" type: "DummyData" top: "data" top: "label" dummy_data_param {'
                     ' shape { dim: 2 dim: 3 } shape { dim: 2 } data_filler { type: "gaussian" } } }')
    cases = [(mem, {"data": f}) for f in feeds] + [(dummy, {})]
    if importlib.util.find_spec("h5py") is not None:
        import h5py

        with h5py.File(tmp_path / "a.h5", "w") as f:
            f["data"], f["label"] = np.arange(5 * 2, dtype=np.float32).reshape(5, 2), np.arange(5, dtype=np.float32)
        (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.h5'}\n")
        cases.append((data_net(f'layer {{ name: "h" type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{'
                               f' source: "{tmp_path / "list.txt"}" batch_size: 2 }} }}'), {}))
    for net, kw in cases:
        data = kw["data"] if kw else None
        one = single(net, 9, data=data)
        ranks = ranked(net, 3, 3, data=data)
        for rank in range(3):
            for k in range(3):
                for top in ("data", "label"):
                    np.testing.assert_array_equal(ranks[rank][k][top], one[3 * k + rank][top])
            resumed = ranked(net, 3, 1, start=2, data=data)[rank][0]
            np.testing.assert_array_equal(resumed["data"], one[6 + rank]["data"])
    assert sorted(set(calls)) == list(range(9))


def test_rank_outside_the_world_is_an_error():
    from dnntool.errors import NetError

    net = data_net('layer { name: "d" type: "DummyData" top: "data" top: "label" dummy_data_param {'
                   ' shape { dim: 2 } } }')
    for rank, world in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(NetError, match=f"rank {rank} of world {world}"):
            net_data(net, "train", 0, rank=rank, world=world)
