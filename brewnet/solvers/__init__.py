"""Solvers: Caffe's training loop, update rules, learning-rate policies and snapshots.

``get_solver(path_or_param)`` builds the solver that the ``type`` field (or the legacy
``solver_type`` enum) names:

>>> solver = get_solver("lenet_solver.prototxt")   # doctest: +SKIP
>>> solver.step(100)                              # doctest: +SKIP
"""

from __future__ import annotations

import os

import torch

from brewnet.errors import SolverError
from brewnet.io.legacy import upgrade_solver
from brewnet.proto import caffe_pb2
from brewnet.solvers.base import Solver, SolverAction, as_solver_action, format_number
from brewnet.solvers.lr_policies import POLICIES, check_lr_policy, learning_rate
from brewnet.solvers.parameter import read_solver_parameter
from brewnet.solvers.sgd import (
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
)

_REGISTRY: dict[str, type[Solver]] = {}


def register_solver(cls: type[Solver]) -> type[Solver]:
    """Register a Solver subclass under its ``type`` name; usable as a decorator.

    Raises:
        ValueError: the class has no type name, or another class has the name.
    """
    if not cls.type:
        raise ValueError(f"{cls.__name__} has no type name")
    existing = _REGISTRY.get(cls.type)
    if existing is not None and existing is not cls:
        raise ValueError(
            f"solver type '{cls.type}' is already registered by {existing.__name__}"
        )
    _REGISTRY[cls.type] = cls
    return cls


def solver_type_list() -> list[str]:
    """Return the registered solver type names, sorted."""
    return sorted(_REGISTRY)


def solver_class(type_name: str) -> type[Solver]:
    """Return the class registered for ``type_name``.

    Raises:
        SolverError: no class has that name.
    """
    cls = _REGISTRY.get(type_name)
    if cls is None:
        raise SolverError(
            f"unknown solver type '{type_name}'; known types: "
            f"{', '.join(solver_type_list())}"
        )
    return cls


def get_solver(
    param: str | os.PathLike | caffe_pb2.SolverParameter,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    source: str | None = None,
) -> Solver:
    """Build the solver that ``param`` (a solver prototxt path or a SolverParameter)
    requests with its ``type``.

    Raises:
        SolverError: the type is unknown or a solver field is invalid; the message
            names the field and its value.
    """
    if isinstance(param, caffe_pb2.SolverParameter):
        message = caffe_pb2.SolverParameter()
        message.CopyFrom(param)
        name = source or "<SolverParameter>"
        upgrade_solver(message, name)
    else:
        name = source or os.fspath(param)
        message = read_solver_parameter(param)
    try:
        cls = solver_class(message.type)
    except SolverError as error:
        raise SolverError(f"{name}: {error}") from None
    return cls(message, dtype=dtype, device=device, source=name)


for _cls in (
    SGDSolver,
    NesterovSolver,
    AdaGradSolver,
    RMSPropSolver,
    AdaDeltaSolver,
    AdamSolver,
):
    register_solver(_cls)

__all__ = [
    "POLICIES",
    "AdaDeltaSolver",
    "AdaGradSolver",
    "AdamSolver",
    "NesterovSolver",
    "RMSPropSolver",
    "SGDSolver",
    "Solver",
    "SolverAction",
    "as_solver_action",
    "check_lr_policy",
    "format_number",
    "get_solver",
    "learning_rate",
    "read_solver_parameter",
    "register_solver",
    "solver_class",
    "solver_type_list",
]
