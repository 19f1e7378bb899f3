"""WindowData: batches of image windows warped to a square, for R-CNN style training.

A window file lists images and, for each image, candidate windows with a class label
and their overlap with the ground truth. Windows whose overlap reaches
``fg_threshold`` are foreground (object) windows; windows whose overlap is below
``bg_threshold`` are background windows with label 0; the others are dropped. Each
batch draws ``batch_size - num_fg`` background windows and then ``num_fg`` foreground
windows at random (with replacement), where ``num_fg = int(batch_size *
fg_fraction)`` in float32 arithmetic. Each window, optionally enlarged by context
padding, is cut out of its image, resized with OpenCV's bilinear arithmetic, placed in
a zero-filled ``crop_size`` x ``crop_size`` sample, mean-subtracted and scaled. The
geometry follows BVLC Caffe's ``WindowDataLayer`` exactly, including its rounding in
the net's floating-point type.
"""

from __future__ import annotations

import logging
import math
import os
import re
import weakref
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from brewnet.data.db import resolve_source
from brewnet.data.prefetch import Prefetcher
from brewnet.data.transform import DataTransformer, transformation_param
from brewnet.errors import BrewnetError, DataError
from brewnet.layers.base import Layer, Shape
from brewnet.layers.data import layer_rng, numpy_dtype
from brewnet.layers.registry import register_layer
from brewnet.proto import caffe_pb2

logger = logging.getLogger(__name__)

# WindowData decodes every image as OpenCV's IMREAD_COLOR does: three BGR channels.
CHANNELS = 3
CROP_MODES = ("warp", "square")

_INTEGER = re.compile(r"[+-]?\d+")
_REAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


# ============================================================================ file
@dataclass(frozen=True)
class WindowImage:
    """One image record of a window file; ``path`` already has root_folder in front."""

    index: int
    path: str
    channels: int
    height: int
    width: int
    line: int


@dataclass(frozen=True)
class Window:
    """One window of a window file: inclusive pixel corners, 0-based."""

    image_index: int
    label: int
    overlap: float
    x1: int
    y1: int
    x2: int
    y2: int
    line: int


@dataclass
class WindowFile:
    """The parsed window file: its images and the kept windows, split by overlap."""

    path: str
    images: list[WindowImage]
    foreground: list[Window]
    background: list[Window]
    last_image_index: int


class _TokenReader:
    """Whitespace-separated tokens of a file with their line numbers, as ``>>`` reads them."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self._tokens = list(_tokenize(text))
        self._position = 0
        self._last_line = text.count("\n") + 1

    def at_end(self) -> bool:
        return self._position >= len(self._tokens)

    def next(self, expected: str) -> tuple[str, int]:
        """Return the next token and its line; at the end, raise naming ``expected``."""
        if self.at_end():
            raise DataError(
                f"window file '{self.path}', line {self._last_line}: the file ends "
                f"where {expected} was expected; each image record needs '# index', the "
                f"image path, channels, height, width, the window count and one "
                f"'label overlap x1 y1 x2 y2' line per window"
            )
        token, line = self._tokens[self._position]
        self._position += 1
        return token, line

    def integer(self, expected: str) -> tuple[int, int]:
        token, line = self.next(expected)
        if not _INTEGER.fullmatch(token):
            raise self.invalid(line, expected, "an integer", token)
        return int(token), line

    def real(self, expected: str) -> tuple[float, int]:
        token, line = self.next(expected)
        if not _REAL.fullmatch(token):
            raise self.invalid(line, expected, "a number", token)
        return float(np.float32(token)), line

    def invalid(self, line: int, expected: str, kind: str, token: str) -> DataError:
        return DataError(
            f"window file '{self.path}', line {line}: expected {kind} for {expected}, "
            f"got {token!r}"
        )


def _tokenize(text: str) -> Iterator[tuple[str, int]]:
    for number, line in enumerate(text.splitlines(), start=1):
        for token in line.split():
            yield token, number


def read_window_file(
    path: str, root_folder: str, fg_threshold: float, bg_threshold: float
) -> WindowFile:
    """Parse a window file and split its windows into foreground and background.

    The format repeats, for each image: ``# image_index``, the image path (prefixed
    with ``root_folder`` as plain text), channels, height, width, the number of
    windows, then one ``label overlap x1 y1 x2 y2`` entry per window. Tokens are
    separated by any whitespace, as C++ stream extraction reads them. Background
    windows get label 0.

    Raises:
        DataError: the file cannot be read, is empty, or an entry is malformed; the
            message names the file and the line.
    """
    text = _read_text(path)
    reader = _TokenReader(path, text)
    if reader.at_end():
        raise DataError(f"window file '{path}' is empty; it needs at least one image record")
    fg_threshold = np.float32(fg_threshold)
    bg_threshold = np.float32(bg_threshold)
    images: list[WindowImage] = []
    foreground: list[Window] = []
    background: list[Window] = []
    image_index = -1
    while not reader.at_end():
        image_index, image = _read_image_header(reader, root_folder)
        images.append(image)
        count, _ = reader.integer(f"the window count of image {image_index}")
        for _ in range(count):
            window = _read_window(reader, image_index)
            if np.float32(window.overlap) >= fg_threshold:
                if window.label <= 0:
                    raise DataError(
                        f"window file '{path}', line {window.line}: a foreground "
                        f"window (overlap {window.overlap:g} >= fg_threshold "
                        f"{fg_threshold:g}) has label {window.label}; foreground "
                        f"labels must be above 0, because label 0 means background"
                    )
                foreground.append(window)
            elif np.float32(window.overlap) < bg_threshold:
                background.append(_as_background(window))
        if image_index % 100 == 0:
            logger.info(
                "num: %d %s %d %d %d windows to process: %d", image_index, image.path,
                image.channels, image.height, image.width, count,
            )
    window_file = WindowFile(path, images, foreground, background, image_index)
    _check_image_indices(window_file)
    return window_file


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as error:
        raise DataError(
            f"cannot open the window file '{path}': {error.strerror}; relative paths "
            f"start at the working directory, '{os.getcwd()}'"
        ) from None
    except UnicodeDecodeError as error:
        raise DataError(f"window file '{path}' is not UTF-8 text ({error})") from None


def _read_image_header(reader: _TokenReader, root_folder: str) -> tuple[int, WindowImage]:
    hashtag, line = reader.next("'#' starting an image record")
    if hashtag != "#":
        raise DataError(
            f"window file '{reader.path}', line {line}: expected '#' starting an image "
            f"record, got {hashtag!r}; check the window count of the image before it"
        )
    image_index, _ = reader.integer("the image index after '#'")
    name, _ = reader.next(f"the path of image {image_index}")
    channels, _ = reader.integer(f"the channel count of image {image_index}")
    height, _ = reader.integer(f"the height of image {image_index}")
    width, _ = reader.integer(f"the width of image {image_index}")
    path = os.path.abspath(root_folder + name)
    return image_index, WindowImage(image_index, path, channels, height, width, line)


def _read_window(reader: _TokenReader, image_index: int) -> Window:
    subject = f"a window of image {image_index}"
    label, line = reader.integer(f"the label of {subject}")
    overlap, _ = reader.real(f"the overlap of {subject}")
    corners = [
        reader.integer(f"the {name} of {subject}")[0] for name in ("x1", "y1", "x2", "y2")
    ]
    return Window(image_index, label, overlap, *corners, line=line)


def _as_background(window: Window) -> Window:
    return Window(
        window.image_index, 0, 0.0, window.x1, window.y1, window.x2, window.y2,
        window.line,
    )


def _check_image_indices(window_file: WindowFile) -> None:
    """Reject kept windows whose image index names no image record.

    A window finds its image by the index written after '#', taken as a position
    in the list of records, as in Caffe.
    """
    count = len(window_file.images)
    for window in window_file.foreground + window_file.background:
        if not 0 <= window.image_index < count:
            raise DataError(
                f"window file '{window_file.path}', line {window.line}: the window "
                f"belongs to image index {window.image_index}, but the file has "
                f"{count} image records, numbered 0 to {count - 1} in file order"
            )
    for position, image in enumerate(window_file.images):
        if image.index != position:
            logger.warning(
                "window file '%s', line %d: image record '# %d' is record number %d "
                "(counting from 0); its windows use the image of record %d",
                window_file.path, image.line, image.index, position, image.index,
            )
            break


# ======================================================================== geometry
@dataclass(frozen=True)
class WarpGeometry:
    """Where a window is cut out of its image and where it lands in the sample.

    The region x1..x2, y1..y2 (inclusive, inside the image) is resized to
    ``height`` x ``width`` pixels and placed at row ``pad_h``, column ``pad_w`` of
    the ``crop_size`` x ``crop_size`` sample. The rest of the sample stays zero.
    """

    x1: int
    y1: int
    x2: int
    y2: int
    height: int
    width: int
    pad_h: int
    pad_w: int


def round_half_away(value) -> int:
    """Round as C's ``round`` does: halves away from zero."""
    magnitude = abs(float(value))
    whole = math.floor(magnitude)
    if magnitude - whole >= 0.5:
        whole += 1
    return int(math.copysign(whole, float(value)))


def window_geometry(
    box: tuple[int, int, int, int],
    image_height: int,
    image_width: int,
    crop_size: int,
    context_pad: int = 0,
    square: bool = False,
    mirror: bool = False,
    real: type = np.float32,
) -> WarpGeometry:
    """Return the crop region and placement of window ``box = (x1, y1, x2, y2)``.

    Without context padding or square mode the window itself is warped to the full
    sample. Otherwise the window (squared first in square mode) is enlarged about
    its centre by ``crop_size / (crop_size - 2 * context_pad)`` and clipped to the
    image. The clipped part is resized by the factor that would warp the whole
    enlarged region to ``crop_size``, and the cut-off extent becomes zero padding,
    on the mirrored side when ``mirror`` is set. The arithmetic runs in ``real``
    (the net's float type), as Caffe's does in its Dtype.
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    if context_pad <= 0 and not square:
        return WarpGeometry(x1, y1, x2, y2, crop_size, crop_size, 0, 0)
    context_scale = real(crop_size) / real(crop_size - 2 * context_pad)
    half_height = real((y2 - y1 + 1) / 2.0)
    half_width = real((x2 - x1 + 1) / 2.0)
    center_x = real(x1) + half_width
    center_y = real(y1) + half_height
    if square:
        half_height = half_width = max(half_height, half_width)
    x1 = round_half_away(center_x - half_width * context_scale)
    x2 = round_half_away(center_x + half_width * context_scale)
    y1 = round_half_away(center_y - half_height * context_scale)
    y2 = round_half_away(center_y + half_height * context_scale)

    unclipped_height = y2 - y1 + 1
    unclipped_width = x2 - x1 + 1
    pad_x1 = max(0, -x1)
    pad_y1 = max(0, -y1)
    pad_x2 = max(0, x2 - image_width + 1)
    pad_y2 = max(0, y2 - image_height + 1)
    x1, x2 = x1 + pad_x1, x2 - pad_x2
    y1, y2 = y1 + pad_y1, y2 - pad_y2

    scale_x = real(crop_size) / real(unclipped_width)
    scale_y = real(crop_size) / real(unclipped_height)
    width = round_half_away(real(x2 - x1 + 1) * scale_x)
    height = round_half_away(real(y2 - y1 + 1) * scale_y)
    pad_x1 = round_half_away(real(pad_x1) * scale_x)
    pad_x2 = round_half_away(real(pad_x2) * scale_x)
    pad_y1 = round_half_away(real(pad_y1) * scale_y)
    pad_h = pad_y1
    pad_w = pad_x2 if mirror else pad_x1
    # Rounding may push the resized region past the sample's edge; trim it.
    height = min(height, crop_size - pad_h)
    width = min(width, crop_size - pad_w)
    return WarpGeometry(x1, y1, x2, y2, height, width, pad_h, pad_w)


def warp_window(image: np.ndarray, geometry: WarpGeometry, mirror: bool) -> np.ndarray:
    """Return the region of an H x W x C uint8 image resized (and mirrored) per ``geometry``."""
    from brewnet.data.image import resize_linear

    g = geometry
    region = image[g.y1 : g.y2 + 1, g.x1 : g.x2 + 1]
    if region.shape[:2] != (g.height, g.width):
        region = resize_linear(region, g.height, g.width)
    if mirror:
        region = region[:, ::-1]
    return region


def geometry_problem(geometry: WarpGeometry, image_height: int, image_width: int) -> str:
    """Return why ``geometry`` cannot be cut out of the image, or "" when it can."""
    g = geometry
    if not (0 <= g.x1 <= g.x2 < image_width and 0 <= g.y1 <= g.y2 < image_height):
        return (
            f"the region to cut out, x {g.x1}..{g.x2} and y {g.y1}..{g.y2}, is not "
            f"inside the image of {image_width} x {image_height} pixels"
        )
    if g.height <= 0 or g.width <= 0:
        return (
            f"the region x {g.x1}..{g.x2}, y {g.y1}..{g.y2} resizes to "
            f"{g.width} x {g.height} pixels, which is empty"
        )
    return ""


# =========================================================================== batch
@dataclass
class WindowSampler:
    """What turns a window into a sample: geometry settings, mean and scale.

    ``mean`` is a C x H x W mean image. Caffe uses its ``crop_size`` square at
    offset ``(W - crop_size) // 2`` in both directions, and so does this class.
    ``mean_values`` has one value per channel. At most one of the two is set.
    """

    crop_size: int
    context_pad: int
    square: bool
    scale: float
    real: type
    mean: Optional[np.ndarray] = None
    mean_values: Optional[np.ndarray] = None

    def sample(self, image: np.ndarray, window: Window, mirror: bool) -> np.ndarray:
        """Return the C x crop x crop sample of ``window`` in an H x W x C uint8 image.

        Raises:
            ValueError: the window's region lies outside the image; the message
                explains how.
        """
        rows, cols = image.shape[:2]
        geometry = window_geometry(
            (window.x1, window.y1, window.x2, window.y2), rows, cols, self.crop_size,
            self.context_pad, self.square, mirror, self.real,
        )
        problem = geometry_problem(geometry, rows, cols)
        if problem:
            raise ValueError(problem)
        patch = warp_window(image, geometry, mirror).transpose(2, 0, 1).astype(self.real)
        g = geometry
        rows_out = slice(g.pad_h, g.pad_h + g.height)
        cols_out = slice(g.pad_w, g.pad_w + g.width)
        if self.mean is not None:
            offset = (self.mean.shape[2] - self.crop_size) // 2
            patch = patch - self.mean[
                :, offset + g.pad_h : offset + g.pad_h + g.height,
                offset + g.pad_w : offset + g.pad_w + g.width,
            ]
        elif self.mean_values is not None:
            patch = patch - self.mean_values[:, None, None]
        sample = np.zeros((image.shape[2], self.crop_size, self.crop_size), self.real)
        sample[:, rows_out, cols_out] = patch * self.real(self.scale)
        return sample


def foreground_count(batch_size: int, fg_fraction: float) -> int:
    """Return the number of foreground windows per batch, truncated from float32."""
    return int(np.float32(batch_size) * np.float32(fg_fraction))


class _WindowBatchLoader:
    """Draw and warp batches of windows; runs in the prefetch thread.

    It holds no reference to its layer, so that the layer can be collected while
    the thread runs.
    """

    def __init__(
        self,
        windows: WindowFile,
        sampler: WindowSampler,
        batch_size: int,
        num_fg: int,
        mirror: bool,
        rng: np.random.Generator,
        cache: Optional[list[bytes]],
        prefix: str,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.windows = windows
        self.sampler = sampler
        self.batch_size = batch_size
        self.num_fg = num_fg
        self.mirror = mirror
        self.rng = rng
        self.cache = cache
        self.prefix = prefix
        self.dtype = dtype
        self.device = device

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the next batch: background windows first, then foreground ones."""
        crop = self.sampler.crop_size
        data = np.zeros((self.batch_size, CHANNELS, crop, crop), self.sampler.real)
        labels = np.empty(self.batch_size, self.sampler.real)
        plan = (
            (self.windows.background, self.batch_size - self.num_fg),
            (self.windows.foreground, self.num_fg),
        )
        item = 0
        for choices, count in plan:
            for _ in range(count):
                window = choices[int(self.rng.integers(len(choices)))]
                mirror = self.mirror and int(self.rng.integers(2)) == 1
                data[item] = self._sample(window, mirror)
                labels[item] = window.label
                item += 1
        return (
            torch.from_numpy(data).to(self.device, self.dtype),
            torch.from_numpy(labels).to(self.device, self.dtype),
        )

    def _sample(self, window: Window, mirror: bool) -> np.ndarray:
        image_record = self.windows.images[window.image_index]
        image = self._read(window.image_index)
        try:
            return self.sampler.sample(image, window, mirror)
        except ValueError as error:
            raise DataError(
                f"{self.prefix}window file '{self.windows.path}', line {window.line}: "
                f"window x1 y1 x2 y2 = {window.x1} {window.y1} {window.x2} "
                f"{window.y2} of image '{image_record.path}': {error}; fix the window's "
                f"corners (0-based, inclusive)"
            ) from None

    def _read(self, index: int) -> np.ndarray:
        """Return image ``index`` decoded to H x W x 3 BGR uint8, as IMREAD_COLOR does."""
        from brewnet.data.datum import decode_image

        record = self.windows.images[index]
        try:
            if self.cache is not None:
                payload = self.cache[index]
            else:
                payload = read_image_file(record.path)
            return decode_image(payload, True)
        except (OSError, DataError) as error:
            detail = error.strerror if isinstance(error, OSError) else str(error)
            raise DataError(
                f"{self.prefix}could not read image '{record.path}' (window file "
                f"'{self.windows.path}', line {record.line}): {detail}"
            ) from None


def read_image_file(path: str) -> bytes:
    """Return the bytes of an image file."""
    with open(path, "rb") as handle:
        return handle.read()


# =========================================================================== layer
def _without_scale(param: caffe_pb2.WindowDataParameter) -> caffe_pb2.WindowDataParameter:
    """Return a copy of ``param`` without ``scale``, which WindowData reads in place."""
    copy = caffe_pb2.WindowDataParameter()
    copy.CopyFrom(param)
    copy.ClearField("scale")
    return copy


@register_layer
class WindowDataLayer(Layer):
    """Sample foreground and background windows of images and warp them to squares.

    Args (``window_data_param``):
        source: the window file (see :func:`read_window_file`); a relative path
            starts at the working directory.
        batch_size: windows per batch.
        fg_threshold: minimum overlap of a foreground window (default 0.5).
        bg_threshold: a window with a smaller overlap is background (default 0.5).
        fg_fraction: share of foreground windows in each batch (default 0.25).
        context_pad: pixels of context around the window in the warped sample
            (default 0); must be below crop_size / 2.
        crop_mode: "warp" (default) stretches the window to a square; "square" first
            grows the shorter side of the window to the longer one.
        cache_images: read every image file into memory when the net is built.
        root_folder: prefixed to every image path as plain text.
        scale: factor applied after the mean is subtracted (default 1).
    Args (``transform_param``):
        crop_size: the side of the warped square; required.
        mirror: flip each window left-right with probability 1/2.
        mean_file: a BlobProto mean image; the crop_size square at offset
            ``(width - crop_size) // 2`` in both directions is subtracted.
        mean_value: one value, or one per channel, to subtract.
    The net's legacy upgrade moves scale, mean_file, crop_size and mirror from
    ``window_data_param`` into ``transform_param``; the values are used from there.

    Top: data (N, 3, crop_size, crop_size), BGR, and label (N,): 0 for background
    windows, the window's class for foreground ones. Images are decoded in color
    and read again for every window unless cache_images is set.

    NOTE: BVLC Caffe reads the scale only from ``window_data_param`` and ignores
    ``transform_param.scale``. brewnet's legacy upgrade moves the window_data_param
    value into transform_param, so without a window_data_param.scale the layer
    applies transform_param.scale, which Caffe would ignore.
    """

    type = "WindowData"
    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 2
    can_backward = False

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.window_data_param
        transform = transformation_param(self.param, _without_scale(param))
        self._check_param(param, transform)
        self._log_settings(param)
        self.source = resolve_source(param.source)
        real = numpy_dtype(self.dtype)
        try:
            self.windows = read_window_file(
                self.source, param.root_folder, param.fg_threshold, param.bg_threshold
            )
            self._log_windows(param)
            self._check_channels()
            sampler = self._sampler(param, transform, real)
            cache = self._cache_images() if param.cache_images else None
        except DataError as error:
            raise self._data_error(str(error)) from None
        batch = int(param.batch_size)
        num_fg = foreground_count(batch, param.fg_fraction)
        self._check_window_counts(batch, num_fg)
        crop = int(transform.crop_size)
        self._top_shapes: list[Shape] = [(batch, CHANNELS, crop, crop), (batch,)]
        logger.info("output data size: %s", ",".join(str(d) for d in self._top_shapes[0]))
        loader = _WindowBatchLoader(
            self.windows, sampler, batch, num_fg, bool(transform.mirror), layer_rng(),
            cache, self._prefix(), self.dtype, self.device,
        )
        depth = int(self.param.data_param.prefetch)
        self._prefetcher = Prefetcher(loader.load, depth, self.source)
        weakref.finalize(self, self._prefetcher.close)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return list(self._top_shapes)

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        data, label = self._prefetcher.next()
        return [data, label]

    def close(self) -> None:
        """Stop the prefetch thread."""
        self._prefetcher.close()

    # ----------------------------------------------------------------------------
    # Set-up phases.

    def _check_param(self, param, transform) -> None:
        if not param.source:
            raise self.error("window_data_param.source is empty; set it to the window file")
        if param.batch_size <= 0:
            raise self.error("window_data_param.batch_size must be positive")
        crop = int(transform.crop_size)
        if crop <= 0:
            raise self.error(
                "transform_param.crop_size is 0; WindowData warps every window to a "
                "crop_size x crop_size square, so set crop_size to a positive size"
            )
        if 2 * int(param.context_pad) >= crop:
            raise self.error(
                f"window_data_param.context_pad {param.context_pad} leaves no room for "
                f"the window in a crop of {crop} pixels; use a context_pad below "
                f"crop_size / 2"
            )
        if param.crop_mode not in CROP_MODES:
            raise self.error(
                f"window_data_param.crop_mode is {param.crop_mode!r}; use \"warp\" or "
                f"\"square\""
            )
        if not 0 <= param.fg_fraction <= 1:
            raise self.error(
                f"window_data_param.fg_fraction is {param.fg_fraction:g}; it must be in "
                f"[0, 1]"
            )
        if self.param.data_param.prefetch <= 0:
            raise self.error(
                f"data_param.prefetch is {self.param.data_param.prefetch}; it must be at "
                f"least 1"
            )

    def _log_settings(self, param) -> None:
        logger.info(
            "Window data layer:\n  foreground (object) overlap threshold: %g\n"
            "  background (non-object) overlap threshold: %g\n"
            "  foreground sampling fraction: %g\n  cache_images: %d\n  root_folder: %s",
            param.fg_threshold, param.bg_threshold, param.fg_fraction,
            int(param.cache_images), param.root_folder,
        )

    def _log_windows(self, param) -> None:
        windows = self.windows
        logger.info("Number of images: %d", windows.last_image_index + 1)
        counts = {0: len(windows.background)}
        for window in windows.foreground:
            counts[window.label] = counts.get(window.label, 0) + 1
        for label in sorted(counts):
            logger.info("class %d has %d samples", label, counts[label])
        logger.info("Amount of context padding: %d", param.context_pad)
        logger.info("Crop mode: %s", param.crop_mode)

    def _check_channels(self) -> None:
        windows = self.windows
        last = windows.images[-1]
        if last.channels != CHANNELS:
            raise DataError(
                f"window file '{windows.path}', line {last.line}: the last image lists "
                f"{last.channels} channels, which sets the data top's channel count, "
                f"but WindowData decodes every image in color; list 3 channels"
            )

    def _sampler(self, param, transform, real: type) -> WindowSampler:
        means = DataTransformer(transform, self.phase, None, real, self.error)
        crop = int(transform.crop_size)
        mean_values = None
        if means.mean is not None:
            self._check_mean_image(means.mean, transform.mean_file, crop)
        if means.mean_values is not None:
            count = len(means.mean_values)
            if count not in (1, CHANNELS):
                raise self.error(
                    f"transform_param has {count} mean_value entries; give 1 or "
                    f"{CHANNELS} (one per channel)"
                )
            mean_values = np.broadcast_to(means.mean_values, (CHANNELS,)).astype(real)
        return WindowSampler(
            crop_size=crop,
            context_pad=int(param.context_pad),
            square=param.crop_mode == "square",
            scale=float(param.scale if param.HasField("scale") else transform.scale),
            real=real,
            mean=means.mean,
            mean_values=mean_values,
        )

    def _check_mean_image(self, mean: np.ndarray, path: str, crop: int) -> None:
        channels, height, width = mean.shape
        offset = (width - crop) // 2
        if channels != CHANNELS or width < crop or offset + crop > height:
            raise DataError(
                f"mean_file '{path}' has shape {tuple(mean.shape)}; WindowData "
                f"subtracts its central {crop} x {crop} square, taken at offset "
                f"(width - crop_size) // 2 = {max(offset, 0)} in both directions, so "
                f"it needs {CHANNELS} channels, a width of at least {crop} and a height "
                f"of at least {max(offset, 0) + crop}"
            )

    def _cache_images(self) -> list[bytes]:
        payloads = []
        for image in self.windows.images:
            try:
                payloads.append(read_image_file(image.path))
            except OSError as error:
                raise DataError(
                    f"could not read image '{image.path}' (window file "
                    f"'{self.windows.path}', line {image.line}) for cache_images: "
                    f"{error.strerror}"
                ) from None
        return payloads

    def _check_window_counts(self, batch: int, num_fg: int) -> None:
        for kind, windows, count, threshold in (
            ("foreground", self.windows.foreground, num_fg, "overlap >= fg_threshold"),
            ("background", self.windows.background, batch - num_fg,
             "overlap < bg_threshold"),
        ):
            if count and not windows:
                raise self._data_error(
                    f"window file '{self.source}' has no {kind} windows ({threshold}), "
                    f"but each batch takes {count}; adjust fg_threshold, bg_threshold "
                    f"or fg_fraction"
                )

    def _prefix(self) -> str:
        return f"layer '{self.name}' (type {self.type}): "

    def _data_error(self, message: str) -> BrewnetError:
        return DataError(self._prefix() + message)
