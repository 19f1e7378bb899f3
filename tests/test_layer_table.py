"""docs/layers.md lists every Caffe layer type with its current status."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import brewnet

TOOL = Path(__file__).resolve().parent.parent / "tools" / "layer_table.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("layer_table", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_caffe_has_61_layer_types():
    tool = load_tool()
    names = [name for group in tool.CAFFE_LAYER_TYPES.values() for name in group]
    assert len(names) == 61
    assert len(set(names)) == 61


def test_layer_page_is_current():
    tool = load_tool()
    assert tool.PAGE.read_text() == tool.render(), (
        "docs/layers.md is stale; run python tools/layer_table.py"
    )


def test_every_non_data_layer_is_supported():
    tool = load_tool()
    known = set(brewnet.layer_type_list())
    skipped = set(tool.CAFFE_LAYER_TYPES["Data"]) | {"Python"}
    missing = [
        name
        for names in tool.CAFFE_LAYER_TYPES.values()
        for name in names
        if name not in skipped and name not in known
    ]
    assert missing == []
