"""The Data layer: LMDB reading, Datum decoding, prefetching, errors, the digits LMDBs."""

from __future__ import annotations

import gc
import importlib.util
import io
import logging
import os
import threading
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

import brewnet
from brewnet.data.datum import (
    array_to_datum,
    datum_to_array,
    decode_image,
    encoded_datum,
    parse_datum,
)
from brewnet.data.db import LMDBReader, LMDBWriter
from brewnet.data.prefetch import Prefetcher
from brewnet.errors import DataError, LayerSetupError
from brewnet.io.model import array_to_blob_proto
from brewnet.proto import caffe_pb2
from reference_case import REFERENCE, assert_close, case_names

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------- helpers
def write_db(path: Path, values: list[bytes]) -> str:
    """Write ``values`` under keys 00000000, 00000001, ... and return the path."""
    with LMDBWriter(str(path)) as writer:
        for index, value in enumerate(values):
            writer.put(f"{index:08d}", value)
    return str(path)


def uint8_records(count: int, shape=(1, 2, 3)) -> list[bytes]:
    """Records whose pixels all equal the record index, with label 10 + index."""
    return [
        array_to_datum(np.full(shape, index, dtype=np.uint8), 10 + index).SerializeToString()
        for index in range(count)
    ]


def data_net(
    tmp_path: Path,
    source: str,
    batch_size: int = 2,
    transform: str = "",
    extra: str = "",
    tops: str = 'top: "data" top: "label"',
    phase=brewnet.TEST,
    backend: str = "backend: LMDB",
    dtype=None,
):
    """Build a one-layer net that reads ``source`` with a Data layer."""
    text = (
        f'layer {{ name: "data" type: "Data" {tops}\n'
        f'  data_param {{ source: "{source}" batch_size: {batch_size} {backend} {extra} }}\n'
        f"  transform_param {{ {transform} }} }}\n"
    )
    path = tmp_path / f"net{len(list(tmp_path.glob('net*.prototxt')))}.prototxt"
    path.write_text(text)
    kwargs = {} if dtype is None else {"dtype": dtype}
    return brewnet.Net(str(path), phase, **kwargs)


def png_bytes(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def wait_until(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


# ----------------------------------------------------------------- Caffe's values
@pytest.mark.parametrize("name", case_names("data"))
def test_data_reference_case(name, monkeypatch):
    # Every case has neither mirror nor a TRAIN-phase crop (the one TRAIN case,
    # uint8_mean_values_train, only subtracts mean values and scales), so Caffe's
    # output is deterministic and every value is compared.
    folder = REFERENCE / "data" / name
    monkeypatch.chdir(folder)
    expected = np.load("data.npz")
    net = brewnet.Net("net.prototxt", int(expected["phase"]))
    try:
        for k in range(3):
            net.forward()
            assert_close(net.blobs["data"].data, expected[f"forward{k}/data"], f"{name} pass {k} data")
            assert_close(net.blobs["label"].data, expected[f"forward{k}/label"], f"{name} pass {k} label")
    finally:
        net.layers[0].close()


def test_reference_mean_file_used_at_crop_position(monkeypatch):
    # uint8_crop_mean_file_test: 3x8x7 records, crop 5 in TEST, so the window starts
    # at row (8-5)//2 = 1 and column (7-5)//2 = 1, and Caffe subtracts the mean
    # image's pixels under that window, not its top-left corner.
    folder = REFERENCE / "data" / "uint8_crop_mean_file_test"
    monkeypatch.chdir(folder)
    expected = np.load("data.npz")["forward0/data"]
    proto = caffe_pb2.BlobProto.FromString((folder / "mean.binaryproto").read_bytes())
    mean = np.asarray(proto.data, dtype=np.float32).reshape(3, 8, 7)
    reader = LMDBReader(str(folder / "db"))
    key, value = reader.first()
    reader.close()
    sample = datum_to_array(parse_datum(value)).astype(np.float32)
    at_window = (sample[:, 1:6, 1:6] - mean[:, 1:6, 1:6]) * np.float32(0.5)
    at_corner = (sample[:, 1:6, 1:6] - mean[:, 0:5, 0:5]) * np.float32(0.5)
    np.testing.assert_array_equal(expected[0], at_window)
    assert np.abs(expected[0] - at_corner).max() > 1


# ------------------------------------------------------------------ reading order
def test_batches_follow_key_order_and_wrap(tmp_path, caplog):
    source = write_db(tmp_path / "db", uint8_records(5))
    # The thread starts reading when the net is built, so capture from before that.
    caplog.set_level(logging.INFO, logger="brewnet.data.db")
    net = data_net(tmp_path, source, batch_size=2)
    labels = []
    for _ in range(4):
        net.forward()
        labels.append(net.blobs["label"].data.tolist())
    net.layers[0].close()
    assert labels == [[10, 11], [12, 13], [14, 10], [11, 12]]
    assert net.blobs["data"].data.shape == (2, 1, 2, 3)
    assert net.blobs["data"].data[:, 0, 0, 0].tolist() == [1, 2]
    assert "Restarting data prefetching from start." in caplog.text


def test_top_shapes_before_forward(tmp_path):
    source = write_db(tmp_path / "db", uint8_records(3, shape=(3, 5, 4)))
    net = data_net(tmp_path, source, batch_size=7, transform="crop_size: 3")
    assert net.blobs["data"].shape == (7, 3, 3, 3)
    assert net.blobs["label"].shape == (7,)
    net.layers[0].close()


def test_single_top_has_no_label(tmp_path):
    source = write_db(tmp_path / "db", uint8_records(3))
    net = data_net(tmp_path, source, tops='top: "data"')
    outputs = net.forward()
    net.layers[0].close()
    assert list(outputs) == ["data"]
    assert outputs["data"].shape == (2, 1, 2, 3)


def test_float64_net_gets_float64_data(tmp_path):
    source = write_db(tmp_path / "db", uint8_records(2))
    import torch

    net = data_net(tmp_path, source, transform="scale: 0.1", dtype=torch.float64)
    net.forward()
    net.layers[0].close()
    assert net.blobs["data"].tensor.dtype == torch.float64
    # In float64 the product is 1 * 0.1f, as Caffe computes with Dtype double.
    assert net.blobs["data"].data[1, 0, 0, 0] == np.float64(np.float32(0.1))


def test_relative_source_resolves_against_cwd(tmp_path, monkeypatch):
    write_db(tmp_path / "db", uint8_records(2))
    monkeypatch.chdir(tmp_path)
    net = data_net(tmp_path, "db")
    monkeypatch.chdir(REPO)
    net.forward()
    net.layers[0].close()
    assert net.layers[0].source == str(tmp_path / "db")
    assert net.blobs["label"].data.tolist() == [10, 11]


def test_train_and_test_nets_read_their_own_source(tmp_path):
    write_db(tmp_path / "train", uint8_records(3))
    test_records = [
        array_to_datum(np.zeros((1, 2, 3), np.uint8), 7).SerializeToString() for _ in range(2)
    ]
    write_db(tmp_path / "test", test_records)
    text = ""
    for phase, name in (("TRAIN", "train"), ("TEST", "test")):
        text += (
            f'layer {{ name: "data" type: "Data" top: "data" top: "label"\n'
            f"  include {{ phase: {phase} }}\n"
            f'  data_param {{ source: "{tmp_path / name}" batch_size: 2 backend: LMDB }} }}\n'
        )
    path = tmp_path / "two.prototxt"
    path.write_text(text)
    train = brewnet.Net(str(path), brewnet.TRAIN)
    test = brewnet.Net(str(path), brewnet.TEST)
    train.forward()
    test.forward()
    train.layers[0].close()
    test.layers[0].close()
    assert train.blobs["label"].data.tolist() == [10, 11]
    assert test.blobs["label"].data.tolist() == [7, 7]


def test_rand_skip_starts_at_random_record(tmp_path, caplog):
    source = write_db(tmp_path / "db", uint8_records(6))
    starts = set()
    for seed in range(8):
        brewnet.set_random_seed(seed)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="brewnet.layers.data"):
            net = data_net(tmp_path, source, batch_size=1, extra="rand_skip: 5")
        net.forward()
        net.layers[0].close()
        start = int(net.blobs["label"].data[0]) - 10
        assert 0 <= start < 5
        assert f"Skipping first {start} data points." in caplog.text
        starts.add(start)
    assert len(starts) > 1


def test_same_seed_gives_same_random_batches(tmp_path):
    source = write_db(tmp_path / "db", [
        array_to_datum(np.arange(30, dtype=np.uint8).reshape(1, 5, 6), 0).SerializeToString()
    ])
    runs = []
    for _ in range(2):
        brewnet.set_random_seed(123)
        net = data_net(
            tmp_path, source, batch_size=8, transform="crop_size: 3 mirror: true",
            phase=brewnet.TRAIN,
        )
        net.forward()
        runs.append(net.blobs["data"].data.copy())
        net.layers[0].close()
    np.testing.assert_array_equal(runs[0], runs[1])


def test_train_crop_mirror_windows(tmp_path):
    sample = np.arange(30, dtype=np.uint8).reshape(1, 5, 6)
    source = write_db(tmp_path / "db", [array_to_datum(sample, 0).SerializeToString()])
    brewnet.set_random_seed(5)
    net = data_net(
        tmp_path, source, batch_size=64, transform="crop_size: 3 mirror: true",
        phase=brewnet.TRAIN,
    )
    net.forward()
    net.layers[0].close()
    offsets, flips = set(), set()
    for out in net.blobs["data"].data[:, 0]:
        row, column = divmod(int(min(out.ravel())), 6)
        window = sample[0, row : row + 3, column : column + 3].astype(np.float32)
        if np.array_equal(out, window):
            flips.add(False)
        else:
            np.testing.assert_array_equal(out, window[:, ::-1])
            flips.add(True)
        offsets.add((row, column))
    assert offsets <= {(r, c) for r in range(3) for c in range(4)}
    assert len(offsets) > 6
    assert flips == {False, True}


# ---------------------------------------------------------------- Datum decoding
def test_uint8_datum_round_trip():
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    datum = array_to_datum(array, label=3)
    assert (datum.channels, datum.height, datum.width, datum.label) == (2, 3, 4, 3)
    assert datum.data == array.tobytes()
    decoded = datum_to_array(parse_datum(datum.SerializeToString()))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, array)


def test_float_datum_round_trip():
    array = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 2, 2)
    datum = array_to_datum(array, label=1)
    assert len(datum.data) == 0
    assert len(datum.float_data) == 12
    decoded = datum_to_array(parse_datum(datum.SerializeToString()))
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, array)


def test_array_to_datum_rejects_2d():
    with pytest.raises(ValueError, match="3-D array"):
        array_to_datum(np.zeros((2, 2), np.uint8))


def test_encoded_png_color_is_bgr():
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red
    rgb[..., 1] = 100  # green
    rgb[..., 2] = 7  # blue
    decoded = datum_to_array(encoded_datum(png_bytes(rgb, "RGB")))
    assert decoded.shape == (3, 2, 3)
    assert decoded[:, 0, 0].tolist() == [7, 100, 200]


def test_encoded_png_force_gray_uses_libpng_weights():
    # libpng's truncating formula (9797 R + 19234 G + 3737 B) >> 15 gives 140 for
    # (100, 150, 200), where a rounded 0.299/0.587/0.114 mix would give 141; grey
    # pixels are copied unchanged.
    rgb = np.array(
        [[[255, 0, 0], [0, 255, 0], [0, 0, 255], [100, 150, 200], [10, 10, 10]]],
        dtype=np.uint8,
    )
    decoded = datum_to_array(encoded_datum(png_bytes(rgb, "RGB")), force_gray=True)
    assert decoded.shape == (1, 1, 5)
    assert decoded[0, 0].tolist() == [76, 149, 29, 140, 10]


def test_encoded_gray_png_native_and_force_color():
    grey = np.array([[0, 50], [200, 255]], dtype=np.uint8)
    datum = encoded_datum(png_bytes(grey, "L"))
    native = datum_to_array(datum)
    assert native.shape == (1, 2, 2)
    np.testing.assert_array_equal(native[0], grey)
    color = datum_to_array(datum, force_color=True)
    assert color.shape == (3, 2, 2)
    for channel in range(3):
        np.testing.assert_array_equal(color[channel], grey)


def test_encoded_rgba_png_drops_alpha():
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 90, 0
    decoded = datum_to_array(encoded_datum(png_bytes(rgba, "RGBA")))
    assert decoded.shape == (3, 1, 2)
    assert decoded[:, 0, 0].tolist() == [0, 0, 90]


def test_encoded_jpeg_color_and_gray():
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[...] = (200, 30, 60)
    datum = encoded_datum(jpeg_bytes(rgb, "RGB"))
    color = datum_to_array(datum)
    assert color.shape == (3, 16, 16)
    # JPEG is lossy: a flat colour comes back within a few levels, in BGR order.
    np.testing.assert_allclose(color[:, 8, 8], [60, 30, 200], atol=4)
    grey = datum_to_array(datum, force_gray=True)
    assert grey.shape == (1, 16, 16)
    # libjpeg's luma: 0.299 * 200 + 0.587 * 30 + 0.114 * 60 = 84.25.
    assert abs(int(grey[0, 8, 8]) - 84) <= 3


def test_encoded_gray_jpeg_native_has_one_channel():
    grey = np.full((8, 8), 120, dtype=np.uint8)
    decoded = datum_to_array(encoded_datum(jpeg_bytes(grey, "L")))
    assert decoded.shape == (1, 8, 8)
    assert abs(int(decoded[0, 4, 4]) - 120) <= 2


def test_decode_image_rejects_garbage():
    with pytest.raises(DataError, match="cannot decode the image"):
        decode_image(b"definitely not an image")


def test_data_layer_reads_encoded_records(tmp_path):
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    records = [encoded_datum(png_bytes(rgb, "RGB"), label).SerializeToString() for label in (1, 2)]
    source = write_db(tmp_path / "db", records)
    net = data_net(tmp_path, source, transform="force_gray: true")
    net.forward()
    net.layers[0].close()
    assert net.blobs["data"].data.shape == (2, 1, 4, 5)
    assert np.all(net.blobs["data"].data == 76)
    assert net.blobs["label"].data.tolist() == [1, 2]


# ------------------------------------------------------------------------ errors
def test_missing_database_names_path(tmp_path):
    missing = tmp_path / "nowhere_lmdb"
    with pytest.raises(DataError, match=f"'{missing}' not found"):
        data_net(tmp_path, str(missing))


def test_source_that_is_a_file(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("x")
    with pytest.raises(DataError, match="is a file, but an LMDB database is a directory"):
        data_net(tmp_path, str(path))


def test_directory_without_data_mdb(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="has no data.mdb, so it is not an LMDB database"):
        data_net(tmp_path, str(tmp_path / "empty_dir"))


def test_leveldb_backend_is_rejected(tmp_path):
    source = write_db(tmp_path / "db", uint8_records(1))
    with pytest.raises(DataError, match="LEVELDB databases are not supported") as info:
        data_net(tmp_path, source, backend="backend: LEVELDB")
    assert "backend: LMDB" in str(info.value)
    with pytest.raises(DataError, match=r"LEVELDB \(the default when no backend is set\)"):
        data_net(tmp_path, source, backend="")


def test_empty_database(tmp_path):
    source = str(tmp_path / "db")
    LMDBWriter(source).close()
    with pytest.raises(DataError, match="contains no records"):
        data_net(tmp_path, source)


def test_first_record_not_a_datum(tmp_path):
    source = write_db(tmp_path / "db", [b"\xff\xff\xff garbage"])
    with pytest.raises(DataError, match=f"{source}: record '00000000' is not a Caffe Datum"):
        data_net(tmp_path, source)


def test_later_bad_record_surfaces_from_thread(tmp_path):
    values = uint8_records(2) + [b"\xff\xff\xff garbage"]
    source = write_db(tmp_path / "db", values)
    net = data_net(tmp_path, source, batch_size=2)
    net.forward()
    with pytest.raises(DataError, match="record '00000002' is not a Caffe Datum") as info:
        net.forward()
    assert source in str(info.value)
    assert isinstance(info.value.__cause__, DataError)
    # The error is raised again by later calls, not replaced by a hang.
    with pytest.raises(DataError, match="00000002"):
        net.forward()
    net.layers[0].close()


def test_wrong_float_data_count(tmp_path):
    datum = caffe_pb2.Datum(channels=1, height=2, width=2, label=0)
    datum.float_data.extend([1.0, 2.0, 3.0])
    source = write_db(tmp_path / "db", [datum.SerializeToString()])
    with pytest.raises(DataError, match="has 3 float_data values but its shape"):
        data_net(tmp_path, source)


def test_record_without_values(tmp_path):
    datum = caffe_pb2.Datum(channels=1, height=2, width=2, label=0)
    source = write_db(tmp_path / "db", [datum.SerializeToString()])
    with pytest.raises(DataError, match="has neither data nor float_data"):
        data_net(tmp_path, source)


def test_records_of_different_shapes_in_a_batch(tmp_path):
    values = [
        array_to_datum(np.zeros((1, 2, 3), np.uint8)).SerializeToString(),
        array_to_datum(np.zeros((1, 3, 3), np.uint8)).SerializeToString(),
    ]
    source = write_db(tmp_path / "db", values)
    net = data_net(tmp_path, source, batch_size=2)
    with pytest.raises(DataError, match="all records of a batch must have one shape"):
        net.forward()
    net.layers[0].close()


def test_corrupt_encoded_record(tmp_path):
    source = write_db(tmp_path / "db", [encoded_datum(b"\x89PNG broken").SerializeToString()])
    with pytest.raises(DataError, match=f"{source}: record '00000000': cannot decode the image"):
        data_net(tmp_path, source)


def test_force_color_and_force_gray_on_encoded(tmp_path):
    grey = np.zeros((2, 2), dtype=np.uint8)
    source = write_db(tmp_path / "db", [encoded_datum(png_bytes(grey, "L")).SerializeToString()])
    with pytest.raises(LayerSetupError, match="both force_color and force_gray"):
        data_net(tmp_path, source, transform="force_color: true force_gray: true")


def test_bad_batch_size_and_prefetch(tmp_path):
    source = write_db(tmp_path / "db", uint8_records(1))
    with pytest.raises(LayerSetupError, match="batch_size must be positive"):
        data_net(tmp_path, source, batch_size=0)
    with pytest.raises(LayerSetupError, match="prefetch is 0; it must be at least 1"):
        data_net(tmp_path, source, extra="prefetch: 0")


def test_crop_larger_than_record(tmp_path):
    source = write_db(tmp_path / "db", uint8_records(1))
    with pytest.raises(DataError, match="crop_size 3 is larger than a sample of 2 x 3"):
        data_net(tmp_path, source, transform="crop_size: 3")


def test_mean_file_errors(tmp_path):
    source = write_db(tmp_path / "db", uint8_records(1))
    with pytest.raises(DataError, match="cannot read mean_file 'absent.binaryproto'"):
        data_net(tmp_path, source, transform='mean_file: "absent.binaryproto"')
    mean = tmp_path / "mean.binaryproto"
    mean.write_bytes(array_to_blob_proto(np.zeros((1, 1, 3, 3), np.float32)).SerializeToString())
    with pytest.raises(DataError, match=r"has shape \(1, 3, 3\) but the samples have shape \(1, 2, 3\)"):
        data_net(tmp_path, source, transform=f'mean_file: "{mean}"')
    with pytest.raises(LayerSetupError, match="both mean_file and mean_value"):
        data_net(tmp_path, source, transform=f'mean_file: "{mean}" mean_value: 1')


def test_mean_value_count_must_match_channels(tmp_path):
    source = write_db(tmp_path / "db", uint8_records(1, shape=(3, 2, 2)))
    with pytest.raises(DataError, match="2 mean_value entries but the samples have 3 channels"):
        data_net(tmp_path, source, transform="mean_value: 1 mean_value: 2")


# --------------------------------------------------------------------- prefetching
def test_prefetcher_keeps_depth_batches_ahead():
    calls = []

    def load():
        calls.append(len(calls))
        return len(calls) - 1

    prefetcher = Prefetcher(load, depth=3, source="counter")
    assert wait_until(lambda: prefetcher._queue.qsize() == 3)
    time.sleep(0.1)
    # Three batches wait in the queue and the thread holds a fourth until one is taken.
    assert len(calls) == 4
    assert [prefetcher.next() for _ in range(5)] == [0, 1, 2, 3, 4]
    prefetcher.close()
    assert not prefetcher.running


def test_prefetcher_exception_surfaces_with_source():
    def load():
        raise ValueError("disk on fire")

    prefetcher = Prefetcher(load, depth=2, source="/data/some_lmdb")
    with pytest.raises(DataError, match="'/data/some_lmdb' failed: ValueError: disk on fire") as info:
        prefetcher.next()
    assert isinstance(info.value.__cause__, ValueError)
    assert wait_until(lambda: not prefetcher.running)
    prefetcher.close()


def test_prefetcher_close_stops_thread_and_calls_on_close():
    closed = threading.Event()
    prefetcher = Prefetcher(lambda: 1, depth=2, source="ones", on_close=closed.set)
    assert prefetcher.next() == 1
    prefetcher.close()
    assert not prefetcher.running
    assert closed.is_set()
    with pytest.raises(RuntimeError, match="'ones' is closed"):
        prefetcher.next()


def test_prefetcher_rejects_zero_depth():
    with pytest.raises(ValueError, match="at least 1"):
        Prefetcher(lambda: 1, depth=0, source="x")


def test_data_layer_thread_is_daemon_and_stops(tmp_path):
    source = write_db(tmp_path / "db", uint8_records(3))
    net = data_net(tmp_path, source)
    thread = net.layers[0]._prefetcher._thread
    assert thread.daemon
    assert thread.name == f"brewnet-prefetch:{source}"
    net.layers[0].close()
    assert not thread.is_alive()


def test_data_layer_thread_stops_when_net_is_collected(tmp_path):
    source = write_db(tmp_path / "db", uint8_records(3))
    net = data_net(tmp_path, source)
    net.forward()
    thread = net.layers[0]._prefetcher._thread
    del net
    gc.collect()
    assert wait_until(lambda: not thread.is_alive(), seconds=5)


# ------------------------------------------------------------------------- writer
def test_writer_refuses_existing_database(tmp_path):
    source = write_db(tmp_path / "db", uint8_records(1))
    with pytest.raises(DataError, match="already exists; remove it or pass overwrite=True"):
        LMDBWriter(source)
    with LMDBWriter(source, overwrite=True) as writer:
        writer.put("a", b"1")
    reader = LMDBReader(source)
    assert list(reader.items()) == [(b"a", b"1")]
    reader.close()


def test_writer_grows_map(tmp_path):
    # 64 records of 64 KiB overflow a 1 MiB map, which the writer doubles as needed.
    path = str(tmp_path / "big")
    with LMDBWriter(path, map_size=1 << 20) as writer:
        for index in range(64):
            writer.put(f"{index:08d}", bytes([index]) * 65536)
    reader = LMDBReader(path)
    assert reader.num_records() == 64
    reader.close()


def test_reading_leaves_reference_db_untouched():
    folder = REFERENCE / "data" / "float_data_scale_test" / "db"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    reader = LMDBReader(str(folder))
    list(reader.items())
    reader.close()
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert before == after


# ------------------------------------------------------------------ digits script
def load_digits_module():
    path = REPO / "examples" / "digits" / "make_digits_lmdb.py"
    spec = importlib.util.spec_from_file_location("make_digits_lmdb", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits_dbs(tmp_path_factory):
    import sklearn.datasets  # noqa: F401 - keep the import out of the timing

    module = load_digits_module()
    out = tmp_path_factory.mktemp("digits")
    started = time.monotonic()
    paths = module.ensure_digits_lmdb(str(out))
    elapsed = time.monotonic() - started
    return module, out, paths, elapsed


def read_all(path: str) -> list[tuple[bytes, caffe_pb2.Datum]]:
    reader = LMDBReader(path)
    records = [(key, parse_datum(value)) for key, value in reader.items()]
    reader.close()
    return records


def test_digits_record_counts_and_keys(digits_dbs):
    module, out, (train, test), elapsed = digits_dbs
    assert train == str(out / "digits_train_lmdb")
    assert test == str(out / "digits_test_lmdb")
    train_records = read_all(train)
    test_records = read_all(test)
    assert len(train_records) == 1437
    assert len(test_records) == 360
    assert [key for key, _ in test_records[:3]] == [b"00000000", b"00000001", b"00000002"]
    assert train_records[-1][0] == b"00001436"
    # Writing measured 0.35 s on an unloaded development machine; the bound allows for load.
    assert elapsed < 10


def test_digits_shapes_and_layout(digits_dbs):
    _, _, (train, _), _ = digits_dbs
    for _, datum in read_all(train)[:50]:
        assert (datum.channels, datum.height, datum.width) == (1, 28, 28)
        assert not datum.encoded
        image = datum_to_array(datum)
        assert image.dtype == np.uint8
        # The 20x20 digit sits inside a 4-pixel black border.
        assert image[0, :4].max() == 0
        assert image[0, 24:].max() == 0
        assert image[0, :, :4].max() == 0
        assert image[0, :, 24:].max() == 0
        assert image.max() > 200


def test_digits_label_distribution(digits_dbs):
    _, _, (train, test), _ = digits_dbs
    train_labels = np.array([datum.label for _, datum in read_all(train)])
    test_labels = np.array([datum.label for _, datum in read_all(test)])
    assert np.bincount(test_labels, minlength=10).tolist() == [36] * 10
    # load_digits has 178, 182, 177, 183, 181, 182, 181, 179, 174, 180 per class.
    expected = np.array([178, 182, 177, 183, 181, 182, 181, 179, 174, 180]) - 36
    assert np.bincount(train_labels, minlength=10).tolist() == expected.tolist()
    # Shuffled: the first 20 training records are not of one class.
    assert len(set(train_labels[:20].tolist())) > 3


def test_digits_are_deterministic(digits_dbs, tmp_path):
    module, _, (train, test), _ = digits_dbs
    again = module.make_digits_lmdb(str(tmp_path))
    for first, second in zip((train, test), again):
        reader_a, reader_b = LMDBReader(first), LMDBReader(second)
        assert list(reader_a.items()) == list(reader_b.items())
        reader_a.close()
        reader_b.close()


def test_digits_ensure_keeps_existing(digits_dbs):
    module, out, (train, _), _ = digits_dbs
    stamp = os.path.getmtime(os.path.join(train, "data.mdb"))
    module.ensure_digits_lmdb(str(out))
    assert os.path.getmtime(os.path.join(train, "data.mdb")) == stamp


def test_digits_first_image_matches_source(digits_dbs):
    # Record 0 of the test set is load_digits image test_index[0]; its scaled,
    # enlarged pixels must sum to what the layout rules give.
    module, _, (_, test), _ = digits_dbs
    from sklearn.datasets import load_digits

    digits = load_digits()
    _, test_index = module.split_indices(digits.target)
    _, datum = read_all(test)[0]
    assert datum.label == digits.target[test_index[0]]
    expected = module.digit_to_canvas(digits.images[test_index[0]])
    np.testing.assert_array_equal(datum_to_array(datum), expected)


def test_digits_upsample_corners_and_constant():
    module = load_digits_module()
    flat = module.upsample_bilinear(np.full((8, 8), 5.0), 20)
    assert flat.shape == (20, 20)
    assert np.all(flat == 5.0)
    ramp = module.upsample_bilinear(np.tile(np.arange(8.0), (8, 1)), 20)
    # Output column 0 maps to input x = 0.5 * 8 / 20 - 0.5 < 0, clamped to 0; the
    # last maps to 19.5 * 0.4 - 0.5 = 7.3, clamped to 7.
    assert ramp[0, 0] == 0.0
    assert ramp[0, 19] == 7.0
    assert ramp[0, 10] == pytest.approx(10.5 * 0.4 - 0.5)


def test_digits_lenet_data_layer_reads_them(digits_dbs):
    _, out, (train, _), _ = digits_dbs
    net = data_net(Path(out), train, batch_size=64, transform="scale: 0.00390625")
    net.forward()
    net.layers[0].close()
    assert net.blobs["data"].data.shape == (64, 1, 28, 28)
    assert net.blobs["data"].data.max() < 1.0


# ---------------------------------------------------------------- other data layers
def build(tmp_path: Path, text: str, phase=brewnet.TEST):
    path = tmp_path / f"layer{len(list(tmp_path.glob('layer*.prototxt')))}.prototxt"
    path.write_text(text)
    return brewnet.Net(str(path), phase)


def test_resize_linear_matches_opencv_arithmetic():
    from brewnet.data.image import resize_linear

    # Halving averages each 2x2 block with rounding: (0 + 4 + 8 + 12 + 2) >> 2 = 6.
    block = np.array([[0, 4], [8, 12]], dtype=np.uint8)[:, :, None]
    assert resize_linear(block, 1, 1)[0, 0, 0] == 6
    # Doubling [0, 255]: input x = -0.25 (clamped), 0.25, 0.75, 1.25 (clamped), with
    # 11-bit weights: 255 * 512 / 2048 = 63.75 -> 64 and 255 * 1536 / 2048 -> 191.
    ramp = np.array([[0, 255]], dtype=np.uint8)[:, :, None]
    assert resize_linear(ramp, 1, 4)[0, :, 0].tolist() == [0, 64, 191, 255]
    same = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    np.testing.assert_array_equal(resize_linear(same, 3, 4), same)


def image_list(tmp_path: Path, count: int = 3) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    lines = []
    for index in range(count):
        rgb = np.zeros((4, 6, 3), dtype=np.uint8)
        rgb[..., 0] = 10 * index  # red
        rgb[..., 2] = 200  # blue
        name = f"img {index}.png"
        (folder / name).write_bytes(png_bytes(rgb, "RGB"))
        lines.append(f"{name} {index + 5}")
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def image_data_net(tmp_path, listing, params="", batch=2, transform=""):
    return build(tmp_path, (
        'layer { name: "images" type: "ImageData" top: "data" top: "label"\n'
        f'  image_data_param {{ source: "{listing}" root_folder: "{tmp_path}/images/" '
        f"batch_size: {batch} {params} }}\n"
        f"  transform_param {{ {transform} }} }}\n"
    ))


def test_image_data_reads_list_in_order(tmp_path):
    listing = image_list(tmp_path)
    net = image_data_net(tmp_path, listing)
    assert net.blobs["data"].shape == (2, 3, 4, 6)
    labels = []
    for _ in range(2):
        net.forward()
        labels.append(net.blobs["label"].data.tolist())
    net.layers[0].close()
    assert labels == [[5, 6], [7, 5]]
    # BGR: channel 0 is blue (200), channel 2 is red (10 * index).
    data = net.blobs["data"].data
    assert data[0, 0, 0, 0] == 200
    assert data[0, 2, 0, 0] == 20


def test_image_data_resize_gray_and_shuffle(tmp_path):
    listing = image_list(tmp_path, count=4)
    brewnet.set_random_seed(3)
    net = image_data_net(
        tmp_path, listing, "new_height: 2 new_width: 3 is_color: false shuffle: true", batch=4
    )
    net.forward()
    net.layers[0].close()
    assert net.blobs["data"].data.shape == (4, 1, 2, 3)
    assert sorted(net.blobs["label"].data.tolist()) == [5, 6, 7, 8]


def test_image_data_errors(tmp_path):
    listing = image_list(tmp_path)
    with pytest.raises(LayerSetupError, match="new_height and new_width set together"):
        image_data_net(tmp_path, listing, "new_height: 2")
    bad = tmp_path / "bad.txt"
    bad.write_text("first.png 1\nno_label_here\n")
    with pytest.raises(DataError, match=r"bad.txt:2: expected 'filename label'"):
        image_data_net(tmp_path, bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(DataError, match="is empty"):
        image_data_net(tmp_path, empty)
    missing = tmp_path / "missing.txt"
    missing.write_text("absent.png 0\n")
    with pytest.raises(DataError, match="could not load '.*absent.png'"):
        image_data_net(tmp_path, missing)


def write_h5(path: Path, data: np.ndarray, label: np.ndarray) -> None:
    import h5py

    with h5py.File(path, "w") as handle:
        handle["data"] = data
        handle["label"] = label


def hdf5_net(tmp_path, listing, extra="", batch=4, transform=False):
    text = (
        'layer { name: "h5" type: "HDF5Data" top: "data" top: "label"\n'
        f'  hdf5_data_param {{ source: "{listing}" batch_size: {batch} {extra} }}'
        + ("\n  transform_param { scale: 2 }" if transform else "")
        + " }\n"
    )
    return build(tmp_path, text)


def test_hdf5_data_walks_files_in_order(tmp_path):
    first = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    second = -np.arange(3 * 2 * 3, dtype=np.float64).reshape(3, 2, 3)
    write_h5(tmp_path / "a.h5", first, np.arange(5))
    write_h5(tmp_path / "b.h5", second, np.arange(10, 13))
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'a.h5'}\n{tmp_path / 'b.h5'}\n")
    net = hdf5_net(tmp_path, listing)
    assert net.blobs["data"].shape == (4, 2, 3)
    assert net.blobs["label"].shape == (4,)
    labels = []
    for _ in range(3):
        net.forward()
        labels.append(net.blobs["label"].data.tolist())
    # Rows never mix files within the file order; after b.h5 comes a.h5 again.
    assert labels == [[0, 1, 2, 3], [4, 10, 11, 12], [0, 1, 2, 3]]
    np.testing.assert_array_equal(net.blobs["data"].data, first[:4])


def test_hdf5_data_shuffle_keeps_rows_of_one_file(tmp_path):
    write_h5(tmp_path / "a.h5", np.zeros((6, 1), np.float32), np.arange(6))
    listing = tmp_path / "list.txt"
    listing.write_text(str(tmp_path / "a.h5"))
    brewnet.set_random_seed(0)
    net = hdf5_net(tmp_path, listing, "shuffle: true", batch=6)
    net.forward()
    assert sorted(net.blobs["label"].data.tolist()) == [0, 1, 2, 3, 4, 5]


def test_hdf5_data_errors(tmp_path):
    listing = tmp_path / "list.txt"
    with pytest.raises(DataError, match="cannot read the HDF5 source list"):
        hdf5_net(tmp_path, listing)
    listing.write_text(" \n")
    with pytest.raises(DataError, match="names no file"):
        hdf5_net(tmp_path, listing)
    listing.write_text(str(tmp_path / "absent.h5"))
    with pytest.raises(DataError, match="absent.h5' not found"):
        hdf5_net(tmp_path, listing)
    import h5py

    with h5py.File(tmp_path / "only_data.h5", "w") as handle:
        handle["data"] = np.zeros((2, 1))
    listing.write_text(str(tmp_path / "only_data.h5"))
    with pytest.raises(DataError, match="has no dataset 'label'"):
        hdf5_net(tmp_path, listing)
    write_h5(tmp_path / "uneven.h5", np.zeros((3, 1)), np.zeros(2))
    listing.write_text(str(tmp_path / "uneven.h5"))
    with pytest.raises(DataError, match="'label' has 2 rows but 'data' has 3"):
        hdf5_net(tmp_path, listing)
    write_h5(tmp_path / "good.h5", np.zeros((3, 1)), np.zeros(3))
    listing.write_text(str(tmp_path / "good.h5"))
    with pytest.raises(LayerSetupError, match="HDF5Data does not transform data"):
        hdf5_net(tmp_path, listing, transform=True)


def memory_net(tmp_path, shape="batch_size: 3 channels: 1 height: 2 width: 2"):
    return build(tmp_path, (
        'layer { name: "mem" type: "MemoryData" top: "data" top: "label"\n'
        f"  memory_data_param {{ {shape} }} }}\n"
    ))


def test_memory_data_serves_batches(tmp_path):
    net = memory_net(tmp_path)
    assert net.blobs["data"].shape == (3, 1, 2, 2)
    assert net.blobs["label"].shape == (3,)
    data = np.arange(6 * 4, dtype=np.float32).reshape(6, 1, 2, 2)
    net.layers[0].set_input_arrays(data, np.arange(6, dtype=np.float32))
    seen = []
    for _ in range(3):
        net.forward()
        seen.append(net.blobs["label"].data.ravel().tolist())
    assert seen == [[0, 1, 2], [3, 4, 5], [0, 1, 2]]
    assert net.blobs["label"].data.shape == (3, 1, 1, 1)
    np.testing.assert_array_equal(net.blobs["data"].data, data[:3])


def test_memory_data_errors(tmp_path):
    with pytest.raises(LayerSetupError, match="all must be specified and positive"):
        memory_net(tmp_path, "batch_size: 3 channels: 1 height: 2")
    net = memory_net(tmp_path)
    with pytest.raises(LayerSetupError, match="call set_input_arrays"):
        net.forward()
    layer = net.layers[0]
    with pytest.raises(ValueError, match=r"expected \(M, 1, 2, 2\)"):
        layer.set_input_arrays(np.zeros((3, 1, 2, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="same first dimension"):
        layer.set_input_arrays(np.zeros((3, 1, 2, 2)), np.zeros(6))
    with pytest.raises(ValueError, match="multiple of batch size 3"):
        layer.set_input_arrays(np.zeros((4, 1, 2, 2)), np.zeros(4))
    with pytest.raises(ValueError, match=r"labels array has shape \(3, 2\)"):
        layer.set_input_arrays(np.zeros((3, 1, 2, 2)), np.zeros((3, 2)))


def test_two_nets_share_one_database(tmp_path):
    # The lmdb package opens a path once per process, so readers share it.
    source = write_db(tmp_path / "db", uint8_records(3))
    train = data_net(tmp_path, source, phase=brewnet.TRAIN)
    test = data_net(tmp_path, source, phase=brewnet.TEST)
    rebuilt = data_net(tmp_path, source)
    for net in (train, test, rebuilt):
        net.forward()
        assert net.blobs["label"].data.tolist() == [10, 11]
    train.layers[0].close()
    test.forward()
    assert test.blobs["label"].data.tolist() == [12, 10]
    with pytest.raises(DataError, match="is open for reading in this process"):
        LMDBWriter(source, overwrite=True)
    test.layers[0].close()
    rebuilt.layers[0].close()
    LMDBWriter(source, overwrite=True).close()
