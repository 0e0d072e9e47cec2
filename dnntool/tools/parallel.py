"""Work on all cores: an ordered parallel map over worker processes (bounded memory, shared-memory
results, clean interrupts) and a team of forked processes sharing one task list."""

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
        if fork:
            _prctl()  # looked up here, inherited by the workers
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


class Team:
    """This process and ``jobs - 1`` forked children work through one list of tasks together.

    Each member takes the next task nobody has taken yet (``claim``), so a slower core or a
    longer task evens out, and returns one result for all its tasks: no result per task crosses a
    pipe, and this process works instead of waiting. ``run(func)`` calls ``func(team, buf)`` in
    every member, where ``buf`` is a child's ``slot_bytes`` of shared memory for bulky results
    (None in this process), and returns ``[(result, buf)]``, this process's first. ``add_done(n)``
    counts finished items across the team (for a progress bar drawn here).

    Children ignore SIGINT and die with this process; an exception in any member is raised here
    after the others are killed and reaped. After a run that succeeded, children still exiting are
    reaped by threads (``join`` waits for them). Where processes cannot fork (Windows), this process
    does every task. LMDB environments open here are read by the children through the inherited
    maps (``datadb.acquire_lmdb``); OpenCV's thread count must be set here before ``run``
    (``one_opencv_thread``), never changed in a child.
    """

    def __init__(self, jobs: int, tasks: list, slot_bytes: int = 0):
        self.tasks = list(tasks)
        self.jobs = max(1, min(jobs, len(self.tasks)))
        if "fork" not in mp.get_all_start_methods():
            self.jobs = 1
        self.slot_bytes = slot_bytes
        self._next = self._done = None
        self._local = [0, 0]  # next task, items done: when there are no children
        self._reaping: list = []  # threads reaping children that had not exited yet
        if self.jobs > 1:
            ctx = mp.get_context("fork")
            self._next, self._done = ctx.Value("q", 0), ctx.Value("q", 0)

    def claim(self):
        """The next task nobody has taken, or None when all are taken."""
        if self._next is None:
            i = self._local[0]
            self._local[0] += 1
        else:
            with self._next.get_lock():
                i = self._next.value
                self._next.value = i + 1
        return self.tasks[i] if i < len(self.tasks) else None

    def add_done(self, n: int) -> int:
        """Count ``n`` more finished items; the team's total so far."""
        if self._done is None:
            self._local[1] += n
            return self._local[1]
        with self._done.get_lock():
            self._done.value += n
            return self._done.value

    def run(self, func: Callable) -> list:
        size = self.slot_bytes
        shared = mmap.mmap(-1, (self.jobs - 1) * size) if size and self.jobs > 1 else None
        children: list[tuple[int, int]] = []  # (pid, read end of its result pipe)
        parent = os.getpid()
        ok = False
        if self.jobs > 1:
            _prctl()  # looked up here, inherited by the children
        try:
            for r in range(self.jobs - 1):
                rd, wr = os.pipe()
                pid = os.fork()
                if pid == 0:
                    os.close(rd)
                    for _, fd in children:
                        os.close(fd)
                    buf = memoryview(shared)[r * size:(r + 1) * size] if shared is not None else None
                    _team_child(self, func, buf, wr, parent)
                os.close(wr)
                children.append((pid, rd))
            out = [(func(self, None), None)]
            for r, (pid, rd) in enumerate(children):
                status, value = _read_result(rd, pid)
                if status != "ok":
                    raise value
                out.append((value, memoryview(shared)[r * size:(r + 1) * size] if shared is not None else None))
            ok = True
            return out
        except BaseException:
            for pid, _ in children:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            raise
        finally:
            for pid, rd in children:
                with contextlib.suppress(OSError):
                    os.close(rd)
                if ok:  # its result is in: reap it as it exits, without waiting for its teardown
                    self._reaper(pid)
                else:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, 0)

    def _reaper(self, pid: int) -> None:
        """Reap ``pid`` now if it has exited, else in a thread (its exit unmaps what it
        inherited, a millisecond or two the caller need not wait for); ``join`` waits for them."""
        import threading

        def reap() -> None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        thread = threading.Thread(target=reap, name=f"reap-{pid}", daemon=True)
        thread.start()
        self._reaping.append(thread)

    def join(self) -> None:
        """Wait until every child of the last ``run`` has exited and been reaped."""
        while self._reaping:
            self._reaping.pop().join()


def _team_child(team: Team, func: Callable, buf, wr: int, parent: int) -> None:
    """A forked member: run, send ``(status, value)`` back pickled, and exit without cleanup."""
    import pickle

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with_parent(parent)
        try:
            result = ("ok", func(team, buf))
        except BaseException as e:  # every failure goes back to the parent
            result = ("error", e)
        try:
            data = pickle.dumps(result)
        except Exception:  # an exception that does not pickle: its text
            data = pickle.dumps(("error", RuntimeError(f"{type(result[1]).__name__}: {result[1]}")))
        view = memoryview(data)
        while view:
            view = view[os.write(wr, view):]
        os.close(wr)  # the parent reads to the end now, not after this process's memory is torn down
    finally:
        os._exit(0)


def _read_result(fd: int, pid: int) -> tuple[str, object]:
    import pickle

    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    if not chunks:
        return "error", RuntimeError(f"a worker process (pid {pid}) died without a result")
    return pickle.loads(b"".join(chunks))


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


@contextlib.contextmanager
def one_opencv_thread() -> Iterator[None]:
    """One OpenCV thread in this process meanwhile, then the caller's count again: OpenCV's
    parallel loops run inline, and children forked meanwhile inherit it. A forked child must not
    change the thread count itself: once a parent has changed it and then run parallel OpenCV
    code, ``cv2.setNumThreads`` deadlocks in the child (OpenCV 4.x pthreads pool)."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


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


_PRCTL: list = []  # libc's prctl, looked up once (in the parent, before it forks: see _prctl)


def _prctl():
    """libc's prctl, or None (not Linux). Called in the parent before forking, so that children do
    not each import ctypes (1.4 ms in a fresh child, against 0.03 with it inherited)."""
    if not _PRCTL:
        fn = None
        if os.path.exists("/proc/self"):
            try:
                import ctypes

                fn = ctypes.CDLL(None, use_errno=True).prctl
            except (OSError, AttributeError):
                fn = None
        _PRCTL.append(fn)
    return _PRCTL[0]


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this worker when the parent dies (prctl PR_SET_PDEATHSIG)."""
    prctl = _prctl()
    if prctl is None:
        return
    prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
