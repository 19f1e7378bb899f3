"""Write docs/layers.md: every layer type BVLC Caffe registers, with brewnet's status.

Run ``python tools/layer_table.py`` after adding a layer; a test fails when the
committed page differs from what this script writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The 61 types that BVLC Caffe 1.0 (final master) registers with its layer factory,
# grouped as its documentation groups them.
CAFFE_LAYER_TYPES: dict[str, list[str]] = {
    "Data": ["Data", "DummyData", "HDF5Data", "HDF5Output", "ImageData", "Input",
             "MemoryData", "WindowData"],
    "Vision": ["Convolution", "Crop", "Deconvolution", "Im2col", "LRN", "Pooling", "SPP"],
    "Recurrent": ["LSTM", "LSTMUnit", "RNN"],
    "Common": ["Embed", "InnerProduct"],
    "Normalization": ["BatchNorm", "MVN"],
    "Activation / neuron": ["AbsVal", "BNLL", "Clip", "Dropout", "ELU", "Exp", "Log",
                            "PReLU", "Power", "ReLU", "Sigmoid", "Swish", "TanH",
                            "Threshold"],
    "Utility": ["ArgMax", "BatchReindex", "Bias", "Concat", "Eltwise", "Filter",
                "Flatten", "Parameter", "Reduction", "Reshape", "Scale", "Silence",
                "Slice", "Softmax", "Split", "Tile"],
    "Loss": ["Accuracy", "ContrastiveLoss", "EuclideanLoss", "HingeLoss",
             "InfogainLoss", "MultinomialLogisticLoss", "SigmoidCrossEntropyLoss",
             "SoftmaxWithLoss"],
    "Python": ["Python"],
}

PAGE = Path(__file__).resolve().parent.parent / "docs" / "layers.md"


def render() -> str:
    """Return the text of docs/layers.md for the layers registered now."""
    import brewnet

    known = set(brewnet.layer_type_list())
    caffe_types = [name for group in CAFFE_LAYER_TYPES.values() for name in group]
    lines = [
        "# Layer types",
        "",
        f"BVLC Caffe registers {len(caffe_types)} layer types. This table lists each with "
        "its status in",
        "brewnet; `tools/layer_table.py` writes it from the layer registry.",
        "",
        "| group | type | status | module |",
        "| --- | --- | --- | --- |",
    ]
    from brewnet.layers import layer_class

    for group, names in CAFFE_LAYER_TYPES.items():
        for name in names:
            if name in known:
                module = layer_class(name).__module__.replace("brewnet.layers.", "")
                lines.append(f"| {group} | {name} | supported | `{module}` |")
            else:
                lines.append(f"| {group} | {name} | not yet | |")
    extra = sorted(known - set(caffe_types))
    if extra:
        lines += ["", "Types brewnet adds beyond Caffe's: " + ", ".join(extra) + "."]
    return "\n".join(lines) + "\n"


def main() -> int:
    PAGE.write_text(render())
    sys.stdout.write(f"wrote {PAGE}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
