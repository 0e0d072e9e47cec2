"""Benchmark: ``convert-images`` and ``compute-image-mean`` against the floors they cannot beat.

Measured in one run, on one machine, with the same files:

* convert-images, 5,000 JPEGs of 256x256 -> 227x227 raw Datums: ``--jobs 1``, ``--jobs 2`` and
  all cores (and all cores with the DB in /dev/shm), against a bare loop over all cores that
  reads, decodes and resizes each image with cv2 and writes nothing (the floor for the decode
  work; its workers get our workers' set-up), and a bare write of the same bytes (the floor for
  the writing);
* compute-image-mean on that raw DB, against a bare LMDB scan that only reads every value (copies
  it out of the map: the floor for the I/O), timed in a fresh process as a command-line run is,
  and in this script's process too (a fork copies the page tables of the process's private memory:
  1.3 ms from a fresh process, 4.4 ms from one that imported scikit-learn, which this script
  therefore does not import); on an encoded DB (the JPEG bytes kept), ``--jobs 2`` against
  ``--jobs 1``;
* peak memory of convert-images on 1,000 and 5,000 images, each in a fresh process: the writer's
  RSS and private memory, and the private memory of all its processes plus the shared buffers.

The images are random 256x256 crops of scikit-learn's sample photos (china.jpg, flower.jpg). Each
timing is the best of ``--repeat`` rounds, the variants interleaved within a round; the page cache
is warm (the files were just written). The CPU time of each best run is printed beside it, and
at the end the average load other processes put on the machine meanwhile (the ratios fall with it).

Usage: python benchmarks/datasets.py [--images 5000] [--repeat 3] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from dnntool.tools.image_mean import compute_image_mean
from dnntool.tools.images import ConvertOptions, convert_images
from dnntool.tools.parallel import default_jobs


def make_images(folder: Path, count: int, size: int = 256, seed: int = 0) -> Path:
    """``count`` JPEGs (random crops of the scikit-learn sample images) and a list file."""
    import importlib.util

    # The photos' folder, found without importing scikit-learn (its import leaves 60 MiB of private
    # memory in this process, which every fork in the timings below would copy page tables for).
    src = Path(importlib.util.find_spec("sklearn").submodule_search_locations[0]) / "datasets" / "images"
    photos = [cv2.imread(str(src / name)) for name in ("china.jpg", "flower.jpg")]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        label = i % 2
        img = photos[label]
        y = int(rng.integers(0, img.shape[0] - size + 1))
        x = int(rng.integers(0, img.shape[1] - size + 1))
        name = f"{i:05d}.jpg"
        cv2.imwrite(str(folder / name), img[y:y + size, x:x + size])
        lines.append(f"{name} {label}\n")
    listfile = folder / "list.txt"
    listfile.write_text("".join(lines))
    return listfile


def _cpu() -> float:
    """CPU seconds (user + system) of this process and its reaped children."""
    return sum(getattr(resource.getrusage(w), a) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for a in ("ru_utime", "ru_stime"))


def _reap(patience: float = 2.0) -> None:
    """Wait (up to ``patience`` seconds) until every child process has exited and been reaped,
    here or by another thread, so that RUSAGE_CHILDREN holds its CPU time."""
    end = time.perf_counter() + patience
    while time.perf_counter() < end:
        try:
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        time.sleep(0.001)


CPU: dict[str, float] = {}  # variant -> CPU seconds of its fastest run


def interleaved(tag: str, variants: dict, repeat: int, before=None) -> dict[str, float]:
    """Best wall time of each variant over ``repeat`` rounds, the variants interleaved within a
    round so that load from other processes hits them alike. ``before`` runs untimed first.
    The CPU time of each variant's fastest run goes to ``CPU["<tag>: <variant>"]``."""
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for _ in range(repeat):
        for name, fn in variants.items():
            if before is not None:
                before()
            c, t = _cpu(), time.perf_counter()
            fn()
            wall = time.perf_counter() - t
            _reap()  # compute-image-mean's team reaps its children in threads as they exit
            times[name].append((wall, _cpu() - c))
    for k, v in times.items():
        CPU[f"{tag}: {k}"] = min(v)[1]
    return {k: min(v)[0] for k, v in times.items()}


class Load:
    """CPU used by other processes while we measure (from /proc/stat and our own rusage)."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
        idle = (v[3] + v[4]) / hz
        total = sum(v[:8]) / hz
        own = sum(getattr(resource.getrusage(w), a) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                  for a in ("ru_utime", "ru_stime"))
        return total, idle, own

    def others(self) -> float:
        """Average number of cores busy with other processes since the start."""
        t1, i1, o1 = self._sample()
        t0, i0, o0 = self.start
        wall = (t1 - t0) / max(1, os.cpu_count() or 1)
        busy = (t1 - t0) - (i1 - i0)
        return max(0.0, (busy - (o1 - o0)) / wall) if wall > 0 else 0.0


def _decode_resize(path: str) -> None:
    cv2.resize(cv2.imread(path, cv2.IMREAD_COLOR), (227, 227), interpolation=cv2.INTER_LINEAR)


def _bare_init() -> None:
    # The same process set-up as convert-images' workers (one OpenCV thread, malloc keeping
    # freed memory), so the ratio measures what converting adds, not allocator settings.
    from dnntool.tools.parallel import tune_malloc

    cv2.setNumThreads(1)
    tune_malloc()


def bare_decode_resize(paths: list[str], jobs: int) -> None:
    """The floor for convert-images: read + decode + resize every image on all cores, keep nothing."""
    with get_context("fork").Pool(jobs, _bare_init) as pool:
        for _ in pool.imap_unordered(_decode_resize, paths, chunksize=16):
            pass


def bare_scan(db: Path) -> int:
    """The floor for compute-image-mean on a raw DB: read every value once, do nothing with it.

    Every byte is read: py-lmdb copies each value out of the map into a bytes object (a memcpy
    of the 155 KB; with buffers=True it would hand out views and read nothing). Opening and
    closing the environment is timed too, as it is in compute-image-mean."""
    import lmdb

    env = lmdb.open(str(db), readonly=True, lock=False, readahead=False)
    n = 0
    with env.begin() as txn:
        for _key, _value in txn.cursor():
            n += 1
    env.close()
    return n


def bare_write(value: bytes, count: int, db: Path) -> None:
    """The floor for writing: ``count`` copies of one 227x227 record through our LMDB writer
    (commits, map growth, fsync), no decoding."""
    from dnntool.io.datadb import LmdbWriter

    shutil.rmtree(db, ignore_errors=True)
    w = LmdbWriter(db)
    for i in range(count):
        w.put(b"%08d_image.jpg" % i, value)
    w.close()


def convert(root: Path, listfile: Path, db: Path, **kw) -> None:
    shutil.rmtree(db, ignore_errors=True)
    convert_images(root, listfile, db, ConvertOptions(**kw))


MEMORY_PROBE = """
import os, sys, threading, time
from dnntool.tools.images import ConvertOptions, convert_images
peak = {"writer_rss": 0, "writer_anon": 0, "total": 0}
def status(pid):
    out = {}
    try:
        for line in open(f"/proc/{pid}/status"):
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssShmem"):
                out[key] = int(line.split()[1])
    except OSError:
        pass
    return out
def children():
    pids = []
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        try:
            pids += [int(p) for p in open(f"/proc/{os.getpid()}/task/{task}/children").read().split()]
        except OSError:
            pass
    return pids
def sample():
    while True:
        me = status(os.getpid())
        kids = [status(p) for p in children()]
        peak["writer_rss"] = max(peak["writer_rss"], me.get("VmRSS", 0))
        peak["writer_anon"] = max(peak["writer_anon"], me.get("RssAnon", 0))
        every = [me, *kids]
        total = sum(s.get("RssAnon", 0) for s in every) + max(s.get("RssShmem", 0) for s in every)
        peak["total"] = max(peak["total"], total)
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
convert_images(sys.argv[1], sys.argv[2], sys.argv[3],
               ConvertOptions(resize_height=227, resize_width=227, jobs=int(sys.argv[4])))
time.sleep(0.02)
print(peak["writer_rss"], peak["writer_anon"], peak["total"])
"""


def peak_memory(root: Path, listfile: Path, db: Path, count: int, jobs: int) -> tuple[float, float, float]:
    """Converting ``count`` images in a fresh process, peaks in MiB sampled every 5 ms: the writer's
    RSS (with the LMDB pages it maps from the page cache), the writer's private memory (RssAnon),
    and private memory of the writer and its workers plus the shared result buffers, counted once."""
    sub = listfile.with_name(f"list{count}.txt")
    sub.write_text("".join(listfile.read_text().splitlines(keepends=True)[:count]))
    shutil.rmtree(db, ignore_errors=True)
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(root), str(sub), str(db), str(jobs)],
                         capture_output=True, text=True, check=True).stdout.split()
    shutil.rmtree(db, ignore_errors=True)
    return int(out[0]) / 1024, int(out[1]) / 1024, int(out[2]) / 1024


def mean_variants(db: Path, cores: int) -> dict:
    variants = {"bare LMDB scan": lambda: bare_scan(db)}
    for jobs in sorted({1, 2, cores}):
        variants[f"--jobs {jobs}"] = lambda j=jobs: compute_image_mean([db], jobs=j)
    return variants


def anon_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon")) / 1024


def mean_probe(db: Path, repeat: int) -> None:
    """``--mean-probe DB``: the raw-DB timings in this fresh process; JSON on stdout."""
    bare_scan(db)
    seconds = interleaved("probe", mean_variants(db, default_jobs()), repeat)
    print(json.dumps({"seconds": seconds, "cpu": {k: CPU[f"probe: {k}"] for k in seconds},
                      "anon_mib": anon_mib()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="where to put the images and DBs (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--mean-probe", metavar="DB", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mean_probe:
        return mean_probe(Path(args.mean_probe), args.repeat)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dnntool-bench-"))
    cores, n = default_jobs(), args.images
    res: dict = {"images": n, "cores": cores, "repeat": args.repeat}
    load = Load()
    try:
        root = work / "images"
        t = time.perf_counter()
        listfile = make_images(root, n)
        print(f"made {n} JPEGs 256x256 in {time.perf_counter() - t:.1f} s under {root}")
        paths = [str(root / line.split()[0]) for line in listfile.read_text().splitlines()]
        raw_db, enc_db = work / "raw_lmdb", work / "enc_lmdb"

        # convert-images to 227x227 raw Datums; each run starts with no dirty pages (os.sync)
        bare_decode_resize(paths[:200], cores)  # warm-up
        from dnntool.tools.images import ConvertOptions as Opts
        from dnntool.tools.images import image_datum

        record = image_datum(paths[0], 0, Opts(resize_height=227, resize_width=227))[0]
        variants = {"bare cv2, all cores": lambda: bare_decode_resize(paths, cores),
                    "bare LMDB write": lambda: bare_write(record, n, raw_db)}
        for jobs in sorted({1, 2, cores}):
            variants[f"--jobs {jobs}"] = lambda j=jobs: convert(
                root, listfile, raw_db, resize_height=227, resize_width=227, jobs=j)
        shm = Path("/dev/shm")
        shm_db = shm / f"dnntool-bench-{os.getpid()}"
        if shm.is_dir() and shutil.disk_usage(shm).free > 3 * len(record) * n:
            variants[f"--jobs {cores}, DB in /dev/shm"] = lambda: convert(
                root, listfile, shm_db, resize_height=227, resize_width=227, jobs=cores)
        conv = interleaved("convert", variants, args.repeat,
                           before=lambda: (shutil.rmtree(raw_db, True), shutil.rmtree(shm_db, True), os.sync()))
        shutil.rmtree(shm_db, ignore_errors=True)
        res["convert_seconds"] = conv
        print(f"\nconvert-images, {n} JPEGs 256x256 -> 227x227 raw (best of {args.repeat}):")
        for k, v in conv.items():
            print(f"  {k:30s} {v:7.3f} s  {n / v:8.0f} img/s   cpu {CPU['convert: ' + k]:6.2f} s")
        res["convert_jobs2_over_jobs1"] = conv["--jobs 1"] / conv["--jobs 2"]
        res["convert_all_cores_over_bare"] = conv["bare cv2, all cores"] / conv[f"--jobs {cores}"]
        print(f"  --jobs 2 / --jobs 1: {res['convert_jobs2_over_jobs1']:.2f}x (target >= 1.7x)")
        print(f"  --jobs {cores} / bare cv2 loop on {cores} cores: {res['convert_all_cores_over_bare']:.2f}x"
              " (target >= 0.8x)")

        # compute-image-mean on the raw DB vs a bare scan: in a fresh process, then in this one
        convert(root, listfile, raw_db, resize_height=227, resize_width=227, jobs=cores)
        bare_scan(raw_db)  # warm the page cache
        size = sum(f.stat().st_size for f in raw_db.iterdir()) / 2**20
        probe = json.loads(subprocess.run([sys.executable, __file__, "--mean-probe", str(raw_db),
                                           "--repeat", str(args.repeat)],
                                          capture_output=True, text=True, check=True).stdout)
        mean = probe["seconds"]
        res["mean_raw_seconds"] = mean
        print(f"\ncompute-image-mean, raw DB ({n} x 3x227x227, {size:.0f} MiB, page cache warm), in a fresh"
              f" process ({probe['anon_mib']:.0f} MiB private memory, as a command-line run):")
        for k, v in mean.items():
            print(f"  {k:30s} {v:7.3f} s  {n / v:8.0f} rec/s   cpu {probe['cpu'][k]:6.2f} s")
        for jobs in sorted({1, 2, cores}):
            r = mean["bare LMDB scan"] / mean[f"--jobs {jobs}"]
            res[f"mean_raw_jobs{jobs}_over_scan"] = r
            target = " (the default, all cores: target >= 0.8x)" if jobs == cores else ""
            print(f"  --jobs {jobs} / bare scan: {r:.2f}x{target}")
        here = interleaved("mean raw", mean_variants(raw_db, cores), args.repeat)
        res["mean_raw_seconds_in_this_process"] = here
        print(f"  in this script's process ({anon_mib():.0f} MiB private memory):")
        for jobs in sorted({1, 2, cores}):
            r = here["bare LMDB scan"] / here[f"--jobs {jobs}"]
            res[f"mean_raw_jobs{jobs}_over_scan_in_this_process"] = r
            print(f"    --jobs {jobs} {here[f'--jobs {jobs}']:7.3f} s, scan {here['bare LMDB scan']:.3f} s: {r:.2f}x")

        # compute-image-mean on an encoded DB (the JPEG bytes kept)
        convert(root, listfile, enc_db, encoded=True, jobs=cores)
        enc = interleaved("mean encoded", {f"--jobs {j}": lambda j=j: compute_image_mean([enc_db], jobs=j)
                                           for j in (1, 2)}, args.repeat)
        res["mean_encoded_seconds"] = enc
        res["mean_encoded_jobs2_over_jobs1"] = enc["--jobs 1"] / enc["--jobs 2"]
        print(f"\ncompute-image-mean, encoded DB ({n} JPEGs 256x256, decoded):")
        for k, v in enc.items():
            print(f"  {k:30s} {v:7.3f} s  {n / v:8.0f} rec/s   cpu {CPU['mean encoded: ' + k]:6.2f} s")
        print(f"  --jobs 2 / --jobs 1: {res['mean_encoded_jobs2_over_jobs1']:.2f}x")
        shutil.rmtree(enc_db, ignore_errors=True)
        shutil.rmtree(raw_db, ignore_errors=True)

        # peak memory, 1,000 vs all images, each in a fresh process
        print("\npeak memory of convert-images to 227x227, MiB (writer RSS incl. mapped LMDB pages /"
              " writer private / all processes private + shared buffers):")
        mem = {}
        for jobs in sorted({1, cores}):
            for count in sorted({min(1000, n), n}):
                rss, anon, total = mem[f"jobs{jobs}_{count}"] = peak_memory(root, listfile, raw_db, count, jobs)
                print(f"  --jobs {jobs}, {count:5d} images: {rss:6.1f} / {anon:6.1f} / {total:6.1f}")
        res["peak_rss_mib"] = mem
        res["cpu_seconds"] = {k: round(v, 3) for k, v in CPU.items()}
        res["other_load_cores"] = round(load.others(), 2)
        print(f"\nother processes kept {res['other_load_cores']:.2f} of {os.cpu_count()} cores busy"
              " on average during this run")
        print("\n" + json.dumps(res))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
