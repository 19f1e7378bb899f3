"""The HDF5Output layer: what it writes, when, in which type, and its errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import brewnet
from brewnet.errors import DataError, LayerSetupError
from brewnet.layers.data_output import legacy_shape


def output_net(
    tmp_path: Path,
    file_name: str,
    data_shape=(2, 3),
    label_shape=(2,),
    bottoms: str = 'bottom: "data" bottom: "label"',
    extra: str = "",
    dtype=torch.float32,
) -> brewnet.Net:
    """Build Input(data, label) -> HDF5Output(file_name)."""
    dims = lambda shape: " ".join(f"dim: {d}" for d in shape)  # noqa: E731
    text = (
        f"{extra}\n"
        f'layer {{ name: "input" type: "Input" top: "data" top: "label"\n'
        f"  input_param {{ shape {{ {dims(data_shape)} }} shape {{ {dims(label_shape)} }} }} }}\n"
        f'layer {{ name: "out" type: "HDF5Output" {bottoms}\n'
        f'  hdf5_output_param {{ file_name: "{file_name}" }} }}\n'
    )
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return brewnet.Net(str(path), brewnet.TEST, dtype=dtype)


def read_back(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as handle:
        return {name: handle[name][()] for name in handle}


# ------------------------------------------------------------------------ writing
def test_forward_writes_bottoms_exactly(tmp_path):
    target = tmp_path / "out.h5"
    net = output_net(tmp_path, str(target))
    data = np.array([[0.5, -1.25, 3.0], [1e-7, 2.5, -0.125]], dtype=np.float32)
    net.blobs["data"].data[...] = data
    net.blobs["label"].data[...] = [7, 3]
    net.forward()
    stored = read_back(target)
    assert sorted(stored) == ["data", "label"]
    # Caffe writes through its four-axis accessors: (N, K) -> (N, K, 1, 1).
    assert stored["data"].shape == (2, 3, 1, 1)
    assert stored["label"].shape == (2, 1, 1, 1)
    assert stored["data"].dtype == np.float32
    assert stored["label"].dtype == np.float32
    np.testing.assert_array_equal(stored["data"][:, :, 0, 0], data)
    np.testing.assert_array_equal(stored["label"].ravel(), [7.0, 3.0])


def test_second_forward_overwrites(tmp_path):
    target = tmp_path / "out.h5"
    net = output_net(tmp_path, str(target))
    net.blobs["data"].data[...] = 1.0
    net.blobs["label"].data[...] = [1, 2]
    net.forward()
    net.blobs["data"].data[...] = np.arange(6).reshape(2, 3)
    net.blobs["label"].data[...] = [5, 6]
    net.forward()
    stored = read_back(target)
    assert sorted(stored) == ["data", "label"]
    np.testing.assert_array_equal(stored["data"].reshape(2, 3), [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(stored["label"].ravel(), [5, 6])


def test_four_axis_bottoms_keep_their_shape(tmp_path):
    target = tmp_path / "out.h5"
    net = output_net(tmp_path, str(target), data_shape=(2, 1, 2, 3), label_shape=(2, 4))
    data = np.arange(12, dtype=np.float32).reshape(2, 1, 2, 3) / 4
    net.blobs["data"].data[...] = data
    net.blobs["label"].data[...] = np.arange(8).reshape(2, 4)
    net.forward()
    stored = read_back(target)
    assert stored["data"].shape == (2, 1, 2, 3)
    assert stored["label"].shape == (2, 4, 1, 1)
    np.testing.assert_array_equal(stored["data"], data)
    np.testing.assert_array_equal(stored["label"][:, :, 0, 0], np.arange(8).reshape(2, 4))


def test_float64_net_writes_float64(tmp_path):
    target = tmp_path / "out.h5"
    net = output_net(tmp_path, str(target), dtype=torch.float64)
    # 0.1 has no exact float32 value, so a float32 dataset would change it.
    net.blobs["data"].data[...] = 0.1
    net.blobs["label"].data[...] = [1, 0]
    net.forward()
    stored = read_back(target)
    assert stored["data"].dtype == np.float64
    assert stored["label"].dtype == np.float64
    assert stored["data"][0, 0, 0, 0] == 0.1


def test_file_created_at_setup(tmp_path):
    target = tmp_path / "out.h5"
    target.write_bytes(b"old contents")
    output_net(tmp_path, str(target))
    assert read_back(target) == {}


def test_forward_no_grad_writes_too(tmp_path):
    target = tmp_path / "out.h5"
    net = output_net(tmp_path, str(target))
    net.blobs["data"].data[...] = 2.0
    net.blobs["label"].data[...] = [4, 4]
    net.forward_no_grad()
    np.testing.assert_array_equal(read_back(target)["data"].ravel(), [2.0] * 6)


def test_relative_file_name_starts_at_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net = output_net(tmp_path, "relative.h5")
    net.forward()
    assert (tmp_path / "relative.h5").is_file()


def test_force_backward_gives_zero_diffs(tmp_path):
    # Caffe's backward of HDF5Output does nothing, so its bottoms get no gradient.
    net = output_net(tmp_path, str(tmp_path / "out.h5"), extra="force_backward: true")
    net.blobs["data"].data[...] = 3.0
    net.forward()
    net.backward()
    np.testing.assert_array_equal(net.blobs["data"].diff, np.zeros((2, 3)))


def test_legacy_shape_pads_with_ones():
    assert legacy_shape((5,)) == (5, 1, 1, 1)
    assert legacy_shape((5, 2)) == (5, 2, 1, 1)
    assert legacy_shape((5, 2, 3, 4)) == (5, 2, 3, 4)
    assert legacy_shape(()) == (1, 1, 1, 1)


# ------------------------------------------------------------------------- errors
def test_one_bottom_is_rejected(tmp_path):
    with pytest.raises(LayerSetupError) as info:
        output_net(tmp_path, str(tmp_path / "out.h5"), bottoms='bottom: "data"')
    message = str(info.value)
    assert "layer 'out' (type HDF5Output)" in message
    assert "takes exactly 2 bottom blobs, but 1 is given" in message


def test_three_bottoms_are_rejected(tmp_path):
    with pytest.raises(LayerSetupError, match="takes exactly 2 bottom blobs, but 3 are given"):
        output_net(
            tmp_path, str(tmp_path / "out.h5"),
            bottoms='bottom: "data" bottom: "label" bottom: "data"',
        )


def test_top_is_rejected(tmp_path):
    with pytest.raises(LayerSetupError, match="takes exactly 0 top blobs, but 1 is given"):
        output_net(
            tmp_path, str(tmp_path / "out.h5"),
            bottoms='bottom: "data" bottom: "label" top: "copy"',
        )


def test_batch_sizes_must_match(tmp_path):
    with pytest.raises(LayerSetupError) as info:
        output_net(tmp_path, str(tmp_path / "out.h5"), label_shape=(3,))
    message = str(info.value)
    assert "layer 'out' (type HDF5Output)" in message
    assert "data bottom has 2 rows but the label bottom has 3" in message


def test_five_axes_are_rejected(tmp_path):
    with pytest.raises(LayerSetupError, match=r"data bottom has shape \(2, 1, 1, 1, 3\)"):
        output_net(tmp_path, str(tmp_path / "out.h5"), data_shape=(2, 1, 1, 1, 3))


def test_empty_file_name(tmp_path):
    with pytest.raises(LayerSetupError, match="hdf5_output_param.file_name is empty"):
        output_net(tmp_path, "")


def test_unwritable_folder_names_layer_and_path(tmp_path):
    target = tmp_path / "missing" / "out.h5"
    with pytest.raises(DataError) as info:
        output_net(tmp_path, str(target))
    message = str(info.value)
    assert "layer 'out' (type HDF5Output)" in message
    assert f"failed to write HDF5 file '{target}'" in message
