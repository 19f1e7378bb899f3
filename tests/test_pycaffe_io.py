"""caffe.io: images, resizing, oversampling, the Transformer and proto conversions."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import brewnet as caffe
from brewnet.proto import caffe_pb2


# ------------------------------------------------------------------ load_image
def save(tmp_path, array, mode=None, name="image.png"):
    path = tmp_path / name
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(path)
    return str(path)


def test_load_rgb_scaled_to_unit(tmp_path):
    pixels = np.array([[[0, 128, 255], [10, 20, 30]]], dtype=np.uint8)
    image = caffe.io.load_image(save(tmp_path, pixels, "RGB"))
    assert image.dtype == np.float32
    assert image.shape == (1, 2, 3)
    np.testing.assert_array_equal(image, pixels.astype(np.float32) / 255)


def test_load_gray_as_color_repeats_channel(tmp_path):
    pixels = np.array([[0, 51], [102, 255]], dtype=np.uint8)
    image = caffe.io.load_image(save(tmp_path, pixels, "L"))
    assert image.shape == (2, 2, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[:, :, channel], pixels / np.float32(255))


def test_load_gray_keeps_one_channel(tmp_path):
    pixels = np.array([[0, 51], [102, 255]], dtype=np.uint8)
    image = caffe.io.load_image(save(tmp_path, pixels, "L"), color=False)
    assert image.shape == (2, 2, 1)
    np.testing.assert_array_equal(image[:, :, 0], pixels / np.float32(255))


def test_load_color_as_gray_uses_skimage_weights(tmp_path):
    pixels = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    image = caffe.io.load_image(save(tmp_path, pixels, "RGB"), color=False)
    assert image.shape == (1, 4, 1)
    np.testing.assert_allclose(image[0, :, 0], [0.2125, 0.7154, 0.0721, 1.0], rtol=1e-6)


def test_load_rgba_drops_alpha(tmp_path):
    pixels = np.array([[[255, 0, 51, 7]]], dtype=np.uint8)
    image = caffe.io.load_image(save(tmp_path, pixels, "RGBA"))
    assert image.shape == (1, 1, 3)
    np.testing.assert_allclose(image[0, 0], [1.0, 0.0, 0.2], rtol=1e-6)


def test_load_16_bit_gray(tmp_path):
    pixels = np.array([[0, 65535], [32768, 1]], dtype=np.uint16)
    image = caffe.io.load_image(save(tmp_path, pixels), color=False)
    np.testing.assert_allclose(image[:, :, 0], pixels / 65535.0, rtol=1e-6)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="image file not found"):
        caffe.io.load_image(str(tmp_path / "absent.png"))


def test_load_non_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(ValueError, match=f"cannot read image {path}"):
        caffe.io.load_image(str(path))


# ------------------------------------------------------------------ resize_image
# Upsampling [[0, 1], [2, 3]] to 4 x 4 samples rows and columns at -0.25, 0.25,
# 0.75, 1.25: weights (0.75 p0), (0.75 p0 + 0.25 p1), (0.25 p0 + 0.75 p1), (0.75 p1),
# since samples beyond the border blend with 0.
UPSAMPLED = np.array(
    [
        [0.0, 0.1875, 0.5625, 0.5625],
        [0.375, 0.75, 1.25, 1.125],
        [1.125, 1.75, 2.25, 1.875],
        [1.125, 1.6875, 2.0625, 1.6875],
    ]
)


def test_resize_upsample_values():
    image = np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32)[:, :, None]
    resized = caffe.io.resize_image(image, (4, 4))
    assert resized.dtype == np.float32
    assert resized.shape == (4, 4, 1)
    np.testing.assert_allclose(resized[:, :, 0], UPSAMPLED, rtol=1e-6)


def test_resize_border_blends_with_minimum():
    # pycaffe resizes the image scaled to [0, 1], so the border blends with the
    # image minimum, here 10.
    image = np.array([[10.0, 11.0], [12.0, 13.0]], dtype=np.float32)[:, :, None]
    resized = caffe.io.resize_image(image, (4, 4))
    np.testing.assert_allclose(resized[:, :, 0], UPSAMPLED + 10, rtol=1e-6)


def test_resize_downsample_averages_pairs():
    image = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    resized = caffe.io.resize_image(image, (2, 2))
    np.testing.assert_allclose(resized[:, :, 0], [[2.5, 4.5], [10.5, 12.5]], rtol=1e-6)


def test_resize_three_channels_independent():
    image = np.stack([np.arange(4.0).reshape(2, 2) * k for k in (1, 2, 3)], axis=2)
    resized = caffe.io.resize_image(image.astype(np.float32), (4, 4))
    # Normalization uses the global min and max, which are linear, so each channel
    # scales like the first.
    for k in (1, 2, 3):
        np.testing.assert_allclose(resized[:, :, k - 1], UPSAMPLED * k, rtol=1e-6)


def test_resize_other_channel_counts_align_corners():
    image = np.stack([np.arange(4.0).reshape(2, 2), 10 * np.arange(4.0).reshape(2, 2)], axis=2)
    resized = caffe.io.resize_image(image.astype(np.float32), (3, 3))
    expected = np.array([[0.0, 0.5, 1.0], [1.0, 1.5, 2.0], [2.0, 2.5, 3.0]])
    np.testing.assert_allclose(resized[:, :, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(resized[:, :, 1], 10 * expected, rtol=1e-6)


def test_resize_constant_image():
    resized = caffe.io.resize_image(np.full((3, 2, 3), 0.25, dtype=np.float32), (5, 7))
    assert resized.shape == (5, 7, 3)
    assert np.all(resized == np.float32(0.25))


def test_resize_nearest():
    image = np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32)[:, :, None]
    resized = caffe.io.resize_image(image, (4, 4), interp_order=0)
    expected = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]], dtype=np.float32)
    np.testing.assert_array_equal(resized[:, :, 0], expected)


def test_resize_same_size_is_identity():
    image = np.random.default_rng(0).random((5, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(caffe.io.resize_image(image, (5, 4)), image, rtol=1e-6)


def test_resize_bad_arguments():
    with pytest.raises(ValueError, match="needs an H x W x K array"):
        caffe.io.resize_image(np.zeros((2, 2)), (3, 3))
    with pytest.raises(ValueError, match=r"new_dims must be \(height, width\) > 0"):
        caffe.io.resize_image(np.zeros((2, 2, 1)), (0, 3))
    with pytest.raises(ValueError, match="supports interp_order 0"):
        caffe.io.resize_image(np.zeros((2, 2, 1)), (3, 3), interp_order=3)


# ------------------------------------------------------------------ oversample
def test_oversample_corners_center_mirrors():
    image = np.arange(20, dtype=np.float32).reshape(4, 5, 1)
    crops = caffe.io.oversample([image], (2, 3))
    assert crops.shape == (10, 2, 3, 1)
    corners = [image[0:2, 0:3], image[0:2, 2:5], image[2:4, 0:3], image[2:4, 2:5]]
    # Center (2, 2.5) minus half the crop (1, 1.5) is (1, 1), truncated to int.
    center = image[1:3, 1:4]
    for index, expected in enumerate(corners + [center]):
        np.testing.assert_array_equal(crops[index], expected)
        np.testing.assert_array_equal(crops[index + 5], expected[:, ::-1])


def test_oversample_two_images():
    images = [np.zeros((3, 3, 2), np.float32), np.ones((3, 3, 2), np.float32)]
    crops = caffe.io.oversample(images, (2, 2))
    assert crops.shape == (20, 2, 2, 2)
    assert np.all(crops[:10] == 0)
    assert np.all(crops[10:] == 1)


def test_oversample_crop_too_large():
    with pytest.raises(ValueError, match="larger than the images"):
        caffe.io.oversample([np.zeros((2, 2, 1))], (3, 2))


# ------------------------------------------------------------------ Transformer
def test_transformer_steps_in_order():
    transformer = caffe.io.Transformer({"data": (1, 3, 2, 2)})
    transformer.set_transpose("data", (2, 0, 1))
    transformer.set_channel_swap("data", (2, 1, 0))
    transformer.set_raw_scale("data", 255)
    transformer.set_mean("data", np.array([1.0, 2.0, 3.0]))
    transformer.set_input_scale("data", 0.5)
    image = np.zeros((2, 2, 3), dtype=np.float32)
    image[:, :, 0] = 1.0  # red
    out = transformer.preprocess("data", image)
    assert out.dtype == np.float32
    assert out.shape == (3, 2, 2)
    # BGR order: blue = 0 -> (0 - 1) / 2, green 0 -> (0 - 2) / 2, red 255 -> (255 - 3) / 2
    np.testing.assert_array_equal(out[0], np.full((2, 2), -0.5))
    np.testing.assert_array_equal(out[1], np.full((2, 2), -1.0))
    np.testing.assert_array_equal(out[2], np.full((2, 2), 126.0))
    assert image[0, 0, 0] == 1.0


def test_transformer_resizes_to_input():
    transformer = caffe.io.Transformer({"data": [1, 1, 4, 4]})
    transformer.set_transpose("data", (2, 0, 1))
    image = np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32)[:, :, None]
    np.testing.assert_allclose(transformer.preprocess("data", image)[0], UPSAMPLED, rtol=1e-6)


def test_transformer_elementwise_mean():
    transformer = caffe.io.Transformer({"data": (1, 1, 2, 2)})
    transformer.set_transpose("data", (2, 0, 1))
    # An H x W mean is accepted for a one-channel input and broadcast.
    transformer.set_mean("data", np.array([[1.0, 2.0], [3.0, 4.0]]))
    out = transformer.preprocess("data", np.ones((2, 2, 1), dtype=np.float32))
    np.testing.assert_array_equal(out, [[[0.0, -1.0], [-2.0, -3.0]]])


def test_transformer_errors():
    transformer = caffe.io.Transformer({"data": (1, 3, 4, 4)})
    with pytest.raises(KeyError, match="label is not one of the net inputs"):
        transformer.preprocess("label", np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="needs 3 axes"):
        transformer.set_transpose("data", (1, 0))
    with pytest.raises(ValueError, match="needs 3 entries"):
        transformer.set_channel_swap("data", (1, 0))
    with pytest.raises(ValueError, match="mean has 2 channels but input 'data' has 3"):
        transformer.set_mean("data", np.zeros(2))
    with pytest.raises(ValueError, match=r"does not match input 'data' shape \(3, 4, 4\)"):
        transformer.set_mean("data", np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="is invalid"):
        transformer.set_mean("data", np.zeros((1, 3, 4, 4)))


# ------------------------------------------------------------------ proto conversions
def test_blobproto_round_trip():
    array = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    blob = caffe.io.array_to_blobproto(array, diff=-array)
    assert list(blob.shape.dim) == [1, 2, 3]
    back = caffe.io.blobproto_to_array(blob)
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back, array)
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob, return_diff=True), -array)


def test_blobproto_legacy_shape():
    blob = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=2, data=[1, 2, 3, 4])
    assert caffe.io.blobproto_to_array(blob).shape == (1, 2, 1, 2)


def test_blobproto_double_data():
    blob = caffe_pb2.BlobProto(double_data=[0.1, 0.2])
    blob.shape.dim.append(2)
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob), [0.1, 0.2])


def test_blobproto_count_mismatch():
    blob = caffe_pb2.BlobProto(data=[1, 2, 3])
    blob.shape.dim.extend([2, 2])
    with pytest.raises(ValueError, match=r"contains 3 data values but its shape \(2, 2\) needs 4"):
        caffe.io.blobproto_to_array(blob)


def test_blobprotovector_round_trip():
    arrays = [np.ones((2, 2)), np.arange(3.0)]
    serialized = caffe.io.arraylist_to_blobprotovector_str(arrays)
    assert isinstance(serialized, bytes)
    back = caffe.io.blobprotovector_str_to_arraylist(serialized)
    assert len(back) == 2
    np.testing.assert_array_equal(back[0], arrays[0])
    np.testing.assert_array_equal(back[1], arrays[1])


def test_datum_uint8_and_float():
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    datum = caffe.io.array_to_datum(pixels, label=4)
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 2, 2, 4)
    assert datum.data == pixels.tobytes()
    back = caffe.io.datum_to_array(datum)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, pixels)
    values = np.linspace(0, 1, 4).reshape(1, 2, 2)
    datum = caffe.io.array_to_datum(values)
    assert len(datum.data) == 0
    assert not datum.HasField("label")
    np.testing.assert_allclose(caffe.io.datum_to_array(datum), values, rtol=1e-7)


def test_datum_needs_three_dimensions():
    with pytest.raises(ValueError, match=r"3-dimensional C x H x W array, got shape \(2, 2\)"):
        caffe.io.array_to_datum(np.zeros((2, 2)))
