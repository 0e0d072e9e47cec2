"""``dnntool convert-images`` through the CLI: output, --json, Caffe's flag spellings, errors, interrupts."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dnntool.cli import cli
from dnntool.cli._progress import progress_bar
from dnntool.proto import caffe_pb2
from tests.sample_images import digits_by_class, read_db, write_crops, write_list


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture()
def images(tmp_path) -> tuple[Path, Path]:
    items = write_crops(tmp_path / "im", 6, 24, 32)
    return tmp_path / "im", write_list(tmp_path / "list.txt", [*items[:3], ("gone.png", 1), *items[3:]])


def test_convert_text_summary(tmp_path, images):
    root, listfile = images
    res = run("convert-images", root, listfile, tmp_path / "db", "--resize-height", 16, "--resize-width", 20)
    assert res.exit_code == 0, res.output
    assert res.stderr == f"{listfile}:4: skipped '{root / 'gone.png'}': no such file\n"
    lines = res.stdout.splitlines()
    assert lines[0] == f"wrote {tmp_path / 'db'}: 6 records (3x16x20, raw)"
    assert re.fullmatch(r"7 images in [\d.]+ s \([\d,]+ images/s\); skipped 1: 1 missing", lines[1])
    assert len(read_db(tmp_path / "db")) == 6


def test_convert_json_and_quiet(tmp_path, images):
    root, listfile = images
    res = run("convert-images", root, listfile, tmp_path / "db", "--json", "--encoded", "-j", 2)
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert data["dbs"] == [{"path": str(tmp_path / "db"), "written": 6, "shape": [3, 24, 32]}]
    assert (data["listed"], data["written"], data["skipped"], data["encoded"]) == (7, 6, 1, True)
    assert data["skipped_by_reason"] == {"missing": 1}
    assert data["skipped_images"] == [{"path": "gone.png", "file": str(root / "gone.png"),
                                       "where": f"{listfile}:4", "reason": "missing",
                                       "detail": "no such file"}]
    res = run("convert-images", root, listfile, tmp_path / "db2", "--quiet")
    assert res.exit_code == 0 and res.output == ""


def test_caffe_underscore_and_gflags_spellings(tmp_path, images):
    root, listfile = images
    res = run("convert-images", root, listfile, tmp_path / "db", "--resize_height=10", "--resize_width=12",
              "--shuffle=true", "--seed=3", "--encode_type=png", "--check_size", "--backend=lmdb", "--gray=false")
    assert res.exit_code == 0, res.output
    d = caffe_pb2.Datum.FromString(read_db(tmp_path / "db")[0][1])
    assert (d.channels, d.height, d.width, d.encoded) == (3, 10, 12, True)
    keys = [k.decode().split("_", 1)[1] for k, _ in read_db(tmp_path / "db")]
    assert keys != sorted(keys)  # shuffled
    res = run("convert-images", root, listfile, tmp_path / "db2", "--shuffle=false", "--gray=1")
    keys = [k.decode().split("_", 1)[1] for k, _ in read_db(tmp_path / "db2")]
    assert res.exit_code == 0 and keys == sorted(keys)
    assert caffe_pb2.Datum.FromString(read_db(tmp_path / "db2")[0][1]).channels == 1


def test_shards_summary_json_and_pieces(tmp_path, images):
    root, listfile = images
    res = run("convert-images", root, listfile, tmp_path / "db", "--shards", 3)  # shard 0: positions 0, 3 (missing), 6
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[:3] == [f"wrote {tmp_path / f'db-0000{i}-of-00003'}: 2 records (3x24x32, raw)" for i in range(3)]
    res = run("convert-images", root, listfile, tmp_path / "p", "--shard=2/3", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["dbs"] == [{"path": str(tmp_path / "p-00002-of-00003"), "written": 2, "shape": [3, 24, 32],
                            "shard": 2, "shards": 3}]
    assert (data["listed"], data["written"]) == (2, 2)  # list positions 2 and 5
    assert read_db(tmp_path / "p-00002-of-00003") == read_db(tmp_path / "db-00002-of-00003")
    res = run("convert-images", root, listfile, tmp_path / "q", "--shard", "1/3", "--shards", 3, "-q")
    assert res.exit_code == 0 and res.output == ""


@pytest.mark.parametrize(("args", "message"), [
    (["a", "b"], "Error: expected ROOT LISTFILE DB, got 2 argument(s)"),
    (["--from-folders", "a", "b", "c"], "Error: expected ROOT DB (with --from-folders), got 3 argument(s)"),
    (["a", "b", "c", "--resize-height", "5"],
     "Error: --resize-height and --resize-width go together (both 0 keeps the size)"),
    (["a", "b", "c", "--backend", "leveldb"], "Error: Invalid value for '--backend': 'leveldb' is not 'lmdb'."),
    (["a", "b", "c", "--resize_width=-3"], "Error: Invalid value for '--resize-width': -3 is not in the range x>=0."),
    (["a", "b", "c", "--shards", "0"], "Error: Invalid value for '--shards': 0 is not in the range x>=1."),
    (["a", "b", "c", "--shard", "4/4"], "Error: Invalid value for '--shard': '4/4': expected I/K with 0 <= I < K"
     " (e.g. 0/4)"),
    (["a", "b", "c", "--shard", "x"], "Error: Invalid value for '--shard': 'x': expected I/K with 0 <= I < K"
     " (e.g. 0/4)"),
    (["a", "b", "c", "--shard", "1/4", "--shards", "2"], "Error: --shard 1/4 and --shards 2 disagree on K"),
])
def test_usage_errors_exit_2(args, message):
    res = run("convert-images", *args)
    assert res.exit_code == 2 and res.output.strip().splitlines()[-1] == message


def test_errors_exit_1_with_one_line(tmp_path, images):
    root, listfile = images
    assert run("convert-images", root, listfile, tmp_path / "db").exit_code == 0
    res = run("convert-images", root, listfile, tmp_path / "db", "-q")
    assert res.exit_code == 1
    assert res.output == f"Error: {tmp_path / 'db'}: already exists (use --overwrite to replace it)\n"
    res = run("convert-images", root, listfile, tmp_path / "db3", "--strict")
    assert res.exit_code == 1
    assert res.output.splitlines()[-1] == f"Error: {listfile}:4: '{root / 'gone.png'}': no such file (--strict)"
    (tmp_path / "bad.txt").write_text("img 000.png 1\nimg 001.png one\n")
    res = run("convert-images", root, tmp_path / "bad.txt", tmp_path / "db4")
    assert res.exit_code == 1
    assert res.output == f"Error: {tmp_path / 'bad.txt'}:2: label 'one' is not an integer (expected 'PATH LABEL')\n"
    res = run("convert-images", root, tmp_path / "nolist.txt", tmp_path / "db5")
    assert res.exit_code == 1 and res.output == f"Error: {tmp_path / 'nolist.txt'}: no such list file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "db", "im", "list.txt"]


def test_from_folders_cli(tmp_path):
    digits_by_class(tmp_path / "digits", per_class=5)
    res = run("convert-images", "--from-folders", tmp_path / "digits", tmp_path / "out" / "train",
              "--val-split", "0.2", "--gray")
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[:3] == [
        f"wrote {tmp_path / 'out' / 'train'}: 40 records (1x8x8, raw)",
        f"wrote {tmp_path / 'out' / 'train_val'}: 10 records (1x8x8, raw)",
        f"wrote {tmp_path / 'out' / 'labels.txt'}: 10 classes",
    ]
    assert (tmp_path / "out" / "labels.txt").read_text().split() == [str(i) for i in range(10)]


def test_progress_bar_on_a_terminal(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    with progress_bar("converting", unit="img") as bar:
        for i in range(1, 6):
            bar(i, 5)
        bar.log("a warning")
    out = err.getvalue()
    assert "converting" in out and "5/5" in out and "img/s" in out and "a warning" in out
    with progress_bar("converting", quiet=True) as bar:  # quiet: no bar, no warnings
        bar(1, 1)
        bar.log("hidden")
    assert "hidden" not in err.getvalue()


# ---------------------------------------------------------------------------------------------
# interrupts: a real process, killed mid-run
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_job(tmp_path_factory) -> list[str]:
    """A conversion that runs for a few seconds: 160 crops re-encoded as 640x640 PNGs, one process."""
    tmp = tmp_path_factory.mktemp("slow")
    items = write_crops(tmp / "im", 160, 24, 32, ".jpg")
    listfile = write_list(tmp / "list.txt", items)
    return [sys.executable, "-m", "dnntool", "convert-images", str(tmp / "im"), str(listfile),
            "--resize-height", "640", "--resize-width", "640", "--encode-type", "png", "-q", "--jobs", "1"]


def start_and_wait_for_writer(cmd: list[str], db: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(db.parent.glob(f"{db.name}.tmp-*/data.mdb")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    time.sleep(0.3)
    assert proc.poll() is None, "the conversion finished before it could be interrupted"
    return proc


def test_kill_9_leaves_no_db_and_rerun_succeeds(tmp_path, slow_job):
    db = tmp_path / "db"
    proc = start_and_wait_for_writer([*slow_job, str(db)], db)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not db.exists()
    assert [p.name for p in tmp_path.iterdir()] == [f"db.tmp-{proc.pid}"]  # what kill -9 leaves
    done = subprocess.run([*slow_job, str(db)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["db"] and len(read_db(db)) == 160


def test_kill_9_during_overwrite_keeps_the_previous_db(tmp_path, slow_job):
    db = tmp_path / "db"
    items = write_crops(tmp_path / "few", 2)
    assert run("convert-images", tmp_path / "few", write_list(tmp_path / "l.txt", items), db).exit_code == 0
    before = (db / "data.mdb").read_bytes()
    proc = start_and_wait_for_writer([*slow_job, str(db), "--overwrite"], db)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (db / "data.mdb").read_bytes() == before


def test_ctrl_c_cleans_up_and_exits_130(tmp_path, slow_job):
    db = tmp_path / "db"
    proc = start_and_wait_for_writer([*slow_job[:-2], "--jobs", "2", str(db)], db)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.decode().strip().splitlines()[-1] == "Interrupted."
    assert list(tmp_path.iterdir()) == []
