"""Upgrades of V0 and V1 nets, legacy binary models, solvers and upgrade_file."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import brewnet
from brewnet.errors import (
    ModelFileError,
    NetDefinitionError,
    PrototxtError,
    SolverError,
)
from brewnet.io.legacy import (
    net_needs_upgrade,
    upgrade_file,
    upgrade_legacy_layers,
    upgrade_solver,
)
from brewnet.io.upgrade import upgrade_net
from brewnet.proto import caffe_pb2

V0_NET = """
name: "CaffeNetV0"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 11 input_dim: 11
layers {
  layer {
    name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2 group: 1
    biasterm: true
    weight_filler { type: "gaussian" std: 0.01 }
    bias_filler { type: "constant" value: 0.5 }
    blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  }
  bottom: "data" top: "conv1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pad1" type: "padding" pad: 1 } bottom: "conv1" top: "pad1" }
layers {
  layer { name: "pool1" type: "pool" pool: MAX kernelsize: 3 stride: 2 }
  bottom: "pad1" top: "pool1"
}
layers {
  layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.0001 beta: 0.75 }
  bottom: "pool1" top: "norm1"
}
layers { layer { name: "pad2" type: "padding" pad: 2 } bottom: "norm1" top: "pad2" }
layers {
  layer { name: "conv2" type: "conv" num_output: 6 kernelsize: 5 group: 2 }
  bottom: "pad2" top: "conv2"
}
layers { layer { name: "fc" type: "innerproduct" num_output: 3 } bottom: "conv2" top: "fc" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.4 } bottom: "fc" top: "fc" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
"""

# V0_NET after upgrade_legacy_layers: the padding layers are gone, their pad sits
# in pool1 and conv2, and the net-level input stays for brewnet.io.upgrade.
V0_NET_UPGRADED = """
name: "CaffeNetV0"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 11 input_dim: 11
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  convolution_param {
    num_output: 4 bias_term: true kernel_size: 3 group: 1 stride: 2
    weight_filler { type: "gaussian" std: 0.01 }
    bias_filler { type: "constant" value: 0.5 }
  }
}
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer {
  name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX pad: 1 kernel_size: 3 stride: 2 }
}
layer {
  name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
  lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 }
}
layer {
  name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
  convolution_param { num_output: 6 pad: 2 kernel_size: 5 group: 2 }
}
layer {
  name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc"
  inner_product_param { num_output: 3 }
}
layer {
  name: "drop" type: "Dropout" bottom: "fc" top: "fc"
  dropout_param { dropout_ratio: 0.4 }
}
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

V0_DATA_NET = """
layers {
  layer {
    name: "data" type: "data" source: "train_db" meanfile: "mean.binaryproto"
    batchsize: 4 cropsize: 5 mirror: true scale: 0.5 rand_skip: 3
  }
  top: "data" top: "label"
}
layers {
  layer {
    name: "images" type: "images" source: "list.txt" batchsize: 2 new_height: 8
    new_width: 9 shuffle_images: true
  }
  top: "pixels" top: "tag"
}
layers {
  layer {
    name: "win" type: "window_data" source: "windows.txt" det_fg_threshold: 0.6
    det_bg_threshold: 0.4 det_fg_fraction: 0.3 det_context_pad: 16
    det_crop_mode: "square"
  }
  top: "w" top: "wl"
}
layers {
  layer { name: "cat" type: "concat" concat_dim: 0 }
  bottom: "data" bottom: "pixels" top: "cat"
}
"""

V0_DATA_NET_UPGRADED = """
layer {
  name: "data" type: "Data" top: "data" top: "label"
  transform_param { scale: 0.5 mirror: true crop_size: 5 mean_file: "mean.binaryproto" }
  data_param { source: "train_db" batch_size: 4 rand_skip: 3 }
}
layer {
  name: "images" type: "ImageData" top: "pixels" top: "tag"
  image_data_param {
    source: "list.txt" batch_size: 2 shuffle: true new_height: 8 new_width: 9
  }
}
layer {
  name: "win" type: "WindowData" top: "w" top: "wl"
  window_data_param {
    source: "windows.txt" fg_threshold: 0.6 bg_threshold: 0.4 fg_fraction: 0.3
    context_pad: 16 crop_mode: "square"
  }
}
layer { name: "cat" type: "Concat" bottom: "data" bottom: "pixels" top: "cat"
  concat_param { concat_dim: 0 } }
"""

V1_NET = """
name: "LeNetV1"
layers {
  name: "mnist" type: DATA top: "data" top: "label"
  data_param {
    source: "db" batch_size: 4 scale: 0.00390625 mean_file: "m.binaryproto"
    crop_size: 3 mirror: true
  }
  include { phase: TRAIN }
}
layers {
  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  param: "conv_w" param: "conv_b"
  blob_share_mode: STRICT blob_share_mode: PERMISSIVE
  convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "xavier" } }
}
layers {
  name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layers {
  name: "ip1" type: INNER_PRODUCT bottom: "pool1" top: "ip1" blobs_lr: 1
  inner_product_param { num_output: 3 }
  blobs { num: 1 channels: 1 height: 1 width: 3 data: 0.5 data: -1 data: 2 }
}
layers {
  name: "relu1" type: RELU bottom: "ip1" top: "ip1" relu_param { negative_slope: 0.1 }
}
layers {
  name: "loss" type: SOFTMAX_LOSS bottom: "ip1" bottom: "label" top: "loss"
  loss_weight: 2 exclude { phase: TEST } loss_param { ignore_label: 1 }
}
layers {
  name: "acc" type: ACCURACY bottom: "ip1" bottom: "label" top: "acc"
  accuracy_param { top_k: 1 } include { phase: TEST }
}
layers { name: "deconv" type: DECONVOLUTION bottom: "conv1" top: "up"
  convolution_param { num_output: 1 kernel_size: 2 } }
layers { name: "nothing" type: NONE }
"""

V1_NET_UPGRADED = """
name: "LeNetV1"
layer {
  name: "mnist" type: "Data" top: "data" top: "label"
  include { phase: TRAIN }
  transform_param { scale: 0.00390625 mirror: true crop_size: 3 mean_file: "m.binaryproto" }
  data_param { source: "db" batch_size: 4 }
}
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { name: "conv_w" share_mode: STRICT lr_mult: 1 decay_mult: 1 }
  param { name: "conv_b" share_mode: PERMISSIVE lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "xavier" } }
}
layer {
  name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layer {
  name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
  param { lr_mult: 1 }
  blobs { num: 1 channels: 1 height: 1 width: 3 data: 0.5 data: -1 data: 2 }
  inner_product_param { num_output: 3 }
}
layer {
  name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" relu_param { negative_slope: 0.1 }
}
layer {
  name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss"
  loss_weight: 2 exclude { phase: TEST } loss_param { ignore_label: 1 }
}
layer {
  name: "acc" type: "Accuracy" bottom: "ip1" bottom: "label" top: "acc"
  include { phase: TEST } accuracy_param { top_k: 1 }
}
layer { name: "deconv" type: "Deconvolution" bottom: "conv1" top: "up"
  convolution_param { num_output: 1 kernel_size: 2 } }
layer { name: "nothing" type: "" }
"""

# A deploy net in V1 form and the same net in the current form.
V1_DEPLOY = """
name: "tiny"
input: "data"
input_dim: 2 input_dim: 1 input_dim: 5 input_dim: 5
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
  convolution_param { num_output: 2 kernel_size: 3 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "ip" type: INNER_PRODUCT bottom: "conv" top: "ip"
  inner_product_param { num_output: 3 } }
"""

CURRENT_DEPLOY = """
name: "tiny"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 2 dim: 1 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 3 } }
"""

CONV_WEIGHT = (np.arange(18, dtype=np.float32).reshape(2, 1, 3, 3) - 9) / 10
CONV_BIAS = np.array([0.25, -0.5], dtype=np.float32)
IP_WEIGHT = (np.arange(54, dtype=np.float32).reshape(3, 18) - 27) / 50
IP_BIAS = np.array([1.0, 0.0, -1.0], dtype=np.float32)


def parse(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


def upgraded(text: str, source: str = "test.prototxt") -> caffe_pb2.NetParameter:
    net = parse(text)
    with pytest.warns(DeprecationWarning):
        upgrade_legacy_layers(net, source)
    return net


def legacy_blob(array: np.ndarray) -> caffe_pb2.BlobProto:
    """Return a BlobProto with the legacy 4 shape fields, as old Caffe wrote them."""
    shape = (1,) * (4 - array.ndim) + array.shape
    return caffe_pb2.BlobProto(
        num=shape[0],
        channels=shape[1],
        height=shape[2],
        width=shape[3],
        data=array.ravel(),
    )


def v1_model() -> caffe_pb2.NetParameter:
    """Return CURRENT_DEPLOY's weights as a V1 binary model with legacy blob shapes."""
    model = parse(V1_DEPLOY)
    model.ClearField("input")
    model.ClearField("input_dim")
    model.layers[0].blobs.extend([legacy_blob(CONV_WEIGHT), legacy_blob(CONV_BIAS)])
    model.layers[2].blobs.extend([legacy_blob(IP_WEIGHT), legacy_blob(IP_BIAS)])
    return model


def current_net(folder: Path) -> brewnet.Net:
    path = folder / "current.prototxt"
    path.write_text(CURRENT_DEPLOY, encoding="utf-8")
    return brewnet.Net(str(path), brewnet.TEST)


def assert_tiny_weights(net: brewnet.Net) -> None:
    assert np.array_equal(net.params["conv"][0].data, CONV_WEIGHT)
    assert np.array_equal(net.params["conv"][1].data, CONV_BIAS)
    assert np.array_equal(net.params["ip"][0].data, IP_WEIGHT)
    assert np.array_equal(net.params["ip"][1].data, IP_BIAS)


# ============================================================================ V0
def test_v0_net_upgrade_field_by_field():
    net = upgraded(V0_NET)
    expected = parse(V0_NET_UPGRADED)
    assert not net.layers
    assert [layer.name for layer in net.layer] == [
        layer.name for layer in expected.layer
    ]
    for actual, wanted in zip(net.layer, expected.layer):
        assert actual == wanted, f"layer {actual.name}:\n{actual}\nexpected:\n{wanted}"
    assert net == expected
    conv1 = net.layer[0]
    assert [(p.lr_mult, p.decay_mult) for p in conv1.param] == [(1, 1), (2, 0)]
    assert list(conv1.convolution_param.kernel_size) == [3]
    assert list(conv1.convolution_param.stride) == [2]
    assert net.layer[2].bottom == ["conv1"]
    assert net.layer[2].pooling_param.pad == 1
    assert net.layer[4].bottom == ["norm1"]
    assert list(net.layer[4].convolution_param.pad) == [2]


def test_v0_data_fields_upgrade():
    net = upgraded(V0_DATA_NET)
    assert net == parse(V0_DATA_NET_UPGRADED)


def test_v0_net_builds_and_runs(tmp_path):
    path = tmp_path / "v0.prototxt"
    path.write_text(V0_NET, encoding="utf-8")
    with pytest.warns(DeprecationWarning) as record:
        net = brewnet.Net(str(path), brewnet.TEST)
    messages = [str(warning.message) for warning in record]
    assert any("uses the V0 layer format" in message for message in messages)
    assert any(
        "net-level input fields are deprecated" in message for message in messages
    )
    assert [layer.name for layer in net._layers] == [
        "input", "conv1", "relu1", "pool1", "norm1", "conv2", "fc", "drop", "prob",
    ]  # fmt: skip
    assert net.blobs["pool1"].shape == (2, 4, 3, 3)
    assert net.blobs["conv2"].shape == (2, 6, 3, 3)
    assert net.params["conv1"][1].data.tolist() == [0.5] * 4
    net.blobs["data"].data[...] = np.random.default_rng(0).random((2, 3, 11, 11))
    out = net.forward()
    assert out["prob"].shape == (2, 3)
    assert np.allclose(out["prob"].sum(axis=1), 1.0)


def test_v0_field_for_wrong_type_is_dropped(caplog):
    text = (
        'layers { layer { name: "r" type: "relu" num_output: 3 } bottom: "x" top: "r" }'
    )
    text = 'input: "x" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1\n' + text
    with caplog.at_level(logging.WARNING, logger="brewnet.io.legacy"):
        net = upgraded(text)
    assert (
        "V0 layer 'r': field 'num_output' does not apply to type 'relu'; dropped"
        in caplog.text
    )
    assert net.layer[0].type == "ReLU"
    assert not net.layer[0].HasField("inner_product_param")


@pytest.mark.parametrize(
    "text, message",
    [
        ('layers { layer { name: "q" type: "quantum" } top: "q" }',
         "V0 layer 'q' has unknown type 'quantum'; known V0 types: accuracy, bnll"),
        (('input: "x" layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "p" }'
          'layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }'),
         "padding layer 'p' feeds layer 'r' of type 'relu'"),
        ('layers { layer { name: "c" type: "conv" } bottom: "nowhere" top: "c" }',
         "V0 layer 'c' reads unknown blob 'nowhere'"),
        (('input: "x" input: "y" layers { layer { name: "p" type: "padding" } bottom: "x" top: "p" }'
          'layers { layer { name: "c" type: "conv" } bottom: "p" bottom: "y" top: "c" }'),
         "layer 'c' reads padding layer 'p' but has 2 bottoms"),
    ],
)  # fmt: skip
def test_v0_upgrade_errors(text, message):
    net = parse(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(NetDefinitionError, match=message) as error:
            upgrade_legacy_layers(net, "old.prototxt")
    assert str(error.value).startswith("old.prototxt: ")


# ============================================================================ V1
def test_v1_net_upgrade_field_by_field():
    net = upgraded(V1_NET)
    expected = parse(V1_NET_UPGRADED)
    assert not net.layers
    assert len(net.layer) == len(expected.layer)
    for actual, wanted in zip(net.layer, expected.layer):
        assert actual == wanted, f"layer {actual.name}:\n{actual}\nexpected:\n{wanted}"
    assert net == expected
    data = net.layer[0]
    assert not data.data_param.HasField("scale")
    assert not data.data_param.HasField("mirror")
    assert data.transform_param.scale == pytest.approx(0.00390625)
    assert [spec.name for spec in net.layer[1].param] == ["conv_w", "conv_b"]
    assert net.layer[1].param[1].share_mode == caffe_pb2.ParamSpec.PERMISSIVE
    assert net.layer[3].blobs[0].width == 3
    assert list(net.layer[3].blobs[0].data) == [0.5, -1, 2]


def test_v1_deprecation_warning_names_file():
    net = parse(V1_DEPLOY)
    with pytest.warns(
        DeprecationWarning, match=r"deploy.prototxt: the net uses the V1 layer format"
    ):
        upgrade_legacy_layers(net, "deploy.prototxt")


def test_v1_deploy_matches_current_net(tmp_path):
    v1_path = tmp_path / "v1.prototxt"
    v1_path.write_text(V1_DEPLOY, encoding="utf-8")
    with pytest.warns(DeprecationWarning):
        old = brewnet.Net(str(v1_path), brewnet.TEST)
    new = current_net(tmp_path)
    for net in (old, new):
        net.params["conv"][0].data[...] = CONV_WEIGHT
        net.params["conv"][1].data[...] = CONV_BIAS
        net.params["ip"][0].data[...] = IP_WEIGHT
        net.params["ip"][1].data[...] = IP_BIAS
    data = np.random.default_rng(1).standard_normal((2, 1, 5, 5))
    assert np.array_equal(old.forward(data=data)["ip"], new.forward(data=data)["ip"])


def test_mixed_layer_and_layers_error():
    net = parse('layer { name: "a" type: "ReLU" } layers { name: "b" type: RELU }')
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(
            NetDefinitionError, match="both 'layer' entries and legacy 'layers'"
        ):
            upgrade_legacy_layers(net, "mixed.prototxt")


def test_current_net_is_left_unchanged():
    text = (
        CURRENT_DEPLOY
        + """
    layer { name: "bn" type: "BatchNorm" bottom: "ip" top: "ip"
      param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } }
    layer { name: "d" type: "Data" top: "d" transform_param { scale: 2 }
      data_param { source: "db" batch_size: 1 } }
    """
    )
    net = parse(text)
    original = parse(text)
    assert not net_needs_upgrade(net)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        upgrade_legacy_layers(net, "current.prototxt")
    assert net == original


# ============================================================================ other upgrades
def test_batch_norm_learning_rates_set_to_zero():
    net = parse("""
    layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x"
      param { name: "m" lr_mult: 1 } param { lr_mult: 1 decay_mult: 2 } param {} }
    layer { name: "bn2" type: "BatchNorm" bottom: "x" top: "x" param { lr_mult: 1 } }
    """)
    with pytest.warns(
        DeprecationWarning, match="BatchNorm layers declare three learnable params"
    ):
        upgrade_legacy_layers(net, "bn.prototxt")
    specs = net.layer[0].param
    assert [(s.name, s.lr_mult, s.decay_mult) for s in specs] == [
        ("m", 0, 0),
        ("", 0, 0),
        ("", 0, 0),
    ]
    assert net.layer[1].param[0].lr_mult == 1  # only a 3-param BatchNorm is upgraded


def test_data_fields_of_current_layer_move():
    net = parse("""
    layer { name: "img" type: "ImageData" top: "a" top: "b"
      transform_param { scale: 3 mean_value: 10 }
      image_data_param { source: "list" scale: 0.5 crop_size: 4 mirror: true } }
    """)
    with pytest.warns(DeprecationWarning, match="belong in transform_param"):
        upgrade_legacy_layers(net, "img.prototxt")
    layer = net.layer[0]
    assert layer.transform_param == text_format.Parse(
        "scale: 0.5 crop_size: 4 mirror: true mean_value: 10",
        caffe_pb2.TransformationParameter(),
    )
    assert not layer.image_data_param.HasField("scale")
    assert layer.image_data_param.source == "list"


@pytest.mark.parametrize(
    "name, expected",
    [("SGD", "SGD"), ("NESTEROV", "Nesterov"), ("ADAGRAD", "AdaGrad"),
     ("RMSPROP", "RMSProp"), ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")],
)  # fmt: skip
def test_solver_type_upgrade(name, expected):
    solver = text_format.Parse(
        f"base_lr: 0.1 solver_type: {name}", caffe_pb2.SolverParameter()
    )
    with pytest.warns(DeprecationWarning, match=f"'solver_type: {name}' is deprecated"):
        result = upgrade_solver(solver, "solver.prototxt")
    assert result is solver
    assert solver.type == expected
    assert not solver.HasField("solver_type")


def test_solver_upgrade_errors_and_no_op():
    both = text_format.Parse(
        'solver_type: ADAM type: "Adam"', caffe_pb2.SolverParameter()
    )
    with pytest.raises(SolverError, match="solver.prototxt: both 'solver_type'"):
        upgrade_solver(both, "solver.prototxt")
    current = text_format.Parse('type: "RMSProp"', caffe_pb2.SolverParameter())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        upgrade_solver(current)
    assert current.type == "RMSProp"
    assert not current.HasField("solver_type")


# ============================================================================ binary models
def test_v1_binary_model_loads(tmp_path):
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(v1_model().SerializeToString())
    net = current_net(tmp_path)
    with pytest.warns(DeprecationWarning, match="uses the V1 layer format"):
        net.copy_from(str(path))
    assert_tiny_weights(net)


def test_v0_binary_model_loads(tmp_path):
    model = caffe_pb2.NetParameter(name="tiny")
    padding = model.layers.add(bottom=["data"], top=["pad"])
    padding.layer.name, padding.layer.type, padding.layer.pad = "pad", "padding", 1
    conv = model.layers.add(bottom=["pad"], top=["conv"])
    conv.layer.name, conv.layer.type = "conv", "conv"
    conv.layer.blobs.extend([legacy_blob(CONV_WEIGHT), legacy_blob(CONV_BIAS)])
    ip = model.layers.add(bottom=["conv"], top=["ip"])
    ip.layer.name, ip.layer.type = "ip", "innerproduct"
    ip.layer.blobs.extend([legacy_blob(IP_WEIGHT), legacy_blob(IP_BIAS)])
    path = tmp_path / "v0.caffemodel"
    path.write_bytes(model.SerializeToString())
    net = current_net(tmp_path)
    with pytest.warns(DeprecationWarning, match="uses the V0 layer format"):
        net.copy_from(str(path))
    assert_tiny_weights(net)


def test_upgrade_file_binary(tmp_path):
    source = tmp_path / "v1.caffemodel"
    model = v1_model()
    source.write_bytes(model.SerializeToString())
    target = tmp_path / "current.caffemodel"
    with pytest.warns(DeprecationWarning):
        assert upgrade_file(source, target) == "binary"
    result = caffe_pb2.NetParameter.FromString(target.read_bytes())
    assert not result.layers
    assert [(layer.name, layer.type) for layer in result.layer] == [
        ("conv", "Convolution"), ("relu", "ReLU"), ("ip", "InnerProduct"),
    ]  # fmt: skip
    # Blobs are copied byte for byte, legacy shape fields included.
    assert list(result.layer[0].blobs) == list(model.layers[0].blobs)
    assert list(result.layer[2].blobs) == list(model.layers[2].blobs)
    net = current_net(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.copy_from(str(target))
    assert_tiny_weights(net)


def test_upgrade_file_binary_inputs(tmp_path):
    # Old Caffe versions saved deploy nets with a net-level input and no shape.
    model = v1_model()
    model.input.append("data")
    shapeless = tmp_path / "shapeless.caffemodel"
    shapeless.write_bytes(model.SerializeToString())
    with pytest.warns(DeprecationWarning):
        upgrade_file(shapeless, tmp_path / "out1.caffemodel")
    result = caffe_pb2.NetParameter.FromString(
        (tmp_path / "out1.caffemodel").read_bytes()
    )
    assert not result.input
    assert [layer.name for layer in result.layer] == ["conv", "relu", "ip"]

    model.input_dim.extend([2, 1, 5, 5])
    shaped = tmp_path / "shaped.caffemodel"
    shaped.write_bytes(model.SerializeToString())
    with pytest.warns(DeprecationWarning):
        upgrade_file(shaped, tmp_path / "out2.caffemodel")
    result = caffe_pb2.NetParameter.FromString(
        (tmp_path / "out2.caffemodel").read_bytes()
    )
    assert [layer.type for layer in result.layer] == [
        "Input",
        "Convolution",
        "ReLU",
        "InnerProduct",
    ]
    assert list(result.layer[0].input_param.shape[0].dim) == [2, 1, 5, 5]
    assert not result.layer[0].blobs
    assert list(result.layer[1].blobs) == list(model.layers[0].blobs)


def test_upgrade_file_text(tmp_path):
    source = tmp_path / "v0.prototxt"
    source.write_text(V0_NET, encoding="utf-8")
    target = tmp_path / "current.prototxt"
    with pytest.warns(DeprecationWarning):
        assert upgrade_file(str(source), str(target)) == "text"
    written = parse(target.read_text(encoding="utf-8"))
    expected = parse(V0_NET_UPGRADED)
    with pytest.warns(DeprecationWarning):
        upgrade_net(expected, "expected")
    assert written == expected
    assert written.layer[0].type == "Input"
    assert not written.input


def test_upgrade_file_solver(tmp_path):
    source = tmp_path / "solver.prototxt"
    source.write_text(
        "base_lr: 0.01 solver_type: NESTEROV\n"
        'net_param { layers { name: "r" type: RELU bottom: "x" top: "x" } }\n',
        encoding="utf-8",
    )
    target = tmp_path / "solver_new.prototxt"
    with pytest.warns(DeprecationWarning):
        assert upgrade_file(source, target) == "solver"
    solver = text_format.Parse(
        target.read_text(encoding="utf-8"), caffe_pb2.SolverParameter()
    )
    assert solver.type == "Nesterov"
    assert not solver.HasField("solver_type")
    assert solver.base_lr == pytest.approx(0.01)
    assert solver.net_param.layer[0].type == "ReLU"
    assert not solver.net_param.layers


def test_upgrade_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.prototxt"):
        upgrade_file(tmp_path / "absent.prototxt", tmp_path / "out")
    bad_text = tmp_path / "bad.prototxt"
    bad_text.write_text('name: "x"\nlayer { nmae: "typo" }\n', encoding="utf-8")
    with pytest.raises(PrototxtError, match=r"bad.prototxt:2:\d+: .*nmae"):
        upgrade_file(bad_text, tmp_path / "out")
    bad_binary = tmp_path / "bad.caffemodel"
    bad_binary.write_bytes(b"\x0a\xff\x00\x00")
    with pytest.raises(ModelFileError, match="bad.caffemodel: the file is truncated"):
        upgrade_file(bad_binary, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_upgraded_blob_shapes_survive_a_save(tmp_path):
    # A V1 model loaded into a net and saved again gets current shape fields.
    source = tmp_path / "v1.caffemodel"
    source.write_bytes(v1_model().SerializeToString())
    net = current_net(tmp_path)
    with pytest.warns(DeprecationWarning):
        net.copy_from(str(source))
    net.save(str(tmp_path / "saved.caffemodel"))
    saved = caffe_pb2.NetParameter.FromString(
        (tmp_path / "saved.caffemodel").read_bytes()
    )
    conv = next(layer for layer in saved.layer if layer.name == "conv")
    assert list(conv.blobs[1].shape.dim) == [2]
    assert not conv.blobs[1].HasField("num")
    assert torch.equal(
        torch.from_numpy(np.array(conv.blobs[0].data, dtype=np.float32)),
        torch.from_numpy(CONV_WEIGHT.ravel()),
    )


def test_window_data_keeps_its_scale():
    from google.protobuf import text_format

    from brewnet.io.legacy import upgrade_data_transformation
    from brewnet.proto import caffe_pb2

    net = text_format.Parse(
        'layer { name: "w" type: "WindowData" top: "data" top: "label" '
        'window_data_param { source: "w.txt" scale: 0.5 crop_size: 8 } }',
        caffe_pb2.NetParameter(),
    )
    upgrade_data_transformation(net)
    param = net.layer[0].window_data_param
    assert param.scale == 0.5
    assert not param.HasField("crop_size")
    assert net.layer[0].transform_param.crop_size == 8
