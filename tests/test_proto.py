"""Tests for brewnet/proto: the committed caffe_pb2 module and Caffe schema facts."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, text_format

from brewnet.proto import caffe_pb2

PROTO_DIR = Path(__file__).resolve().parent.parent / "brewnet" / "proto"

LENET_PROTOTXT = """
name: "LeNet"
layer {
  name: "data"
  type: "Input"
  top: "data"
  input_param { shape { dim: 64 dim: 1 dim: 28 dim: 28 } }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  param { lr_mult: 1 }
  param { lr_mult: 2 }
  convolution_param {
    num_output: 20
    kernel_size: 5
    stride: 1
    weight_filler { type: "xavier" }
    bias_filler { type: "constant" }
  }
}
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1"
  top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layer {
  name: "ip1"
  type: "InnerProduct"
  bottom: "pool1"
  top: "ip1"
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } }
}
layer {
  name: "relu1"
  type: "ReLU"
  bottom: "ip1"
  top: "ip1"
}
layer {
  name: "accuracy"
  type: "Accuracy"
  bottom: "ip1"
  bottom: "label"
  top: "accuracy"
  include { phase: TEST }
}
layer {
  name: "loss"
  type: "SoftmaxWithLoss"
  bottom: "ip1"
  bottom: "label"
  top: "loss"
  loss_weight: 1
}
"""


def _compile_descriptor(tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path / "caffe.desc"
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--descriptor_set_out={out}",
        str(PROTO_DIR / "caffe.proto"),
    ]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    assert result.returncode == 0, f"protoc failed: {result.stderr}"
    descriptor_set = descriptor_pb2.FileDescriptorSet()
    descriptor_set.ParseFromString(out.read_bytes())
    assert len(descriptor_set.file) == 1
    return descriptor_set.file[0]


def _embedded_descriptor_bytes() -> bytes:
    # The serialized FileDescriptorProto that caffe_pb2.py passes to
    # AddSerializedFile. DESCRIPTOR.serialized_pb is not used because the upb
    # runtime re-serializes it and rewrites float defaults (0.99 becomes
    # 0.99000001), so it never equals protoc's output.
    tree = ast.parse(Path(caffe_pb2.__file__).read_text())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
        ):
            return ast.literal_eval(node.args[0])
    raise AssertionError(f"no AddSerializedFile call found in {caffe_pb2.__file__}")


def _default_json_name(field_name: str) -> str:
    # protoc's default: drop each underscore and upper-case the next letter.
    parts = field_name.split("_")
    return parts[0] + "".join(part[:1].upper() + part[1:] for part in parts[1:])


def _strip_default_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    # --descriptor_set_out fills in every field's json_name, but generated
    # Python code keeps only names set with the json_name option.
    for field in message.field:
        if field.json_name == _default_json_name(field.name):
            field.ClearField("json_name")
    for nested in message.nested_type:
        _strip_default_json_names(nested)


def _field(message_class, name):
    return message_class.DESCRIPTOR.fields_by_name[name]


def test_generated_module_matches_proto(tmp_path):
    compiled = _compile_descriptor(tmp_path)
    committed = descriptor_pb2.FileDescriptorProto()
    committed.ParseFromString(_embedded_descriptor_bytes())
    compiled.ClearField("source_code_info")
    committed.ClearField("source_code_info")
    for message in compiled.message_type:
        _strip_default_json_names(message)
    assert committed == compiled, (
        "brewnet/proto/caffe_pb2.py is stale; run `python tools/generate_proto.py`"
    )


def test_schema_counts():
    # Totals for BVLC Caffe master's caffe.proto, counting nested messages,
    # nested enums and the top-level Phase enum.
    file_proto = descriptor_pb2.FileDescriptorProto()
    caffe_pb2.DESCRIPTOR.CopyToProto(file_proto)
    messages = 0
    enums = len(file_proto.enum_type)
    fields = 0
    pending = list(file_proto.message_type)
    while pending:
        message = pending.pop()
        messages += 1
        enums += len(message.enum_type)
        fields += len(message.field)
        pending.extend(message.nested_type)
    assert file_proto.package == "caffe"
    assert file_proto.syntax in ("", "proto2")
    assert messages == 63
    assert enums == 26
    assert fields == 423


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("name", 1),
        ("type", 2),
        ("bottom", 3),
        ("top", 4),
        ("loss_weight", 5),
        ("param", 6),
        ("blobs", 7),
        ("include", 8),
        ("exclude", 9),
        ("phase", 10),
        ("propagate_down", 11),
        ("transform_param", 100),
        ("loss_param", 101),
        ("convolution_param", 106),
        ("inner_product_param", 117),
        ("pooling_param", 121),
        ("batch_norm_param", 139),
        ("input_param", 143),
        ("recurrent_param", 146),
        ("swish_param", 147),
        ("clip_param", 148),
    ],
)
def test_layer_parameter_field_numbers(name, number):
    assert _field(caffe_pb2.LayerParameter, name).number == number


def test_net_parameter_field_numbers():
    assert _field(caffe_pb2.NetParameter, "layer").number == 100
    assert _field(caffe_pb2.NetParameter, "layers").number == 2
    assert _field(caffe_pb2.NetParameter, "input_shape").number == 8


def test_v1_layer_type_values():
    layer_type = caffe_pb2.V1LayerParameter.LayerType
    assert layer_type.Value("NONE") == 0
    assert layer_type.Value("CONVOLUTION") == 4
    assert layer_type.Value("INNER_PRODUCT") == 14
    assert layer_type.Value("SOFTMAX_LOSS") == 21
    assert layer_type.Value("DECONVOLUTION") == 39
    assert caffe_pb2.V1LayerParameter.CONVOLUTION == 4
    assert _field(caffe_pb2.V1LayerParameter, "layer").number == 1
    assert _field(caffe_pb2.V1LayerParameter, "param").number == 1001


def test_solver_parameter_defaults():
    solver = caffe_pb2.SolverParameter()
    lr_policy = _field(caffe_pb2.SolverParameter, "lr_policy")
    momentum = _field(caffe_pb2.SolverParameter, "momentum")
    assert not lr_policy.has_default_value
    assert solver.lr_policy == ""
    assert not momentum.has_default_value
    assert solver.momentum == 0.0
    assert solver.snapshot_format == caffe_pb2.SolverParameter.BINARYPROTO
    assert solver.solver_mode == caffe_pb2.SolverParameter.GPU
    assert solver.solver_type == caffe_pb2.SolverParameter.SGD
    assert solver.type == "SGD"
    assert solver.regularization_type == "L2"
    assert solver.random_seed == -1
    assert solver.clip_gradients == -1.0
    assert solver.average_loss == 1
    assert solver.iter_size == 1
    assert solver.test_initialization is True
    assert solver.snapshot_after_train is True
    assert solver.layer_wise_reduce is True
    assert solver.delta == pytest.approx(1e-8)
    assert solver.momentum2 == pytest.approx(0.999)
    assert solver.rms_decay == pytest.approx(0.99)


def test_solver_parameter_field_numbers():
    assert _field(caffe_pb2.SolverParameter, "solver_type").number == 30
    assert _field(caffe_pb2.SolverParameter, "snapshot_format").number == 37
    assert _field(caffe_pb2.SolverParameter, "type").number == 40
    assert _field(caffe_pb2.SolverParameter, "layer_wise_reduce").number == 41
    weights = _field(caffe_pb2.SolverParameter, "weights")
    assert weights.number == 42
    assert weights.is_repeated


def test_layer_message_defaults():
    assert caffe_pb2.LossParameter().normalization == caffe_pb2.LossParameter.VALID
    assert caffe_pb2.ConvolutionParameter().bias_term is True
    assert caffe_pb2.ConvolutionParameter().group == 1
    assert caffe_pb2.PoolingParameter().round_mode == caffe_pb2.PoolingParameter.CEIL
    assert caffe_pb2.PoolingParameter().stride == 1
    assert caffe_pb2.FillerParameter().type == "constant"
    assert caffe_pb2.FillerParameter().std == 1.0
    assert caffe_pb2.NetState().phase == caffe_pb2.TEST
    assert caffe_pb2.ParamSpec().lr_mult == 1.0
    assert caffe_pb2.DataParameter().backend == caffe_pb2.DataParameter.LEVELDB
    assert caffe_pb2.BatchNormParameter().eps == pytest.approx(1e-5)
    assert caffe_pb2.HingeLossParameter().norm == caffe_pb2.HingeLossParameter.L1


def test_clip_parameter_fields_required():
    clip = caffe_pb2.ClipParameter()
    assert not clip.IsInitialized()
    clip.min = -1.0
    clip.max = 1.0
    assert clip.IsInitialized()


def test_blob_fields_packed():
    for name in ("data", "diff", "double_data", "double_diff"):
        assert _field(caffe_pb2.BlobProto, name).is_packed, name
    assert _field(caffe_pb2.BlobShape, "dim").is_packed
    assert not _field(caffe_pb2.Datum, "float_data").is_packed


def test_net_text_format_round_trip():
    net = text_format.Parse(LENET_PROTOTXT, caffe_pb2.NetParameter())
    assert net.name == "LeNet"
    assert len(net.layer) == 7
    assert list(net.layer[0].input_param.shape[0].dim) == [64, 1, 28, 28]
    assert net.layer[1].convolution_param.num_output == 20
    assert list(net.layer[1].convolution_param.kernel_size) == [5]
    assert [spec.lr_mult for spec in net.layer[1].param] == [1.0, 2.0]
    assert net.layer[2].pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    assert net.layer[5].include[0].phase == caffe_pb2.TEST
    assert list(net.layer[6].loss_weight) == [1.0]

    reparsed = text_format.Parse(
        text_format.MessageToString(net), caffe_pb2.NetParameter()
    )
    assert reparsed == net


def test_blob_binary_round_trip():
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([2, 3])
    blob.data.extend([0.0, 1.5, -2.25, 3.0, 4.5, -5.75])
    blob.diff.extend([0.5] * 6)

    payload = blob.SerializeToString()
    restored = caffe_pb2.BlobProto.FromString(payload)

    assert restored == blob
    assert list(restored.shape.dim) == [2, 3]
    assert list(restored.data) == [0.0, 1.5, -2.25, 3.0, 4.5, -5.75]
    assert not restored.HasField("num")
    # Packed encoding: field 5, wire type 2, then 24 bytes of float32 data.
    assert bytes([0x2A, 24]) in payload
