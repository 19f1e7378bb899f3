"""caffe.draw: the net graph as DOT text, pydot graphs and Graphviz rendering."""

from __future__ import annotations

import shutil
import sys

import pytest

import brewnet as caffe
from brewnet import draw
from brewnet.io.prototxt import read_text
from brewnet.proto import caffe_pb2

NET = """
name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label" data_param { batch_size: 16 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool1" top: "ip"
  inner_product_param { num_output: 10 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc"
  include { phase: TEST } }
"""

CONV = '"conv1\\n(Convolution)\\nkernel size: 3\\nstride: 2\\npad: 1"'
POOL = '"pool1\\n(MAX Pooling)\\nkernel size: 2\\nstride: 2\\npad: 0"'

# pycaffe's graph: layer records colored by type, in-place layers green, blobs gray
# octagons; a blob that no layer reads (loss) keeps Graphviz's default style.
TRAIN_DOT = f"""\
digraph tiny {{
rankdir=LR;
"data\\n(Data)" [shape=record, fillcolor="#6495ED", style=filled];
data [shape=octagon, fillcolor="#E0E0E0", style=filled];
label [shape=octagon, fillcolor="#E0E0E0", style=filled];
{CONV} [shape=record, fillcolor="#FF5050", style=filled];
conv1 [shape=octagon, fillcolor="#E0E0E0", style=filled];
"relu1\\n(ReLU)" [shape=record, fillcolor="#90EE90", style=filled];
{POOL} [shape=record, fillcolor="#FF9900", style=filled];
pool1 [shape=octagon, fillcolor="#E0E0E0", style=filled];
"ip\\n(InnerProduct)" [shape=record, fillcolor="#CC33FF", style=filled];
ip [shape=octagon, fillcolor="#E0E0E0", style=filled];
"loss\\n(SoftmaxWithLoss)" [shape=record, fillcolor="#6495ED", style=filled];
loss;
"data\\n(Data)" -> data [label="Batch 16"];
"data\\n(Data)" -> label [label="Batch 16"];
data -> {CONV} [label=""];
{CONV} -> conv1 [label="8"];
conv1 -> "relu1\\n(ReLU)" [label=""];
"relu1\\n(ReLU)" -> conv1 [label=""];
conv1 -> {POOL} [label=""];
{POOL} -> pool1 [label=""];
pool1 -> "ip\\n(InnerProduct)" [label=""];
"ip\\n(InnerProduct)" -> ip [label="10"];
ip -> "loss\\n(SoftmaxWithLoss)" [label=""];
label -> "loss\\n(SoftmaxWithLoss)" [label=""];
"loss\\n(SoftmaxWithLoss)" -> loss [label=""];
}}
"""


@pytest.fixture
def net_param(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    return read_text(str(path), caffe_pb2.NetParameter())


def test_dot_source_train_phase(net_param):
    assert draw.get_dot_source(net_param, "LR", phase=caffe.TRAIN) == TRAIN_DOT


def test_all_layers_without_phase(net_param):
    source = draw.get_dot_source(net_param, "LR")
    assert '"acc\\n(Accuracy)" [shape=record, fillcolor="#6495ED", style=filled];' in source
    assert 'ip -> "acc\\n(Accuracy)" [label=""];' in source
    assert draw.get_dot_source(net_param, "LR", phase=caffe.TEST).count("Accuracy") == 4


def test_vertical_labels_use_spaces(net_param):
    source = draw.get_dot_source(net_param, "TB", label_edges=False)
    assert "rankdir=TB;" in source
    assert '"conv1 (Convolution) kernel size: 3 stride: 2 pad: 1" [shape=record' in source
    assert 'label="Batch 16"' not in source


def test_include_and_exclude_rejected(net_param):
    net_param.layer[1].exclude.add(phase=caffe.TEST)
    net_param.layer[1].include.add(phase=caffe.TRAIN)
    with pytest.raises(ValueError, match="layer conv1 has both include and exclude specified"):
        draw.get_dot_source(net_param, "LR", phase=caffe.TRAIN)


def test_exclude_rule(net_param):
    net_param.layer[2].exclude.add(phase=caffe.TRAIN)
    assert "relu1" not in draw.get_dot_source(net_param, "LR", phase=caffe.TRAIN)
    assert "relu1" in draw.get_dot_source(net_param, "LR", phase=caffe.TEST)


def test_unnamed_net_and_quoted_ids():
    net = caffe_pb2.NetParameter()
    net.layer.add(name="node", type="Input", top=["my blob"])
    source = draw.get_dot_source(net)
    assert source.startswith("digraph Net {\n")
    assert '"my blob";' in source


def test_draw_net_to_dot_file(net_param, tmp_path):
    target = tmp_path / "net.dot"
    draw.draw_net_to_file(net_param, str(target), phase=caffe.TRAIN)
    assert target.read_text() == TRAIN_DOT
    assert draw.draw_net(net_param, "LR", ext="raw", phase=caffe.TRAIN) == TRAIN_DOT.encode()


def test_draw_without_extension(net_param, tmp_path):
    with pytest.raises(ValueError, match="give the file an extension"):
        draw.draw_net_to_file(net_param, str(tmp_path / "picture"))


def test_missing_dot_program(net_param, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="needs Graphviz's 'dot' program, which is not on PATH"):
        draw.draw_net_to_file(net_param, str(tmp_path / "net.png"))
    assert not (tmp_path / "net.png").exists()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")
def test_render_png(net_param, tmp_path):
    target = tmp_path / "net.png"
    draw.draw_net_to_file(net_param, str(target))
    assert target.read_bytes().startswith(b"\x89PNG")


def test_missing_pydot(net_param, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydot", None)
    with pytest.raises(ImportError, match="needs the 'pydot' package, which is not installed"):
        draw.get_pydot_graph(net_param, "LR")


def test_pydot_graph(net_param):
    pydot = pytest.importorskip("pydot")
    graph = draw.get_pydot_graph(net_param, "LR", phase=caffe.TRAIN)
    assert isinstance(graph, pydot.Dot)
    assert len(graph.get_edges()) == 13


def test_helpers_match_pycaffe_names(net_param):
    assert draw.get_pooling_types_dict() == {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}
    assert draw.get_edge_label(net_param.layer[0]) == "Batch 16"
    assert draw.get_edge_label(net_param.layer[2]) == '""'
    assert draw.choose_color_by_layertype("Deconvolution") == "#FF5050"
    assert draw.get_layer_label(net_param.layer[4], "BT") == '"ip (InnerProduct)"'
    assert caffe.draw is draw
