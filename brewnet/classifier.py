"""pycaffe's Classifier and Detector: nets that take images and return predictions.

Both are :class:`brewnet.Net` subclasses built in the TEST phase from a deploy
prototxt and a weights file, with a :class:`~brewnet.io.Transformer` for their first
input.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

from brewnet.io.transformer import Transformer, load_image, resize_image
from brewnet.io.transformer import oversample as _oversample
from brewnet.layers.base import TEST
from brewnet.net import Net


def _make_transformer(
    net: Net, mean, input_scale, raw_scale, channel_swap
) -> Transformer:
    """Return the Transformer for ``net``'s first input with the given settings."""
    if not net.inputs:
        raise ValueError(
            f"net '{net.name}' has no input blob; a Classifier or Detector needs a "
            f"deploy prototxt with an Input layer"
        )
    in_ = net.inputs[0]
    transformer = Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


class Classifier(Net):
    """A net that classifies H x W x K images (pycaffe's ``caffe.Classifier``).

    Args:
        model_file: deploy prototxt.
        pretrained_file: .caffemodel weights.
        image_dims: (height, width) that images are resized to before cropping;
            default the input blob's size.
        mean, input_scale, raw_scale, channel_swap: Transformer settings of the
            first input (see :class:`~brewnet.io.Transformer`).
    """

    def __init__(
        self,
        model_file: str | os.PathLike,
        pretrained_file: str | os.PathLike,
        image_dims: Sequence[int] | None = None,
        mean: np.ndarray | None = None,
        input_scale: float | None = None,
        raw_scale: float | None = None,
        channel_swap: Sequence[int] | None = None,
        **net_options,
    ) -> None:
        super().__init__(model_file, pretrained_file, TEST, **net_options)
        in_ = self.inputs[0] if self.inputs else None
        self.transformer = _make_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        if image_dims is None or len(image_dims) == 0:
            image_dims = self.crop_dims
        self.image_dims = image_dims

    def predict(self, inputs: Sequence[np.ndarray], oversample: bool = True) -> np.ndarray:
        """Return the first output for each image (N x classes).

        Each image is resized to ``image_dims``; with ``oversample`` the prediction is
        the mean over the 10 crops of :func:`brewnet.io.oversample`, else the net sees
        the center crop.
        """
        input_ = np.zeros(
            (len(inputs), self.image_dims[0], self.image_dims[1], inputs[0].shape[2]),
            dtype=np.float32,
        )
        for index, image in enumerate(inputs):
            input_[index] = resize_image(image, self.image_dims)
        if oversample:
            input_ = _oversample(input_, self.crop_dims)
        else:
            center = np.array(self.image_dims) / 2.0
            crop = np.tile(center, (1, 2))[0] + np.concatenate(
                [-self.crop_dims / 2.0, self.crop_dims / 2.0]
            )
            crop = crop.astype(int)
            input_ = input_[:, crop[0] : crop[2], crop[1] : crop[3], :]
        in_ = self.inputs[0]
        caffe_in = np.zeros(np.array(input_.shape)[[0, 3, 1, 2]], dtype=np.float32)
        for index, image in enumerate(input_):
            caffe_in[index] = self.transformer.preprocess(in_, image)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions



class Detector(Net):
    """A net that classifies windows of images (pycaffe's ``caffe.Detector``).

    Args:
        model_file, pretrained_file, mean, input_scale, raw_scale, channel_swap:
            as for :class:`Classifier`.
        context_pad: pixels of context around each window, as in R-CNN; the crop
            is padded with the mean where the context leaves the image.
    """

    def __init__(
        self,
        model_file: str | os.PathLike,
        pretrained_file: str | os.PathLike,
        mean: np.ndarray | None = None,
        input_scale: float | None = None,
        raw_scale: float | None = None,
        channel_swap: Sequence[int] | None = None,
        context_pad: int | None = None,
        **net_options,
    ) -> None:
        super().__init__(model_file, pretrained_file, TEST, **net_options)
        self.transformer = _make_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(
        self, images_windows: Iterable[tuple[str, Sequence[Sequence[int]]]]
    ) -> list[dict]:
        """Classify windows (ymin, xmin, ymax, xmax) of image files.

        Returns one dict per window with its ``window``, ``prediction`` (the first
        output) and ``filename``, in input order.
        """
        images_windows = [(name, [np.asarray(w) for w in windows]) for name, windows in images_windows]
        window_inputs = []
        for image_fname, windows in images_windows:
            image = load_image(image_fname).astype(np.float32)
            for window in windows:
                window_inputs.append(self.crop(image, window))
        in_ = self.inputs[0]
        caffe_in = np.zeros(
            (len(window_inputs), window_inputs[0].shape[2]) + self.blobs[in_].data.shape[2:],
            dtype=np.float32,
        )
        for index, window_in in enumerate(window_inputs):
            caffe_in[index] = self.transformer.preprocess(in_, window_in)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        detections = []
        index = 0
        for image_fname, windows in images_windows:
            for window in windows:
                detections.append(
                    {"window": window, "prediction": predictions[index], "filename": image_fname}
                )
                index += 1
        return detections

    def detect_selective_search(self, image_fnames):
        """pycaffe's selective-search detection, which brewnet does not provide."""
        raise NotImplementedError(
            "detect_selective_search needs the selective_search_ijcv_with_python "
            "MATLAB wrapper, which brewnet does not include; compute the windows "
            "yourself and call detect_windows([(filename, windows), ...])"
        )

    def crop(self, im: np.ndarray, window: Sequence[int]) -> np.ndarray:
        """Return the window (ymin, xmin, ymax, xmax) of ``im``, with context padding.

        Without ``context_pad`` this is the plain slice ``im[ymin:ymax, xmin:xmax]``.
        """
        window = np.asarray(window)
        crop = im[window[0] : window[2], window[1] : window[3]]
        if not self.context_pad:
            return crop
        box = window.astype(np.float64)
        crop_size = self.blobs[self.inputs[0]].width  # assumes a square input
        scale = crop_size / (1.0 * crop_size - self.context_pad * 2)
        half_h = (box[2] - box[0] + 1) / 2.0
        half_w = (box[3] - box[1] + 1) / 2.0
        center = (box[0] + half_h, box[1] + half_w)
        scaled_dims = scale * np.array((-half_h, -half_w, half_h, half_w))
        box = np.round(np.tile(center, 2) + scaled_dims)
        full_h = box[2] - box[0] + 1
        full_w = box[3] - box[1] + 1
        scale_h = crop_size / full_h
        scale_w = crop_size / full_w
        pad_y = int(round(max(0, -box[0]) * scale_h))  # rows outside the image
        pad_x = int(round(max(0, -box[1]) * scale_w))
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        clip_h = box[2] - box[0] + 1
        clip_w = box[3] - box[1] + 1
        if clip_h <= 0 or clip_w <= 0:
            raise ValueError(f"window {tuple(window)} lies outside the {im_h} x {im_w} image")
        crop_h = int(round(clip_h * scale_h))
        crop_w = int(round(clip_w * scale_w))
        crop_h = min(crop_h, crop_size - pad_y)
        crop_w = min(crop_w, crop_size - pad_x)
        box = box.astype(int)
        context_crop = im[box[0] : box[2], box[1] : box[3]]
        context_crop = resize_image(context_crop, (crop_h, crop_w))
        crop = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        crop[pad_y : pad_y + crop_h, pad_x : pad_x + crop_w] = context_crop
        return crop

    def configure_crop(self, context_pad: int | None) -> None:
        """Set the crop size (the input's H x W x K) and the mean used as padding."""
        in_ = self.inputs[0]
        transpose = self.transformer.transpose[in_]
        inverse = np.argsort(transpose)
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inverse]
        self.context_pad = context_pad
        if not self.context_pad:
            return
        channel_order = self.transformer.channel_swap.get(in_)
        raw_scale = self.transformer.raw_scale.get(in_)
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        # The padding is in the raw image's space, so undo the transforms on the mean.
        crop_mean = np.array(mean, dtype=np.float64).transpose(inverse)
        if channel_order is not None:
            channel_order_inverse = [list(channel_order).index(i) for i in range(crop_mean.shape[2])]
            crop_mean = crop_mean[:, :, channel_order_inverse]
        if raw_scale is not None:
            crop_mean /= raw_scale
        self.crop_mean = crop_mean
