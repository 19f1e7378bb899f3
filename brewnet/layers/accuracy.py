"""The Accuracy layer: top-k classification accuracy, overall and per class."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from brewnet.blob import shape_string
from brewnet.layers.base import Layer, Shape, canonical_axis, count, is_meta
from brewnet.layers.registry import register_layer


def accuracy(
    scores: torch.Tensor,
    labels: torch.Tensor,
    top_k: int = 1,
    axis: int = 1,
    ignore_label: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (accuracy, per-class accuracy) of ``scores`` against ``labels``.

    ``scores`` has the classes along ``axis``; ``labels`` holds one class index per
    position of the other axes (floats are truncated toward zero, as Caffe's cast to
    int does). A position is correct when fewer than ``top_k`` other classes score
    greater than or equal to the label's class, so a tie counts against the label.
    Positions whose label equals ``ignore_label`` are skipped. The accuracy is 0 when
    no position is counted, and a class without positions reports 0.

    The labels that are not ignored must lie in [0, number of classes).
    """
    num_classes = scores.shape[axis]
    outer = count(scores.shape, 0, axis)
    inner = count(scores.shape, axis + 1)
    grid = scores.detach().reshape(outer, num_classes, inner)
    label_grid = torch.trunc(labels.detach()).long().reshape(outer, inner)

    counted = torch.ones_like(label_grid, dtype=torch.bool)
    if ignore_label is not None:
        counted = label_grid != ignore_label
    safe_labels = torch.where(counted, label_grid, torch.zeros_like(label_grid))
    label_scores = grid.gather(1, safe_labels.unsqueeze(1))
    # The label's own class always passes the >= test, hence the -1.
    others_at_least = (grid >= label_scores).sum(dim=1) - 1
    correct = counted & (others_at_least < top_k)

    num_counted = int(counted.sum())
    value = correct.sum().to(scores.dtype) / num_counted if num_counted else 0.0
    overall = torch.as_tensor(value, dtype=scores.dtype, device=scores.device)

    per_label = torch.bincount(label_grid[counted], minlength=num_classes)
    per_hit = torch.bincount(label_grid[correct], minlength=num_classes)
    per_class = torch.where(
        per_label > 0,
        per_hit.to(scores.dtype) / per_label.clamp(min=1).to(scores.dtype),
        torch.zeros((), dtype=scores.dtype, device=scores.device),
    )
    return overall, per_class


@register_layer
class AccuracyLayer(Layer):
    """Top-k classification accuracy of predictions against labels.

    Args (``accuracy_param``):
        top_k: a position counts as correct when its label is among the ``top_k``
            highest scores, ties counting against the label (default 1).
        axis: the class axis of the predictions (default 1; negative counts from the
            end).
        ignore_label: label value whose positions are not counted.

    Bottoms: predictions, for example (N, C) or (N, C, H, W); labels with one entry
    per position, N or N*H*W entries, integers in [0, C). Tops: the accuracy, a
    scalar; optionally the per-class accuracy, of shape (C,). The layer has no
    gradient.
    """

    type = "Accuracy"
    exact_num_bottom_blobs = 2
    min_top_blobs = 1
    max_top_blobs = 2
    can_backward = False

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.accuracy_param
        self._top_k = int(param.top_k)
        self._ignore_label = (
            int(param.ignore_label) if param.HasField("ignore_label") else None
        )

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        axis = self._check_shapes(bottom_shapes[0], bottom_shapes[1])
        tops = [()]
        if len(self.param.top) > 1:
            tops.append((bottom_shapes[0][axis],))
        return tops

    def _check_shapes(self, scores: Shape, labels: Shape) -> int:
        axis = canonical_axis(self, self.param.accuracy_param.axis, len(scores))
        num_classes = scores[axis]
        if self._top_k > num_classes:
            raise self.error(
                f"accuracy_param.top_k {self._top_k} is larger than the {num_classes} "
                f"classes (axis {axis} of the predictions, shape "
                f"{shape_string(scores)}); use a top_k of at most {num_classes}"
            )
        positions = count(scores, 0, axis) * count(scores, axis + 1)
        if positions != count(labels):
            raise self.error(
                f"the labels (shape {shape_string(labels)}) must have one entry per "
                f"prediction position, {positions} for predictions of shape "
                f"{shape_string(scores)} with classes on axis {axis}"
            )
        return axis

    def _check_labels(self, labels: torch.Tensor, num_classes: int) -> None:
        if is_meta(labels) or labels.numel() == 0:
            return
        values = torch.trunc(labels.detach()).long()
        if self._ignore_label is not None:
            values = values[values != self._ignore_label]
        if values.numel() == 0:
            return
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise self.error(
                f"label {bad} is outside [0, {num_classes - 1}], the classes of the "
                f"predictions; fix the labels or set accuracy_param.ignore_label"
            )

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        scores, labels = bottom
        axis = self._check_shapes(tuple(scores.shape), tuple(labels.shape))
        self._check_labels(labels, scores.shape[axis])
        with torch.no_grad():
            overall, per_class = accuracy(
                scores, labels, self._top_k, axis, self._ignore_label
            )
        if len(self.param.top) > 1:
            return [overall, per_class]
        return [overall]

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False
