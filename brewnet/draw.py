"""Draw a net definition as a graph (pycaffe's ``caffe.draw``).

Layers are boxes and blobs octagons, with pycaffe's labels and colors. The graph is
built as Graphviz DOT text by :func:`get_dot_source`, which needs nothing installed.
:func:`draw_net` renders it with Graphviz's ``dot`` program, and
:func:`get_pydot_graph` returns a ``pydot.Dot`` for those who use the ``pydot``
package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

from brewnet.proto import caffe_pb2

# Formats that are the DOT text itself, so no Graphviz run is needed.
_TEXT_FORMATS = ("raw", "dot", "gv")
_DOT_KEYWORDS = {"node", "edge", "graph", "digraph", "subgraph", "strict"}

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}


@dataclass
class _Node:
    name: str
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class _Graph:
    name: str
    rankdir: str
    nodes: dict[str, _Node] = field(default_factory=dict)
    edges: list[tuple[str, str, str]] = field(default_factory=list)


def get_pooling_types_dict() -> dict[int, str]:
    """Return {pooling method number: name}, e.g. {0: "MAX", 1: "AVE", ...}."""
    descriptor = caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR
    return {value.number: name for name, value in descriptor.values_by_name.items()}


def get_edge_label(layer: caffe_pb2.LayerParameter) -> str:
    """Return the label of a layer's top edges: batch size or number of outputs."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_label(layer: caffe_pb2.LayerParameter, rankdir: str) -> str:
    """Return a layer's node label (quoted): name, type, and kernel for conv/pool."""
    # Vertical graphs have room across, so words go on one line.
    separator = " " if rankdir in ("TB", "BT") else "\\n"
    if layer.type in ("Convolution", "Deconvolution"):
        conv = layer.convolution_param
        kernel = conv.kernel_size[0] if len(conv.kernel_size) else 1
        stride = conv.stride[0] if len(conv.stride) else 1
        pad = conv.pad[0] if len(conv.pad) else 0
        return (
            f'"{layer.name}{separator}({layer.type}){separator}kernel size: {kernel}'
            f'{separator}stride: {stride}{separator}pad: {pad}"'
        )
    if layer.type == "Pooling":
        pool = layer.pooling_param
        method = get_pooling_types_dict()[pool.pool]
        return (
            f'"{layer.name}{separator}({method} {layer.type}){separator}kernel size: '
            f'{pool.kernel_size}{separator}stride: {pool.stride}{separator}pad: '
            f'{pool.pad}"'
        )
    return f'"{layer.name}{separator}({layer.type})"'


def choose_color_by_layertype(layertype: str) -> str:
    """Return the fill color of a layer node."""
    if layertype in ("Convolution", "Deconvolution"):
        return "#FF5050"
    if layertype == "Pooling":
        return "#FF9900"
    if layertype == "InnerProduct":
        return "#CC33FF"
    return "#6495ED"


def _included(layer: caffe_pb2.LayerParameter, phase: int | None) -> bool:
    """Return whether ``layer`` is in ``phase`` by its include/exclude phase rules."""
    if phase is None:
        return True
    if len(layer.include) and len(layer.exclude):
        raise ValueError(f"layer {layer.name} has both include and exclude specified")
    included = len(layer.include) == 0
    for rule in layer.include:
        included = included or rule.phase == phase
    for rule in layer.exclude:
        included = included and rule.phase != phase
    return included


def _build_graph(
    caffe_net: caffe_pb2.NetParameter, rankdir: str, label_edges: bool, phase: int | None
) -> _Graph:
    graph = _Graph(caffe_net.name or "Net", rankdir)
    for layer in caffe_net.layer:
        if not _included(layer, phase):
            continue
        node_key = f"{layer.name}_{layer.type}"
        label = get_layer_label(layer, rankdir)
        in_place = len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        if in_place:
            style = dict(NEURON_LAYER_STYLE)
        else:
            style = dict(LAYER_STYLE_DEFAULT, fillcolor=choose_color_by_layertype(layer.type))
        graph.nodes[node_key] = _Node(label, style)
        for bottom in layer.bottom:
            graph.nodes[f"{bottom}_blob"] = _Node(bottom, dict(BLOB_STYLE))
            graph.edges.append((f"{bottom}_blob", node_key, '""'))
        for top in layer.top:
            # A top node has no style until some layer reads it, as in pycaffe.
            graph.nodes[f"{top}_blob"] = _Node(top)
            edge_label = get_edge_label(layer) if label_edges else '""'
            graph.edges.append((node_key, f"{top}_blob", edge_label))
    return graph


def _dot_id(text: str) -> str:
    """Return ``text`` as a DOT identifier, quoting it unless it is already quoted."""
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        return text
    plain = text.replace("_", "a").isascii() and text.replace("_", "a").isalnum()
    if plain and not text[:1].isdigit() and text.lower() not in _DOT_KEYWORDS:
        return text
    return '"' + text.replace('"', '\\"') + '"'


def _attribute_text(attributes: dict[str, str]) -> str:
    return ", ".join(f"{key}={_dot_id(value)}" for key, value in attributes.items())


def get_dot_source(
    caffe_net: caffe_pb2.NetParameter,
    rankdir: str = "LR",
    label_edges: bool = True,
    phase: int | None = None,
) -> str:
    """Return the graph of ``caffe_net`` as Graphviz DOT text.

    Args:
        caffe_net: the net definition.
        rankdir: "LR", "RL", "TB" or "BT": the direction of the layout.
        label_edges: write batch sizes and output counts on the top edges.
        phase: draw only the layers of brewnet.TRAIN or brewnet.TEST; None draws all.
    """
    graph = _build_graph(caffe_net, rankdir, label_edges, phase)
    lines = [f"digraph {_dot_id(graph.name)} {{", f"rankdir={_dot_id(rankdir)};"]
    for node in graph.nodes.values():
        if node.attributes:
            lines.append(f"{_dot_id(node.name)} [{_attribute_text(node.attributes)}];")
        else:
            lines.append(f"{_dot_id(node.name)};")
    for source, destination, label in graph.edges:
        lines.append(
            f"{_dot_id(graph.nodes[source].name)} -> "
            f"{_dot_id(graph.nodes[destination].name)} [label={_dot_id(label)}];"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def get_pydot_graph(
    caffe_net: caffe_pb2.NetParameter,
    rankdir: str,
    label_edges: bool = True,
    phase: int | None = None,
):
    """Return the graph of ``caffe_net`` as a ``pydot.Dot``.

    Raises:
        ImportError: the ``pydot`` package is not installed.
    """
    try:
        import pydot
    except ImportError as error:
        raise ImportError(
            "get_pydot_graph needs the 'pydot' package, which is not installed; "
            "install it with 'pip install pydot', or use "
            "brewnet.draw.get_dot_source() for the DOT text without pydot"
        ) from error
    graph = _build_graph(caffe_net, rankdir, label_edges, phase)
    dot = pydot.Dot(graph.name, graph_type="digraph", rankdir=rankdir)
    nodes = {key: pydot.Node(node.name, **node.attributes) for key, node in graph.nodes.items()}
    for node in nodes.values():
        dot.add_node(node)
    for source, destination, label in graph.edges:
        dot.add_edge(pydot.Edge(nodes[source], nodes[destination], label=label))
    return dot


def draw_net(
    caffe_net: caffe_pb2.NetParameter,
    rankdir: str,
    ext: str = "png",
    phase: int | None = None,
) -> bytes:
    """Return the drawing of ``caffe_net`` in format ``ext`` (png, pdf, svg, ...).

    "raw", "dot" and "gv" return the DOT text; other formats run Graphviz's ``dot``.

    Raises:
        RuntimeError: the ``dot`` program is not installed, or it failed.
    """
    source = get_dot_source(caffe_net, rankdir, phase=phase)
    if ext in _TEXT_FORMATS:
        return source.encode("utf-8")
    program = shutil.which("dot")
    if program is None:
        raise RuntimeError(
            f"drawing a net as '{ext}' needs Graphviz's 'dot' program, which is not "
            f"on PATH; install Graphviz (e.g. 'apt-get install graphviz'), or write "
            f"a .dot or .raw file, which needs no Graphviz"
        )
    result = subprocess.run(
        [program, f"-T{ext}"], input=source.encode("utf-8"), capture_output=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"Graphviz 'dot -T{ext}' failed with status {result.returncode}: "
            f"{result.stderr.decode('utf-8', 'replace').strip()}"
        )
    return result.stdout


def draw_net_to_file(
    caffe_net: caffe_pb2.NetParameter,
    filename: str | os.PathLike,
    rankdir: str = "LR",
    phase: int | None = None,
) -> None:
    """Draw ``caffe_net`` into ``filename``, in the format its extension names.

    A ``.raw`` or ``.dot`` file gets the DOT text, which Graphviz can render later.
    """
    filename = os.fspath(filename)
    ext = filename[filename.rfind(".") + 1 :] if "." in os.path.basename(filename) else ""
    if not ext:
        raise ValueError(
            f"cannot tell the drawing format of '{filename}'; give the file an "
            f"extension such as .png, .pdf, .svg or .dot"
        )
    data = draw_net(caffe_net, rankdir, ext, phase)
    with open(filename, "wb") as handle:
        handle.write(data)
