"""DataTransformer: Caffe's crop, mirror, mean subtraction and scaling, by hand."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from google.protobuf import text_format

import brewnet
from brewnet.data.transform import DataTransformer, load_mean_file, transformation_param
from brewnet.errors import DataError, LayerSetupError
from brewnet.io.model import array_to_blob_proto
from brewnet.proto import caffe_pb2


def make(text: str = "", phase=brewnet.TEST, seed: int = 0, dtype=np.float32) -> DataTransformer:
    param = text_format.Parse(text, caffe_pb2.TransformationParameter())
    return DataTransformer(param, phase, np.random.default_rng(seed), dtype)


def seed_with_first_coin(value: int) -> int:
    """Return a seed whose generator's first integers(2) draw is ``value``."""
    for seed in range(100):
        if np.random.default_rng(seed).integers(2) == value:
            return seed
    raise AssertionError("no seed found")


SAMPLE = np.arange(20, dtype=np.uint8).reshape(1, 5, 4)


def test_identity_by_default():
    out = make().transform(SAMPLE)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, SAMPLE.astype(np.float32))


def test_mean_value_then_scale():
    # (x - 1) * 2 on [[1, 2, 3], [4, 5, 6]]: the mean is subtracted before scaling.
    sample = np.array([[[1, 2, 3], [4, 5, 6]]], dtype=np.uint8)
    out = make("mean_value: 1 scale: 2").transform(sample)
    np.testing.assert_array_equal(out, [[[0, 2, 4], [6, 8, 10]]])


def test_scale_uses_float32_arithmetic():
    # Caffe computes (102 - 104) * 0.017f in float: -0.034 rounded to float32.
    sample = np.full((1, 1, 1), 102, dtype=np.uint8)
    out = make("mean_value: 104 scale: 0.017").transform(sample)
    assert out[0, 0, 0] == np.float32(-2.0) * np.float32(0.017)


def test_one_mean_value_per_channel():
    sample = np.full((3, 1, 2), 100, dtype=np.uint8)
    out = make("mean_value: 10 mean_value: 20 mean_value: 30").transform(sample)
    assert out[:, 0, 0].tolist() == [90, 80, 70]


def test_single_mean_value_applies_to_every_channel():
    sample = np.full((3, 1, 1), 100, dtype=np.uint8)
    out = make("mean_value: 40").transform(sample)
    assert out[:, 0, 0].tolist() == [60, 60, 60]


def test_test_crop_is_centred_with_floor():
    # 5 x 4 sample, crop 2: rows start at (5 - 2) // 2 = 1, columns at (4 - 2) // 2 = 1.
    out = make("crop_size: 2").transform(SAMPLE)
    np.testing.assert_array_equal(out[0], [[5, 6], [9, 10]])
    # crop 3: rows start at (5 - 3) // 2 = 1, columns at (4 - 3) // 2 = 0.
    out = make("crop_size: 3").transform(SAMPLE)
    np.testing.assert_array_equal(out[0], [[4, 5, 6], [8, 9, 10], [12, 13, 14]])


def test_mean_file_is_taken_at_the_crop_window(tmp_path):
    mean = np.arange(20, dtype=np.float32).reshape(1, 1, 5, 4) * 0.5
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(array_to_blob_proto(mean).SerializeToString())
    param = caffe_pb2.TransformationParameter(mean_file=str(path), crop_size=2, scale=2)
    out = DataTransformer(param, brewnet.TEST).transform(SAMPLE)
    # Window rows 1..2, columns 1..2: (x - x / 2) * 2 = x.
    np.testing.assert_array_equal(out[0], [[5, 6], [9, 10]])


def test_mirror_flips_after_mean_subtraction(tmp_path):
    # The mean pixel subtracted is the one under the source pixel; then the row flips.
    mean = np.zeros((1, 1, 5, 4), dtype=np.float32)
    mean[0, 0, :, 0] = 100
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(array_to_blob_proto(mean).SerializeToString())
    param = caffe_pb2.TransformationParameter(mean_file=str(path), mirror=True)
    rng = np.random.default_rng(seed_with_first_coin(1))
    out = DataTransformer(param, brewnet.TEST, rng).transform(SAMPLE)
    expected = (SAMPLE[0].astype(np.float32) - mean[0, 0])[:, ::-1]
    np.testing.assert_array_equal(out[0], expected)
    assert out[0, 0].tolist() == [3, 2, 1, -100]


def test_mirror_is_random_in_test_phase_too():
    # Caffe draws the mirror coin in every phase.
    flipped = make("mirror: true", seed=seed_with_first_coin(1)).transform(SAMPLE)
    kept = make("mirror: true", seed=seed_with_first_coin(0)).transform(SAMPLE)
    np.testing.assert_array_equal(flipped[0], SAMPLE[0, :, ::-1])
    np.testing.assert_array_equal(kept[0], SAMPLE[0])


def test_train_crop_offsets_cover_the_range():
    transformer = make("crop_size: 2", phase=brewnet.TRAIN, seed=3)
    corners = set()
    for _ in range(200):
        out = transformer.transform(SAMPLE)
        corners.add(divmod(int(out[0, 0, 0]), 4))
    # Rows 0..3 and columns 0..2 are the possible window corners of a 5 x 4 sample.
    assert corners == {(r, c) for r in range(4) for c in range(3)}


def test_random_draw_order_is_mirror_row_column():
    rng = np.random.default_rng(11)
    coin, row, column = int(rng.integers(2)), int(rng.integers(4)), int(rng.integers(3))
    out = make("crop_size: 2 mirror: true", phase=brewnet.TRAIN, seed=11).transform(SAMPLE)
    window = SAMPLE[0, row : row + 2, column : column + 2].astype(np.float32)
    np.testing.assert_array_equal(out[0], window[:, ::-1] if coin else window)


def test_needs_random_flag():
    assert not make("crop_size: 2").needs_random
    assert make("crop_size: 2", phase=brewnet.TRAIN).needs_random
    assert make("mirror: true").needs_random


def test_float64_output():
    out = make("scale: 0.1", dtype=np.float64).transform(np.ones((1, 1, 1), np.uint8))
    assert out.dtype == np.float64
    assert out[0, 0, 0] == np.float64(np.float32(0.1))


def test_float_samples_keep_their_values():
    sample = np.array([[[0.25, -1.5]]], dtype=np.float32)
    out = make("scale: 2").transform(sample)
    np.testing.assert_array_equal(out, [[[0.5, -3.0]]])


def test_output_shape():
    assert make().output_shape((3, 5, 4)) == (3, 5, 4)
    assert make("crop_size: 3").output_shape((3, 5, 4)) == (3, 3, 3)


def test_both_means_rejected(tmp_path):
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(array_to_blob_proto(np.zeros((1, 1, 5, 4), np.float32)).SerializeToString())
    param = caffe_pb2.TransformationParameter(mean_file=str(path), mean_value=[1])
    with pytest.raises(LayerSetupError, match="both mean_file and mean_value; keep only one"):
        DataTransformer(param, brewnet.TEST)


def test_mean_value_count_mismatch():
    with pytest.raises(DataError, match="specify either 1 mean_value or as many as channels"):
        make("mean_value: 1 mean_value: 2").transform(np.zeros((3, 2, 2), np.uint8))


def test_crop_too_large():
    with pytest.raises(DataError, match="crop_size 6 is larger than a sample of 5 x 4"):
        make("crop_size: 6").output_shape((1, 5, 4))


def test_mean_file_not_a_blob(tmp_path):
    path = tmp_path / "bad.binaryproto"
    path.write_bytes(b"\xff\xff\xff")
    with pytest.raises(DataError, match="is not a BlobProto"):
        load_mean_file(str(path))


def test_mean_file_wrong_rank(tmp_path):
    path = tmp_path / "flat.binaryproto"
    path.write_bytes(array_to_blob_proto(np.zeros((2, 1, 5, 4), np.float32)).SerializeToString())
    with pytest.raises(DataError, match=r"a mean image must have shape \(1, channels"):
        load_mean_file(str(path))


def test_legacy_data_param_fields_move(caplog):
    layer = text_format.Parse(
        'name: "d" type: "Data" data_param { scale: 0.5 crop_size: 2 mirror: true }'
        " transform_param { mean_value: 3 }",
        caffe_pb2.LayerParameter(),
    )
    with caplog.at_level(logging.WARNING, logger="brewnet.data.transform"):
        param = transformation_param(layer, layer.data_param)
    assert param.scale == 0.5
    assert param.crop_size == 2
    assert param.mirror
    assert list(param.mean_value) == [3]
    assert "scale, crop_size, mirror in DataParameter are deprecated" in caplog.text
