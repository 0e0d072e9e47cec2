"""Ordered parallel map over worker processes: bounded memory, shared-memory results, clean interrupts."""

from __future__ import annotations

import contextlib
import itertools
import mmap
import multiprocessing as mp
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator


def default_jobs() -> int:
    """All the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_jobs(jobs: int | None) -> int:
    """``None`` or 0 means all cores."""
    return default_jobs() if not jobs else max(1, int(jobs))


# Shared result buffers, created before the workers fork so they inherit them (token -> mmap).
_SHARED: dict[int, tuple[mmap.mmap, int]] = {}


class OrderedMap:
    """Run ``func`` over tasks in worker processes and yield the results in task order.

    ``jobs`` <= 1 runs in this process (``initializer`` is called here). Otherwise the pool starts
    on ``__enter__`` (so the caller can open files it must not share with children afterwards),
    and at most ``window`` tasks run ahead of the consumer, so memory stays bounded however slow
    the consumer is. Workers ignore SIGINT (the parent handles Ctrl-C and terminates them on exit)
    and, on Linux, die with the parent, so kill -9 leaves no orphans.

    With ``slot_bytes``, each task also gets a writable buffer of that size: ``func(task, buf)``
    may put bulky results there and return only offsets, and ``map`` yields ``(result, buf)``.
    The buffer is shared memory inherited at fork (no pickling, no pipe copies); it belongs to the
    consumer until it asks for the next result. Where workers cannot fork, ``buf`` is None and
    ``func`` must return its data inline.
    """

    def __init__(self, func: Callable, jobs: int, initializer: Callable | None = None,
                 initargs: tuple = (), window: int | None = None, slot_bytes: int | None = None):
        self.func, self.jobs = func, jobs
        self.initializer, self.initargs = initializer, initargs
        self.window = window or (4 * jobs if slot_bytes else 2 * jobs + 2)
        self.slot_bytes = slot_bytes
        self.pool = None
        self.token: int | None = None
        self.local: bytearray | None = None

    def __enter__(self) -> OrderedMap:
        tune_malloc()  # this process too: it receives and writes every record
        if self.jobs <= 1:
            if self.slot_bytes:
                self.local = bytearray(self.slot_bytes)
            if self.initializer is not None:
                self.initializer(*self.initargs)
            return self
        methods = mp.get_all_start_methods()
        # fork: workers start in milliseconds with the parent's modules already imported, and
        # inherit the shared buffers. The parent runs no threads of ours when it forks (the
        # progress bar has no refresh thread).
        fork = "fork" in methods
        if self.slot_bytes and fork:
            self.token = id(self)
            _SHARED[self.token] = (mmap.mmap(-1, self.window * self.slot_bytes), self.slot_bytes)
        ctx = mp.get_context("fork" if fork else "spawn")
        self.pool = ctx.Pool(self.jobs, _worker_init, (os.getpid(), self.initializer, self.initargs))
        return self

    def map(self, tasks: Iterable) -> Iterator:
        """Yield ``func(task)`` (or ``(result, buf)`` with ``slot_bytes``) for each task, in order."""
        if self.pool is None:
            for task in tasks:
                if self.slot_bytes:
                    yield self.func(task, memoryview(self.local)), memoryview(self.local)
                else:
                    yield self.func(task)
            return
        it = iter(tasks)
        free = deque(range(self.window))
        pending: deque = deque()

        def submit() -> bool:
            for t in itertools.islice(it, 1):
                slot = free.popleft()
                args = (self.func, t, self.token, slot) if self.slot_bytes else (t,)
                fn = _call_with_slot if self.slot_bytes else self.func
                pending.append((self.pool.apply_async(fn, args), slot))
                return True
            return False

        while free and submit():
            pass
        while pending:
            handle, slot = pending.popleft()
            result = handle.get()
            if self.slot_bytes:
                yield result, _slot_view(self.token, slot)
            else:
                yield result
            free.append(slot)
            submit()

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            if exc[0] is None:
                self.pool.close()
                self.pool.join()
            self.pool.terminate()
            self.pool = None
        if self.token is not None:
            shared, _ = _SHARED.pop(self.token)
            with contextlib.suppress(BufferError):  # a view still alive keeps the mapping
                shared.close()
            self.token = None
        self.local = None


def _slot_view(token: int | None, slot: int) -> memoryview | None:
    if token is None:
        return None
    shared, size = _SHARED[token]
    return memoryview(shared)[slot * size:(slot + 1) * size]


def _call_with_slot(func: Callable, task, token: int | None, slot: int):
    buf = _slot_view(token, slot)
    try:
        return func(task, buf)
    finally:
        if buf is not None:
            buf.release()


def tune_malloc() -> None:
    """Keep freed memory in the heap (glibc): mmap threshold 32 MiB, trim threshold 64 MiB.

    With glibc's defaults every image-sized buffer (a decoded photo, a resized copy, a record) is
    returned to the kernel when freed and faulted back in, zero-filled, for the next image: about
    75 page faults per 256x256 JPEG, a third of the system time of a conversion. Process-wide and
    harmless elsewhere; a no-op without glibc.
    """
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (fixing it also stops glibc's dynamic adjustment)
    mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD


def _worker_init(parent: int, initializer: Callable | None, initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)
    tune_malloc()
    if initializer is not None:
        initializer(*initargs)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this worker when the parent dies (prctl PR_SET_PDEATHSIG)."""
    if not os.path.exists("/proc/self"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
