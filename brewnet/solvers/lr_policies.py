"""Learning-rate policies with Caffe's formulas (``SGDSolver::GetLearningRate``).

``iter`` is the number of updates done so far, so the rate used by the first update is
the policy's value at iteration 0:

=========  =====================================================================
fixed      ``base_lr``
step       ``base_lr * gamma ^ floor(iter / stepsize)``
exp        ``base_lr * gamma ^ iter``
inv        ``base_lr * (1 + gamma * iter) ^ (-power)``
multistep  ``base_lr * gamma ^ k``, where ``k`` counts the ``stepvalue`` entries
           reached so far (at most one more per iteration, as in Caffe)
poly       ``base_lr * (1 - iter / max_iter) ^ power``
sigmoid    ``base_lr / (1 + exp(-gamma * (iter - stepsize)))``
=========  =====================================================================

Caffe keeps the rate in single precision. With an integer exponent (step, exp,
multistep) its ``pow`` runs in double precision and the product is rounded once; inv,
poly and sigmoid run ``pow``/``exp`` and the product in single precision. The values
here are rounded in the same places, so logged rates and updates agree with Caffe's.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from brewnet.errors import SolverError
from brewnet.proto import caffe_pb2

logger = logging.getLogger("brewnet.solver")

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")

# Policies that Caffe runs with CHECK_GE(gamma, 0) and CHECK_GT(stepsize, 0).
_NEEDS_NONNEGATIVE_GAMMA = ("step", "exp", "inv", "multistep", "sigmoid")
_NEEDS_STEPSIZE = ("step", "sigmoid")


def check_lr_policy(param: caffe_pb2.SolverParameter, source: str) -> None:
    """Raise SolverError when ``param``'s lr_policy or its settings are invalid."""
    policy = param.lr_policy
    if policy not in POLICIES:
        quoted = f"'{policy}'" if param.HasField("lr_policy") else "(none given)"
        raise SolverError(
            f"{source}: unknown lr_policy {quoted}; use one of {', '.join(POLICIES)}"
        )
    if policy in _NEEDS_STEPSIZE and param.stepsize <= 0:
        raise SolverError(
            f"{source}: lr_policy '{policy}' needs stepsize > 0, got stepsize: "
            f"{param.stepsize}"
        )
    if policy in _NEEDS_NONNEGATIVE_GAMMA and param.gamma < 0:
        raise SolverError(
            f"{source}: lr_policy '{policy}' needs gamma >= 0, got gamma: "
            f"{param.gamma:g}"
        )
    if policy == "poly" and param.max_iter <= 0:
        raise SolverError(
            f"{source}: lr_policy 'poly' divides by max_iter, which must be > 0, got "
            f"max_iter: {param.max_iter}"
        )


def learning_rate(
    param: caffe_pb2.SolverParameter, iteration: int, current_step: int
) -> tuple[float, int]:
    """Return the rate at ``iteration`` and the new ``current_step``.

    ``current_step`` is the solver's step counter: "step" sets it to
    ``iteration // stepsize`` and "multistep" advances it by at most one per call,
    which is why the caller must store the returned value (it is part of a
    solver state).
    """
    policy = param.lr_policy
    base_lr = param.base_lr
    if policy == "fixed":
        return _f32(base_lr), current_step
    if policy == "step":
        current_step = iteration // param.stepsize
        return _f32(base_lr * _pow(param.gamma, current_step)), current_step
    if policy == "exp":
        return _f32(base_lr * _pow(param.gamma, iteration)), current_step
    if policy == "inv":
        base = np.float32(1) + np.float32(param.gamma) * np.float32(iteration)
        factor = np.float32(_pow(float(base), -param.power))
        return float(np.float32(base_lr) * factor), current_step
    if policy == "multistep":
        if (
            current_step < len(param.stepvalue)
            and iteration >= param.stepvalue[current_step]
        ):
            current_step += 1
            logger.info(
                "MultiStep Status: Iteration %d, step = %d", iteration, current_step
            )
        return _f32(base_lr * _pow(param.gamma, current_step)), current_step
    if policy == "poly":
        fraction = np.float32(iteration) / np.float32(param.max_iter)
        base = float(np.float32(1) - fraction)
        factor = np.float32(_pow(base, param.power))
        return float(np.float32(base_lr) * factor), current_step
    if policy == "sigmoid":
        exponent = float(
            -np.float32(param.gamma)
            * (np.float32(iteration) - np.float32(param.stepsize))
        )
        try:
            power = math.exp(exponent)
        except OverflowError:
            power = math.inf
        with np.errstate(over="ignore"):
            factor = np.float32(1) / (np.float32(1) + np.float32(power))
        return float(np.float32(base_lr) * factor), current_step
    raise SolverError(f"unknown lr_policy '{policy}'; use one of {', '.join(POLICIES)}")


def _pow(base: float, exponent: float) -> float:
    """Return ``base ** exponent`` with C's results: NaN or inf instead of errors."""
    if base == 0 and exponent < 0:
        return math.inf
    try:
        return math.pow(base, exponent)
    except ValueError:
        return math.nan
    except OverflowError:
        return math.inf


def _f32(value: float) -> float:
    return float(np.float32(value))
