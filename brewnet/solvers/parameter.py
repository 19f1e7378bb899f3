"""Reading a SolverParameter as Caffe reads it, and checking its general fields.

Caffe's ``ReadSolverParamsFromTextFileOrDie`` parses the prototxt, turns the legacy
``solver_type`` enum into the ``type`` string and derives ``snapshot_prefix`` from the
solver's path when it is missing or names a directory. The checks here reject the
settings that Caffe rejects with a fatal CHECK, plus a few that Caffe accepts and then
divides by zero with (``iter_size: 0``, ``test_iter: 0``).
"""

from __future__ import annotations

import logging
import os

from brewnet.errors import SolverError
from brewnet.io.legacy import upgrade_solver
from brewnet.io.prototxt import read_text
from brewnet.proto import caffe_pb2

logger = logging.getLogger("brewnet.solver")

SolverParameter = caffe_pb2.SolverParameter

TRAIN_NET_FIELDS = ("net", "net_param", "train_net", "train_net_param")


def read_solver_parameter(path: str | os.PathLike) -> caffe_pb2.SolverParameter:
    """Read a solver prototxt and apply Caffe's upgrades to it.

    The legacy ``solver_type`` enum becomes ``type``. A missing ``snapshot_prefix``
    becomes the solver's path without its extension, and a prefix that names a
    directory gets the solver file's stem appended, as in Caffe.

    Raises:
        FileNotFoundError: the file does not exist.
        PrototxtError: the file is not a valid SolverParameter text.
        SolverError: both ``solver_type`` and ``type`` are given.
    """
    path = os.fspath(path)
    param = read_text(path, caffe_pb2.SolverParameter())
    upgrade_solver(param, path)
    _upgrade_snapshot_prefix(param, path)
    return param


def _upgrade_snapshot_prefix(param: caffe_pb2.SolverParameter, path: str) -> None:
    if not param.HasField("snapshot_prefix"):
        param.snapshot_prefix = os.path.splitext(path)[0]
        logger.info(
            "snapshot_prefix was not specified and is set to %s", param.snapshot_prefix
        )
    elif os.path.isdir(param.snapshot_prefix):
        stem = os.path.splitext(os.path.basename(path))[0]
        param.snapshot_prefix = os.path.join(param.snapshot_prefix, stem)
        logger.info(
            "snapshot_prefix was a directory and is replaced to %s",
            param.snapshot_prefix,
        )


def check_general_fields(param: caffe_pb2.SolverParameter, source: str) -> None:
    """Raise SolverError for invalid fields that every solver type shares."""
    _check_train_net_count(param, source)
    _check_test_nets(param, source)
    for field_name in ("display", "snapshot", "test_interval"):
        value = getattr(param, field_name)
        if value < 0:
            raise SolverError(
                f"{source}: {field_name} must be >= 0 (0 turns it off), got "
                f"{field_name}: {value}"
            )
    if param.average_loss < 1:
        raise SolverError(
            f"{source}: average_loss must be >= 1, got average_loss: "
            f"{param.average_loss}"
        )
    if param.iter_size < 1:
        raise SolverError(
            f"{source}: iter_size must be >= 1, got iter_size: {param.iter_size}"
        )
    if param.regularization_type not in ("L1", "L2"):
        raise SolverError(
            f"{source}: unknown regularization_type '{param.regularization_type}'; "
            f'use "L2" or "L1"'
        )


def _check_train_net_count(param: caffe_pb2.SolverParameter, source: str) -> None:
    given = [name for name in TRAIN_NET_FIELDS if param.HasField(name)]
    if not given:
        raise SolverError(
            f"{source}: no train net; give one of the fields "
            f"{', '.join(TRAIN_NET_FIELDS)}"
        )
    if len(given) > 1:
        raise SolverError(
            f"{source}: more than one train net ({', '.join(given)}); give exactly one "
            f"of the fields {', '.join(TRAIN_NET_FIELDS)}"
        )


def count_test_nets(param: caffe_pb2.SolverParameter) -> int:
    """Return how many test nets Caffe builds for ``param``.

    Every ``test_net`` and ``test_net_param`` is one; a ``net`` or ``net_param`` adds
    one more test net for each ``test_iter`` left over.
    """
    explicit = len(param.test_net) + len(param.test_net_param)
    if param.HasField("net") or param.HasField("net_param"):
        return max(explicit, len(param.test_iter))
    return explicit


def _check_test_nets(param: caffe_pb2.SolverParameter, source: str) -> None:
    explicit = len(param.test_net) + len(param.test_net_param)
    generic = param.HasField("net") or param.HasField("net_param")
    if generic and len(param.test_iter) < explicit:
        raise SolverError(
            f"{source}: {explicit} test nets (test_net, test_net_param) but "
            f"{len(param.test_iter)} test_iter values; give one test_iter per test net"
        )
    if not generic and len(param.test_iter) != explicit:
        raise SolverError(
            f"{source}: {explicit} test nets (test_net, test_net_param) but "
            f"{len(param.test_iter)} test_iter values; give one test_iter per test net"
        )
    total = count_test_nets(param)
    if param.test_state and len(param.test_state) != total:
        raise SolverError(
            f"{source}: {len(param.test_state)} test_state entries for {total} test "
            f"nets; give one test_state per test net, or none"
        )
    if total and param.test_interval <= 0:
        raise SolverError(
            f"{source}: the solver has {total} test net(s) but test_interval is "
            f"{param.test_interval}; set test_interval > 0, or remove test_iter to "
            f"train without testing"
        )
    for index, value in enumerate(param.test_iter):
        if value < 1:
            raise SolverError(
                f"{source}: test_iter #{index} must be >= 1, got test_iter: {value}"
            )
