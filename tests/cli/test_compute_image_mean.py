"""``dnntool compute-image-mean`` through the CLI: mean_value lines, --json, --npy, several DBs, errors,
the progress bar."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dnntool.cli import cli
from dnntool.io.blob import read_binaryproto
from dnntool.io.datadb import LmdbWriter
from dnntool.proto import caffe_pb2
from tests.sample_images import read_db, write_crops, write_list


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def dbs(tmp_path_factory) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """Two raw DBs of 3 x 12 x 16 photo crops and their pixels (N x C x H x W, float64)."""
    tmp = tmp_path_factory.mktemp("mean")
    items = write_crops(tmp / "im", 9, 12, 16)
    out = []
    for name, part in (("a", items[:5]), ("b", items[5:])):
        res = run("convert-images", tmp / "im", write_list(tmp / f"{name}.txt", part), tmp / name)
        assert res.exit_code == 0, res.output
        px = [np.frombuffer(caffe_pb2.Datum.FromString(v).data, np.uint8).reshape(3, 12, 16)
              for _, v in read_db(tmp / name)]
        out.append(np.stack(px).astype(np.float64))
    return tmp / "a", tmp / "b", out[0], out[1]


def test_text_output_is_prototxt_ready(tmp_path, dbs):
    a, _, x, _ = dbs
    res = run("compute-image-mean", a, tmp_path / "mean.binaryproto")
    assert res.exit_code == 0, res.output
    means = x.mean(axis=(0, 2, 3))
    std = x.transpose(1, 0, 2, 3).reshape(3, -1).std(axis=1)
    assert res.stdout == (
        f"# 5 records, 3x12x16, from {a}; mean image written to {tmp_path / 'mean.binaryproto'}\n"
        + "".join(f"mean_value: {v:.4f}\n" for v in means)
        + f"# std per channel: {' '.join(f'{v:.4f}' for v in std)}\n"
    )
    mean = read_binaryproto(tmp_path / "mean.binaryproto")
    assert mean.shape == (1, 3, 12, 16) and np.allclose(mean[0], x.mean(axis=0), rtol=1e-6, atol=0)


def test_json_npy_and_several_dbs(tmp_path, dbs):
    a, b, xa, xb = dbs
    x = np.concatenate([xa, xb])
    res = run("compute-image-mean", a, b, tmp_path / "m.binaryproto", "--npy", tmp_path / "m.npy",
              "--format", "json", "-j", 2)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert (data["count"], data["channels"], data["height"], data["width"]) == (9, 3, 12, 16)
    assert data["dbs"] == [str(a), str(b)] and data["binaryproto"] == str(tmp_path / "m.binaryproto")
    assert np.allclose(data["mean_value"], x.mean(axis=(0, 2, 3)), rtol=0, atol=1e-9)
    assert np.allclose(data["std"], x.transpose(1, 0, 2, 3).reshape(3, -1).std(axis=1), rtol=0, atol=1e-9)
    npy = np.load(tmp_path / "m.npy")
    assert npy.dtype == np.float64 and np.allclose(npy, x.mean(axis=0), rtol=0, atol=1e-9)
    assert json.loads(run("compute-image-mean", a, b, "--json").stdout)["count"] == 9
    # without an output file: two DBs are both inputs
    res = run("compute-image-mean", a, b, "--backend=lmdb", "-q")
    assert res.exit_code == 0 and res.output == ""


def test_errors(tmp_path, dbs):
    a, *_ = dbs
    res = run("compute-image-mean", tmp_path / "none")
    assert res.exit_code == 1
    assert res.output == f"Error: {tmp_path / 'none'}: no such LMDB (expected a directory holding data.mdb)\n"
    LmdbWriter(tmp_path / "empty").close()
    res = run("compute-image-mean", a, tmp_path / "empty")
    assert res.exit_code == 1
    assert res.output == f"Error: {tmp_path / 'empty'}: database is empty (no records to average)\n"
    w = LmdbWriter(tmp_path / "odd")
    w.put(b"00000000_x.jpg", caffe_pb2.Datum(channels=3, height=12, width=15, data=bytes(540)).SerializeToString())
    w.close()
    res = run("compute-image-mean", a, tmp_path / "odd", tmp_path / "m.binaryproto")
    assert res.exit_code == 1 and res.output == (
        f"Error: {tmp_path / 'odd'}: record '00000000_x.jpg' is 3x12x15 but the first record"
        " '00000000_img 000.png' is 3x12x16; every record must have one size (convert with"
        " --resize-height/--resize-width)\n")
    assert not (tmp_path / "m.binaryproto").exists()
    assert run("compute-image-mean").exit_code == 2


@pytest.mark.parametrize("jobs", [1, 2])
def test_progress_bar_counts_every_record(tmp_path, monkeypatch, jobs):
    # The bar the command draws on a terminal: records done out of all (the whole team's count
    # with --jobs 2, drawn by this process), rising to the total, with a rate.
    from dnntool.cli._progress import progress_bar
    from dnntool.tools import image_mean
    from dnntool.tools.image_mean import compute_image_mean

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(image_mean, "MEAN_CHUNK", 16)
    monkeypatch.setattr(image_mean, "MIN_TASK", 16)
    w = LmdbWriter(tmp_path / "db")
    for i in range(300):
        w.put(f"{i:08d}".encode(), caffe_pb2.Datum(channels=1, height=2, width=3, label=0,
                                                   data=bytes([i % 256] * 6)).SerializeToString())
    w.close()
    calls = []
    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    with progress_bar("averaging", unit="rec") as bar:
        def progress(done, total):
            calls.append((done, total))
            bar(done, total)

        result = compute_image_mean([tmp_path / "db"], jobs=jobs, progress=progress)
    assert result.count == 300 and calls[-1] == (300, 300) and len(calls) > 2
    assert all(t == 300 and 0 < d <= 300 for d, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    out = err.getvalue()
    assert "averaging" in out and "300/300" in out and "rec/s" in out
