"""NetSpec, caffe.layers (L) and caffe.params (P): pycaffe's Python net definitions."""

from __future__ import annotations

import pytest

import brewnet as caffe
from brewnet import layers as L
from brewnet import params as P
from brewnet.net_spec import Layers, NetSpec, assign_proto, param_name_dict
from brewnet.proto import caffe_pb2


def lenet(lmdb, batch_size):
    """The LeNet of pycaffe's learning-LeNet example, written with NetSpec."""
    n = caffe.NetSpec()
    n.data, n.label = L.Data(
        batch_size=batch_size, backend=P.Data.LMDB, source=lmdb,
        transform_param=dict(scale=1.0 / 255), ntop=2,
    )
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type="xavier"))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    return n.to_proto()


# Worked out from pycaffe's naming rules and caffe.proto's field order (text format
# prints fields by number: name, type, bottom, top, then the *_param messages by
# their numbers, transform_param 100 before data_param 107). The scale 1/255 is the
# float32 0.00392156886 printed by protobuf 7's shortest round-trip format; older
# protobuf releases print more digits of the same float.
LENET_TEXT = """\
layer {
  name: "data"
  type: "Data"
  top: "data"
  top: "label"
  transform_param {
    scale: 0.00392156886
  }
  data_param {
    source: "mnist/mnist_train_lmdb"
    batch_size: 64
    backend: LMDB
  }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  convolution_param {
    num_output: 20
    kernel_size: 5
    weight_filler {
      type: "xavier"
    }
  }
}
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1"
  top: "pool1"
  pooling_param {
    pool: MAX
    kernel_size: 2
    stride: 2
  }
}
layer {
  name: "conv2"
  type: "Convolution"
  bottom: "pool1"
  top: "conv2"
  convolution_param {
    num_output: 50
    kernel_size: 5
    weight_filler {
      type: "xavier"
    }
  }
}
layer {
  name: "pool2"
  type: "Pooling"
  bottom: "conv2"
  top: "pool2"
  pooling_param {
    pool: MAX
    kernel_size: 2
    stride: 2
  }
}
layer {
  name: "fc1"
  type: "InnerProduct"
  bottom: "pool2"
  top: "fc1"
  inner_product_param {
    num_output: 500
    weight_filler {
      type: "xavier"
    }
  }
}
layer {
  name: "relu1"
  type: "ReLU"
  bottom: "fc1"
  top: "fc1"
}
layer {
  name: "score"
  type: "InnerProduct"
  bottom: "fc1"
  top: "score"
  inner_product_param {
    num_output: 10
    weight_filler {
      type: "xavier"
    }
  }
}
layer {
  name: "loss"
  type: "SoftmaxWithLoss"
  bottom: "score"
  bottom: "label"
  top: "loss"
}
"""


def test_lenet_text_exact():
    assert str(lenet("mnist/mnist_train_lmdb", 64)) == LENET_TEXT


def anon_lenet(batch_size):
    """LeNet without a NetSpec: every name is generated."""
    data, label = L.DummyData(
        shape=[dict(dim=[batch_size, 1, 28, 28]), dict(dim=[batch_size, 1, 1, 1])],
        transform_param=dict(scale=1.0 / 255), ntop=2,
    )
    conv1 = L.Convolution(data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    pool1 = L.Pooling(conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    conv2 = L.Convolution(pool1, kernel_size=5, num_output=50, weight_filler=dict(type="xavier"))
    pool2 = L.Pooling(conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    ip1 = L.InnerProduct(pool2, num_output=500, weight_filler=dict(type="xavier"))
    relu1 = L.ReLU(ip1, in_place=True)
    ip2 = L.InnerProduct(relu1, num_output=10, weight_filler=dict(type="xavier"))
    loss = L.SoftmaxWithLoss(ip2, label)
    return loss.to_proto()


def test_generated_names():
    net = anon_lenet(4)
    names = [layer.name for layer in net.layer]
    assert names == [
        "DummyData1", "Convolution1", "Pooling1", "Convolution2", "Pooling2",
        "InnerProduct1", "ReLU1", "InnerProduct2", "SoftmaxWithLoss1",
    ]
    assert list(net.layer[0].top) == ["DummyData1", "DummyData2"]
    assert list(net.layer[6].top) == ["InnerProduct1"]
    assert list(net.layer[8].bottom) == ["InnerProduct2", "DummyData2"]
    assert list(net.layer[0].dummy_data_param.shape[0].dim) == [4, 1, 28, 28]


def test_generated_net_builds(tmp_path):
    path = tmp_path / "anon.prototxt"
    path.write_text(str(anon_lenet(2)))
    net = caffe.Net(str(path), caffe.TRAIN)
    assert len(net.layers) == 9
    assert net.blobs["Pooling2"].shape == (2, 50, 4, 4)
    assert net.blobs["InnerProduct2"].shape == (2, 10)
    assert net.outputs == ["SoftmaxWithLoss1"]


def test_ntop_zero_layer_named_by_attribute():
    n = caffe.NetSpec()
    n.data, n.data2 = L.DummyData(shape=dict(dim=3), ntop=2)
    n.silence_data = L.Silence(n.data, ntop=0)
    n.silence_data2 = L.Silence(n.data2, ntop=0)
    net = n.to_proto()
    assert [layer.name for layer in net.layer] == ["data", "silence_data", "silence_data2"]
    assert list(net.layer[1].top) == []
    assert list(net.layer[0].dummy_data_param.shape[0].dim) == [3]


def test_unassigned_function_gets_type_name():
    silence = L.Silence(L.DummyData(shape=dict(dim=[1])), ntop=0)
    net = caffe.to_proto(L.Power(L.DummyData(shape=dict(dim=[1]))))
    assert [layer.name for layer in net.layer] == ["DummyData1", "Power1"]
    n = caffe.NetSpec()
    n.sink = silence
    assert [layer.name for layer in n.to_proto().layer] == ["DummyData1", "sink"]


def test_layer_and_generic_fields():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2]))
    n.ip = L.InnerProduct(
        n.data, num_output=3, bias_term=False, name="renamed",
        param=[dict(lr_mult=1, decay_mult=0)], include=dict(phase=caffe.TEST),
        loss_weight=0.5, propagate_down=[True],
    )
    layer = n.to_proto().layer[1]
    assert layer.name == "renamed"
    assert list(layer.top) == ["ip"]
    assert layer.inner_product_param.num_output == 3
    assert layer.inner_product_param.bias_term is False
    assert layer.param[0].lr_mult == 1
    assert layer.param[0].decay_mult == 0
    assert layer.include[0].phase == caffe.TEST
    assert list(layer.loss_weight) == [0.5]
    assert list(layer.propagate_down) == [True]


def test_message_values_are_copied():
    filler = caffe_pb2.FillerParameter(type="constant", value=2)
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1]))
    n.ip = L.InnerProduct(n.data, num_output=1, weight_filler=filler)
    assert n.to_proto().layer[1].inner_product_param.weight_filler.value == 2


def test_netspec_item_access():
    n = NetSpec()
    n["data"] = L.Input(shape=dict(dim=[1]))
    assert n["data"] is n.data
    assert "data" in n
    assert n.keys() == ["data"]
    del n["data"]
    assert "data" not in n
    with pytest.raises(AttributeError, match="NetSpec has no top named 'data'"):
        n.data


def test_params_constants():
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert P.Pooling.AVE == 1
    assert P.Data.LMDB == caffe_pb2.DataParameter.LMDB
    assert P.Eltwise.SUM == caffe_pb2.EltwiseParameter.SUM
    with pytest.raises(AttributeError, match="PoolingParameter has no constant 'MAXX'. Did you mean MAX?"):
        P.Pooling.MAXX
    with pytest.raises(AttributeError, match="caffe.proto has no message PoolParameter. Did you mean"):
        P.Pool


def test_param_name_dict():
    names = param_name_dict()
    assert names["Convolution"] == "convolution"
    assert names["InnerProduct"] == "inner_product"
    assert names["HDF5Data"] == "hdf5_data"
    assert names["Python"] == "python"


# ------------------------------------------------------------------ errors
def test_unknown_layer_type_suggests():
    with pytest.raises(AttributeError, match="no layer type 'Convolutoin' is registered") as caught:
        L.Convolutoin
    assert "Did you mean 'Convolution'" in str(caught.value)
    with pytest.raises(AttributeError):
        L._private


def test_unregistered_types_when_not_strict():
    top = Layers(strict=False).MyCustomLayer(L.Input(shape=dict(dim=[1])))
    assert top.to_proto().layer[1].type == "MyCustomLayer"


def test_submodules_still_import():
    from brewnet.layers import base, registry

    assert base.Layer.__name__ == "Layer"
    assert registry.layer_type_list() == caffe.layer_type_list()


def test_unknown_keyword():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1]))
    n.conv = L.Convolution(n.data, num_outptu=3)
    with pytest.raises(AttributeError, match="L.Convolution: keyword 'num_outptu' is not a field") as caught:
        n.to_proto()
    assert "Did you mean num_output?" in str(caught.value)


def test_keyword_of_type_without_message():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1]))
    n.up = L.Deconvolution(n.data, num_output=3)
    with pytest.raises(AttributeError, match="type Deconvolution has no parameter message"):
        n.to_proto()
    n.up = L.Deconvolution(n.data, convolution_param=dict(num_output=3, kernel_size=2))
    assert n.to_proto().layer[1].convolution_param.num_output == 3


def test_bad_nested_field_and_value():
    with pytest.raises(AttributeError, match="FillerParameter has no field 'tpye'; did you mean type"):
        L.InnerProduct(L.Input(), num_output=1, weight_filler=dict(tpye="xavier")).to_proto()
    with pytest.raises(TypeError, match="field InnerProductParameter.num_output: cannot assign 'ten'"):
        L.InnerProduct(L.Input(), num_output="ten").to_proto()
    with pytest.raises(TypeError, match="is not a message, so it takes no dict"):
        L.InnerProduct(L.Input(), num_output=dict(a=1)).to_proto()


def test_bottom_must_be_top():
    with pytest.raises(TypeError, match="L.ReLU bottom 0 is a str, not a Top"):
        L.ReLU("data")
    with pytest.raises(TypeError, match="to_proto argument is a tuple"):
        caffe.to_proto(L.DummyData(ntop=2))


def test_tuple_attribute_rejected():
    n = NetSpec()
    n.both = L.DummyData(shape=[dict(dim=[1]), dict(dim=[1])], ntop=2)
    with pytest.raises(TypeError, match="NetSpec attribute 'both' holds 2 tops"):
        n.to_proto()


def test_negative_ntop():
    with pytest.raises(ValueError, match="ntop must be an integer >= 0"):
        L.ReLU(ntop=-1)


def test_assign_proto_scalar_to_repeated():
    message = caffe_pb2.ConvolutionParameter()
    assign_proto(message, "kernel_size", 3)
    assign_proto(message, "pad", [1, 2])
    assert list(message.kernel_size) == [3]
    assert list(message.pad) == [1, 2]
