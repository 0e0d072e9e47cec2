"""A producer thread that makes items ahead of their consumer (batches for data layers)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Prefetcher(Generic[T]):
    """Runs ``make(k)`` for k = start, start+1, ... in a daemon thread, ``depth`` items ahead.

    ``depth=0`` makes items on demand in the caller's thread. An exception raised by ``make`` is
    handed to the consumer's :meth:`next` and ends the thread.
    """

    def __init__(self, make: Callable[[int], T], start: int = 0, depth: int = 4, name: str = "dnntool-prefetch"):
        self.make, self.k = make, start
        self._queue: queue.Queue | None = queue.Queue(maxsize=depth) if depth > 0 else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self._queue is not None:
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    @property
    def threaded(self) -> bool:
        return self._queue is not None

    def _run(self) -> None:
        assert self._queue is not None
        k = self.k
        while not self._stop.is_set():
            try:
                item: object = self.make(k)
            except BaseException as e:  # handed to the consumer, which re-raises it
                item = e
            k += 1
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def next(self) -> T:
        """The next item (waits for the producer when it is behind)."""
        if self._queue is None:
            out = self.make(self.k)
            self.k += 1
            return out
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self, timeout: float = 10.0) -> bool:
        """Stop the producer; False when it is still running after ``timeout`` (stuck in ``make``)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=timeout)
            return not thread.is_alive()
        return True
