"""glog-style log lines and the terminal progress bar."""

from __future__ import annotations

import io
import logging
import re

import pytest

from brewnet import logs


@pytest.fixture(autouse=True)
def restore_brewnet_logger():
    """logs.install changes the 'brewnet' logger; put it back for caplog users."""
    root = logging.getLogger("brewnet")
    saved = (list(root.handlers), root.level, root.propagate)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    root.propagate = saved[2]


class TerminalStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_glog_prefix_format():
    record = logging.LogRecord("brewnet.solver", logging.INFO, "/x/solver.py", 45, "Solving %s", ("LeNet",), None)
    line = logs.GlogFormatter().format(record)
    assert re.fullmatch(r"I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ solver\.py:45\] Solving LeNet", line)


def test_warning_uses_w_severity():
    record = logging.LogRecord("brewnet", logging.WARNING, "net.py", 3, "careful", (), None)
    assert logs.GlogFormatter().format(record).startswith("W")


def test_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    handler = logs.install(stream=stream)
    assert not isinstance(handler, logs.ProgressHandler)


def test_progress_bar_on_a_terminal():
    stream = TerminalStream()
    handler = logs.install(stream=stream)
    assert isinstance(handler, logs.ProgressHandler)
    handler.update(25, 100, "loss 0.5")
    assert "[#######.......................] 25/100 loss 0.5" in stream.getvalue()
    logging.getLogger("brewnet.solver").info("Iteration 25, lr = 0.01")
    text = stream.getvalue()
    # The bar is cleared before the log line and drawn again after it.
    assert "\r\033[K" in text
    assert text.rstrip().endswith("25/100 loss 0.5")
    handler.finish()
    assert stream.getvalue().endswith("\r\033[K")


def test_init_log_shows_net_setup(capsys):
    import brewnet

    brewnet.init_log(0)
    brewnet.log("hello from a script")
    captured = capsys.readouterr()
    assert re.search(r"^I\d{4} .*\] hello from a script$", captured.err, re.M)


def test_init_log_rejects_unknown_level():
    import brewnet

    with pytest.raises(ValueError, match="init_log level must be 0, 1, 2 or 3"):
        brewnet.init_log(7)
