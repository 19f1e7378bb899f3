"""Log output in glog's classic line format, which Caffe log parsers read.

A line looks like ``I1204 14:39:45.346304 29724 solver.py:45] Solving LeNet``:
severity letter, month and day, time with microseconds, thread id, source file and
line. Only the command line installs this; the library just logs.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

_SEVERITY = {
    logging.DEBUG: "I",
    logging.INFO: "I",
    logging.WARNING: "W",
    logging.ERROR: "E",
    logging.CRITICAL: "F",
}


class GlogFormatter(logging.Formatter):
    """Format records as glog does: ``I1204 14:39:45.346304 29724 file.py:12] msg``.

    Handlers emit in the thread that logs, so the thread id is read at format time.
    """

    def format(self, record: logging.LogRecord) -> str:
        moment = time.localtime(record.created)
        micros = int((record.created - int(record.created)) * 1e6)
        prefix = (
            f"{_SEVERITY.get(record.levelno, 'I')}"
            f"{time.strftime('%m%d %H:%M:%S', moment)}.{micros:06d} "
            f"{threading.get_native_id():>5} "
            f"{record.filename}:{record.lineno}] "
        )
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        return prefix + message


class ProgressHandler(logging.StreamHandler):
    """A stream handler that keeps a one-line progress bar under the log lines.

    Used only when the stream is a terminal; :meth:`update` redraws the bar.
    """

    def __init__(self, stream=None) -> None:
        super().__init__(stream or sys.stderr)
        self._bar = ""

    def emit(self, record: logging.LogRecord) -> None:
        if self._bar:
            self.stream.write("\r\033[K")
        super().emit(record)
        if self._bar:
            self.stream.write(self._bar)
            self.stream.flush()

    def update(self, done: int, total: int, note: str = "") -> None:
        """Draw ``done`` of ``total`` as a bar, with ``note`` after it."""
        width = 30
        filled = int(width * done / total) if total else width
        self._bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {note}"
        self.stream.write("\r\033[K" + self._bar)
        self.stream.flush()

    def finish(self) -> None:
        """Remove the bar."""
        if self._bar:
            self.stream.write("\r\033[K")
            self.stream.flush()
        self._bar = ""


def install(level: int = logging.INFO, stream=None) -> logging.Handler:
    """Send brewnet's log records to ``stream`` (stderr) in glog format."""
    stream = stream or sys.stderr
    handler: logging.Handler
    if hasattr(stream, "isatty") and stream.isatty():
        handler = ProgressHandler(stream)
    else:
        handler = logging.StreamHandler(stream)
    handler.setFormatter(GlogFormatter())
    root = logging.getLogger("brewnet")
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    return handler


# glog's severities as pycaffe's init_log takes them: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL.
_GLOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}


def init_log(level: int = 0, use_stderr: bool = True) -> None:
    """Show brewnet's log lines in glog's format, as pycaffe's ``caffe.init_log`` does.

    ``level`` is glog's minimum severity (0 INFO to 3 FATAL). Without this call the
    library logs through Python's logging and shows nothing by default.
    """
    if level not in _GLOG_LEVELS:
        raise ValueError(f"init_log level must be 0, 1, 2 or 3 (glog severities), got {level}")
    install(_GLOG_LEVELS[level], sys.stderr if use_stderr else sys.stdout)


def log(message: str) -> None:
    """Write ``message`` as an INFO line of brewnet's log, as pycaffe's ``caffe.log``."""
    logging.getLogger("brewnet").info("%s", message)
