"""Learning-rate policies: Caffe's logged rates and values worked out by hand."""

from __future__ import annotations

import json
import logging
import math

import pytest
from google.protobuf import text_format
from reference_case import REFERENCE

from brewnet.proto import caffe_pb2
from brewnet.solvers import format_number, get_solver, learning_rate

CAFFE_RATES = json.loads((REFERENCE / "solvers" / "lr_policies.json").read_text())

LINEAR = """
name: "linear"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 2 } } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 2 dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h"
  inner_product_param { num_output: 1 bias_term: false } }
layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "t" top: "loss" }
"""


def parse(text: str) -> caffe_pb2.SolverParameter:
    return text_format.Parse(text, caffe_pb2.SolverParameter())


def rates(param: caffe_pb2.SolverParameter, iterations, current_step: int = 0):
    values = []
    for iteration in iterations:
        rate, current_step = learning_rate(param, iteration, current_step)
        values.append(rate)
    return values


def test_reference_covers_every_policy():
    assert sorted(CAFFE_RATES) == sorted(
        ["fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid"]
    )


@pytest.mark.parametrize("policy", sorted(CAFFE_RATES))
def test_caffe_rates(policy):
    case = CAFFE_RATES[policy]
    param = parse(case["solver"])
    assert rates(param, range(10)) == pytest.approx(case["lr"], rel=1e-5)


@pytest.mark.parametrize("policy", sorted(CAFFE_RATES))
def test_caffe_rate_log_lines(policy, caplog):
    case = CAFFE_RATES[policy]
    param = parse(case["solver"])
    text_format.Parse(LINEAR, param.net_param)
    solver = get_solver(param)
    caplog.set_level(logging.INFO, logger="brewnet.solver")
    solver.step(10)
    logged = [
        r.getMessage()
        for r in caplog.records
        if r.name == "brewnet.solver" and ", lr = " in r.getMessage()
    ]
    expected = [
        f"Iteration {i}, lr = {format_number(value)}"
        for i, value in enumerate(case["lr"])
    ]
    assert logged == expected


HAND_WORKED = [
    # policy settings, iterations, rates
    ('lr_policy: "fixed" base_lr: 0.5', [0, 7, 1000], [0.5, 0.5, 0.5]),
    (
        'lr_policy: "step" base_lr: 1 gamma: 0.1 stepsize: 10',
        [0, 9, 10, 25],
        [1, 1, 0.1, 0.01],
    ),
    ('lr_policy: "exp" base_lr: 2 gamma: 0.5', [0, 1, 3], [2, 1, 0.25]),
    ('lr_policy: "inv" base_lr: 1 gamma: 1 power: 1', [0, 1, 3], [1, 0.5, 0.25]),
    ('lr_policy: "inv" base_lr: 1 gamma: 0.5 power: 2', [0, 2, 6], [1, 0.25, 0.0625]),
    (
        'lr_policy: "multistep" base_lr: 1 gamma: 0.5 stepvalue: 2 stepvalue: 4',
        [0, 1, 2, 3, 4, 5],
        [1, 1, 0.5, 0.5, 0.25, 0.25],
    ),
    (
        'lr_policy: "poly" base_lr: 1 power: 1 max_iter: 4',
        [0, 1, 2, 4],
        [1, 0.75, 0.5, 0],
    ),
    ('lr_policy: "poly" base_lr: 2 power: 2 max_iter: 4', [0, 1, 2], [2, 1.125, 0.5]),
    ('lr_policy: "sigmoid" base_lr: 1 gamma: 1 stepsize: 2', [2], [0.5]),
    (
        'lr_policy: "sigmoid" base_lr: 1 gamma: 2 stepsize: 3',
        [1, 4],
        [1 / (1 + math.exp(4)), 1 / (1 + math.exp(-2))],
    ),
]


@pytest.mark.parametrize("settings, iterations, expected", HAND_WORKED)
def test_policy_by_hand(settings, iterations, expected):
    param = parse(settings)
    if param.lr_policy == "multistep":
        values = rates(param, iterations)
    else:
        values = [learning_rate(param, i, 0)[0] for i in iterations]
    assert values == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_step_sets_current_step():
    param = parse('lr_policy: "step" base_lr: 1 gamma: 0.1 stepsize: 10')
    assert learning_rate(param, 25, 0) == (pytest.approx(0.01), 2)


def test_multistep_advances_one_step_per_iteration():
    # A solver restored at iteration 5 with step 0 catches up one step per call, as
    # Caffe's GetLearningRate does.
    param = parse(
        'lr_policy: "multistep" base_lr: 1 gamma: 0.5 stepvalue: 2 stepvalue: 4'
    )
    rate, step = learning_rate(param, 5, 0)
    assert (rate, step) == (0.5, 1)
    rate, step = learning_rate(param, 6, step)
    assert (rate, step) == (0.25, 2)
    rate, step = learning_rate(param, 7, step)
    assert (rate, step) == (0.25, 2)


def test_multistep_logs_status(caplog):
    param = parse('lr_policy: "multistep" base_lr: 1 gamma: 0.5 stepvalue: 2')
    caplog.set_level(logging.INFO, logger="brewnet.solver")
    rates(param, range(4))
    assert [r.getMessage() for r in caplog.records] == [
        "MultiStep Status: Iteration 2, step = 1"
    ]


def test_rate_is_single_precision():
    param = parse('lr_policy: "exp" base_lr: 0.01 gamma: 0.9')
    rate = learning_rate(param, 1, 0)[0]
    assert rate == pytest.approx(0.009, rel=1e-7)
    assert rate != 0.009  # 0.009 is not a float32 value
    import numpy as np

    assert rate == float(np.float32(rate))


def test_poly_past_max_iter_is_zero_or_nan():
    param = parse('lr_policy: "poly" base_lr: 1 power: 2 max_iter: 4')
    assert learning_rate(param, 6, 0)[0] == pytest.approx(0.25)
    param = parse('lr_policy: "poly" base_lr: 1 power: 0.5 max_iter: 4')
    assert math.isnan(learning_rate(param, 6, 0)[0])
