"""Sharded LMDB sources: names and source lists, the round-robin order, strided reads, data layers
and the commands that read through them (test, featuremap-dump)."""

from __future__ import annotations

import itertools
import json

import lmdb
import numpy as np
import pytest
from click.testing import CliRunner

from dnntool.cli import cli
from dnntool.data.feeder import feeder_for_layer, resolve_source
from dnntool.data.sources import Interleave, LmdbSource
from dnntool.errors import FormatError, NeedsInputShape
from dnntool.io.caffemodel import save_caffemodel
from dnntool.io.prototxt import read_net
from dnntool.io.shards import shard_name, shard_sets, source_paths
from dnntool.net import Net
from tests.data.digits import (
    centroid_weights,
    classifier_net,
    digits,
    key,
    write_lmdb,
    write_shards,
)


@pytest.fixture(scope="module")
def dbs(tmp_path_factory):
    """11 digits as one LMDB and as 3 shards (sizes 4, 4, 3)."""
    d = tmp_path_factory.mktemp("shards")
    x, y = digits(11)
    write_lmdb(d / "db", x, y)
    write_shards(d / "db", x, y, 3)
    return d, x, y


def test_shard_names_and_source_lists():
    assert shard_name("out/train_lmdb", 2, 4) == "out/train_lmdb-00002-of-00004"
    assert shard_name("t/", 0, 100000) == "t-00000-of-100000"
    assert source_paths("a@2", lambda p: False) == ["a-00000-of-00002", "a-00001-of-00002"]
    assert source_paths(" a , b@1,c", lambda p: False) == ["a", "b-00000-of-00001", "c"]
    assert source_paths("plain_lmdb", lambda p: False) == ["plain_lmdb"]
    assert source_paths("odd,name@2", lambda p: p == "odd,name@2") == ["odd,name@2"]  # exists as written
    assert source_paths("x,me@2", lambda p: p == "me@2") == ["x", "me@2"]
    with pytest.raises(FormatError, match="an empty item in the list 'a,,b'"):
        source_paths("a,,b", lambda p: False)
    with pytest.raises(FormatError, match="'a@0': the shard count must be at least 1"):
        source_paths("a@0", lambda p: False)


@pytest.mark.parametrize("sizes", [[4, 4, 3], [3, 1, 0, 2], [5], [2, 2], [1, 3]])
def test_interleave_is_round_robin_skipping_finished_databases(sizes):
    order = Interleave(sizes)
    brute = [(s, r) for r in range(max(sizes)) for s, n in enumerate(sizes) if r < n]
    assert [order.locate(p) for p in range(2 * sum(sizes))] == brute + brute  # positions wrap


def test_shard_sets_beside_a_db(tmp_path):
    # Only directories named as shards of this DB that hold a data.mdb, grouped by count.
    for name in ("db-00000-of-00002", "db-00001-of-00002", "db-00000-of-00003", "db-00001-of-00003",
                 "dbx-00000-of-00002", "db-0-of-2", "db"):
        (tmp_path / name).mkdir()
        if name != "db-00001-of-00003":
            (tmp_path / name / "data.mdb").write_bytes(b"")
    assert shard_sets(tmp_path / "db") == {
        2: [str(tmp_path / "db-00000-of-00002"), str(tmp_path / "db-00001-of-00002")],
        3: [str(tmp_path / "db-00000-of-00003")]}
    assert shard_sets(tmp_path / "missing" / "db") == {}


def test_shards_read_round_robin_give_the_unsharded_order(dbs):
    d, x, _ = dbs
    one, spec = LmdbSource(d / "db"), LmdbSource(f"{d / 'db'}@3")
    assert len(spec) == len(one) == 11 and spec.path == f"{d / 'db'}@3"
    recs = list(spec.records())
    assert [r.key for r in recs] == [r.key for r in one.records()] == [key(i) for i in range(11)]
    np.testing.assert_array_equal(np.stack([r.data for r in recs]), x)
    chunks = spec.chunks(4)
    got = [next(chunks) for _ in range(3)]  # the feeder's grouped reads wrap the same way
    assert [k for keys, _, _ in got for k in keys] == [key(i % 11) for i in range(12)]
    np.testing.assert_array_equal(np.concatenate([data for _, data, _ in got]), x[np.arange(12) % 11])
    listed = LmdbSource(",".join(str(d / f"db-{i:05d}-of-00003") for i in range(3)))
    assert [r.key for r in listed.records()] == [key(i) for i in range(11)]
    for src in (one, spec, listed):
        src.close()


def test_sources_of_one_path_share_it(dbs):
    """LMDB opens a path once per process: a TRAIN and a TEST net, or the ranks of a run, share it."""
    import dnntool.io.datadb as datadb

    d, _, _ = dbs
    first, again = LmdbSource(d / "db"), LmdbSource(f"{d / 'db'},{d / 'db'}")
    assert [r.key for r in again.records()] == [key(i // 2) for i in range(22)]
    assert first.envs[0] is again.envs[0] is again.envs[1]
    env = first.envs[0]
    first.close()
    assert next(again.records()).key == key(0)  # still open for the other reader
    again.close()
    assert all(entry[0] is not env for entry in datadb._SHARED.values())
    with pytest.raises(lmdb.Error, match="closed"):  # closed with the last reader
        env.stat()


@pytest.mark.parametrize("jobs", [1, 2])
def test_other_readers_of_an_open_path(dbs, jobs, monkeypatch):
    # While a stream reads a DB, the tools that size a net or average the DB in the same process
    # use its environment (py-lmdb refuses a second open, in forked children too: with ranges of
    # 2 records, a child averages some of them through the map it inherited).
    from dnntool.io.datadb import first_datum, lmdb_entries
    from dnntool.tools import image_mean
    from dnntool.tools.image_mean import compute_image_mean

    monkeypatch.setattr(image_mean, "MIN_TASK", 2)
    d, x, _ = dbs
    stream = LmdbSource(d / "db")
    try:
        records = stream.records()
        assert next(records).key == key(0)
        assert lmdb_entries(d / "db") == 11 and first_datum(d / "db").channels == x.shape[1]
        r = compute_image_mean([d / "db"], jobs=jobs)
        np.testing.assert_allclose(r.mean, x.astype(np.float64).mean(axis=0), rtol=0, atol=1e-9)
        assert next(records).key == key(1)  # the stream reads on
    finally:
        stream.close()


@pytest.mark.parametrize("src_name", ["db", "db@3"])
def test_strided_reads_match_the_positions_and_skip_without_decoding(dbs, src_name, monkeypatch):
    d, _, _ = dbs
    src = LmdbSource(f"{d / src_name}")
    got = [r.key for r in itertools.islice(src.records(cycle=True, start=13, stride=4), 8)]
    assert got == [key((13 + 4 * t) % 11) for t in range(8)]
    import dnntool.data.sources as sources

    decoded = []
    real = sources.datum_array
    monkeypatch.setattr(sources, "datum_array", lambda v, k, *a: decoded.append(k) or real(v, k, *a))
    list(itertools.islice(src.records(cycle=True, start=1, stride=5), 3))
    assert decoded == [key(1), key(6), key(0)]  # only the records asked for are parsed
    src.close()


def test_a_rank_per_shard_reads_only_its_shard(tmp_path):
    x, y = digits(12)
    paths = write_shards(tmp_path / "db", x, y, 3)
    src = LmdbSource(f"{tmp_path / 'db'}@3")
    for rank in range(3):
        items = list(itertools.islice(src.items(start=rank, stride=3), 10))  # wraps around twice
        assert {p for _, _, p in items} == {paths[rank]}
        assert [k.decode() for k, _, _ in items] == [key((rank + 3 * t) % 12) for t in range(10)]
    src.close()


def test_missing_or_empty_shards(tmp_path):
    x, y = digits(4)
    paths = write_shards(tmp_path / "db", x, y, 2)
    with pytest.raises(FormatError) as e:
        LmdbSource(f"{tmp_path / 'db'}@3")
    assert str(e.value) == f"{tmp_path / 'db'}-00000-of-00003: no such LMDB (database 1 of the 3 of the source)"
    (tmp_path / "folder").mkdir()
    with pytest.raises(FormatError, match=r"folder: not an LMDB \(.*; database 2 of the 2 of the source\)$"):
        LmdbSource([paths[0], str(tmp_path / "folder")])
    for name in ("empty", "empty2"):
        lmdb.open(str(tmp_path / name), map_size=1 << 20).close()
    src = LmdbSource([str(tmp_path / "empty"), *paths])  # an empty shard has just run out
    assert [r.key for r in src.records()] == [key(0), key(1), key(2), key(3)]
    src.close()
    with pytest.raises(FormatError, match="every database of the source is empty"):
        LmdbSource([str(tmp_path / "empty"), str(tmp_path / "empty2")])


def test_a_data_layer_reads_shards_next_to_its_prototxt(dbs, tmp_path, monkeypatch):
    d, x, _ = dbs
    net_file = d / "net.prototxt"
    monkeypatch.chdir(tmp_path)  # the sources resolve beside the prototxt
    for source in ("db@3", "db-00000-of-00003,db-00001-of-00003 , db-00002-of-00003", "db"):
        net_file.write_text(classifier_net(source, batch=4))
        net = Net.from_prototxt(net_file, "test")
        assert net.layers[0].top_shapes[0] == (4, 1, 8, 8)  # shape from the first shard's first record
        assert resolve_source(source, str(net_file))[0] == str(d / ("db" if source == "db" else "db-00000-of-00003"))
        with feeder_for_layer(net.layers[0], net.source) as f:
            batches = [f.next() for _ in range(3)]
        assert [k for b in batches for k in b.keys] == [key(i % 11) for i in range(12)]
        np.testing.assert_array_equal(np.concatenate([b.data for b in batches]),
                                      x[np.arange(12) % 11].astype(np.float32) * np.float32(0.0625))


def test_a_missing_shard_is_named(dbs, tmp_path):
    d, _, _ = dbs
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(classifier_net(f"{d / 'db'}@4", batch=4))
    with pytest.raises(NeedsInputShape, match=r"'.*db-00000-of-00004' of source '.*db@4' does not exist"):
        Net.from_prototxt(net_file, "test")
    net = Net.from_prototxt(net_file, "test", input_shapes={"data": (4, 1, 8, 8)})
    with pytest.raises(FormatError, match=r"layer 'digits' \(Data\) source '.*db@4': .*db-00000-of-00004: no such"):
        feeder_for_layer(net.layers[0], net.source)


def test_dnntool_test_and_featuremap_dump_read_shards(dbs, tmp_path):
    d, _, _ = dbs
    w = centroid_weights(*digits(300))
    outputs = {}
    for name in ("db", "db@3"):
        net_file = tmp_path / f"{name}.prototxt"
        net_file.write_text(classifier_net(str(d / name), batch=4))
        save_caffemodel(tmp_path / "w.caffemodel", list(read_net(net_file).param.layer), {"ip": w})
        res = CliRunner().invoke(cli, ["test", "--model", str(net_file), "--weights", str(tmp_path / "w.caffemodel"),
                                       "--iterations", "5", "--device", "cpu", "--json"])
        assert res.exit_code == 0, res.output
        outputs[name] = {k: v for k, v in json.loads(res.output).items()
                         if k not in ("model", "seconds", "images_per_s")}
        res = CliRunner().invoke(cli, ["featuremap-dump", "--model", str(net_file), "--weights",
                                       str(tmp_path / "w.caffemodel"), "--db", str(d / name), "--blobs", "ip",
                                       "--db-format", "npy", "--out", str(tmp_path / f"out_{name}")])
        assert res.exit_code == 0, res.output
    assert outputs["db"] == outputs["db@3"]
    a, b = (sorted(p.relative_to(tmp_path / f"out_{n}") for p in (tmp_path / f"out_{n}").rglob("*.npy"))
            for n in ("db", "db@3"))
    assert a == b and a
    for rel in a:
        np.testing.assert_array_equal(np.load(tmp_path / "out_db" / rel), np.load(tmp_path / "out_db@3" / rel))
