"""Model files: .caffemodel and .caffemodel.h5 weights, and binaryproto mean files."""

from __future__ import annotations

import filecmp
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from reference_case import REFERENCE, assert_close

import brewnet
from brewnet.errors import ModelFileError
from brewnet.io import model, wire
from brewnet.io.hdf5 import save_hdf5
from brewnet.io.mean import read_mean_file, write_mean_file
from brewnet.io.model import (
    array_to_blob_proto,
    blob_proto_shape,
    blob_proto_to_array,
    copy_layers_from_net,
    copy_layers_from_proto,
    net_to_proto,
    read_caffemodel,
    save_caffemodel,
    scan_caffemodel,
    shape_equals,
)
from brewnet.proto import caffe_pb2

CAFFEMODEL_CASES = sorted(
    f"{path.parent.parent.name}/{path.parent.name}"
    for path in REFERENCE.glob("*/*/weights.caffemodel")
)

# In this case the input gradient is 0 up to float32 rounding, so Caffe's diff of x
# is noise. It is compared against 1e-6 times the largest diff of y, because the
# absolute floor of assert_close (1e-7) is below that noise.
NEAR_ZERO_GRADIENT_CASES = {"layers/batchnorm_train"}

SMALL_NET = """
name: "small"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1"
  scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip1" type: "InnerProduct" bottom: "conv1" top: "ip1"
  param { name: "shared_w" } inner_product_param { num_output: 5 } }
layer { name: "ip2" type: "InnerProduct" bottom: "conv1" top: "ip2"
  param { name: "shared_w" } inner_product_param { num_output: 5 } }
layer { name: "prelu" type: "PReLU" bottom: "ip1" top: "ip1"
  prelu_param { channel_shared: true } }
"""

# Blob shapes of SMALL_NET, layer by layer (ip2's weight is ip1's).
SMALL_SHAPES = {
    "conv1": [(4, 3, 3, 3), (4,)],
    "bn1": [(4,), (4,), (1,)],
    "scale1": [(4,), (4,)],
    "ip1": [(5, 64), (5,)],
    "ip2": [(5, 64), (5,)],
    "prelu": [()],
}


def write_net(folder: Path, text: str, name: str = "net.prototxt") -> str:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def randomize(net: brewnet.Net, seed: int) -> None:
    """Fill every parameter with seeded normal values (BatchNorm's factor with 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net._layers:
            for tensor in layer.blobs:
                values = torch.randn(
                    tuple(tensor.shape), generator=generator, dtype=torch.float64
                )
                tensor.copy_(values.to(tensor.dtype))


def small_net(folder: Path, seed: int = 0, dtype=torch.float32) -> brewnet.Net:
    net = brewnet.Net(
        write_net(folder, SMALL_NET, "small.prototxt"), brewnet.TRAIN, dtype=dtype
    )
    randomize(net, seed)
    return net


def params_of(net: brewnet.Net) -> dict[tuple[str, int], np.ndarray]:
    return {
        (layer.name, index): tensor.detach().numpy().copy()
        for layer in net._layers
        for index, tensor in enumerate(layer.blobs)
    }


def assert_same_params(first: brewnet.Net, second: brewnet.Net) -> None:
    left, right = params_of(first), params_of(second)
    assert left.keys() == right.keys()
    for key in left:
        assert left[key].dtype == right[key].dtype, key
        assert np.array_equal(left[key], right[key]), key


def write_proto(path: Path, proto) -> str:
    path.write_bytes(proto.SerializeToString())
    return str(path)


def ip_net(
    folder: Path, outputs: int = 3, inputs: int = 4, name: str = "ip"
) -> brewnet.Net:
    text = f"""
    layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: {inputs} }} }} }}
    layer {{ name: "{name}" type: "InnerProduct" bottom: "data" top: "out"
      inner_product_param {{ num_output: {outputs} }} }}
    """
    return brewnet.Net(
        write_net(folder, text, f"{name}_{outputs}_{inputs}.prototxt"), brewnet.TEST
    )


# ============================================================================ Caffe's files
@pytest.mark.parametrize("case", CAFFEMODEL_CASES)
def test_reference_weights_load_and_run(case):
    folder = REFERENCE / case
    data = np.load(folder / "data.npz")
    net = brewnet.Net(str(folder / "net.prototxt"), brewnet.TRAIN)
    with torch.no_grad():
        for layer in net._layers:
            for tensor in layer.blobs:
                tensor.zero_()
    net.copy_from(str(folder / "weights.caffemodel"))
    param_keys = [key for key in data.files if key.startswith("param/")]
    assert param_keys
    for key in param_keys:
        _, layer, index = key.split("/")
        loaded = net.params[layer][int(index)].data
        assert loaded.shape == data[key].shape, key
        assert np.array_equal(loaded, data[key]), f"{case}: {key} differs from Caffe's"

    for key in data.files:
        parts = key.split("/")
        if parts[0] == "input":
            net.blobs[parts[1]].data[...] = data[key]
    net.forward()
    net.backward()
    compared = 0
    for key in data.files:
        parts = key.split("/")
        if case in NEAR_ZERO_GRADIENT_CASES and key == "diff/x":
            floor = 1e-6 * float(np.max(np.abs(data["diff/y"])))
            error = float(np.max(np.abs(net.blobs["x"].diff - data[key])))
            assert error <= floor, (
                f"{case}: diff of x is off by {error:.3g} > {floor:.3g}"
            )
        elif parts[0] == "data":
            assert_close(
                net.blobs[parts[1]].data, data[key], f"{case}: data of {parts[1]}"
            )
        elif parts[0] == "diff":
            assert_close(
                net.blobs[parts[1]].diff, data[key], f"{case}: diff of {parts[1]}"
            )
        elif parts[0] == "param_diff":
            param = net.params[parts[1]][int(parts[2])]
            assert_close(
                param.diff, data[key], f"{case}: param diff {parts[1]}[{parts[2]}]"
            )
        elif parts[0] == "loss":
            assert_close(np.array(net.loss), data[key], f"{case}: loss")
        else:
            continue
        compared += 1
    assert compared > 0


def test_reference_weights_scan_without_a_net():
    folder = REFERENCE / "layers" / "conv_group_dilation"
    index = scan_caffemodel(folder / "weights.caffemodel")
    assert index.name == "conv_group_dilation"
    assert [record.name for record in index.layers] == ["x", "L", "y_L_0_split", "sq"]
    conv = index.layers[1]
    assert conv.type == "Convolution"
    assert [blob.shape for blob in conv.blobs] == [(4, 2, 3, 3), (4,)]
    raw = (folder / "weights.caffemodel").read_bytes()
    weight = wire.gather_values(raw, conv.blobs[0].data_values()).reshape(4, 2, 3, 3)
    assert np.array_equal(weight, np.load(folder / "data.npz")["param/L/0"])


def test_zero_axis_blob_from_caffe():
    # Caffe writes PReLU's shared slope (a blob without axes) without a shape field.
    proto = read_caffemodel(
        REFERENCE / "layers" / "prelu_shared" / "weights.caffemodel"
    )
    blob = proto.layer[1].blobs[0]
    assert not blob.HasField("shape")
    assert blob_proto_shape(blob) == ()
    assert blob_proto_to_array(blob).shape == ()


# ============================================================================ round trips
def test_save_equals_protobuf_serialization(tmp_path):
    net = small_net(tmp_path)
    path = tmp_path / "small.caffemodel"
    net.save(str(path))
    assert path.read_bytes() == net_to_proto(net).SerializeToString()


def test_saved_layout_is_caffes(tmp_path):
    net = small_net(tmp_path)
    path = tmp_path / "small.caffemodel"
    net.save(str(path))
    proto = caffe_pb2.NetParameter.FromString(path.read_bytes())
    assert proto.name == "small"
    assert not proto.input
    assert not proto.layers
    assert [layer.name for layer in proto.layer] == [
        "data", "conv1", "bn1", "scale1", "relu1", "ip1", "ip2", "prelu",
    ]  # fmt: skip
    for layer in proto.layer:
        assert layer.HasField("phase"), layer.name
        assert layer.phase == caffe_pb2.TRAIN, layer.name
        expected = SMALL_SHAPES.get(layer.name, [])
        assert [blob_proto_shape(b) for b in layer.blobs] == expected, layer.name
    conv_weight = proto.layer[1].blobs[0]
    assert len(conv_weight.data) == 108
    assert not conv_weight.HasField("num")
    assert not conv_weight.diff
    assert np.array_equal(
        blob_proto_to_array(conv_weight), params_of(net)[("conv1", 0)]
    )
    # A shared blob is written under every layer that uses it, as Caffe's ToProto does.
    assert proto.layer[6].blobs[0] == proto.layer[5].blobs[0]
    assert not proto.layer[7].blobs[0].HasField("shape")


def test_caffemodel_round_trip_bit_exact(tmp_path):
    net = small_net(tmp_path, seed=1)
    first, second = tmp_path / "first.caffemodel", tmp_path / "second.caffemodel"
    net.save(str(first))
    loaded = small_net(tmp_path, seed=2)
    loaded.copy_from(str(first))
    assert_same_params(net, loaded)
    loaded.save(str(second))
    assert filecmp.cmp(first, second, shallow=False)


def test_weights_argument_loads_at_construction(tmp_path):
    net = small_net(tmp_path, seed=3)
    net.save(str(tmp_path / "w.caffemodel"))
    built = brewnet.Net(
        str(tmp_path / "small.prototxt"), str(tmp_path / "w.caffemodel"), brewnet.TEST
    )
    assert np.array_equal(built.params["conv1"][0].data, net.params["conv1"][0].data)


def test_diff_round_trip(tmp_path):
    net = small_net(tmp_path, seed=4)
    generator = torch.Generator().manual_seed(5)
    for layer in net._layers:
        for tensor in layer.blobs:
            tensor.grad = torch.randn(tuple(tensor.shape), generator=generator)
    path = tmp_path / "diff.caffemodel"
    save_caffemodel(net, path, write_diff=True)
    proto = read_caffemodel(path)
    assert len(proto.layer[1].blobs[0].diff) == 108
    loaded = small_net(tmp_path, seed=6)
    loaded.copy_from(str(path))
    assert_same_params(net, loaded)
    for name in ("conv1", "bn1", "ip1", "prelu"):
        for index, tensor in enumerate(net._layer_dict[name].blobs):
            loaded_grad = loaded._layer_dict[name].blobs[index].grad
            assert torch.equal(loaded_grad, tensor.grad), (name, index)


def test_float64_net_writes_double_data(tmp_path):
    net = small_net(tmp_path, seed=7, dtype=torch.float64)
    path = tmp_path / "double.caffemodel"
    net.save(str(path))
    blob = read_caffemodel(path).layer[1].blobs[0]
    assert len(blob.double_data) == 108
    assert not blob.data
    loaded = small_net(tmp_path, seed=8, dtype=torch.float64)
    loaded.copy_from(str(path))
    assert_same_params(net, loaded)
    single = small_net(tmp_path, seed=8)
    single.copy_from(str(path))
    expected = net.params["ip1"][0].data.astype(np.float32)
    assert np.array_equal(single.params["ip1"][0].data, expected)


def test_copy_by_name_between_nets(tmp_path, caplog):
    source = small_net(tmp_path, seed=9)
    other_text = SMALL_NET.replace('name: "ip2"', 'name: "ip_new"').replace(
        'param { name: "shared_w" } inner_product_param { num_output: 5 } }\nlayer { name: "prelu"',
        'inner_product_param { num_output: 5 } }\nlayer { name: "prelu"',
    )
    target = brewnet.Net(
        write_net(tmp_path, other_text, "other.prototxt"), brewnet.TEST
    )
    randomize(target, 10)
    untouched = target.params["ip_new"][0].data.copy()
    path = tmp_path / "source.caffemodel"
    source.save(str(path))
    with caplog.at_level(logging.INFO, logger="brewnet.io.model"):
        target.copy_from(str(path))
    assert "Ignoring source layer ip2" in caplog.text
    assert "Copying source layer conv1" in caplog.text
    for name in ("conv1", "bn1", "scale1", "ip1", "prelu"):
        for index, param in enumerate(target.params[name]):
            assert np.array_equal(param.data, source.params[name][index].data), (
                name,
                index,
            )
    assert np.array_equal(target.params["ip_new"][0].data, untouched)

    randomize(target, 11)
    copy_layers_from_net(target, source)
    assert np.array_equal(target.params["ip1"][0].data, source.params["ip1"][0].data)
    assert not np.array_equal(target.params["ip_new"][0].data, untouched)


def test_copy_between_nets_shape_error(tmp_path):
    source = ip_net(tmp_path, outputs=3, inputs=5)
    target = ip_net(tmp_path, outputs=3, inputs=4)
    with pytest.raises(
        ModelFileError,
        match=r"the source net has 3 5 \(15\) and the net expects 3 4 \(12\)",
    ):
        copy_layers_from_net(target, source)


def test_repeated_layer_name_loads_first(tmp_path):
    # Caffe's binary loader copies into the first layer with the file layer's name.
    text = """
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "a" inner_product_param { num_output: 3 } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "b" inner_product_param { num_output: 3 } }
    """
    net = brewnet.Net(write_net(tmp_path, text, "twice.prototxt"), brewnet.TEST)
    source = ip_net(tmp_path)
    randomize(source, 20)
    path = tmp_path / "ip.caffemodel"
    source.save(str(path))
    net.copy_from(str(path))
    first, second = [layer for layer in net._layers if layer.name == "ip"]
    assert torch.equal(first.blobs[0], source._layer_dict["ip"].blobs[0])
    assert not second.blobs[0].any()


def test_copy_from_proto_messages(tmp_path):
    source = small_net(tmp_path, seed=12)
    target = small_net(tmp_path, seed=13)
    copy_layers_from_proto(target, net_to_proto(source).layer)
    assert_same_params(source, target)


def test_unpacked_float_encoding_loads(tmp_path):
    # Protobuf readers accept a packed field written one value per field; so does
    # the scanner.
    net = ip_net(tmp_path, outputs=2, inputs=3)
    weight = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    bias = np.array([0.5, -2.25], dtype=np.float32)
    layer = caffe_pb2.LayerParameter(name="ip", type="InnerProduct").SerializeToString()
    for values in (weight, bias):
        shape = wire.encode_shape_field(values.shape)
        floats = b"".join(
            wire.encode_key(5, wire.FIXED32) + v.tobytes() for v in values.ravel()
        )
        layer += wire.length_prefix(7, len(shape) + len(floats)) + floats + shape
    path = tmp_path / "unpacked.caffemodel"
    path.write_bytes(wire.length_prefix(100, len(layer)) + layer)
    net.copy_from(str(path))
    assert np.array_equal(net.params["ip"][0].data, weight)
    assert np.array_equal(net.params["ip"][1].data, bias)


def test_fill_through_staging_buffer():
    # Tensors that cannot take the bytes directly (not contiguous, another dtype,
    # or on a GPU) are filled through a staging array.
    raw = array_to_blob_proto(
        np.arange(6, dtype=np.float32).reshape(2, 3)
    ).SerializeToString()
    record = wire.scan_blob(
        raw,
        0,
        len(raw),
        len(raw),
        wire.expected_wire_types(caffe_pb2.BlobProto.DESCRIPTOR),
    )
    transposed = torch.zeros(3, 2).t()
    model._fill_tensor(transposed, record.data_values(), raw, None)
    assert transposed.tolist() == [[0, 1, 2], [3, 4, 5]]
    half = torch.zeros(2, 3, dtype=torch.float16)
    model._fill_tensor(half, record.data_values(), raw, None)
    assert half.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_array_blob_proto_round_trip():
    array = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    proto = array_to_blob_proto(array, diff=array * 2)
    assert list(proto.shape.dim) == [2, 3, 4]
    assert np.array_equal(blob_proto_to_array(proto), array)
    assert np.array_equal(blob_proto_to_array(proto, diff=True), array * 2)
    double = array_to_blob_proto(array.astype(np.float64), double=True)
    assert len(double.double_data) == 24
    assert not double.data
    assert blob_proto_to_array(double).dtype == np.float64


def test_blob_proto_value_count_error():
    proto = caffe_pb2.BlobProto(data=[1.0, 2.0, 3.0])
    proto.shape.dim.extend([2, 2])
    with pytest.raises(
        ModelFileError, match=r"has 3 data values but its shape 2 2 \(4\) needs 4"
    ):
        blob_proto_to_array(proto)


# ============================================================================ legacy shapes
def legacy_record(num, channels, height, width, shape=None) -> wire.BlobRecord:
    proto = caffe_pb2.BlobProto(num=num, channels=channels, height=height, width=width)
    if shape is not None:
        proto.shape.dim.extend(shape)
    raw = proto.SerializeToString()
    return wire.scan_blob(
        raw, 0, len(raw), len(raw), wire.expected_wire_types(proto.DESCRIPTOR)
    )


def test_shape_equals_legacy_rules():
    assert shape_equals(legacy_record(1, 1, 5, 12), (5, 12))
    assert shape_equals(legacy_record(1, 1, 1, 5), (5,))
    assert shape_equals(legacy_record(96, 3, 11, 11), (96, 3, 11, 11))
    assert not shape_equals(legacy_record(5, 12, 1, 1), (5, 12))
    assert not shape_equals(legacy_record(1, 1, 1, 5), (1, 1, 1, 1, 5))
    # The legacy fields win over a shape field, as in Caffe.
    assert shape_equals(legacy_record(1, 1, 2, 3, shape=[7]), (2, 3))


def test_legacy_shaped_blobs_load(tmp_path):
    net = ip_net(tmp_path, outputs=3, inputs=4)
    weight = np.arange(12, dtype=np.float32).reshape(3, 4)
    bias = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    layer = caffe_pb2.LayerParameter(name="ip", type="InnerProduct")
    layer.blobs.add(num=1, channels=1, height=3, width=4, data=weight.ravel())
    layer.blobs.add(num=1, channels=1, height=1, width=3, data=bias)
    path = write_proto(
        tmp_path / "legacy.caffemodel", caffe_pb2.NetParameter(layer=[layer])
    )
    net.copy_from(path)
    assert np.array_equal(net.params["ip"][0].data, weight)
    assert np.array_equal(net.params["ip"][1].data, bias)


def test_legacy_shape_mismatch_names_both_shapes(tmp_path):
    net = ip_net(tmp_path, outputs=3, inputs=4)
    layer = caffe_pb2.LayerParameter(name="ip", type="InnerProduct")
    layer.blobs.add(num=3, channels=4, height=1, width=1, data=np.zeros(12))
    layer.blobs.add(num=1, channels=1, height=1, width=3, data=np.zeros(3))
    path = write_proto(
        tmp_path / "legacy.caffemodel", caffe_pb2.NetParameter(layer=[layer])
    )
    with pytest.raises(ModelFileError) as error:
        net.copy_from(path)
    message = str(error.value)
    assert path in message
    assert "layer 'ip'" in message
    assert "3 4 1 1 (12)" in message
    assert "3 4 (12)" in message


# ============================================================================ errors
def test_shape_mismatch_error(tmp_path):
    path = tmp_path / "small.caffemodel"
    ip_net(tmp_path, outputs=3, inputs=5).save(str(path))
    net = ip_net(tmp_path, outputs=3, inputs=4)
    with pytest.raises(ModelFileError) as error:
        net.copy_from(str(path))
    message = str(error.value)
    assert str(path) in message
    assert "blob 0 of layer 'ip'" in message
    assert "the file has 3 5 (15) and the net expects 3 4 (12)" in message
    assert "rename the layer" in message


def test_blob_count_error(tmp_path):
    net = ip_net(tmp_path)
    layer = caffe_pb2.LayerParameter(name="ip", type="InnerProduct")
    layer.blobs.append(array_to_blob_proto(np.zeros((3, 4), dtype=np.float32)))
    path = write_proto(
        tmp_path / "one_blob.caffemodel", caffe_pb2.NetParameter(layer=[layer])
    )
    with pytest.raises(
        ModelFileError, match="layer 'ip' has 1 blobs in the file but 2 in the net"
    ):
        net.copy_from(path)


def test_value_count_error(tmp_path):
    net = ip_net(tmp_path)
    layer = caffe_pb2.LayerParameter(name="ip", type="InnerProduct")
    weight = layer.blobs.add(data=np.zeros(11))
    weight.shape.dim.extend([3, 4])
    layer.blobs.append(array_to_blob_proto(np.zeros(3, dtype=np.float32)))
    path = write_proto(
        tmp_path / "short.caffemodel", caffe_pb2.NetParameter(layer=[layer])
    )
    with pytest.raises(
        ModelFileError, match=r"blob 0 of layer 'ip' has 11 data values .* needs 12"
    ):
        net.copy_from(path)


def test_failed_load_leaves_net_unchanged(tmp_path):
    net = small_net(tmp_path, seed=14)
    before = params_of(net)
    proto = net_to_proto(small_net(tmp_path, seed=15))
    proto.layer[-1].blobs[0].shape.dim.append(
        2
    )  # prelu, the last layer, now mismatches
    path = write_proto(tmp_path / "bad.caffemodel", proto)
    with pytest.raises(ModelFileError, match="layer 'prelu'"):
        net.copy_from(path)
    after = params_of(net)
    assert all(np.array_equal(before[key], after[key]) for key in before)


def test_truncated_file_error(tmp_path):
    source = REFERENCE / "layers" / "conv_rect_kernel" / "weights.caffemodel"
    raw = source.read_bytes()
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(raw[: len(raw) // 2])
    net = brewnet.Net(str(source.parent / "net.prototxt"), brewnet.TRAIN)
    with pytest.raises(ModelFileError) as error:
        net.copy_from(str(path))
    assert str(path) in str(error.value)
    assert "truncated" in str(error.value)
    assert f"the file has {len(raw) // 2} bytes" in str(error.value)


def test_text_file_is_not_a_netparameter(tmp_path):
    net = ip_net(tmp_path)
    path = tmp_path / "net.caffemodel"
    path.write_text(
        'name: "x"\nlayer { name: "ip" type: "InnerProduct" }\n', encoding="utf-8"
    )
    with pytest.raises(ModelFileError) as error:
        net.copy_from(str(path))
    message = str(error.value)
    assert message.startswith(f"{path}: not a binary NetParameter (.caffemodel)")
    assert "looks like a text file" in message


def test_other_binary_file_is_not_a_netparameter(tmp_path):
    net = ip_net(tmp_path)
    blob_path = tmp_path / "mean.caffemodel"
    write_mean_file(blob_path, np.ones((3, 2, 2)))
    with pytest.raises(ModelFileError, match="not a binary NetParameter.*wire type"):
        net.copy_from(str(blob_path))
    hdf5_path = tmp_path / "weights.caffemodel"
    with h5py.File(hdf5_path, "w") as handle:
        handle.create_group("data")
    with pytest.raises(ModelFileError, match="it is an HDF5 file"):
        net.copy_from(str(hdf5_path))
    noise_path = tmp_path / "noise.caffemodel"
    noise_path.write_bytes(bytes([0x07]) * 64)
    with pytest.raises(
        ModelFileError, match="noise.caffemodel: not a binary NetParameter"
    ):
        net.copy_from(str(noise_path))


def test_empty_and_layerless_files(tmp_path):
    net = ip_net(tmp_path)
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty.caffemodel: the file is empty"):
        net.copy_from(str(empty))
    named = write_proto(tmp_path / "named.caffemodel", caffe_pb2.NetParameter(name="n"))
    with pytest.raises(ModelFileError, match="has no layers"):
        net.copy_from(named)


def test_missing_model_file(tmp_path):
    net = ip_net(tmp_path)
    with pytest.raises(
        FileNotFoundError, match="model file not found: .*absent.caffemodel"
    ):
        net.copy_from(str(tmp_path / "absent.caffemodel"))


def test_mixed_layer_formats_error(tmp_path):
    proto = caffe_pb2.NetParameter()
    proto.layer.add(name="ip", type="InnerProduct")
    proto.layers.add(name="old", type=caffe_pb2.V1LayerParameter.RELU)
    path = write_proto(tmp_path / "mixed.caffemodel", proto)
    with pytest.raises(
        ModelFileError, match="mixes current 'layer' entries with legacy 'layers'"
    ):
        ip_net(tmp_path).copy_from(path)


# ============================================================================ HDF5
def test_hdf5_round_trip_and_layout(tmp_path):
    net = small_net(tmp_path, seed=16)
    path = tmp_path / "small.caffemodel.h5"
    save_hdf5(net, path)
    with h5py.File(path, "r") as handle:
        assert set(handle) == {"data"}
        assert list(handle["data"]) == sorted(SMALL_SHAPES.keys() | {"data", "relu1"})
        weight = handle["data/conv1/0"]
        assert weight.shape == (4, 3, 3, 3)
        assert weight.dtype == np.float32
        assert np.array_equal(weight[()], net.params["conv1"][0].data)
        # ip2's weight belongs to ip1, so only its bias is stored.
        assert set(handle["data/ip2"]) == {"1"}
        assert handle["data/prelu/0"].shape == ()
        assert len(handle["data/relu1"]) == 0
    loaded = small_net(tmp_path, seed=17)
    loaded.copy_from(str(path))
    assert_same_params(net, loaded)


def test_hdf5_diff_group(tmp_path):
    net = small_net(tmp_path, seed=18)
    net._layer_dict["ip1"].blobs[0].grad = torch.full((5, 64), 0.25)
    path = tmp_path / "diff.caffemodel.h5"
    save_hdf5(net, path, write_diff=True)
    with h5py.File(path, "r") as handle:
        assert set(handle["diff/ip2"]) == {"0", "1"}
        assert np.all(handle["diff/ip1/0"][()] == 0.25)
        assert np.all(handle["diff/conv1/0"][()] == 0)


def test_hdf5_nested_layer_names(tmp_path):
    text = """
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }
    layer { name: "block/a" type: "InnerProduct" bottom: "data" top: "a"
      inner_product_param { num_output: 2 } }
    layer { name: "block/out" type: "Concat" bottom: "a" bottom: "data" top: "out" }
    """
    path_net = write_net(tmp_path, text, "nested.prototxt")
    net = brewnet.Net(path_net, brewnet.TEST)
    randomize(net, 19)
    path = tmp_path / "nested.caffemodel.h5"
    save_hdf5(net, path)
    loaded = brewnet.Net(path_net, brewnet.TEST)
    loaded.copy_from(str(path))
    assert_same_params(net, loaded)


def test_hdf5_written_in_caffes_layout_loads(tmp_path):
    net = ip_net(tmp_path)
    weight = np.arange(12, dtype=np.float64).reshape(3, 4)
    with h5py.File(tmp_path / "caffe.h5", "w") as handle:
        handle.create_dataset("data/ip/0", data=weight)
        handle.create_dataset("data/ip/1", data=np.ones(3, dtype=np.float32))
        handle.create_group("data/missing_layer")
    net.copy_from(str(tmp_path / "caffe.h5"))
    assert np.array_equal(net.params["ip"][0].data, weight.astype(np.float32))
    assert np.array_equal(net.params["ip"][1].data, np.ones(3, dtype=np.float32))


@pytest.mark.parametrize(
    "datasets, message",
    [
        (
            {"0": np.zeros((3, 5)), "1": np.zeros(3)},
            r"file has 3 5 \(15\) and the net expects 3 4 \(12\)",
        ),
        (
            {"1": np.zeros(3)},
            r"no dataset data/ip/0 for its blob 0 of shape 3 4 \(12\)",
        ),
        (
            {"0": np.zeros((3, 4)), "1": np.zeros(3), "2": np.zeros(1)},
            "3 datasets in the file but 2 blobs",
        ),
        (
            {"0": np.zeros((3, 4), dtype=np.int32), "1": np.zeros(3)},
            "contains int32 values; expected float",
        ),
    ],
)
def test_hdf5_layer_errors(tmp_path, datasets, message):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as handle:
        for name, values in datasets.items():
            handle.create_dataset(f"data/ip/{name}", data=values)
    with pytest.raises(ModelFileError, match=message) as error:
        ip_net(tmp_path).copy_from(str(path))
    assert str(path) in str(error.value)


def test_hdf5_file_errors(tmp_path):
    net = ip_net(tmp_path)
    not_hdf5 = tmp_path / "binary.h5"
    not_hdf5.write_bytes(b"\x0a\x03abc")
    with pytest.raises(ModelFileError, match="binary.h5: cannot open as HDF5 weights"):
        net.copy_from(str(not_hdf5))
    no_data = tmp_path / "nodata.h5"
    with h5py.File(no_data, "w") as handle:
        handle.create_group("weights")
    with pytest.raises(ModelFileError, match="nodata.h5: no 'data' group"):
        net.copy_from(str(no_data))
    with pytest.raises(FileNotFoundError, match="absent.h5"):
        net.copy_from(str(tmp_path / "absent.h5"))


# ============================================================================ mean files
def test_mean_file_round_trip(tmp_path):
    image = np.random.default_rng(0).random((3, 5, 4)).astype(np.float32) * 255
    path = tmp_path / "mean.binaryproto"
    write_mean_file(path, image)
    mean = read_mean_file(path)
    assert mean.shape == (1, 3, 5, 4)
    assert mean.dtype == np.float32
    assert np.array_equal(mean[0], image)
    proto = caffe_pb2.BlobProto.FromString(path.read_bytes())
    assert list(proto.shape.dim) == [1, 3, 5, 4]
    write_mean_file(path, image[0])
    assert read_mean_file(path).shape == (1, 1, 5, 4)


def test_mean_file_written_by_caffe():
    mean = read_mean_file(
        REFERENCE / "data" / "uint8_crop_mean_file_test" / "mean.binaryproto"
    )
    assert mean.shape == (1, 3, 8, 7)
    expected = np.array(
        [90.7515869140625, 41.33012771606445, 156.65625], dtype=np.float32
    )
    assert np.array_equal(mean.ravel()[:3], expected)


def test_mean_file_legacy_shape(tmp_path):
    proto = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=2, data=[1, 2, 3, 4])
    path = write_proto(tmp_path / "legacy.binaryproto", proto)
    assert read_mean_file(path).tolist() == [[[[1.0, 2.0]], [[3.0, 4.0]]]]


def test_mean_file_errors(tmp_path):
    empty = tmp_path / "empty.binaryproto"
    empty.write_bytes(b"")
    with pytest.raises(
        ModelFileError, match="empty.binaryproto: the mean file is empty"
    ):
        read_mean_file(empty)
    good = tmp_path / "good.binaryproto"
    write_mean_file(good, np.ones((3, 4, 4)))
    cut = tmp_path / "cut.binaryproto"
    cut.write_bytes(good.read_bytes()[:40])
    with pytest.raises(
        ModelFileError, match="cut.binaryproto: the mean file is truncated"
    ):
        read_mean_file(cut)
    model = REFERENCE / "layers" / "prelu" / "weights.caffemodel"
    with pytest.raises(
        ModelFileError, match="weights.caffemodel: not a binary BlobProto"
    ):
        read_mean_file(model)
    short = caffe_pb2.BlobProto(data=[1, 2, 3])
    short.shape.dim.extend([1, 1, 2, 2])
    with pytest.raises(
        ModelFileError, match=r"has 3 values but its shape 1 1 2 2 \(4\) needs 4"
    ):
        read_mean_file(write_proto(tmp_path / "short.binaryproto", short))
    with pytest.raises(FileNotFoundError, match="mean file not found"):
        read_mean_file(tmp_path / "absent.binaryproto")
    with pytest.raises(ValueError, match=r"needs 2 \(H, W\), 3 \(C, H, W\) or 4"):
        write_mean_file(tmp_path / "bad.binaryproto", np.ones(5))


def test_mean_file_given_as_weights_gets_a_hint(tmp_path):
    mean = tmp_path / "mean.binaryproto"
    write_mean_file(str(mean), np.ones((1, 3, 2, 2), dtype=np.float32))
    net = small_net(tmp_path)
    with pytest.raises(ModelFileError) as caught:
        net.copy_from(str(mean))
    message = str(caught.value)
    assert str(mean) in message
    assert "it reads as a BlobProto (a mean file" in message
