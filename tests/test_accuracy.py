"""The Accuracy layer: Caffe's reference, tie rule, ignore_label, per class, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_case import assert_close, load_case, run_case

import brewnet
from brewnet.errors import LayerSetupError, NetDefinitionError
from brewnet.io.prototxt import parse_text
from brewnet.layers.accuracy import accuracy
from brewnet.proto import caffe_pb2

# Scores and labels for which Caffe (BVLC master) gives top-1 accuracy 0.25 and top-2
# accuracy 0.75. Sample 0 ties all classes and sample 1 ties classes 0 and 1, and a
# tie counts against the label.
SCORES = [[0.5, 0.5, 0.5], [2.0, 2.0, 1.0], [0.1, 0.9, 0.0], [3.0, 1.0, 2.0]]
LABELS = [1.0, 0.0, 1.0, 2.0]


def input_layer(name: str, dims) -> str:
    shape = " ".join(f"dim: {d}" for d in dims)
    return (
        f'layer {{ name: "{name}" type: "Input" top: "{name}" '
        f"input_param {{ shape {{ {shape} }} }} }}\n"
    )


def accuracy_net(
    params: str = "",
    tops: str = 'top: "acc"',
    scores=(4, 3),
    labels=(4,),
    extra: str = "",
) -> brewnet.Net:
    text = (
        f"{extra}\n"
        + input_layer("x", scores)
        + input_layer("y", labels)
        + f'layer {{ name: "acc" type: "Accuracy" bottom: "x" bottom: "y" {tops} '
        f"{params} }}\n"
    )
    return brewnet.Net(parse_text(text, caffe_pb2.NetParameter()), brewnet.TRAIN)


def run(net: brewnet.Net, scores=SCORES, labels=LABELS) -> dict[str, np.ndarray]:
    return net.forward(x=np.asarray(scores), y=np.asarray(labels))


# ================================================================== Caffe's reference
def test_reference_case_accuracy_topk_ignore():
    run_case("losses", "accuracy_topk_ignore")


def test_reference_accuracy_values():
    net, data = load_case("losses", "accuracy_topk_ignore")
    net.forward()
    assert_close(net.blobs["acc"].data, data["data/acc"], "accuracy")
    assert_close(
        net.blobs["per_class"].data, data["data/per_class"], "per-class accuracy"
    )
    assert_close(np.array(net.loss), data["loss"], "loss")
    assert float(net.blobs["acc"].data) == pytest.approx(0.4)


# ================================================================== values
def test_ties_count_against_the_label():
    outputs = run(accuracy_net())
    assert float(outputs["acc"]) == pytest.approx(0.25)


def test_top_k_two():
    outputs = run(accuracy_net("accuracy_param { top_k: 2 }"))
    assert float(outputs["acc"]) == pytest.approx(0.75)


def test_ignore_label_with_per_class_top():
    net = accuracy_net(
        "accuracy_param { ignore_label: 1 }", 'top: "acc" top: "per_class"'
    )
    outputs = run(net)
    assert float(outputs["acc"]) == 0.0
    assert outputs["per_class"].shape == (3,)
    np.testing.assert_array_equal(outputs["per_class"], [0.0, 0.0, 0.0])


def test_per_class_by_hand():
    net = accuracy_net("accuracy_param { top_k: 2 }", 'top: "acc" top: "per_class"')
    outputs = run(net)
    # Class 0: sample 1, correct. Class 1: samples 0 (wrong) and 2 (correct).
    # Class 2: sample 3, correct.
    np.testing.assert_allclose(outputs["per_class"], [1.0, 0.5, 1.0])


def test_every_label_ignored_gives_zero():
    net = accuracy_net(
        "accuracy_param { ignore_label: 0 }", 'top: "acc" top: "per_class"'
    )
    outputs = run(net, labels=[0.0, 0.0, 0.0, 0.0])
    assert float(outputs["acc"]) == 0.0
    np.testing.assert_array_equal(outputs["per_class"], [0.0, 0.0, 0.0])


def test_spatial_labels_on_axis_one():
    # Scores (1, 2, 3): two classes at three positions; labels (1, 3).
    scores = [[[1.0, 0.0, 2.0], [0.0, 1.0, 5.0]]]
    net = accuracy_net(scores=(1, 2, 3), labels=(1, 3))
    outputs = run(net, scores=scores, labels=[[0.0, 1.0, 0.0]])
    assert float(outputs["acc"]) == pytest.approx(2.0 / 3.0)


def test_negative_axis_and_truncated_labels():
    scores = [[[1.0, 0.0], [0.0, 1.0]]]
    net = accuracy_net("accuracy_param { axis: -1 }", scores=(1, 2, 2), labels=(1, 2))
    # 0.9 and 1.6 become 0 and 1, as Caffe's cast to int truncates them.
    outputs = run(net, scores=scores, labels=[[0.9, 1.6]])
    assert float(outputs["acc"]) == 1.0


def test_accuracy_function_matches_layer():
    overall, per_class = accuracy(torch.tensor(SCORES), torch.tensor(LABELS), top_k=2)
    assert overall.item() == pytest.approx(0.75)
    assert per_class.tolist() == pytest.approx([1.0, 0.5, 1.0])


def test_tops_have_no_gradient():
    net = accuracy_net(extra="force_backward: true")
    run(net)
    net.backward()
    assert not net.blobs["acc"].tensor.requires_grad
    np.testing.assert_array_equal(net.blobs["x"].diff, np.zeros((4, 3)))
    assert net.layer_dict["acc"].allow_force_backward(0) is False


# ================================================================== errors
def test_top_k_above_class_count_is_an_error():
    with pytest.raises(LayerSetupError, match="top_k 4 is larger than the 3 classes"):
        accuracy_net("accuracy_param { top_k: 4 }")


def test_label_count_mismatch_is_an_error():
    with pytest.raises(
        LayerSetupError, match=r"labels \(shape 3 \(3\)\) must have one entry"
    ):
        accuracy_net(labels=(3,))


@pytest.mark.parametrize("label, shown", [(3.0, "3"), (-1.0, "-1")])
def test_label_out_of_range_is_an_error(label, shown):
    net = accuracy_net()
    with pytest.raises(LayerSetupError, match=rf"label {shown} is outside \[0, 2\]"):
        run(net, labels=[0.0, label, 1.0, 2.0])


def test_ignored_label_may_be_out_of_range():
    net = accuracy_net("accuracy_param { ignore_label: -1 }")
    outputs = run(net, labels=[-1.0, 0.0, 1.0, 2.0])
    # Sample 1 ties (wrong), sample 2 is right and sample 3 is wrong at top-1.
    assert float(outputs["acc"]) == pytest.approx(1.0 / 3.0)


def test_three_tops_is_an_error():
    with pytest.raises(LayerSetupError, match="at most 2 top blobs"):
        accuracy_net(tops='top: "a" top: "b" top: "c"')


def test_loss_weight_is_an_error():
    with pytest.raises(NetDefinitionError, match="cannot backpropagate"):
        accuracy_net("loss_weight: 1")


def test_bad_axis_is_an_error():
    with pytest.raises(LayerSetupError, match="axis 2 is out of range"):
        accuracy_net("accuracy_param { axis: 2 }")
