"""pycaffe's ``caffe.io``: image loading and resizing, the Transformer, and
conversions between NumPy arrays and BlobProto / Datum messages.

Images are NumPy arrays of float32, H x W x K, with values in [0, 1] as
:func:`load_image` returns them; the net's input is K x H x W after
:meth:`Transformer.preprocess`.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from brewnet.proto import caffe_pb2

# scikit-image's rgb2gray weights (ITU-R BT.709 luma), which pycaffe's load_image
# uses for color=False through skimage.io.imread(as_grey=True).
_GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])


# ============================================================================ BlobProto
def blobproto_to_array(blob: caffe_pb2.BlobProto, return_diff: bool = False) -> np.ndarray:
    """Return a BlobProto's data (or diff) as a float64 array of the blob's shape.

    The legacy num/channels/height/width fields give the shape when any is set, as
    in pycaffe. Values stored as ``double_data`` are read when ``data`` is empty.

    Raises:
        ValueError: the number of values does not match the shape.
    """
    if return_diff:
        values = blob.diff if len(blob.diff) else blob.double_diff
    else:
        values = blob.data if len(blob.data) else blob.double_data
    array = np.array(values, dtype=np.float64)
    legacy = ("num", "channels", "height", "width")
    if any(blob.HasField(name) for name in legacy):
        shape = tuple(getattr(blob, name) for name in legacy)
    else:
        shape = tuple(blob.shape.dim)
    if array.size != int(np.prod(shape, dtype=np.int64)):
        raise ValueError(
            f"BlobProto contains {array.size} {'diff' if return_diff else 'data'} values "
            f"but its shape {shape} needs {int(np.prod(shape, dtype=np.int64))}"
        )
    return array.reshape(shape)


def array_to_blobproto(arr: np.ndarray, diff: np.ndarray | None = None) -> caffe_pb2.BlobProto:
    """Return a BlobProto with ``arr``'s shape and values (and ``diff``) as floats."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(arr.astype(float).flat)
    if diff is not None:
        blob.diff.extend(np.asarray(diff).astype(float).flat)
    return blob


def arraylist_to_blobprotovector_str(arraylist: Sequence[np.ndarray]) -> bytes:
    """Return the serialized BlobProtoVector of a list of arrays."""
    vector = caffe_pb2.BlobProtoVector()
    vector.blobs.extend(array_to_blobproto(arr) for arr in arraylist)
    return vector.SerializeToString()


def blobprotovector_str_to_arraylist(serialized: bytes) -> list[np.ndarray]:
    """Return the arrays of a serialized BlobProtoVector."""
    vector = caffe_pb2.BlobProtoVector()
    vector.ParseFromString(serialized)
    return [blobproto_to_array(blob) for blob in vector.blobs]


# ============================================================================ Datum
def array_to_datum(arr: np.ndarray, label: int | None = None) -> caffe_pb2.Datum:
    """Return a Datum of a C x H x W array: bytes for uint8, else ``float_data``.

    Raises:
        ValueError: the array does not have 3 dimensions.
    """
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(
            f"array_to_datum needs a 3-dimensional C x H x W array, got shape {arr.shape}"
        )
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = np.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(arr.astype(float).flat)
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum: caffe_pb2.Datum) -> np.ndarray:
    """Return a Datum's values as a C x H x W array (uint8 from bytes, else float64).

    The label is not returned; read ``datum.label``.
    """
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape).copy()
    return np.array(datum.float_data, dtype=np.float64).reshape(shape)


# ============================================================================ images
def load_image(filename: str | os.PathLike, color: bool = True) -> np.ndarray:
    """Load an image as float32 H x W x 3 (RGB), or H x W x 1 with ``color=False``.

    Values are scaled to [0, 1] by the integer type's maximum (255 for 8-bit, 65535
    for 16-bit images); float images keep their values. An alpha channel is dropped.
    A gray image is repeated to 3 channels when ``color`` is true; a color image is
    turned gray with scikit-image's weights 0.2125 R + 0.7154 G + 0.0721 B when
    ``color`` is false, as pycaffe's scikit-image loading does.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: Pillow cannot decode the file.
    """
    image = _read_image_array(os.fspath(filename))
    if not color and image.ndim == 3:
        image = image[:, :, :3] @ _GRAY_WEIGHTS
    image = image.astype(np.float32)
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
        if color:
            image = np.tile(image, (1, 1, 3))
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return image


def _read_image_array(path: str) -> np.ndarray:
    """Return the image at ``path`` as float64: H x W (gray), H x W x 3 or x 4."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as error:
        raise ImportError(
            "brewnet.io.load_image needs Pillow; install it with 'pip install pillow'"
        ) from error
    if not os.path.exists(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as handle:
            handle.load()
            image = handle.copy()
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error
    return _image_to_float(image)


def _image_to_float(image) -> np.ndarray:
    """Convert a Pillow image to float64 values in [0, 1] (float images unscaled)."""
    mode = image.mode
    if mode == "1":
        return np.asarray(image, dtype=np.float64)
    if mode in ("L", "RGB", "RGBA"):
        return np.asarray(image, dtype=np.float64) / 255.0
    if mode == "LA":
        return np.asarray(image.getchannel(0), dtype=np.float64) / 255.0
    if mode.startswith("I;16"):
        return np.asarray(image, dtype=np.uint16).astype(np.float64) / 65535.0
    if mode == "I":
        # 32-bit signed pixels; scikit-image scales int32 by its maximum.
        return np.asarray(image, dtype=np.int32).astype(np.float64) / 2147483647.0
    if mode == "F":
        return np.asarray(image, dtype=np.float64)
    if mode == "P":
        has_alpha = "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        return np.asarray(image, dtype=np.float64) / 255.0
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def resize_image(im: np.ndarray, new_dims: Sequence[int], interp_order: int = 1) -> np.ndarray:
    """Resize an H x W x K image to ``new_dims`` (height, width); return float32.

    For K = 1 or 3 this is pycaffe's scikit-image path: the image is scaled to
    [0, 1], resized with pixel centers aligned (sample ``(i + 0.5) * in / out - 0.5``)
    where samples beyond the border blend with 0 (scikit-image's ``mode='constant'``
    of the releases Caffe used, before anti-aliasing existed), and scaled back. Other
    K take pycaffe's ``scipy.ndimage.zoom`` path: the corner pixels align (sample
    ``i * (in - 1) / (out - 1)``). A constant image stays constant.

    ``interp_order`` is 0 (nearest) or 1 (bilinear).

    Raises:
        ValueError: ``im`` is not 3-dimensional, ``new_dims`` is not two positive
            sizes, or ``interp_order`` is not 0 or 1.
    """
    im = np.asarray(im)
    height, width = _check_resize_args(im, new_dims, interp_order)
    if im.shape[-1] in (1, 3):
        im_min, im_max = im.min(), im.max()
        if im_max <= im_min:
            return np.full((height, width, im.shape[-1]), im_min, dtype=np.float32)
        standard = (im - im_min) / (im_max - im_min)
        rows = _centered_weights(im.shape[0], height, interp_order)
        cols = _centered_weights(im.shape[1], width, interp_order)
        resized = np.einsum("hi,wj,ijc->hwc", rows, cols, standard.astype(np.float64))
        resized = np.clip(resized, min(0.0, standard.min()), max(0.0, standard.max()))
        resized = resized * (im_max - im_min) + im_min
    else:
        rows = _corner_weights(im.shape[0], height, interp_order)
        cols = _corner_weights(im.shape[1], width, interp_order)
        resized = np.einsum("hi,wj,ijc->hwc", rows, cols, im.astype(np.float64))
    return resized.astype(np.float32)


def _check_resize_args(im: np.ndarray, new_dims, interp_order: int) -> tuple[int, int]:
    if im.ndim != 3:
        raise ValueError(
            f"resize_image needs an H x W x K array, got shape {im.shape}; add a "
            f"channel axis with im[:, :, np.newaxis]"
        )
    dims = [int(d) for d in np.asarray(new_dims).ravel()]
    if len(dims) != 2 or min(dims) <= 0:
        raise ValueError(
            f"resize_image new_dims must be (height, width) > 0, got {list(new_dims)}"
        )
    if interp_order not in (0, 1):
        raise ValueError(
            f"resize_image supports interp_order 0 (nearest) and 1 (bilinear), got "
            f"{interp_order}"
        )
    return dims[0], dims[1]


def _centered_weights(size_in: int, size_out: int, order: int) -> np.ndarray:
    """Return the (size_out, size_in) interpolation matrix of centered sampling.

    Output index i samples input coordinate ``(i + 0.5) * size_in / size_out - 0.5``;
    input pixels outside [0, size_in) count as 0.
    """
    coords = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
    return _interpolation_matrix(coords, size_in, order)


def _corner_weights(size_in: int, size_out: int, order: int) -> np.ndarray:
    """Return the interpolation matrix that maps the first and last pixels onto
    themselves, as ``scipy.ndimage.zoom`` does."""
    step = (size_in - 1) / (size_out - 1) if size_out > 1 else 1.0
    coords = np.arange(size_out) * step
    return _interpolation_matrix(coords, size_in, order)


def _interpolation_matrix(coords: np.ndarray, size_in: int, order: int) -> np.ndarray:
    weights = np.zeros((len(coords), size_in))
    rows = np.arange(len(coords))
    if order == 0:
        nearest = np.floor(coords + 0.5).astype(np.int64)
        inside = (nearest >= 0) & (nearest < size_in)
        weights[rows[inside], nearest[inside]] = 1.0
        return weights
    low = np.floor(coords).astype(np.int64)
    high = np.ceil(coords).astype(np.int64)
    fraction = coords - low
    for index, weight in ((low, 1.0 - fraction), (high, fraction)):
        inside = (index >= 0) & (index < size_in)
        np.add.at(weights, (rows[inside], index[inside]), weight[inside])
    # Where low == high the two halves land on one pixel and sum to its full weight.
    return weights


def oversample(images: Sequence[np.ndarray], crop_dims: Sequence[int]) -> np.ndarray:
    """Return 10 crops per image: 4 corners and the center, then their mirrors.

    Args:
        images: H x W x K arrays, all of one shape.
        crop_dims: (height, width) of the crops.

    Returns:
        float32 array (10 * len(images), height, width, K).
    """
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    if crop_dims[0] > im_shape[0] or crop_dims[1] > im_shape[1]:
        raise ValueError(
            f"oversample crop {tuple(crop_dims)} is larger than the images "
            f"{tuple(im_shape[:2])}"
        )
    im_center = im_shape[:2] / 2.0
    h_indices = (0, im_shape[0] - crop_dims[0])
    w_indices = (0, im_shape[1] - crop_dims[1])
    crops_ix = np.empty((5, 4), dtype=int)
    current = 0
    for i in h_indices:
        for j in w_indices:
            crops_ix[current] = (i, j, i + crop_dims[0], j + crop_dims[1])
            current += 1
    # The center crop's float corners are truncated to int, as pycaffe's are.
    crops_ix[4] = np.tile(im_center, (1, 2)) + np.concatenate(
        [-crop_dims / 2.0, crop_dims / 2.0]
    )
    crops_ix = np.tile(crops_ix, (2, 1))
    crops = np.empty(
        (10 * len(images), crop_dims[0], crop_dims[1], im_shape[-1]), dtype=np.float32
    )
    index = 0
    for image in images:
        for crop in crops_ix:
            crops[index] = image[crop[0] : crop[2], crop[1] : crop[3], :]
            index += 1
        crops[index - 5 : index] = crops[index - 5 : index, :, ::-1, :]
    return crops


# ============================================================================ Transformer
class Transformer:
    """Turn H x W x K images into net input (K x H x W) and back, per input blob.

    Args:
        inputs: ``{blob name: blob shape}``, e.g. ``{"data": net.blobs["data"].data.shape}``.

    :meth:`preprocess` applies, in this order: conversion to float32, resizing to the
    blob's height and width, transpose, channel swap, raw scale, mean subtraction and
    input scale. :meth:`deprocess` undoes them in reverse (except the resize).
    """

    def __init__(self, inputs: dict[str, Sequence[int]]) -> None:
        self.inputs = {name: tuple(int(d) for d in shape) for name, shape in inputs.items()}
        self.transpose: dict[str, tuple[int, ...]] = {}
        self.channel_swap: dict[str, tuple[int, ...]] = {}
        self.raw_scale: dict[str, float] = {}
        self.mean: dict[str, np.ndarray] = {}
        self.input_scale: dict[str, float] = {}

    def _check_input(self, in_: str) -> None:
        if in_ not in self.inputs:
            raise KeyError(f"{in_} is not one of the net inputs: {list(self.inputs)}")

    def preprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """Return ``data`` (H' x W' x K) formatted for input ``in_`` (K x H x W)."""
        self._check_input(in_)
        caffe_in = np.array(data, dtype=np.float32)
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        in_dims = self.inputs[in_][2:]
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if transpose is not None:
            caffe_in = caffe_in.transpose(transpose)
        if channel_swap is not None:
            caffe_in = caffe_in[list(channel_swap), :, :]
        # In-place steps keep float32, rounding after each step as pycaffe does.
        if raw_scale is not None:
            caffe_in *= raw_scale
        if mean is not None:
            caffe_in -= mean
        if input_scale is not None:
            caffe_in *= input_scale
        return caffe_in

    def deprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """Undo :meth:`preprocess` for ``data`` of input ``in_`` (size stays)."""
        self._check_input(in_)
        decaf_in = np.array(data).copy().squeeze()
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in /= input_scale
        if mean is not None:
            decaf_in += mean
        if raw_scale is not None:
            decaf_in /= raw_scale
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_: str, order: Sequence[int]) -> None:
        """Set the axis order that turns the image into K x H x W, e.g. (2, 0, 1)."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise ValueError(
                f"transpose order {tuple(order)} for input '{in_}' needs "
                f"{len(self.inputs[in_]) - 1} axes, one per axis of an input item"
            )
        self.transpose[in_] = tuple(order)

    def set_channel_swap(self, in_: str, order: Sequence[int]) -> None:
        """Set the channel order, e.g. (2, 1, 0) to turn RGB into BGR.

        It applies after the transpose, so it indexes the K x H x W axis 0.
        """
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise ValueError(
                f"channel swap {tuple(order)} for input '{in_}' needs "
                f"{self.inputs[in_][1]} entries, one per input channel"
            )
        self.channel_swap[in_] = tuple(order)

    def set_raw_scale(self, in_: str, scale: float) -> None:
        """Set the factor applied before the mean, e.g. 255 for images in [0, 1]."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_: str, mean: np.ndarray) -> None:
        """Set the mean to subtract: one value per channel (K,) or a K x H x W image.

        Raises:
            ValueError: the mean's shape fits neither form.
        """
        self._check_input(in_)
        mean = np.asarray(mean)
        mean_shape = mean.shape
        if mean.ndim == 1:
            if mean_shape[0] != self.inputs[in_][1]:
                raise ValueError(
                    f"mean has {mean_shape[0]} channels but input '{in_}' has "
                    f"{self.inputs[in_][1]}"
                )
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(mean_shape) == 2:
                mean_shape = (1,) + mean_shape
            if len(mean_shape) != 3:
                raise ValueError(
                    f"mean shape {mean.shape} is invalid; give (K,) or K x H x W"
                )
            if mean_shape != self.inputs[in_][1:]:
                raise ValueError(
                    f"mean shape {mean.shape} does not match input '{in_}' shape "
                    f"{self.inputs[in_][1:]}"
                )
        self.mean[in_] = mean

    def set_input_scale(self, in_: str, scale: float) -> None:
        """Set the factor applied after the mean subtraction."""
        self._check_input(in_)
        self.input_scale[in_] = scale
