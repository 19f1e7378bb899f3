"""Background preparation of batches, as Caffe's prefetching data layers do.

A :class:`Prefetcher` runs a loader function in a daemon thread and keeps up to
``depth`` finished batches in a queue. A consumer waits only when the queue is empty,
that is, when it takes batches faster than the loader makes them. An exception in the loader stops the thread
and is raised again, as a :class:`~brewnet.errors.DataError` that names the data
source, by the next :meth:`Prefetcher.next` call in the consuming thread.

The thread holds no reference to the layer that owns the prefetcher, so a layer that
is no longer used can be garbage-collected; its finalizer calls :meth:`close`.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from typing import Callable, Generic, TypeVar

from brewnet.errors import BrewnetError, DataError

logger = logging.getLogger(__name__)

Batch = TypeVar("Batch")

# How often (seconds) a blocked thread checks whether it was asked to stop.
_POLL_SECONDS = 0.05


class _Failure:
    """The exception that ended the loader thread, passed through the queue."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.trace = "".join(traceback.format_exception(error))


class Prefetcher(Generic[Batch]):
    """Call ``load`` in a background thread and queue up to ``depth`` results.

    Args:
        load: returns the next batch; called only from the background thread.
        depth: the number of finished batches kept ahead (Caffe's
            ``data_param.prefetch``, 4 by default).
        source: the data source, named in error messages.
        on_close: called once in the background thread when it ends, to release
            resources that the thread opened (a database transaction, say).
    """

    def __init__(
        self,
        load: Callable[[], Batch],
        depth: int,
        source: str,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be at least 1, got {depth}")
        self.source = source
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._failure: _Failure | None = None
        self._thread = threading.Thread(
            target=_run,
            args=(load, self._queue, self._stop, on_close),
            name=f"brewnet-prefetch:{source}",
            daemon=True,
        )
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the background thread is still alive."""
        return self._thread.is_alive()

    def next(self) -> Batch:
        """Return the next batch, waiting for the thread if none is ready.

        Raises:
            DataError: the loader raised; the message names the source and the
                original error, which is chained as the cause.
            RuntimeError: the prefetcher was closed.
        """
        if self._failure is not None:
            self._raise(self._failure)
        if self._stop.is_set():
            raise RuntimeError(f"the prefetcher of '{self.source}' is closed")
        if self._queue.empty():
            logger.debug("Waiting for data")
        while True:
            try:
                item = self._queue.get(timeout=_POLL_SECONDS)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError(
                        f"the prefetch thread of '{self.source}' ended without a batch"
                    ) from None
        if isinstance(item, _Failure):
            self._failure = item
            self._raise(item)
        return item

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait up to ``timeout`` seconds for it to end."""
        self._stop.set()
        # Empty the queue so that a thread blocked on a full queue can see the stop.
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning(
                    "the prefetch thread of '%s' did not stop within %.1f s; it is a "
                    "daemon thread and ends with the process", self.source, timeout,
                )

    def _raise(self, failure: _Failure) -> None:
        error = failure.error
        message = str(error)
        if isinstance(error, BrewnetError) and self.source in message:
            detail = message
        else:
            detail = f"{type(error).__name__}: {message}"
        raise DataError(
            f"the prefetch thread of '{self.source}' failed: {detail}"
        ) from error


def _run(load, batches: queue.Queue, stop: threading.Event, on_close) -> None:
    """Load batches into the queue until stopped or until ``load`` raises."""
    try:
        while not stop.is_set():
            try:
                item = load()
            except Exception as error:  # noqa: BLE001 - passed to the consumer
                logger.debug("prefetch thread failed:\n%s", traceback.format_exc())
                item = _Failure(error)
            if not _put(batches, item, stop) or isinstance(item, _Failure):
                return
    finally:
        if on_close is not None:
            try:
                on_close()
            except Exception:  # noqa: BLE001 - nothing can be done at shutdown
                logger.exception("closing the prefetch source failed")


def _put(batches: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` in the queue, giving up when ``stop`` is set; return whether put."""
    while not stop.is_set():
        try:
            batches.put(item, timeout=_POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False
