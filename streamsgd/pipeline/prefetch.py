"""Run a producer ahead of its consumer in a background thread, bounded in bytes.

The bound counts every produced item that is still *alive* (queued or being consumed),
not just the queue's length: the producer reserves an item's bytes before making it and
the consumer gives them back when it is done with the item (see ``ByteBudget``).

Errors raised by the producer travel through the queue and are re-raised in the consumer
with their traceback; ``close()`` stops the producer and joins its thread, so no thread
outlives the loop, including on Ctrl-C.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


class _Closed(Exception):
    pass


class ByteBudget:
    """Bytes of results alive, and how many of them wait in the queue unclaimed.

    The producer may start an item when it fits the capacity, or when nothing waits
    ahead of the consumer: a consumer blocked on an empty queue always gets its next
    item, even if the items it still holds (say two windows a batch straddles) fill the
    budget. So the bound is ``max(capacity, what the consumer holds + one item)``, and
    the pipeline can never deadlock.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self.ahead = 0
        self._closed = False
        self._cond = threading.Condition()

    def acquire(self, n: int) -> None:
        with self._cond:
            while not self._closed and self.ahead > 0 and self.used + n > self.capacity:
                self._cond.wait()
            if self._closed:
                raise _Closed
            self.used += n
            self.ahead += 1

    def claimed(self) -> None:
        """The consumer took one produced item off the queue."""
        with self._cond:
            self.ahead -= 1
            self._cond.notify_all()

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Prefetcher(Generic[T, R]):
    """Yield ``produce(item)`` for each item, computed ahead in a background thread.

    Parameters
    ----------
    items : iterable of work descriptions, consumed by the background thread.
    produce : makes the result of one item (e.g. reads a window of chunks).
    nbytes : bytes the result of an item will hold, known before producing it.
    max_bytes : bound on the bytes of results alive at once.

    The consumer must call ``release(result_bytes)`` when it no longer needs a result.
    """

    def __init__(
        self,
        items: Iterable[T],
        produce: Callable[[T], R],
        nbytes: Callable[[T], int],
        max_bytes: int,
        name: str = "streamsgd-prefetch",
    ):
        self._items = items
        self._produce = produce
        self._nbytes = nbytes
        self.budget = ByteBudget(max_bytes)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._items:
                if self._stop.is_set():
                    return
                self.budget.acquire(self._nbytes(item))
                if self._stop.is_set():
                    return
                self._queue.put((True, self._produce(item)))
            self._queue.put((True, _DONE))
        except _Closed:
            return
        except BaseException as exc:  # handed to the consumer, who re-raises it
            self._queue.put((False, exc))

    def __iter__(self) -> Iterator[R]:
        while True:
            ok, value = self._queue.get()
            if not ok:
                raise value
            if value is _DONE:
                return
            self.budget.claimed()
            yield value
            value = None  # hold no reference to a released item while waiting for the next

    def release(self, n: int) -> None:
        self.budget.release(n)

    def close(self) -> None:
        """Stop producing and wait for the background thread to end."""
        self._stop.set()
        self.budget.close()
        self._thread.join()

    def __enter__(self) -> "Prefetcher[T, R]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
