"""convert_images / compute_image_mean as a library, checked against OpenCV and numpy directly.

Images are real photos and digits shipped by scikit-learn (tests/sample_images.py); the oracle
for every pixel is ``cv2.imread`` (+ ``cv2.resize``) and numpy, never our own reader.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from dnntool.errors import FormatError, UsageError
from dnntool.io.datadb import LmdbWriter, StagedDb, datum_view, key_splits, open_lmdb
from dnntool.proto import caffe_pb2
from dnntool.tools.image_mean import compute_image_mean, write_mean
from dnntool.tools.images import (
    ConvertOptions,
    ListEntry,
    convert_images,
    image_datum,
    read_list,
    resize_image,
    shuffled,
    stratified_split,
)
from tests.sample_images import digits_by_class, read_db, write_crops, write_list


def datums(db: Path) -> list[tuple[str, caffe_pb2.Datum]]:
    out = []
    for k, v in read_db(db):
        d = caffe_pb2.Datum()
        d.ParseFromString(v)
        out.append((k.decode(), d))
    return out


def chw(img: np.ndarray) -> np.ndarray:
    return img[None] if img.ndim == 2 else img.transpose(2, 0, 1)


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory) -> tuple[Path, Path, list[tuple[str, int]]]:
    """12 PNG and 12 JPEG crops of 24 x 32, listed with a missing file in the middle."""
    root = tmp_path_factory.mktemp("photos")
    items = write_crops(root, 12, 24, 32, ".png") + write_crops(root / "jpg", 12, 24, 32, ".jpg", seed=1)
    items = [(n if n.endswith(".png") else f"jpg/{n}", lbl) for n, lbl in items]
    return root, write_list(root / "list.txt", items), items


# ---------------------------------------------------------------------------------------------
# list files, shuffle, split
# ---------------------------------------------------------------------------------------------


def test_read_list_paths_with_spaces_tabs_crlf(tmp_path):
    f = tmp_path / "list.txt"
    f.write_bytes(b"a b/c d.jpg 3\r\n\r\nplain.png\t-2\n  lead.jpg 7  \n")
    assert read_list(f) == [ListEntry("a b/c d.jpg", 3, 1), ListEntry("plain.png", -2, 3),
                            ListEntry("  lead.jpg", 7, 4)]


@pytest.mark.parametrize(("text", "message"), [
    ("ok.jpg 1\nnolabel.jpg\n", "list.txt:2: expected 'PATH LABEL', got 'nolabel.jpg'"),
    ("ok.jpg 1\n\nx.jpg cat\n", "list.txt:3: label 'cat' is not an integer (expected 'PATH LABEL')"),
    ("x.jpg 99999999999\n", "list.txt:1: label 99999999999 does not fit Datum's int32"),
])
def test_read_list_malformed_line_names_its_number(tmp_path, text, message):
    (tmp_path / "list.txt").write_text(text)
    with pytest.raises(FormatError) as e:
        read_list(tmp_path / "list.txt")
    assert str(e.value) == f"{tmp_path / 'list.txt'}:{message.split(':', 1)[1]}"


def test_shuffle_is_seeded_and_stable():
    import random

    items = list(range(20))
    a, b = shuffled(items, random.Random(5)), shuffled(items, random.Random(5))
    assert a == b and sorted(a) == items and a != items
    assert shuffled(items, random.Random(6)) != a
    # Fisher-Yates on random.random(), whose sequence Python guarantees per seed: pin it.
    assert shuffled(list(range(6)), random.Random(0)) == [2, 4, 0, 1, 3, 5]


def test_stratified_split_per_label():
    entries = [ListEntry(f"{c}/{i}.png", c) for c in range(3) for i in range(10 + 5 * c)]
    train, val = stratified_split(entries, 0.2, seed=1)
    assert {e.label: sum(1 for v in val if v.label == e.label) for e in entries} == {0: 2, 1: 3, 2: 4}
    assert sorted(train + val, key=entries.index) == entries and not set(train) & set(val)
    assert stratified_split(entries, 0.2, seed=1) == (train, val)
    assert stratified_split([ListEntry("one.png", 0)], 0.5, seed=0) == ([ListEntry("one.png", 0)], [])


def test_options_are_checked():
    with pytest.raises(UsageError, match="go together"):
        ConvertOptions(resize_height=10)
    with pytest.raises(UsageError, match="resize-mode"):
        ConvertOptions(resize_mode="stretch")
    with pytest.raises(UsageError, match="--shard 4/4: expected I/K with 0 <= I < K"):
        ConvertOptions(shards=4, shard=4)
    with pytest.raises(UsageError, match="--shard 0/0"):
        ConvertOptions(shard=0)


# ---------------------------------------------------------------------------------------------
# round trips: every pixel equals OpenCV's
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resize", [(0, 0), (20, 28)])
def test_raw_round_trip_is_exact(tmp_path, photos_dir, resize):
    root, listfile, items = photos_dir
    h, w = resize
    summary = convert_images(root, listfile, tmp_path / "db", ConvertOptions(resize_height=h, resize_width=w))
    assert summary.written == len(items) and not summary.skipped
    records = datums(tmp_path / "db")
    assert [k for k, _ in records] == [f"{i:08d}_{name}" for i, (name, _) in enumerate(items)]
    for (name, label), (_, d) in zip(items, records, strict=True):
        img = cv2.imread(str(root / name), cv2.IMREAD_COLOR)
        if h:
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        assert (d.channels, d.height, d.width, d.label, d.encoded) == (3, *img.shape[:2], label, False)
        assert d.data == chw(img).tobytes()


def test_gray_and_digits_round_trip(tmp_path):
    classes = digits_by_class(tmp_path / "digits", per_class=3)
    items = [(n, int(n.split("/")[0])) for names in classes.values() for n in names]
    listfile = write_list(tmp_path / "list.txt", items)
    convert_images(tmp_path / "digits", listfile, tmp_path / "gray", ConvertOptions(gray=True))
    convert_images(tmp_path / "digits", listfile, tmp_path / "color", ConvertOptions())
    for (name, label), (_, g), (_, c) in zip(items, datums(tmp_path / "gray"), datums(tmp_path / "color"),
                                             strict=True):
        img = cv2.imread(str(tmp_path / "digits" / name), cv2.IMREAD_GRAYSCALE)
        assert (g.channels, g.height, g.width, g.label) == (1, 8, 8, label)
        assert g.data == img.tobytes()
        assert c.channels == 3 and c.data == chw(cv2.imread(str(tmp_path / "digits" / name))).tobytes()


def test_encoded_keeps_file_bytes_and_sets_dims(tmp_path, photos_dir):
    root, listfile, items = photos_dir
    convert_images(root, listfile, tmp_path / "enc", ConvertOptions(encoded=True))
    for (name, label), (_, d) in zip(items, datums(tmp_path / "enc"), strict=True):
        assert d.encoded and d.label == label
        assert d.data == (root / name).read_bytes()  # Caffe's ReadFileToDatum: no re-encoding
        assert (d.channels, d.height, d.width) == (3, 24, 32)  # Caffe leaves these 0


def test_encoded_resized_png_decodes_to_the_resized_pixels(tmp_path, photos_dir):
    root, listfile, items = photos_dir
    convert_images(root, listfile, tmp_path / "enc",
                   ConvertOptions(encode_type="png", resize_height=16, resize_width=20))
    for (name, _), (_, d) in zip(items, datums(tmp_path / "enc"), strict=True):
        want = cv2.resize(cv2.imread(str(root / name)), (20, 16), interpolation=cv2.INTER_LINEAR)
        got = cv2.imdecode(np.frombuffer(d.data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert d.encoded and (d.channels, d.height, d.width) == (3, 16, 20)
        assert np.array_equal(got, want)


def test_encoded_jpg_reencodes_png_files(tmp_path, photos_dir):
    root, _, items = photos_dir
    value, shape = image_datum(str(root / items[0][0]), 4, ConvertOptions(encode_type="jpg"))
    d = caffe_pb2.Datum.FromString(value)
    assert d.data[:2] == b"\xff\xd8" and shape == (3, 24, 32) and d.label == 4  # a JPEG now


def test_encoded_gray_jpeg_in_colour_mode_is_reencoded(tmp_path):
    # Caffe keeps a grey JPEG's bytes even in colour mode (they then decode to 1 channel);
    # we re-encode so every record decodes to the channels it declares.
    gray = cv2.cvtColor(write_and_read(tmp_path / "g.jpg"), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(tmp_path / "g.jpg"), gray)
    value, shape = image_datum(str(tmp_path / "g.jpg"), 0, ConvertOptions(encoded=True))
    d = caffe_pb2.Datum.FromString(value)
    assert shape == (3, 24, 32) and d.data != (tmp_path / "g.jpg").read_bytes()
    assert cv2.imdecode(np.frombuffer(d.data, np.uint8), cv2.IMREAD_UNCHANGED).shape == (24, 32, 3)
    value, shape = image_datum(str(tmp_path / "g.jpg"), 0, ConvertOptions(encoded=True, gray=True))
    assert shape == (1, 24, 32) and caffe_pb2.Datum.FromString(value).data == (tmp_path / "g.jpg").read_bytes()


def write_and_read(path: Path) -> np.ndarray:
    write_crops(path.parent, 1, 24, 32, ".png")
    return cv2.imread(str(path.parent / "img 000.png"))


# ---------------------------------------------------------------------------------------------
# resize modes (DIGITS geometry)
# ---------------------------------------------------------------------------------------------


def test_resize_fill_and_fit_follow_digits():
    img = write_and_read_array(50, 100)
    lin = cv2.INTER_LINEAR
    # fill (DIGITS "crop"): cover 32x32 -> 32 x round(100 / (50/32)) = 32 x 64, keep the centre
    fill = resize_image(img, 32, 32, "fill")
    assert np.array_equal(fill, cv2.resize(img, (64, 32), interpolation=lin)[:, 16:48])
    # fit (DIGITS "fill", black instead of noise): 16 x 32 image, 8 rows of padding each side
    fit = resize_image(img, 32, 32, "fit")
    assert fit.shape == (32, 32, 3) and not fit[:8].any() and not fit[24:].any()
    assert np.array_equal(fit[8:24], cv2.resize(img, (32, 16), interpolation=lin))
    # odd padding grows the image by one (DIGITS): 50x100 into 33x32 -> 16 rows + 1 = 17
    assert resize_image(img, 33, 32, "fit")[8:25].any() and not resize_image(img, 33, 32, "fit")[:8].any()
    # same aspect ratio, or squash: Caffe's exact resize
    for mode in ("squash", "fit", "fill"):
        assert np.array_equal(resize_image(img, 25, 50, mode), cv2.resize(img, (50, 25), interpolation=lin))
    assert np.array_equal(resize_image(img, 20, 20, "squash"), cv2.resize(img, (20, 20), interpolation=lin))
    tall = resize_image(img.transpose(1, 0, 2).copy(), 32, 32, "fill")
    assert tall.shape == (32, 32, 3)


def write_and_read_array(h: int, w: int) -> np.ndarray:
    from tests.sample_images import crops

    return crops(1, h, w, seed=3)[0]


def test_fit_mode_through_convert(tmp_path):
    write_crops(tmp_path / "im", 3, 30, 60, ".png")
    listfile = write_list(tmp_path / "l.txt", [(f"img {i:03d}.png", i) for i in range(3)])
    convert_images(tmp_path / "im", listfile, tmp_path / "db",
                   ConvertOptions(resize_height=40, resize_width=40, resize_mode="fit"))
    for i, (_, d) in enumerate(datums(tmp_path / "db")):
        want = resize_image(cv2.imread(str(tmp_path / "im" / f"img {i:03d}.png")), 40, 40, "fit")
        assert (d.channels, d.height, d.width) == (3, 40, 40) and d.data == chw(want).tobytes()


# ---------------------------------------------------------------------------------------------
# determinism, parallelism, safety
# ---------------------------------------------------------------------------------------------


def test_db_bytes_identical_for_every_jobs_and_run(tmp_path):
    items = write_crops(tmp_path / "im", 60, 20, 26, ".jpg", seed=7)
    items.insert(17, ("missing.jpg", 1))
    listfile = write_list(tmp_path / "l.txt", items)
    opts = {"resize_height": 22, "resize_width": 22, "shuffle": True, "seed": 3}
    blobs = []
    for run, jobs in enumerate((1, 2, 2, 3)):
        db = tmp_path / f"db{run}"
        s = convert_images(tmp_path / "im", listfile, db, ConvertOptions(jobs=jobs, **opts))
        assert s.written == 60 and s.skipped_by_reason() == {"missing": 1}
        blobs.append((db / "data.mdb").read_bytes())
    assert all(b == blobs[0] for b in blobs[1:])


@pytest.mark.parametrize("opts", [{"encoded": True}, {}, {"resize_height": 20, "resize_width": 20}],
                         ids=["encoded", "raw-own-sizes", "raw-one-size"])
def test_db_bytes_identical_for_every_jobs_when_the_map_grows(tmp_path, opts, monkeypatch):
    # A 16 KiB map grows many times, and each growth replays the uncommitted records: those of
    # one size straight from the workers' shared slot (committed before it is reused), the others
    # from copies (their batches adapt as results come back). Small slots make batches many.
    import functools

    from dnntool.tools import images

    monkeypatch.setattr(images, "SLOT_BYTES", 4096)
    monkeypatch.setattr(images, "LmdbWriter", functools.partial(LmdbWriter, map_size=1 << 14))
    items = write_crops(tmp_path / "im", 40, ext=".jpg", seed=2, sizes=[(12 + k, 14 + 2 * k) for k in range(5)])
    listfile = write_list(tmp_path / "l.txt", items)
    blobs = []
    for run, jobs in enumerate((1, 2, 3)):
        s = convert_images(tmp_path / "im", listfile, tmp_path / f"db{run}", ConvertOptions(jobs=jobs, **opts))
        assert s.written == 40
        blobs.append((tmp_path / f"db{run}" / "data.mdb").read_bytes())
    assert blobs[1] == blobs[0] and blobs[2] == blobs[0]


def test_shuffle_changes_order_not_content(tmp_path, photos_dir):
    root, listfile, items = photos_dir
    convert_images(root, listfile, tmp_path / "a", ConvertOptions(shuffle=True, seed=1))
    convert_images(root, listfile, tmp_path / "b", ConvertOptions(shuffle=True, seed=2))
    a, b = datums(tmp_path / "a"), datums(tmp_path / "b")
    names_a = [k.split("_", 1)[1] for k, _ in a]
    assert sorted(names_a) == sorted(n for n, _ in items) and names_a != [n for n, _ in items]
    assert names_a != [k.split("_", 1)[1] for k, _ in b]
    assert [k[:8] for k, _ in a] == [f"{i:08d}" for i in range(len(items))]


def test_from_folders_with_stratified_val_split(tmp_path):
    classes = digits_by_class(tmp_path / "digits", per_class=10)
    out = tmp_path / "out"
    s = convert_images(tmp_path / "digits", None, out / "train_lmdb",
                       ConvertOptions(val_split=0.2, seed=4, gray=True))
    assert (out / "labels.txt").read_text() == "".join(f"{c}\n" for c in sorted(classes))
    train, val = datums(out / "train_lmdb"), datums(out / "train_lmdb_val")
    assert [d.written for d in s.dbs] == [80, 20] and len(train) == 80 and len(val) == 20
    for c in range(10):
        assert sum(d.label == c for _, d in val) == 2
    names = {k.split("_", 1)[1] for k, _ in train} | {k.split("_", 1)[1] for k, _ in val}
    assert names == {n for ns in classes.values() for n in ns}
    assert all(k.split("_", 1)[1].startswith(f"{d.label}/") for k, d in train + val)


def test_skips_missing_corrupt_unreadable_and_strict(tmp_path):
    root = tmp_path / "im"
    items = write_crops(root, 2)
    (root / "corrupt.jpg").write_bytes(b"not an image at all")
    (root / "empty.png").write_bytes(b"")
    (root / "adir.png").mkdir()
    bad = [items[0], ("nope.png", 1), ("corrupt.jpg", 2), ("empty.png", 0), ("adir.png", 1), items[1]]
    listfile = write_list(tmp_path / "bad.txt", bad)
    warnings: list[str] = []
    s = convert_images(root, listfile, tmp_path / "db", ConvertOptions(), warn=warnings.append)
    assert s.written == 2 and s.skipped_by_reason() == {"corrupt": 2, "missing": 1, "unreadable": 1}
    assert warnings == [
        f"{listfile}:2: skipped '{root / 'nope.png'}': no such file",
        f"{listfile}:3: skipped '{root / 'corrupt.jpg'}': cannot decode image",
        f"{listfile}:4: skipped '{root / 'empty.png'}': empty file",
        f"{listfile}:5: skipped '{root / 'adir.png'}': is a directory",
    ]
    assert [k[:8] for k, _ in read_db(tmp_path / "db")] == [b"00000000", b"00000005"]  # Caffe numbering
    with pytest.raises(FormatError) as e:
        convert_images(root, listfile, tmp_path / "db2", ConvertOptions(strict=True))
    assert str(e.value) == f"{listfile}:2: '{root / 'nope.png'}': no such file (--strict)"
    assert not (tmp_path / "db2").exists() and not list(tmp_path.glob("db2.tmp-*"))


def test_check_size(tmp_path):
    items = write_crops(tmp_path / "im", 3, sizes=[(20, 30), (20, 30), (21, 30)])
    listfile = write_list(tmp_path / "l.txt", items)
    assert convert_images(tmp_path / "im", listfile, tmp_path / "ok", ConvertOptions()).written == 3
    with pytest.raises(FormatError) as e:
        convert_images(tmp_path / "im", listfile, tmp_path / "db", ConvertOptions(check_size=True))
    assert str(e.value) == (f"{listfile}:3: '{tmp_path / 'im' / 'img 002.png'}' is 3x21x30 but the first"
                            " image is 3x20x30 (--check-size)")


def test_existing_db_needs_overwrite_and_is_replaced_only_when_complete(tmp_path, photos_dir):
    root, listfile, items = photos_dir
    db = tmp_path / "db"
    convert_images(root, listfile, db, ConvertOptions(resize_height=8, resize_width=8))
    before = (db / "data.mdb").read_bytes()
    with pytest.raises(FormatError, match="already exists \\(use --overwrite to replace it\\)"):
        convert_images(root, listfile, db, ConvertOptions())
    with pytest.raises(FormatError):  # fails mid-way (--strict): the old DB stays
        convert_images(root, write_list(tmp_path / "l2.txt", [*items, ("gone.png", 0)]), db,
                       ConvertOptions(overwrite=True, strict=True))
    assert (db / "data.mdb").read_bytes() == before
    convert_images(root, listfile, db, ConvertOptions(overwrite=True))
    assert datums(db)[0][1].height == 24 and sorted(os.listdir(tmp_path)) == ["db", "l2.txt"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(FormatError, match="exists and is not an LMDB; not replacing it"):
        convert_images(root, listfile, tmp_path / "notes", ConvertOptions(overwrite=True))


# ---------------------------------------------------------------------------------------------
# sharded output (--shards K, --shard I/K)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """29 listed images (one missing) as one DB and as 3 shards, shuffled, with jobs 1 and 2."""
    tmp = tmp_path_factory.mktemp("shards")
    items = write_crops(tmp / "im", 28, 14, 18, ".png", seed=5)
    items.insert(9, ("missing.png", 1))
    listfile = write_list(tmp / "l.txt", items)
    opts = {"shuffle": True, "seed": 2, "jobs": 2}
    whole = convert_images(tmp / "im", listfile, tmp / "one", ConvertOptions(**opts))
    split = convert_images(tmp / "im", listfile, tmp / "db", ConvertOptions(shards=3, **opts))
    return tmp, listfile, whole, split


def test_shards_split_the_final_order_by_position(sharded):
    tmp, _, whole, split = sharded
    names = [f"db-{i:05d}-of-00003" for i in range(3)]
    assert [d.path for d in split.dbs] == [str(tmp / n) for n in names]
    assert [(d.shard, d.shards) for d in split.dbs] == [(0, 3), (1, 3), (2, 3)]
    shards = [read_db(tmp / n) for n in names]
    one = read_db(tmp / "one")
    assert [d.written for d in split.dbs] == [len(r) for r in shards] and split.written == len(one) == 28
    assert sorted(kv for r in shards for kv in r) == one  # the union is the unsharded DB, keys and bytes
    for i, records in enumerate(shards):  # list position j (after the shuffle) goes to shard j % 3
        assert records and all(int(k[:8]) % 3 == i for k, _ in records)
    assert split.to_dict()["dbs"][1] == {"path": str(tmp / names[1]), "written": len(shards[1]),
                                         "shape": [3, 14, 18], "shard": 1, "shards": 3}
    assert split.skipped_by_reason() == whole.skipped_by_reason() == {"missing": 1}


@pytest.mark.parametrize("piece", [0, 1, 2])
def test_one_piece_is_byte_identical_to_its_shard(sharded, piece):
    tmp, listfile, _, _ = sharded
    s = convert_images(tmp / "im", listfile, tmp / f"piece{piece}",
                       ConvertOptions(shuffle=True, seed=2, jobs=1, shards=3, shard=piece))
    assert [d.path for d in s.dbs] == [str(tmp / f"piece{piece}-{piece:05d}-of-00003")]
    assert ((tmp / s.dbs[0].path / "data.mdb").read_bytes()
            == (tmp / f"db-{piece:05d}-of-00003" / "data.mdb").read_bytes())


def test_shards_overwrite_and_atomicity(tmp_path, photos_dir):
    root, listfile, items = photos_dir
    opts = {"shards": 2, "resize_height": 8, "resize_width": 8}
    convert_images(root, listfile, tmp_path / "db", ConvertOptions(**opts))
    before = [(tmp_path / f"db-{i:05d}-of-00002" / "data.mdb").read_bytes() for i in range(2)]
    (tmp_path / "db-00000-of-00002").rename(tmp_path / "keep")  # only shard 1 is in the way
    with pytest.raises(FormatError, match="db-00001-of-00002: already exists \\(use --overwrite"):
        convert_images(root, listfile, tmp_path / "db", ConvertOptions(**opts))
    assert sorted(os.listdir(tmp_path)) == ["db-00001-of-00002", "keep"]  # no shard 0, no temporaries
    (tmp_path / "keep").rename(tmp_path / "db-00000-of-00002")
    with pytest.raises(FormatError):  # fails mid-way (--strict): every old shard stays
        convert_images(root, write_list(tmp_path / "l2.txt", [*items, ("gone.png", 0)]), tmp_path / "db",
                       ConvertOptions(overwrite=True, strict=True, **opts))
    assert [(tmp_path / f"db-{i:05d}-of-00002" / "data.mdb").read_bytes() for i in range(2)] == before
    assert sorted(os.listdir(tmp_path)) == ["db-00000-of-00002", "db-00001-of-00002", "l2.txt"]
    convert_images(root, listfile, tmp_path / "db", ConvertOptions(overwrite=True, shards=2))
    assert datums(tmp_path / "db-00001-of-00002")[0][1].height == 24
    with pytest.raises(UsageError, match="--shards 30: only 24 training images"):
        convert_images(root, listfile, tmp_path / "x", ConvertOptions(shards=30))


def test_shards_of_another_count_are_named_not_removed(tmp_path, photos_dir):
    # A 2-shard run after a 3-shard one: the old set stays (DB@3 still reads it), and the
    # conversion says so once per set, naming its first shard.
    root, listfile, _ = photos_dir
    opts = {"resize_height": 8, "resize_width": 8}
    convert_images(root, listfile, tmp_path / "db", ConvertOptions(shards=3, **opts))
    notes = []
    convert_images(root, listfile, tmp_path / "db", ConvertOptions(shards=2, **opts), warn=notes.append)
    assert notes == [f"{tmp_path / 'db-00000-of-00003'} ...: 3 shard(s) of an earlier 3-shard run are still"
                     f" there (read as {tmp_path / 'db'}@3; not replaced, not read by {tmp_path / 'db'}@2)"]
    assert len(list(tmp_path.glob("db-*-of-00003"))) == 3 and len(list(tmp_path.glob("db-*-of-00002"))) == 2
    notes.clear()
    convert_images(root, listfile, tmp_path / "db", ConvertOptions(shards=2, overwrite=True, **opts),
                   warn=notes.append)
    assert len(notes) == 1 and "3-shard" in notes[0]


def test_shards_with_a_validation_split(tmp_path):
    digits_by_class(tmp_path / "digits", per_class=6)
    opts = {"val_split": 0.5, "seed": 1, "gray": True, "shuffle": True, "shards": 2}
    s = convert_images(tmp_path / "digits", None, tmp_path / "all" / "train", ConvertOptions(**opts))
    assert [(Path(d.path).name, d.written, d.shard) for d in s.dbs] == [
        ("train-00000-of-00002", 15, 0), ("train-00001-of-00002", 15, 1), ("train_val", 30, None)]
    p1 = convert_images(tmp_path / "digits", None, tmp_path / "p1" / "train", ConvertOptions(shard=1, **opts))
    assert [Path(d.path).name for d in p1.dbs] == ["train-00001-of-00002"]  # the validation DB goes with piece 0
    p0 = convert_images(tmp_path / "digits", None, tmp_path / "p0" / "train", ConvertOptions(shard=0, **opts))
    assert [Path(d.path).name for d in p0.dbs] == ["train-00000-of-00002", "train_val"]
    for piece, name in ((p0, "train-00000-of-00002"), (p0, "train_val"), (p1, "train-00001-of-00002")):
        folder = Path(piece.dbs[0].path).parent
        assert (folder / name / "data.mdb").read_bytes() == (tmp_path / "all" / name / "data.mdb").read_bytes()
    assert (tmp_path / "p1" / "labels.txt").read_text() == (tmp_path / "all" / "labels.txt").read_text()


def test_workers_start_after_opencv_ran_in_this_process(tmp_path):
    # An in-process run (jobs 1) changes OpenCV's thread count; after more parallel OpenCV work,
    # a worker that set the count again deadlocked (OpenCV's pthreads pool after fork).
    items = write_crops(tmp_path / "im", 16, 12, 16)
    write_list(tmp_path / "l.txt", items)
    script = (
        "import sys, cv2, numpy as np\n"
        "from dnntool.tools.images import ConvertOptions, convert_images\n"
        "root, listfile = sys.argv[1] + '/im', sys.argv[1] + '/l.txt'\n"
        "convert_images(root, listfile, sys.argv[1] + '/a', ConvertOptions(jobs=1))\n"
        "cv2.resize(np.zeros((2000, 2000, 3), np.uint8), (999, 999))\n"
        "convert_images(root, listfile, sys.argv[1] + '/b', ConvertOptions(jobs=2))\n"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert read_db(tmp_path / "a") == read_db(tmp_path / "b")


def test_stale_temporaries_are_removed(tmp_path, photos_dir):
    root, listfile, _ = photos_dir
    dead = 2**22 + 12345  # above pid_max's default: no such process
    (tmp_path / f"db.tmp-{dead}").mkdir()
    (tmp_path / f"db.tmp-{dead}" / "data.mdb").write_bytes(b"half")
    convert_images(root, listfile, tmp_path / "db", ConvertOptions())
    assert sorted(os.listdir(tmp_path)) == ["db"]


def test_writer_grows_the_map_and_stays_deterministic(tmp_path):
    values = [bytes([i % 251]) * (3000 + 97 * i) for i in range(300)]
    files = []
    for run, (every, nbytes) in enumerate(((1000, 32 << 20), (1000, 32 << 20), (7, 20000))):
        w = LmdbWriter(tmp_path / f"w{run}", map_size=64 << 10, commit_every=every, commit_bytes=nbytes)
        for i, v in enumerate(values):
            w.put(f"{i:08d}".encode(), v)
        w.close()
        assert w.map_size > 64 << 10
        assert read_db(tmp_path / f"w{run}") == [(f"{i:08d}".encode(), v) for i, v in enumerate(values)]
        files.append((tmp_path / f"w{run}" / "data.mdb").read_bytes())
    assert files[0] == files[1]


def test_writer_refuses_duplicate_keys(tmp_path):
    w = LmdbWriter(tmp_path / "d")
    w.put(b"b", b"1")
    w.put(b"a", b"2")  # out of order: a plain put
    with pytest.raises(FormatError, match="duplicate key 'a'"):
        w.put(b"a", b"3")
    w.abort()


def test_staged_db_discard_leaves_nothing(tmp_path):
    s = StagedDb(tmp_path / "x")
    assert s.path.name == f"x.tmp-{os.getpid()}" and s.path.is_dir()
    s.discard()
    assert not os.listdir(tmp_path)


# ---------------------------------------------------------------------------------------------
# compute_image_mean
# ---------------------------------------------------------------------------------------------


def pixels(db: Path) -> np.ndarray:
    """N x C x H x W float64 from a raw DB, via protobuf (the oracle for the mean)."""
    return np.stack([np.frombuffer(d.data, np.uint8).reshape(d.channels, d.height, d.width)
                     for _, d in datums(db)]).astype(np.float64)


def check_mean(result, x: np.ndarray) -> None:
    assert result.count == len(x) and result.shape == x.shape[1:]
    assert np.allclose(result.mean, x.mean(axis=0), rtol=0, atol=1e-6)
    assert np.allclose(result.channel_mean, x.mean(axis=(0, 2, 3)), rtol=0, atol=1e-6)
    assert np.allclose(result.channel_std, x.transpose(1, 0, 2, 3).reshape(x.shape[1], -1).std(axis=1),
                       rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def raw_and_encoded(tmp_path_factory, photos_dir):
    root, listfile, _ = photos_dir
    out = tmp_path_factory.mktemp("dbs")
    opts = {"resize_height": 20, "resize_width": 24}
    convert_images(root, listfile, out / "raw", ConvertOptions(**opts))
    convert_images(root, listfile, out / "png", ConvertOptions(encode_type="png", **opts))
    return out / "raw", out / "png"


@pytest.mark.parametrize("jobs", [1, 2])
def test_mean_raw_and_encoded_equal_numpy(raw_and_encoded, jobs):
    raw, png = raw_and_encoded
    x = pixels(raw)
    check_mean(compute_image_mean([raw], jobs=jobs), x)
    enc = compute_image_mean([png], jobs=jobs)  # PNG is lossless: same pixels, decoded in workers
    check_mean(enc, x)
    assert enc.encoded == len(x)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_mean_in_this_process_starts_no_threads(raw_and_encoded):
    # OpenCV's thread pool (cv2.reduce starts it) spins on the other cores, and processes forked
    # later hang in OpenCV calls: --jobs 1 must not start it.
    before = len(os.listdir("/proc/self/task"))
    compute_image_mean(list(raw_and_encoded), jobs=1)
    assert len(os.listdir("/proc/self/task")) == before


def test_mean_of_several_dbs_merges_their_sums(tmp_path, raw_and_encoded, photos_dir):
    raw, png = raw_and_encoded
    root, _, items = photos_dir
    part = write_list(tmp_path / "l.txt", items[:5])
    convert_images(root, part, tmp_path / "more", ConvertOptions(resize_height=20, resize_width=24))
    x = np.concatenate([pixels(raw), pixels(tmp_path / "more"), pixels(raw)])
    check_mean(compute_image_mean([raw, tmp_path / "more", png], jobs=2), x)


def test_mean_float_data_and_binaryproto(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(100, 30, (5, 2, 3, 4)).astype(np.float32)
    w = LmdbWriter(tmp_path / "f")
    for i, a in enumerate(x):
        w.put(f"{i:08d}".encode(), caffe_pb2.Datum(channels=2, height=3, width=4,
                                                   float_data=a.ravel().tolist()).SerializeToString())
    w.close()
    r = compute_image_mean([tmp_path / "f"], jobs=1)
    check_mean(r, x.astype(np.float64))
    write_mean(r, str(tmp_path / "m.binaryproto"), str(tmp_path / "m.npy"))
    blob = caffe_pb2.BlobProto.FromString((tmp_path / "m.binaryproto").read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 2, 3, 4)
    assert np.array_equal(np.array(blob.data, np.float32), r.mean.astype(np.float32).ravel())
    assert np.array_equal(np.load(tmp_path / "m.npy"), r.mean) and np.load(tmp_path / "m.npy").dtype == np.float64


def test_mean_exact_over_many_records(tmp_path):
    # Caffe sums in float32; 300 records of 255 + 1 hit float32's 2^24 ulp at ~1e5 records. Exact here.
    w = LmdbWriter(tmp_path / "big")
    for i in range(300):
        w.put(f"{i:08d}".encode(), caffe_pb2.Datum(channels=1, height=2, width=2, label=0,
                                                   data=bytes([255, 254, 1, i % 256])).SerializeToString())
    w.close()
    r = compute_image_mean([tmp_path / "big"], jobs=2)
    assert r.mean.ravel().tolist() == [255.0, 254.0, 1.0, sum(i % 256 for i in range(300)) / 300]


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("hw,encoded", [((227, 227), False), ((227, 227), True), ((300, 260), False)])
def test_mean_sums_of_squares_of_bright_large_planes(tmp_path, jobs, hw, encoded):
    # A 227 x 227 plane of values near 255 has a sum of squares near 3.4e9, past int32, where
    # OpenCV's cv2.reduce(REDUCE_SUM2) wraps (the std came out 0 for bright photos); 300 x 260 is
    # past SQ_PART pixels, so its planes are cut. The sums of squares are exact integers.
    h, w = hw
    rng = np.random.default_rng(5)
    x = rng.integers(200, 256, (12, 3, h, w), dtype=np.uint8)
    x[3] = 255
    x[7, 1] = 0
    db = LmdbWriter(tmp_path / "bright")
    for i, a in enumerate(x):
        if encoded:
            d = caffe_pb2.Datum(channels=3, height=h, width=w, encoded=True, label=i % 2,
                                data=cv2.imencode(".png", a.transpose(1, 2, 0))[1].tobytes())
        else:
            d = caffe_pb2.Datum(channels=3, height=h, width=w, label=i % 2, data=a.tobytes())
        db.put(f"{i:08d}".encode(), d.SerializeToString())
    db.close()
    r = compute_image_mean([tmp_path / "bright"], jobs=jobs)
    check_mean(r, x.astype(np.float64))
    planes = x.astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1)
    pixels = planes.shape[1]
    assert (x[0].astype(np.float64) ** 2).reshape(3, -1).sum(axis=1).min() > 2 ** 31
    assert np.array_equal(r.channel_std, np.sqrt(np.maximum(
        (planes ** 2).sum(axis=1) / pixels - (planes.sum(axis=1) / pixels) ** 2, 0)))


@pytest.mark.parametrize("jobs", [1, 2])
def test_mean_float32_sums_flushed_before_they_round(tmp_path, monkeypatch, jobs):
    # float32 holds 255 * 65,793 exactly; with the limit at 7 records the flushes (within a task
    # and when merging tasks) run often. Raw, PNG and float_data records share the sums.
    from dnntool.tools import image_mean

    monkeypatch.setattr(image_mean, "EXACT32", 7)
    monkeypatch.setattr(image_mean, "MEAN_CHUNK", 5)
    monkeypatch.setattr(image_mean, "MIN_TASK", 5)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (60, 3, 4, 5), dtype=np.uint8)
    w = LmdbWriter(tmp_path / "db")
    for i, a in enumerate(x):
        if i % 3 == 1:
            d = caffe_pb2.Datum(channels=3, height=4, width=5, encoded=True,
                                data=cv2.imencode(".png", a.transpose(1, 2, 0))[1].tobytes())
        elif i % 10 == 2:
            d = caffe_pb2.Datum(channels=3, height=4, width=5, float_data=a.ravel().astype(float).tolist())
        else:
            d = caffe_pb2.Datum(channels=3, height=4, width=5, data=a.tobytes(), label=i)
        w.put(f"{i:08d}".encode(), d.SerializeToString())
    w.close()
    r = compute_image_mean([tmp_path / "db"], jobs=jobs)
    assert r.count == 60 and r.encoded == 20
    check_mean(r, x.astype(np.float64))


def test_mean_float32_sums_exact_past_2_to_the_24():
    # 70,000 records of 255: 17,850,000 is past float32's exact integers, so the sums must be
    # flushed into float64 at EXACT32 records.
    from dnntool.tools.image_mean import EXACT32, _Sums

    sums = _Sums((1, 1, 2))
    a = np.array([255, 1], np.uint8)
    for _ in range(70000):
        sums.add_pixels(a)
    assert EXACT32 < 70000 and sums.total().ravel().tolist() == [255 * 70000, 70000]
    assert sums.sq.tolist() == [(255 ** 2 + 1) * 70000]


@pytest.mark.parametrize("bad", [3, 58])
def test_mean_error_in_any_worker_names_the_key(tmp_path, monkeypatch, bad):
    # 60 records in key ranges of 5 or more shared by 2 processes: a record of another size at the
    # start or the end fails the run with the same one-line message as --jobs 1, wherever it was read.
    from dnntool.tools import image_mean

    monkeypatch.setattr(image_mean, "MEAN_CHUNK", 5)
    monkeypatch.setattr(image_mean, "MIN_TASK", 5)
    w = LmdbWriter(tmp_path / "db")
    for i in range(60):
        wd = 5 if i == bad else 4
        w.put(f"{i:08d}_k".encode(), caffe_pb2.Datum(channels=1, height=4, width=wd,
                                                     data=bytes(4 * wd)).SerializeToString())
    w.close()
    msgs = []
    for jobs in (1, 2):
        with pytest.raises(FormatError) as e:
            compute_image_mean([tmp_path / "db"], jobs=jobs)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1] == (f"{tmp_path / 'db'}: record '{bad:08d}_k' is 1x4x5 but the first record"
                                  " '00000000_k' is 1x4x4; every record must have one size (convert"
                                  " with --resize-height/--resize-width)")


def test_mean_errors_name_the_db_and_key(tmp_path):
    w = LmdbWriter(tmp_path / "mixed")
    for i, (h, wd) in enumerate([(4, 4), (4, 4), (4, 5)]):
        w.put(f"{i:08d}_k".encode(), caffe_pb2.Datum(channels=1, height=h, width=wd,
                                                     data=bytes(h * wd)).SerializeToString())
    w.close()
    with pytest.raises(FormatError) as e:
        compute_image_mean([tmp_path / "mixed"], jobs=1)
    assert str(e.value) == (f"{tmp_path / 'mixed'}: record '00000002_k' is 1x4x5 but the first record"
                            " '00000000_k' is 1x4x4; every record must have one size (convert with"
                            " --resize-height/--resize-width)")
    LmdbWriter(tmp_path / "empty").close()
    with pytest.raises(FormatError, match="empty: database is empty"):
        compute_image_mean([tmp_path / "empty"])
    with pytest.raises(FormatError, match="nowhere: no such LMDB"):
        compute_image_mean([tmp_path / "nowhere"])


def _runs(db, splits) -> list[list[bytes]]:
    """The records of each key range [split i, split i+1)."""
    env = open_lmdb(db)
    with env.begin() as txn:
        keys = [bytes(k) for k in txn.cursor().iternext(values=False)]
    env.close()
    bounds = [None, *splits, None]
    return [[k for k in keys if (a is None or k >= a) and (b is None or k < b)]
            for a, b in itertools.pairwise(bounds)]


def _db_of(path, keys) -> Path:
    w = LmdbWriter(path)
    for k in keys:
        w.put(k, b"v")
    w.close()
    return path


def test_key_splits_cover_every_record_once(tmp_path):
    rng = np.random.default_rng(5)
    for trial in range(20):  # random binary keys of random lengths: any split is valid, none lost
        keys = sorted({bytes(rng.integers(0, 256, rng.integers(1, 6), dtype=np.uint8)) for _ in range(300)})
        db = _db_of(tmp_path / f"r{trial}", keys)
        for parts in (1, 2, 7, 50, 1000):
            splits = key_splits(db, parts)
            assert splits == sorted(set(splits)) and set(splits) <= set(keys) and keys[0] not in splits
            assert len(splits) < parts or parts == 1
            runs = _runs(db, splits)
            assert [k for r in runs for k in r] == keys and all(runs)
    assert key_splits(_db_of(tmp_path / "one", [b"k"]), 8) == []
    assert key_splits(_db_of(tmp_path / "empty", []), 8) == []


def test_key_splits_balance_caffe_keys(tmp_path):
    # convert_imageset's keys (%08d_<file>), and a shard of them (every 3rd index): equal runs
    # without reading the records, as the workers of compute-image-mean need.
    keys = [f"{i:08d}_img {i}.jpg".encode() for i in range(1000)]
    runs = _runs(_db_of(tmp_path / "db", keys), key_splits(tmp_path / "db", 8))
    assert [len(r) for r in runs] == [125] * 8
    shard = keys[1::3]
    runs = _runs(_db_of(tmp_path / "shard", shard), key_splits(tmp_path / "shard", 4))
    assert len(runs) == 4 and max(len(r) for r in runs) - min(len(r) for r in runs) <= 1
    keys = [b"%02d" % i for i in range(10)]
    assert key_splits(_db_of(tmp_path / "small", keys), 4) == [b"02", b"05", b"07"]


def test_mean_tasks_shrink_towards_the_end_and_cover_each_db_once(tmp_path, monkeypatch):
    # Each task takes about 1/(2 jobs) of the records left, so the first are long and the last
    # ones MIN_TASK records: the members of the team finish together. Tasks never span databases.
    from dnntool.tools import image_mean

    monkeypatch.setattr(image_mean, "MIN_TASK", 10)
    a = _db_of(tmp_path / "a", [f"{i:08d}_x.jpg".encode() for i in range(1000)])
    b = _db_of(tmp_path / "b", [f"{i:08d}_y.jpg".encode() for i in range(1, 300, 3)])
    tasks = image_mean._tasks([str(a), str(b)], [1000, 100], 2, (1, 1, 1), b"")
    for db, n in ((a, 1000), (b, 100)):
        mine = [t for t in tasks if t[0] == str(db)]
        assert mine[0][1] is None and mine[-1][2] is None
        assert all(x[2] == y[1] for x, y in itertools.pairwise(mine))  # contiguous, no gap or overlap
        sizes = [len(r) for r in _runs(db, [t[2] for t in mine[:-1]])]
        assert sum(sizes) == n and min(sizes) >= 10
        assert all(x >= y for x, y in itertools.pairwise(sizes[:-1])) and sizes[-1] < 20
        if db == a:
            assert sizes[0] == 275  # 1100 / 4
        else:
            assert sizes[-3:-1] == [10, 10]


def test_datum_view():
    d = caffe_pb2.Datum(channels=3, height=2, width=1, data=b"abcdef", label=-3, encoded=True)
    c, h, wd, off, ln, enc = datum_view(d.SerializeToString())
    assert (c, h, wd, ln, enc) == (3, 2, 1, 6, True) and d.SerializeToString()[off:off + ln] == b"abcdef"
    assert datum_view(caffe_pb2.Datum(float_data=[1.0]).SerializeToString()) is None


def test_mean_of_the_shards_is_the_mean_of_the_whole(tmp_path, sharded):
    tmp, _, _, _ = sharded
    whole = compute_image_mean([tmp / "one"], jobs=1)
    parts = compute_image_mean([tmp / f"db-{i:05d}-of-00003" for i in range(3)], jobs=2)
    assert parts.count == whole.count and parts.shape == whole.shape
    np.testing.assert_allclose(parts.mean, whole.mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(parts.channel_std, whole.channel_std, rtol=0, atol=1e-6)
    assert np.array_equal(parts.mean, whole.mean)  # integer sums merge exactly
    write_mean(whole, str(tmp_path / "whole.binaryproto"))
    write_mean(parts, str(tmp_path / "parts.binaryproto"))
    assert (tmp_path / "whole.binaryproto").read_bytes() == (tmp_path / "parts.binaryproto").read_bytes()
    spec = compute_image_mean([f"{tmp / 'db'}@3"], jobs=1)  # 'DB@K' names the K shards, as a Data source does
    assert spec.dbs == [str(tmp / f"db-{i:05d}-of-00003") for i in range(3)] and np.array_equal(spec.mean, whole.mean)


def test_mean_cli_takes_shard_specs_as_databases(tmp_path, sharded):
    from click.testing import CliRunner

    from dnntool.cli import cli

    tmp, _, _, _ = sharded
    spec = f"{tmp / 'db'}@3"
    res = CliRunner().invoke(cli, ["compute-image-mean", str(tmp / "one"), spec, "--format", "json"])
    assert res.exit_code == 0, res.output  # the last argument names databases: not the output file
    assert len(json.loads(res.output)["dbs"]) == 4 and not Path(spec).exists()
    res = CliRunner().invoke(cli, ["compute-image-mean", spec, str(tmp_path / "m.binaryproto"), "-q"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m.binaryproto").exists()
