"""LMDB databases of Caffe ``Datum`` records (what convert_imageset writes and Data layers read)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from google.protobuf.message import DecodeError

from dnntool.errors import FormatError, SourceLoc
from dnntool.proto import caffe_pb2


def is_lmdb(path: str | os.PathLike[str]) -> bool:
    """True for an LMDB directory (holding data.mdb) or an LMDB file opened with subdir=False."""
    p = Path(path)
    return (p.is_dir() and (p / "data.mdb").exists()) or (p.is_file() and p.suffix == ".mdb")


def open_lmdb(path: str | os.PathLike[str]):
    """Open an LMDB read-only without locking (safe to share with a writer). An environment opens
    once per process (py-lmdb refuses a second, and a forked child inherits that refusal): readers
    that may meet others on the same path use :func:`shared_lmdb`."""
    import lmdb

    p = Path(path)
    try:
        return lmdb.open(str(p), readonly=True, lock=False, readahead=False, meminit=False,
                         subdir=p.is_dir(), max_readers=512)
    except lmdb.Error as e:
        raise FormatError(f"cannot open LMDB: {e}", SourceLoc(str(path))) from None


# Every read-only environment of this process, by real path: [environment, users]. A forked child
# keeps the entries and reads through the inherited maps (read-only, no lock table), since it may
# not open those paths again.
_SHARED: dict[str, list] = {}
_SHARED_LOCK = threading.Lock()


def acquire_lmdb(path: str | os.PathLike[str]):
    """The process's read-only environment of ``path``, opened on first use; give it back with
    :func:`release_lmdb`, which closes it after its last user."""
    key = os.path.realpath(path)
    with _SHARED_LOCK:
        entry = _SHARED.get(key)
        if entry is None:
            entry = _SHARED[key] = [open_lmdb(path), 0]
        entry[1] += 1
        return entry[0]


def release_lmdb(env) -> None:
    with _SHARED_LOCK:
        for key, entry in _SHARED.items():
            if entry[0] is env:
                entry[1] -= 1
                if not entry[1]:
                    del _SHARED[key]
                    env.close()
                return


@contextmanager
def shared_lmdb(path: str | os.PathLike[str]) -> Iterator:
    """``with shared_lmdb(path) as env``: :func:`acquire_lmdb` and :func:`release_lmdb`."""
    env = acquire_lmdb(path)
    try:
        yield env
    finally:
        release_lmdb(env)


def _after_fork_in_child() -> None:
    global _SHARED_LOCK
    _SHARED_LOCK = threading.Lock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def parse_datum(value: bytes, key: bytes | str, path: str | None = None) -> caffe_pb2.Datum:
    """Parse one record; a corrupt one names the database and the key."""
    d = caffe_pb2.Datum()
    try:
        d.ParseFromString(value)
    except DecodeError as e:
        k = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        raise FormatError(f"record '{k}' is not a valid Datum: {e}", SourceLoc(path)) from None
    return d


def first_datum(path: str | os.PathLike[str]) -> caffe_pb2.Datum:
    """The first record of an LMDB of Datums (what Caffe's DataLayer reads to size its top)."""
    with shared_lmdb(path) as env, env.begin() as txn:
        cur = txn.cursor()
        if not cur.first():
            raise FormatError("database is empty", SourceLoc(str(path)))
        return parse_datum(cur.value(), cur.key(), str(path))


def datum_shape(d: caffe_pb2.Datum) -> tuple[int, int, int]:
    """(channels, height, width) of a Datum, decoding encoded images when the header is empty."""
    if d.encoded and not (d.channels and d.height and d.width):
        import cv2
        import numpy as np

        img = cv2.imdecode(np.frombuffer(d.data, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise FormatError("encoded Datum cannot be decoded")
        return (1 if img.ndim == 2 else img.shape[2], img.shape[0], img.shape[1])
    return (d.channels, d.height, d.width)


# ---------------------------------------------------------------------------------------------
# Writing: an append-only writer with map growth, staged under a temporary name.
# ---------------------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """Protobuf base-128 varint; negative int32 values take ten bytes, as protobuf writes them."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def bytes_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2): tag, length, bytes."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def datum_header(channels: int, height: int, width: int, data_len: int) -> bytes:
    """Datum wire bytes before the payload: channels (1), height (2), width (3), data tag+length (4)."""
    return (b"\x08" + varint(channels) + b"\x10" + varint(height) + b"\x18" + varint(width)
            + b"\x22" + varint(data_len))


def datum_trailer(label: int, encoded: bool) -> bytes:
    """Datum wire bytes after the payload: label (5) and encoded (7), always written as Caffe does."""
    return b"\x28" + varint(label) + (b"\x38\x01" if encoded else b"\x38\x00")


class LmdbWriter:
    """Append records to a new LMDB in key order; commits every ``commit_every`` records or
    ``commit_bytes`` bytes, and grows the map on MDB_MAP_FULL (python-lmdb does not; Caffe doubles it).

    The file's bytes depend only on the sequence of puts: the same records in the same order give
    the same ``data.mdb`` (commit points and map growth follow the data, not the clock).

    Durable like Caffe's writer (LMDB's default fsyncs every commit), but without stalling: each
    commit only wakes a thread that starts writing the new pages to disk while records keep
    coming, and ``close`` fsyncs once.
    """

    def __init__(self, path: str | os.PathLike[str], map_size: int = 64 << 20,
                 commit_every: int = 1000, commit_bytes: int = 8 << 20):
        import lmdb

        self._lmdb = lmdb
        self.path = str(path)
        # meminit: LMDB zeroes the unused part of each page, so no stale heap bytes reach the file.
        self.env = lmdb.open(self.path, map_size=map_size, subdir=True, sync=False, metasync=False,
                             meminit=True, writemap=False, readahead=False, max_dbs=0)
        self._flusher = _WriteBehind(Path(self.path) / "data.mdb")
        self.map_size = map_size
        self.commit_every, self.commit_bytes = commit_every, commit_bytes
        self.count = 0
        self._pending: list[tuple[bytes, bytes]] = []
        self._pending_bytes = 0
        self._last_key = self._committed_key = b""
        self._txn = None

    def put(self, key: bytes, value) -> None:
        """Add one record (bytes or a buffer); keys in increasing order use MDB_APPEND."""
        self._pending.append((key, value))
        self._pending_bytes += len(value)
        if self._txn is None:
            self._txn = self.env.begin(write=True)
        try:
            self._put(key, value)
        except self._lmdb.MapFullError:
            self._grow_and_replay()
        self.count += 1
        if len(self._pending) >= self.commit_every or self._pending_bytes >= self.commit_bytes:
            self.commit()

    def _put(self, key: bytes, value) -> None:
        append = key > self._last_key
        if not self._txn.put(key, value, append=append, overwrite=False):
            raise FormatError(f"duplicate key '{key.decode('utf-8', 'replace')}'", SourceLoc(self.path))
        if append:
            self._last_key = key

    def _grow_and_replay(self) -> None:
        # A transaction that hit MDB_MAP_FULL is dead: abort it, double the map, redo its puts.
        while True:
            if self._txn is not None:
                self._txn.abort()
            self.map_size *= 2
            self.env.set_mapsize(self.map_size)
            self._txn = self.env.begin(write=True)
            self._last_key = self._committed_key
            try:
                for k, v in self._pending:
                    self._put(k, v)
                return
            except self._lmdb.MapFullError:
                continue

    def commit(self) -> None:
        """Commit the buffered records (growing the map if the commit itself runs out of room)."""
        while self._txn is not None:
            try:
                self._txn.commit()
            except self._lmdb.MapFullError:
                self._txn = None  # a failed commit aborts the transaction
                self._grow_and_replay()
                continue
            self._txn = None
        self._committed_key = self._last_key
        self._pending.clear()
        self._pending_bytes = 0
        self._flusher.kick()

    def close(self) -> None:
        """Commit, flush to disk (fsync) and close."""
        self.commit()
        self._flusher.close()
        self.env.sync(True)
        self.env.close()

    def abort(self) -> None:
        """Drop the uncommitted records and close."""
        self._flusher.close()
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
        self.env.close()


class _WriteBehind:
    """A thread that starts the kernel's writeback of a file each time it is kicked (kicks
    coalesce), so the disk writes overlap the work that produces the next records and the final
    fsync finds little left. On Linux it only *starts* writeback (sync_file_range): an fdatasync
    per commit would also force a journal commit and a device cache flush each time."""

    def __init__(self, path: Path):
        import threading

        self._fd = os.open(path, os.O_RDONLY)
        self._kicked = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="lmdb-write-behind", daemon=True)
        self._started = False

    def kick(self) -> None:
        if not self._started:  # started on the first commit, after any worker processes forked
            self._thread.start()
            self._started = True
        self._kicked.set()

    def _run(self) -> None:
        start = _start_writeback()
        while True:
            self._kicked.wait()
            self._kicked.clear()
            if self._stop:
                return
            try:
                start(self._fd)
            except OSError:
                return

    def close(self) -> None:
        if self._fd < 0:
            return
        self._stop = True
        self._kicked.set()
        if self._started:
            self._thread.join()
        os.close(self._fd)
        self._fd = -1


def _start_writeback():
    """``fd -> None`` that starts writing a file's dirty pages: sync_file_range(SYNC_FILE_RANGE_WRITE)
    on Linux, fdatasync elsewhere."""
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    except (OSError, AttributeError):
        return getattr(os, "fdatasync", os.fsync)

    def start(fd: int) -> None:
        if fn(fd, 0, 0, 2) != 0:  # 2 = SYNC_FILE_RANGE_WRITE
            raise OSError(ctypes.get_errno(), "sync_file_range")

    return start


class StagedDb:
    """A database written under ``<target>.tmp-<pid>`` and renamed to ``target`` when complete.

    An interrupted writer (Ctrl-C, kill -9) leaves at most the temporary directory, never a partial
    database at ``target``; the next run removes temporaries whose process is gone. An existing
    ``target`` is replaced only with ``overwrite`` and only after the new database is complete.
    """

    def __init__(self, target: str | os.PathLike[str], overwrite: bool = False):
        self.target = Path(target)
        self.overwrite = overwrite
        check_target(self.target, overwrite)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.target)
        self.path = self.target.with_name(f"{self.target.name}.tmp-{os.getpid()}")
        if self.path.exists():
            import shutil

            shutil.rmtree(self.path)
        self.path.mkdir()

    def commit(self) -> None:
        """Move the finished database into place (replacing the old one under ``overwrite``)."""
        import shutil

        check_target(self.target, self.overwrite)
        old = None
        if self.target.exists() or self.target.is_symlink():
            old = self.target.with_name(f"{self.target.name}.old-{os.getpid()}")
            os.rename(self.target, old)
        os.rename(self.path, self.target)
        _fsync_dir(self.target.parent)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()

    def discard(self) -> None:
        """Remove the temporary directory."""
        import shutil

        shutil.rmtree(self.path, ignore_errors=True)


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse to replace an existing path without ``overwrite``, and never replace a non-LMDB."""
    if not (target.exists() or target.is_symlink()):
        return
    if not overwrite:
        raise FormatError("already exists (use --overwrite to replace it)", SourceLoc(str(target)))
    if not is_lmdb(target) and not (target.is_dir() and not any(target.iterdir())):
        raise FormatError("exists and is not an LMDB; not replacing it", SourceLoc(str(target)))


def remove_stale_temporaries(target: Path) -> None:
    """Delete ``<target>.tmp-<pid>`` directories left by writers that no longer run."""
    import shutil

    for p in target.parent.glob(f"{_glob_escape(target.name)}.tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Reading: counts, key-range splits and a zero-copy view of raw Datum records.
# ---------------------------------------------------------------------------------------------


def lmdb_entries(path: str | os.PathLike[str]) -> int:
    """Number of records in an LMDB (from its statistics, without a scan)."""
    if not is_lmdb(path):
        raise FormatError("no such LMDB (expected a directory holding data.mdb)", SourceLoc(str(path)))
    with shared_lmdb(path) as env:
        return int(env.stat()["entries"])


def key_splits(path: str | os.PathLike[str], parts: int, cuts: list[int] | None = None) -> list[bytes]:
    """Up to ``parts - 1`` stored keys that cut the database into runs of about equal width in
    key space, in order, without a walk over the records: points evenly spaced between the first
    and last key (read as base-256 numbers after their common prefix) moved to the first stored
    key at or after each. The runs always cover every record once; for keys like Caffe's
    ``%08d_name`` (and their shards) they also hold about equal numbers of records.

    ``cuts`` (increasing, each in 1 .. parts - 1) puts the points at ``cut / parts`` of the way
    instead of at every ``1 / parts``: runs of chosen, unequal widths."""
    if parts <= 1:
        return []
    with shared_lmdb(path) as env, env.begin(buffers=True) as txn:
        cur = txn.cursor()
        if not cur.first():
            return []
        lo = bytes(cur.key())
        cur.last()
        hi = bytes(cur.key())
        splits: list[bytes] = []
        for point in _key_points(lo, hi, parts, range(1, parts) if cuts is None else cuts):
            if cur.set_range(point):
                key = bytes(cur.key())
                if key > lo and (not splits or key > splits[-1]):
                    splits.append(key)
        return splits


def _key_points(lo: bytes, hi: bytes, parts: int, cuts) -> list[bytes]:
    """Keys at ``cut / parts`` of the way from ``lo`` to just past ``hi``, for each cut: after
    their common prefix, a run of decimal digits of one length in both (Caffe's ``%08d_`` keys) is
    read in base 10, else the bytes in base 256."""
    p = 0
    while p < min(len(lo), len(hi)) and lo[p] == hi[p]:
        p += 1
    digits = len(lo) - p - len(lo[p:].lstrip(b"0123456789"))
    if digits and digits == len(hi) - p - len(hi[p:].lstrip(b"0123456789")):
        a, b = int(lo[p:p + digits]), int(hi[p:p + digits])
        return [lo[:p] + b"%0*d" % (digits, a + (b + 1 - a) * i // parts) for i in cuts]
    m = min(max(len(lo), len(hi)) - p, 16)  # 16 bytes resolve any practical count
    a = int.from_bytes(lo[p:p + m].ljust(m, b"\0"), "big")
    b = int.from_bytes(hi[p:p + m].ljust(m, b"\0"), "big")
    return [lo[:p] + (a + (b + 1 - a) * i // parts).to_bytes(m, "big") for i in cuts]


def datum_view(value) -> tuple[int, int, int, int, int, bool] | None:
    """Parse a Datum's wire bytes without copying its payload.

    Returns ``(channels, height, width, data_offset, data_len, encoded)`` or None when the record
    needs the full parser (``float_data``, unknown or malformed fields).
    """
    buf = value if isinstance(value, (bytes, bytearray)) else memoryview(value).cast("B")
    n = len(buf)
    pos = 0
    fields = [0, 0, 0]
    data_off = data_len = 0
    encoded = False
    while pos < n:
        tag, pos = _read_varint(buf, pos)
        if tag is None:
            return None
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            val, pos = _read_varint(buf, pos)
            if val is None:
                return None
            if 1 <= field <= 3:
                fields[field - 1] = val
            elif field == 7:
                encoded = bool(val)
            elif field != 5:
                return None
        elif wire == 2 and field == 4:
            length, pos = _read_varint(buf, pos)
            if length is None or pos + length > n:
                return None
            data_off, data_len = pos, length
            pos += length
        else:
            return None
    return fields[0], fields[1], fields[2], data_off, data_len, encoded


def _read_varint(buf, pos: int) -> tuple[int | None, int]:
    result = shift = 0
    n = len(buf)
    while pos < n and shift < 64:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
    return None, pos
