"""The WindowData layer: window files, sampling, Caffe's warp geometry, mean, errors.

The test images are ramps whose BGR pixel (y, x, c) is ``40 * y + 4 * x + c``.
Bilinear interpolation reproduces a linear ramp exactly, so a warped window has
``40 * Y + 4 * X + c`` at the source position (Y, X) that OpenCV's pixel-centre
mapping ``(out + 0.5) * in_size / out_size - 0.5``, clamped to the region, gives.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import brewnet
from brewnet.errors import DataError, LayerSetupError
from brewnet.io.model import array_to_blob_proto
from brewnet.proto import caffe_pb2
from brewnet.layers.window_data import (
    WindowDataLayer,
    foreground_count,
    geometry_problem,
    read_window_file,
    round_half_away,
    window_geometry,
)

ROWS, COLS = 5, 7


# ------------------------------------------------------------------------- helpers
def ramp(rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """Return the H x W x 3 BGR ramp 40 * y + 4 * x + c as uint8."""
    y, x = np.mgrid[0:rows, 0:cols]
    return np.stack([40 * y + 4 * x + c for c in range(3)], axis=-1).astype(np.uint8)


def save_png(path: Path, bgr: np.ndarray) -> None:
    Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]), "RGB").save(path)


def window_file(path: Path, images: list[tuple[str, list[str]]], channels: int = 3) -> str:
    """Write a window file of (image name, window lines) records; return its path."""
    lines = []
    for index, (name, windows) in enumerate(images):
        lines += [f"# {index}", name, str(channels), str(ROWS), str(COLS), str(len(windows))]
        lines += windows
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def window_net(
    tmp_path: Path,
    source: str,
    batch_size: int = 1,
    transform: str = "crop_size: 4",
    extra: str = "fg_fraction: 1",
    dtype=torch.float32,
    seed: int = 1,
) -> brewnet.Net:
    """Build a one-layer WindowData net after seeding torch's generator."""
    text = (
        'layer { name: "windows" type: "WindowData" top: "data" top: "label"\n'
        f"  transform_param {{ {transform} }}\n"
        f'  window_data_param {{ source: "{source}" batch_size: {batch_size} {extra} }} }}\n'
    )
    path = tmp_path / f"net{len(list(tmp_path.glob('net*.prototxt')))}.prototxt"
    path.write_text(text)
    brewnet.set_random_seed(seed)
    return brewnet.Net(str(path), brewnet.TRAIN, dtype=dtype)


def layer_param(source: str) -> caffe_pb2.LayerParameter:
    """Return a WindowData LayerParameter with crop 4, batch 1, foreground only."""
    param = caffe_pb2.LayerParameter(name="windows", type="WindowData", top=["data", "label"])
    param.transform_param.crop_size = 4
    param.window_data_param.source = source
    param.window_data_param.batch_size = 1
    param.window_data_param.fg_fraction = 1
    return param


@pytest.fixture
def one_image(tmp_path: Path) -> Path:
    save_png(tmp_path / "ramp.png", ramp())
    return tmp_path


def single_window(folder: Path, corners: str, label: int = 1) -> str:
    """Write a window file with one foreground window on ramp.png."""
    return window_file(
        folder / "windows.txt", [(str(folder / "ramp.png"), [f"{label} 1.0 {corners}"])]
    )


def channel_ramp(rows: list[float], cols: list[float]) -> np.ndarray:
    """Return the 3 x len(rows) x len(cols) ramp at source rows and columns."""
    y = np.asarray(rows, dtype=np.float64)[:, None]
    x = np.asarray(cols, dtype=np.float64)[None, :]
    return np.stack([40 * y + 4 * x + c for c in range(3)])


# ------------------------------------------------------------------- window files
def test_read_window_file_splits_by_overlap(tmp_path):
    path = window_file(
        tmp_path / "w.txt",
        [("a.png", ["1 0.9 0 0 1 1", "2 0.5 1 1 2 2", "3 0.4 0 0 2 2"]),
         ("b.png", ["4 0.29 1 0 3 2", "0 0.0 0 1 2 3"])],
    )
    parsed = read_window_file(path, str(tmp_path) + "/", 0.5, 0.3)
    assert [image.path for image in parsed.images] == [
        str(tmp_path / "a.png"), str(tmp_path / "b.png")
    ]
    # overlap 0.5 reaches fg_threshold; 0.4 lies in [bg_threshold, fg_threshold).
    assert [(w.label, w.image_index, w.line) for w in parsed.foreground] == [
        (1, 0, 7), (2, 0, 8)
    ]
    # Background windows get label 0 and overlap 0 whatever the file gives.
    assert [(w.label, w.overlap, w.image_index) for w in parsed.background] == [
        (0, 0.0, 1), (0, 0.0, 1)
    ]
    assert (parsed.background[0].x1, parsed.background[0].y2) == (1, 2)
    assert parsed.last_image_index == 1


def test_tokens_may_share_lines(tmp_path):
    path = tmp_path / "w.txt"
    path.write_text("# 0 a.png 3 5 7 2 1 0.9 0 0 1 1\n2 0.8 1 1 2 2")
    parsed = read_window_file(str(path), "", 0.5, 0.5)
    assert [w.label for w in parsed.foreground] == [1, 2]


def test_foreground_count_uses_float32():
    assert foreground_count(8, 0.25) == 2
    # 0.7 in float32 is 0.69999999; times 10 it rounds to 7.0 in float32 but is
    # 6.9999999 in double, which would truncate to 6.
    assert foreground_count(10, np.float32(0.7)) == 7
    assert foreground_count(3, 0.5) == 1
    assert foreground_count(4, 0.0) == 0


def test_round_half_away_matches_c_round():
    assert round_half_away(2.5) == 3
    assert round_half_away(-2.5) == -3
    assert round_half_away(-1.6) == -2
    assert round_half_away(5.6) == 6
    assert round_half_away(np.float32(0.49999997)) == 0
    assert round_half_away(-0.4) == 0


# ---------------------------------------------------------------------- batches
def test_shapes_labels_and_order(tmp_path, one_image):
    source = window_file(
        tmp_path / "w.txt",
        [(str(tmp_path / "ramp.png"), ["3 0.8 0 0 3 3", "0 0.1 1 1 4 4"])],
    )
    net = window_net(tmp_path, source, batch_size=8, extra="fg_fraction: 0.25")
    assert net.blobs["data"].shape == (8, 3, 4, 4)
    assert net.blobs["label"].shape == (8,)
    out = net.forward()
    assert out["data"].dtype == np.float32
    # Background windows come first, then int(8 * 0.25) = 2 foreground windows.
    np.testing.assert_array_equal(out["label"], [0, 0, 0, 0, 0, 0, 3, 3])


def test_float64_net_gets_float64_batches(tmp_path, one_image):
    source = single_window(tmp_path, "2 1 3 2")
    net = window_net(tmp_path, source, dtype=torch.float64)
    out = net.forward()
    assert out["data"].dtype == np.float64
    assert out["label"].dtype == np.float64


def test_fg_fraction_in_float32(tmp_path, one_image):
    source = window_file(
        tmp_path / "w.txt",
        [(str(tmp_path / "ramp.png"), ["5 0.8 0 0 3 3", "0 0.1 1 1 4 4"])],
    )
    net = window_net(tmp_path, source, batch_size=10, extra="fg_fraction: 0.7")
    labels = net.forward()["label"]
    np.testing.assert_array_equal(labels, [0, 0, 0] + [5] * 7)


def test_foreground_and_background_draws(tmp_path, one_image):
    image = str(tmp_path / "ramp.png")
    source = window_file(
        tmp_path / "w.txt",
        [(image, ["1 0.9 0 0 3 3", "2 0.5 1 0 4 3", "3 0.4 0 0 6 4",
                  "4 0.29 2 1 5 4", "0 0.0 3 1 6 4"])],
    )
    net = window_net(
        tmp_path, source, batch_size=8,
        extra="fg_fraction: 0.5 fg_threshold: 0.5 bg_threshold: 0.3",
    )
    # The top-left pixel of channel 0 identifies the window: 40 * y1 + 4 * x1.
    corner_to_window = {0: "fg 1", 4: "fg 2", 48: "bg 4", 52: "bg 0"}
    fg_labels: Counter = Counter()
    drawn: Counter = Counter()
    for _ in range(60):
        out = net.forward()
        labels = out["label"]
        np.testing.assert_array_equal(labels[:4], [0, 0, 0, 0])
        assert set(labels[4:]) <= {1.0, 2.0}
        fg_labels.update(labels[4:].tolist())
        for item in range(8):
            name = corner_to_window[int(out["data"][item, 0, 0, 0])]
            assert name.startswith("fg" if item >= 4 else "bg")
            drawn[name] += 1
    # 240 draws from two windows each: the binomial standard deviation is 7.7.
    assert 90 <= fg_labels[1.0] <= 150
    assert fg_labels[1.0] + fg_labels[2.0] == 240
    assert 90 <= drawn["bg 4"] <= 150
    assert drawn["bg 4"] + drawn["bg 0"] == 240


def test_same_seed_same_batches(tmp_path, one_image):
    source = window_file(
        tmp_path / "w.txt",
        [(str(tmp_path / "ramp.png"), ["1 0.9 0 0 3 3", "2 0.9 1 0 4 3", "3 0.9 2 1 5 4"])],
    )
    first = window_net(tmp_path, source, batch_size=6, seed=5).forward()["label"]
    again = window_net(tmp_path, source, batch_size=6, seed=5).forward()["label"]
    np.testing.assert_array_equal(first, again)
    others = [
        window_net(tmp_path, source, batch_size=6, seed=seed).forward()["label"]
        for seed in (6, 7, 8)
    ]
    assert any(not np.array_equal(first, other) for other in others)


# --------------------------------------------------------------------- geometry
def test_warp_without_context_by_hand(tmp_path, one_image):
    # Window x 2..3, y 1..2 (2 x 2 pixels) warped to 4 x 4. OpenCV maps output
    # column j to 2 + clamp((j + 0.5) / 2 - 0.5, 0, 1): 2, 2.25, 2.75, 3; rows
    # likewise 1, 1.25, 1.75, 2. Channel 0 is 40 * Y + 4 * X.
    source = single_window(tmp_path, "2 1 3 2", label=7)
    out = window_net(tmp_path, source).forward()
    assert out["label"][0] == 7
    expected_channel_0 = [
        [48, 49, 51, 52],
        [58, 59, 61, 62],
        [78, 79, 81, 82],
        [88, 89, 91, 92],
    ]
    np.testing.assert_array_equal(out["data"][0, 0], expected_channel_0)
    np.testing.assert_array_equal(out["data"][0, 1], np.add(expected_channel_0, 1))
    np.testing.assert_array_equal(out["data"][0, 2], np.add(expected_channel_0, 2))


def test_window_of_crop_size_is_copied(tmp_path, one_image):
    source = single_window(tmp_path, "1 0 4 3")
    out = window_net(tmp_path, source).forward()
    np.testing.assert_array_equal(out["data"][0], ramp()[0:4, 1:5].transpose(2, 0, 1))


def test_context_pad_by_hand(tmp_path, one_image):
    # crop_size 9, context_pad 2: context_scale = 9 / 5 = 1.8. Window x 0..3:
    # half width 2, centre 2, so x runs from round(2 - 3.6) = -2 to round(5.6) = 6,
    # 9 pixels. The same holds for y. Clipped to the 7 x 5 image: x 0..6, y 0..4,
    # with 2 pixels cut off on the left and top and 2 at the bottom. The warp
    # factor is 9 / 9 = 1, so the clipped region is copied to rows 2..6 and
    # columns 2..8; the rest stays 0.
    geometry = window_geometry((0, 0, 3, 3), ROWS, COLS, 9, context_pad=2)
    assert (geometry.x1, geometry.y1, geometry.x2, geometry.y2) == (0, 0, 6, 4)
    assert (geometry.height, geometry.width, geometry.pad_h, geometry.pad_w) == (5, 7, 2, 2)
    source = single_window(tmp_path, "0 0 3 3")
    out = window_net(
        tmp_path, source, transform="crop_size: 9", extra="fg_fraction: 1 context_pad: 2"
    ).forward()
    expected = np.zeros((3, 9, 9))
    expected[:, 2:7, 2:9] = ramp().transpose(2, 0, 1)
    np.testing.assert_array_equal(out["data"][0], expected)


def test_context_pad_with_resize_by_hand(tmp_path, one_image):
    # crop_size 18, context_pad 4: context_scale = 18 / 10 = 1.8, so the window
    # x 0..3 grows to x -2..6 as above, 9 pixels, and the warp factor is
    # 18 / 9 = 2. The clipped 7 x 5 region resizes to round(7 * 2) = 14 by
    # round(5 * 2) = 10 pixels; the cut-off 2 pixels become round(2 * 2) = 4 rows
    # and columns of padding. Output column j of the region samples source column
    # clamp((j + 0.5) / 2 - 0.5, 0, 6).
    geometry = window_geometry((0, 0, 3, 3), ROWS, COLS, 18, context_pad=4)
    assert (geometry.height, geometry.width, geometry.pad_h, geometry.pad_w) == (10, 14, 4, 4)
    source = single_window(tmp_path, "0 0 3 3")
    out = window_net(
        tmp_path, source, transform="crop_size: 18", extra="fg_fraction: 1 context_pad: 4"
    ).forward()
    cols = np.clip((np.arange(14) + 0.5) / 2 - 0.5, 0, 6)
    rows = np.clip((np.arange(10) + 0.5) / 2 - 0.5, 0, 4)
    assert list(cols[:4]) == [0, 0.25, 0.75, 1.25]
    expected = np.zeros((3, 18, 18))
    expected[:, 4:14, 4:18] = channel_ramp(rows, cols)
    np.testing.assert_array_equal(out["data"][0], expected)


def test_square_mode_by_hand(tmp_path, one_image):
    # Window x 2..3, y 0..3: half width 1, half height 2, so square mode uses 2
    # for both about the centre (3, 2): x 1..5, y 0..4, 5 x 5 pixels, warped to
    # crop_size 5 with factor 1.
    geometry = window_geometry((2, 0, 3, 3), ROWS, COLS, 5, square=True)
    assert (geometry.x1, geometry.y1, geometry.x2, geometry.y2) == (1, 0, 5, 4)
    source = single_window(tmp_path, "2 0 3 3")
    out = window_net(
        tmp_path, source, transform="crop_size: 5", extra='fg_fraction: 1 crop_mode: "square"'
    ).forward()
    np.testing.assert_array_equal(out["data"][0], ramp()[0:5, 1:6].transpose(2, 0, 1))


def test_geometry_trims_rounding_overflow():
    # crop 10, pad 1: context_scale 1.25. Window x 0..1 on a 3-pixel-wide image:
    # centre 1, half 1, x from round(-0.25) = 0 to round(2.25) = 2, no clipping,
    # width round(3 * 10 / 3) = 10: fits exactly.
    geometry = window_geometry((0, 0, 1, 1), 3, 3, 10, context_pad=1)
    assert (geometry.x1, geometry.x2, geometry.width, geometry.pad_w) == (0, 2, 10, 0)
    # crop 6, pad 2: context_scale 3. Window x 0..0: centre 0.5, half 0.5, so x
    # runs from round(-1) = -1 to round(2) = 2, 4 pixels, one left of the image.
    # Warp factor 6 / 4 = 1.5: the clipped 3 pixels become round(4.5) = 5 and the
    # padding round(1.5) = 2, and 2 + 5 > 6, so the width is cut to 4.
    geometry = window_geometry((0, 0, 0, 0), 3, 3, 6, context_pad=2)
    assert (geometry.x1, geometry.x2, geometry.pad_w, geometry.width) == (0, 2, 2, 4)
    assert (geometry.pad_h, geometry.height) == (2, 4)
    # Mirrored, the padding comes from the right side, where nothing was cut off.
    geometry = window_geometry((0, 0, 0, 0), 3, 3, 6, context_pad=2, mirror=True)
    assert (geometry.pad_w, geometry.width) == (0, 5)
    assert (geometry.pad_h, geometry.height) == (2, 4)


def test_mirror_flips_window_and_padding(tmp_path, one_image):
    # The context-pad case above: unmirrored, the image sits at columns 2..8.
    # Mirrored, the padding is taken from the right side (0 pixels cut off there),
    # so the flipped image sits at columns 0..6.
    source = single_window(tmp_path, "0 0 3 3")
    net = window_net(
        tmp_path, source, batch_size=16, transform="crop_size: 9 mirror: true",
        extra="fg_fraction: 1 context_pad: 2",
    )
    plain = np.zeros((3, 9, 9))
    plain[:, 2:7, 2:9] = ramp().transpose(2, 0, 1)
    flipped = np.zeros((3, 9, 9))
    flipped[:, 2:7, 0:7] = ramp()[:, ::-1].transpose(2, 0, 1)
    kinds = Counter()
    for sample in net.forward()["data"]:
        if np.array_equal(sample, plain):
            kinds["plain"] += 1
        elif np.array_equal(sample, flipped):
            kinds["flipped"] += 1
        else:
            pytest.fail("a sample is neither the window nor its mirror image")
    assert kinds["plain"] > 0
    assert kinds["flipped"] > 0


# ------------------------------------------------------------------ mean, scale
def test_mean_values_subtracted_per_channel(tmp_path, one_image):
    source = single_window(tmp_path, "1 0 4 3")
    out = window_net(
        tmp_path, source, transform="crop_size: 4 mean_value: 10 mean_value: 20 mean_value: 30.5"
    ).forward()
    window = ramp()[0:4, 1:5].transpose(2, 0, 1).astype(np.float64)
    expected = window - np.array([10, 20, 30.5])[:, None, None]
    np.testing.assert_array_equal(out["data"][0], expected)


def test_single_mean_value_for_all_channels(tmp_path, one_image):
    source = single_window(tmp_path, "1 0 4 3")
    out = window_net(tmp_path, source, transform="crop_size: 4 mean_value: 8").forward()
    np.testing.assert_array_equal(out["data"][0], ramp()[0:4, 1:5].transpose(2, 0, 1) - 8.0)


def write_mean(path: Path, mean: np.ndarray) -> str:
    path.write_bytes(array_to_blob_proto(mean[None]).SerializeToString())
    return str(path)


def test_mean_file_square_offset_comes_from_width(tmp_path, one_image):
    # Mean image 8 rows x 6 columns, crop 4: Caffe's offset (6 - 4) // 2 = 1 is
    # used for rows too, so rows 1..4 and columns 1..4 are subtracted (not rows
    # 2..5, the vertical centre).
    c, y, x = np.mgrid[0:3, 0:8, 0:6]
    mean = (c + 0.5 * y + 0.25 * x).astype(np.float32)
    mean_file = write_mean(tmp_path / "mean.binaryproto", mean)
    source = single_window(tmp_path, "1 0 4 3")
    out = window_net(
        tmp_path, source, transform=f'crop_size: 4 mean_file: "{mean_file}"'
    ).forward()
    window = ramp()[0:4, 1:5].transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_array_equal(out["data"][0], window - mean[:, 1:5, 1:5])


def test_mean_file_follows_padding_and_leaves_zeros(tmp_path, one_image):
    # With context padding the mean is taken under each output pixel, and the
    # padding stays 0 (no mean is subtracted there). Mirroring flips the window
    # but not the mean.
    c, y, x = np.mgrid[0:3, 0:9, 0:9]
    mean = (c + 0.5 * y + 0.25 * x).astype(np.float32)
    mean_file = write_mean(tmp_path / "mean.binaryproto", mean)
    source = single_window(tmp_path, "0 0 3 3")
    net = window_net(
        tmp_path, source, batch_size=8,
        transform=f'crop_size: 9 mirror: true mean_file: "{mean_file}"',
        extra="fg_fraction: 1 context_pad: 2",
    )
    plain = np.zeros((3, 9, 9), np.float32)
    plain[:, 2:7, 2:9] = ramp().transpose(2, 0, 1) - mean[:, 2:7, 2:9]
    flipped = np.zeros((3, 9, 9), np.float32)
    flipped[:, 2:7, 0:7] = ramp()[:, ::-1].transpose(2, 0, 1) - mean[:, 2:7, 0:7]
    samples = net.forward()["data"]
    matches = [np.array_equal(s, plain) or np.array_equal(s, flipped) for s in samples]
    assert all(matches)
    assert any(np.array_equal(s, flipped) for s in samples)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_scale_applies_after_mean(tmp_path, one_image):
    source = single_window(tmp_path, "1 0 4 3")
    out = window_net(
        tmp_path, source, transform="crop_size: 4 mean_value: 4",
        extra="fg_fraction: 1 scale: 0.5",
    ).forward()
    window = ramp()[0:4, 1:5].transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_array_equal(out["data"][0], (window - 4) * 0.5)


def test_transform_param_scale_without_window_scale(tmp_path, one_image):
    source = single_window(tmp_path, "1 0 4 3")
    out = window_net(tmp_path, source, transform="crop_size: 4 scale: 0.25").forward()
    window = ramp()[0:4, 1:5].transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_array_equal(out["data"][0], window * 0.25)


def test_window_scale_wins_over_transform_scale(tmp_path, one_image):
    # Built without the net's legacy upgrade, the layer receives both fields; Caffe
    # reads window_data_param.scale.
    param = layer_param(single_window(tmp_path, "1 0 4 3"))
    param.transform_param.scale = 0.25
    param.window_data_param.scale = 2
    layer = WindowDataLayer(param)
    layer.setup([])
    data, _ = layer.forward([])
    layer.close()
    window = ramp()[0:4, 1:5].transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_array_equal(data[0].numpy(), window * 2)


def test_cache_images_reads_files_at_setup(tmp_path, one_image):
    source = single_window(tmp_path, "2 1 3 2")
    net = window_net(tmp_path, source, extra="fg_fraction: 1 cache_images: true")
    (tmp_path / "ramp.png").unlink()
    out = net.forward()
    assert out["data"][0, 0, 0, 0] == 48
    assert out["data"][0, 0, 3, 3] == 92


def test_root_folder_prefixes_image_paths(tmp_path, one_image):
    source = window_file(tmp_path / "w.txt", [("ramp.png", ["1 0.9 2 1 3 2"])])
    out = window_net(
        tmp_path, source, extra=f'fg_fraction: 1 root_folder: "{tmp_path}/"'
    ).forward()
    assert out["data"][0, 0, 0, 0] == 48


def test_setup_logs_class_counts(tmp_path, one_image, caplog):
    source = window_file(
        tmp_path / "w.txt",
        [(str(tmp_path / "ramp.png"), ["2 0.9 0 0 3 3", "2 0.7 0 0 2 2", "0 0.1 1 1 4 4"])],
    )
    with caplog.at_level(logging.INFO, logger="brewnet.layers.window_data"):
        window_net(tmp_path, source, batch_size=2, extra="fg_fraction: 0.5")
    assert "Number of images: 1" in caplog.messages
    assert "class 0 has 1 samples" in caplog.messages
    assert "class 2 has 2 samples" in caplog.messages
    assert "output data size: 2,3,4,4" in caplog.messages


# ------------------------------------------------------------------------ errors
def test_missing_window_file(tmp_path):
    missing = tmp_path / "nothing.txt"
    with pytest.raises(DataError) as info:
        window_net(tmp_path, str(missing))
    message = str(info.value)
    assert "layer 'windows' (type WindowData)" in message
    assert f"cannot open the window file '{missing}'" in message


def test_empty_window_file(tmp_path):
    path = tmp_path / "w.txt"
    path.write_text("\n\n")
    with pytest.raises(DataError, match=f"window file '{path}' is empty"):
        window_net(tmp_path, str(path))


@pytest.mark.parametrize(
    "text, line, detail",
    [
        ("0\na.png 3 5 7 0\n", 1, "expected '#' starting an image record, got '0'"),
        ("# 0\na.png\nthree 5 7\n0\n", 3, "expected an integer for the channel count of image 0, got 'three'"),
        ("# 0\na.png 3 5 7\n1\n1 high 0 0 1 1\n", 4, "expected a number for the overlap of a window of image 0, got 'high'"),
        ("# 0\na.png 3 5 7\n1\n1 0.9 0 0 1.5 1\n", 4, "expected an integer for the x2 of a window of image 0, got '1.5'"),
        ("# 0\na.png 3 5 7\n2\n1 0.9 0 0 1 1\n", 5, "the file ends where the label of a window of image 0 was expected"),
        ("# 0\na.png 3 5 7\n1\n1 0.9 0 0 1 1\n2 0.9 0 0 1 1\n", 5, "expected '#' starting an image record, got '2'"),
    ],
)
def test_malformed_window_file_names_line(tmp_path, text, line, detail):
    path = tmp_path / "w.txt"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        window_net(tmp_path, str(path))
    message = str(info.value)
    assert "layer 'windows' (type WindowData)" in message
    assert f"window file '{path}', line {line}: {detail}" in message


def test_foreground_label_zero(tmp_path):
    path = window_file(tmp_path / "w.txt", [("a.png", ["1 0.9 0 0 1 1", "0 0.6 0 0 1 1"])])
    with pytest.raises(DataError, match=r"line 8: a foreground window \(overlap 0.6 >= "
                       r"fg_threshold 0.5\) has label 0"):
        window_net(tmp_path, path)


def test_image_index_out_of_range(tmp_path):
    path = tmp_path / "w.txt"
    path.write_text("# 1\na.png 3 5 7\n1\n1 0.9 0 0 1 1\n")
    with pytest.raises(DataError, match="line 4: the window belongs to image index 1, but "
                       "the file has 1 image records"):
        window_net(tmp_path, str(path))


def test_record_index_out_of_order_warns(tmp_path, one_image, caplog):
    # As in Caffe, a window uses the record whose position is the index after '#',
    # so the window listed under '# 1' is cut from the second record's image.
    save_png(tmp_path / "flat.png", np.full((ROWS, COLS, 3), 200, np.uint8))
    path = tmp_path / "w.txt"
    path.write_text(
        f"# 1\n{tmp_path / 'ramp.png'}\n3 5 7\n1\n1 0.9 1 0 4 3\n"
        f"# 0\n{tmp_path / 'flat.png'}\n3 5 7\n0\n"
    )
    with caplog.at_level(logging.WARNING, logger="brewnet.layers.window_data"):
        net = window_net(tmp_path, str(path))
    assert (
        f"window file '{path}', line 1: image record '# 1' is record number 0 "
        f"(counting from 0); its windows use the image of record 1"
    ) in caplog.messages
    np.testing.assert_array_equal(net.forward()["data"][0], np.full((3, 4, 4), 200.0))


def test_window_file_not_utf8(tmp_path):
    path = tmp_path / "w.txt"
    path.write_bytes(b"# 0\n\xff\xfe.png 3 5 7 0\n")
    with pytest.raises(DataError, match=f"window file '{path}' is not UTF-8 text"):
        window_net(tmp_path, str(path))


def test_clipped_region_resizing_to_nothing():
    # Window x -8..0 on a 1 x 1 image, crop 4, pad 1 (context_scale 2): centre
    # -3.5, half 4.5, so x runs from round(-12.5) = -13 to round(5.5) = 6, 20
    # pixels. One pixel is left after clipping, and it resizes to round(4 / 20) = 0.
    geometry = window_geometry((-8, 0, 0, 0), 1, 1, 4, context_pad=1)
    assert (geometry.x1, geometry.x2, geometry.width) == (0, 0, 0)
    assert geometry_problem(geometry, 1, 1) == (
        "the region x 0..0, y 0..0 resizes to 0 x 1 pixels, which is empty"
    )


def test_missing_image_names_layer_and_path(tmp_path):
    missing = tmp_path / "gone.png"
    source = window_file(tmp_path / "w.txt", [(str(missing), ["1 0.9 0 0 1 1"])])
    net = window_net(tmp_path, source)
    with pytest.raises(DataError) as info:
        net.forward()
    message = str(info.value)
    assert "layer 'windows' (type WindowData)" in message
    assert f"could not read image '{missing}' (window file '{source}', line 1)" in message
    assert "No such file or directory" in message


def test_undecodable_image(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    source = window_file(tmp_path / "w.txt", [(str(broken), ["1 0.9 0 0 1 1"])])
    net = window_net(tmp_path, source)
    with pytest.raises(DataError, match=f"could not read image '{broken}'.*cannot decode"):
        net.forward()


def test_cache_images_missing_file_fails_at_setup(tmp_path):
    missing = tmp_path / "gone.png"
    source = window_file(tmp_path / "w.txt", [(str(missing), ["1 0.9 0 0 1 1"])])
    with pytest.raises(DataError) as info:
        window_net(tmp_path, source, extra="fg_fraction: 1 cache_images: true")
    message = str(info.value)
    assert "layer 'windows' (type WindowData)" in message
    assert f"could not read image '{missing}'" in message
    assert "for cache_images" in message


def test_window_outside_image(tmp_path, one_image):
    source = single_window(tmp_path, "5 1 7 2")
    net = window_net(tmp_path, source)
    with pytest.raises(DataError) as info:
        net.forward()
    message = str(info.value)
    assert "layer 'windows' (type WindowData)" in message
    assert f"window file '{source}', line 7: window x1 y1 x2 y2 = 5 1 7 2" in message
    assert "is not inside the image of 7 x 5 pixels" in message


def test_crop_size_zero(tmp_path, one_image):
    source = single_window(tmp_path, "0 0 1 1")
    with pytest.raises(LayerSetupError) as info:
        window_net(tmp_path, source, transform="")
    message = str(info.value)
    assert "layer 'windows' (type WindowData)" in message
    assert "transform_param.crop_size is 0" in message


@pytest.mark.parametrize(
    "transform, extra, detail",
    [
        ("crop_size: 4", "context_pad: 2", "context_pad 2 leaves no room"),
        ("crop_size: 4", 'crop_mode: "Warp"', "crop_mode is 'Warp'"),
        ("crop_size: 4", "fg_fraction: 1.5", "fg_fraction is 1.5"),
        ("crop_size: 4 mean_value: 1 mean_value: 2", "", "2 mean_value entries"),
    ],
)
def test_invalid_parameters(tmp_path, one_image, transform, extra, detail):
    source = single_window(tmp_path, "0 0 1 1")
    with pytest.raises(LayerSetupError) as info:
        window_net(tmp_path, source, transform=transform, extra=extra)
    assert "layer 'windows' (type WindowData)" in str(info.value)
    assert detail in str(info.value)


def test_empty_source(tmp_path):
    with pytest.raises(LayerSetupError, match="window_data_param.source is empty"):
        WindowDataLayer(layer_param("")).setup([])


def test_prefetch_zero(tmp_path, one_image):
    param = layer_param(single_window(tmp_path, "0 0 1 1"))
    param.data_param.prefetch = 0
    with pytest.raises(LayerSetupError, match="data_param.prefetch is 0; it must be at least 1"):
        WindowDataLayer(param).setup([])


def test_close_stops_prefetch_thread(tmp_path, one_image):
    layer = WindowDataLayer(layer_param(single_window(tmp_path, "0 0 1 1")))
    layer.setup([])
    assert layer._prefetcher.running
    layer.close()
    assert not layer._prefetcher.running


def test_batch_size_zero(tmp_path, one_image):
    source = single_window(tmp_path, "0 0 1 1")
    with pytest.raises(LayerSetupError, match="batch_size must be positive"):
        window_net(tmp_path, source, batch_size=0)


def test_no_background_windows(tmp_path, one_image):
    source = single_window(tmp_path, "0 0 1 1")
    with pytest.raises(DataError) as info:
        window_net(tmp_path, source, batch_size=4, extra="fg_fraction: 0.5")
    message = str(info.value)
    assert "layer 'windows' (type WindowData)" in message
    assert f"window file '{source}' has no background windows" in message
    assert "each batch takes 2" in message


def test_last_image_must_list_three_channels(tmp_path):
    path = window_file(tmp_path / "w.txt", [("a.png", ["1 0.9 0 0 1 1"])], channels=1)
    with pytest.raises(DataError, match="line 1: the last image lists 1 channels"):
        window_net(tmp_path, path)


def test_mean_file_too_small(tmp_path, one_image):
    mean_file = write_mean(tmp_path / "mean.binaryproto", np.zeros((3, 3, 3), np.float32))
    source = single_window(tmp_path, "0 0 1 1")
    with pytest.raises(DataError) as info:
        window_net(tmp_path, source, transform=f'crop_size: 4 mean_file: "{mean_file}"')
    message = str(info.value)
    assert "layer 'windows' (type WindowData)" in message
    assert f"mean_file '{mean_file}' has shape (3, 3, 3)" in message


def test_mean_file_and_mean_value_together(tmp_path, one_image):
    mean_file = write_mean(tmp_path / "mean.binaryproto", np.zeros((3, 4, 4), np.float32))
    source = single_window(tmp_path, "0 0 1 1")
    with pytest.raises(LayerSetupError, match="both mean_file and mean_value"):
        window_net(
            tmp_path, source, transform=f'crop_size: 4 mean_value: 1 mean_file: "{mean_file}"'
        )
