"""Loss layers: SoftmaxWithLoss, EuclideanLoss, SigmoidCrossEntropyLoss, HingeLoss,
InfogainLoss, MultinomialLogisticLoss and ContrastiveLoss.

Each loss is a pure function (tensors in, a scalar tensor out) that tests call
directly, and a thin layer class that reads the ``LayerParameter``. The values and
gradients are those of BVLC Caffe (final master), including where Caffe's backward
is not the exact derivative of its forward:

- SoftmaxWithLoss clamps the probability at FLT_MIN inside the log, and
  InfogainLoss at 1e-20, but their gradients are the unclamped ``p - onehot``.
- MultinomialLogisticLoss returns ``-1 / max(p, 1e-20)``, not the zero gradient of
  a clamped log.
- ContrastiveLoss (non-legacy) divides by ``distance + 1e-4`` in its gradient.

Those gradients come from :func:`_with_gradient_of`, which pairs an exact forward
value with a surrogate expression whose autograd gradient is Caffe's.

Labels arrive as floating-point tensors and are truncated toward zero, as C++'s
``static_cast<int>`` does. Label bottoms (and InfogainLoss's H bottom) never receive
a gradient.
"""

from __future__ import annotations

import math
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F

from brewnet.blob import shape_string
from brewnet.errors import ModelFileError
from brewnet.layers.base import TRAIN, Layer, Shape, canonical_axis, count, is_meta
from brewnet.layers.registry import register_layer
from brewnet.proto import caffe_pb2

FULL = caffe_pb2.LossParameter.FULL
VALID = caffe_pb2.LossParameter.VALID
BATCH_SIZE = caffe_pb2.LossParameter.BATCH_SIZE
NONE = caffe_pb2.LossParameter.NONE

L1 = caffe_pb2.HingeLossParameter.L1
L2 = caffe_pb2.HingeLossParameter.L2

# Caffe's SoftmaxWithLoss computes log(max(p, FLT_MIN)), FLT_MIN being the smallest
# normal float32 (also in double nets), so one position costs at most 87.3365.
FLT_MIN = 1.17549435082228751e-38
LOG_FLT_MIN = math.log(FLT_MIN)
# kLOG_THRESHOLD of Caffe's loss_layer.hpp, used by InfogainLoss and
# MultinomialLogisticLoss: one position costs at most -ln(1e-20) = 46.0517.
LOG_THRESHOLD = 1e-20

# ContrastiveLoss's backward divides by (distance + this) for dissimilar pairs.
CONTRASTIVE_EPSILON = 1e-4


# ============================================================================== helpers
def _with_gradient_of(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """Return ``value`` exactly, with the autograd gradient of ``surrogate``.

    ``surrogate - surrogate.detach()`` is exactly zero, so the forward number is not
    rounded, and backward uses only ``surrogate``.
    """
    return value.detach() + (surrogate - surrogate.detach())


def integer_labels(labels: torch.Tensor) -> torch.Tensor:
    """Return ``labels`` as int64, truncated toward zero like ``static_cast<int>``."""
    return torch.trunc(labels.detach()).to(torch.long)


def normalization_mode(
    loss_param: caffe_pb2.LossParameter, default: int = VALID
) -> int:
    """Return the normalization mode of ``loss_param``, as SoftmaxWithLoss reads it.

    An explicit ``normalization`` wins. Otherwise the deprecated ``normalize`` flag
    decides (true means VALID, false means BATCH_SIZE, not NONE), and with neither
    field set the result is ``default``.
    """
    if loss_param.HasField("normalization"):
        return loss_param.normalization
    if loss_param.HasField("normalize"):
        return VALID if loss_param.normalize else BATCH_SIZE
    return default


def loss_normalizer(
    mode: int, outer_num: int, inner_num: int, valid_count: torch.Tensor | int | None
) -> torch.Tensor | float:
    """Return the divisor of a summed loss, clamped to at least 1 as Caffe does.

    FULL divides by ``outer_num * inner_num``, VALID by ``valid_count`` (all
    positions when it is None), BATCH_SIZE by ``outer_num`` and NONE by 1. The clamp
    makes a batch whose labels are all ignored cost 0 instead of NaN.
    """
    if mode == FULL:
        return float(max(1, outer_num * inner_num))
    if mode == VALID:
        if valid_count is None:
            return float(max(1, outer_num * inner_num))
        if isinstance(valid_count, torch.Tensor):
            return valid_count.clamp(min=1)
        return float(max(1, valid_count))
    if mode == BATCH_SIZE:
        return float(max(1, outer_num))
    if mode == NONE:
        return 1.0
    raise ValueError(f"unknown loss normalization mode {mode}")


def _valid_mask(labels: torch.Tensor, ignore_label: int | None) -> torch.Tensor | None:
    if ignore_label is None:
        return None
    return labels != int(ignore_label)


# ================================================================================= math
def softmax_with_loss(
    scores: torch.Tensor,
    labels: torch.Tensor,
    axis: int = 1,
    ignore_label: int | None = None,
    normalization: int = VALID,
    with_prob: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return (loss, prob): the normalized sum of ``-log(max(p_label, FLT_MIN))``.

    Args:
        scores: unnormalized scores; ``axis`` (already non-negative) is the class
            axis.
        labels: one class index per position, ``count == outer * inner`` where
            outer and inner are the products of the dimensions before and after
            ``axis``. Every label that is not ``ignore_label`` must lie in
            ``[0, classes)``.
        ignore_label: label whose positions add nothing to the loss or gradient.
        normalization: FULL, VALID, BATCH_SIZE or NONE (see
            :func:`loss_normalizer`).

    Returns:
        The scalar loss, and the softmax of ``scores`` along ``axis`` (None unless
        ``with_prob``). The probabilities are detached because Caffe sends no
        gradient through that top.
    """
    outer = count(scores.shape, 0, axis)
    classes = scores.shape[axis]
    inner = count(scores.shape, axis + 1)
    log_prob = torch.log_softmax(scores.reshape(outer, classes, inner), dim=1)
    label = integer_labels(labels).reshape(outer, 1, inner)
    valid = _valid_mask(label, ignore_label)
    if valid is not None:
        label = torch.where(valid, label, torch.zeros_like(label))
    picked = log_prob.gather(1, label)
    # The clamp changes the value only; the gradient stays p - onehot, as in Caffe.
    picked = _with_gradient_of(picked.clamp(min=LOG_FLT_MIN), picked)
    if valid is not None:
        picked = torch.where(valid, picked, torch.zeros_like(picked))
        valid_count = valid.sum()
    else:
        valid_count = None
    loss = -picked.sum() / loss_normalizer(normalization, outer, inner, valid_count)
    prob = torch.softmax(scores.detach(), dim=axis) if with_prob else None
    return loss, prob


def euclidean_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return ``sum((a - b)^2) / (2 N)`` with N the first dimension of ``a``.

    ``b`` may have another shape of the same count; both inputs get a gradient.
    """
    num = a.shape[0] if a.dim() > 0 else 1
    diff = a - b.reshape(a.shape)
    return (diff * diff).sum() / num / 2


def sigmoid_cross_entropy_loss(
    scores: torch.Tensor,
    targets: torch.Tensor,
    ignore_label: int | None = None,
    normalization: int = BATCH_SIZE,
) -> torch.Tensor:
    """Return the normalized sum of the logistic loss of ``scores`` against targets.

    Each entry costs ``max(x, 0) - x t + log(1 + exp(-|x|))``, whose gradient is
    ``sigmoid(x) - t``. Entries whose target truncates to ``ignore_label`` cost
    nothing. The targets get no gradient. BATCH_SIZE divides by the first dimension
    of ``scores``, FULL by its count.
    """
    outer = scores.shape[0] if scores.dim() > 0 else 1
    inner = scores.numel() // max(outer, 1)
    target = targets.detach().reshape(scores.shape)
    per_entry = F.binary_cross_entropy_with_logits(scores, target, reduction="none")
    valid = _valid_mask(integer_labels(target), ignore_label)
    valid_count = None
    if valid is not None:
        per_entry = torch.where(valid, per_entry, torch.zeros_like(per_entry))
        valid_count = valid.sum()
    return per_entry.sum() / loss_normalizer(normalization, outer, inner, valid_count)


def hinge_loss(
    scores: torch.Tensor, labels: torch.Tensor, norm: int = L1
) -> torch.Tensor:
    """Return the one-versus-all hinge loss, summed over classes and divided by N.

    Each class of each sample costs ``max(0, 1 + s x)`` with ``s = -1`` for the true
    class and ``+1`` for the others; L2 squares that margin (no factor 1/2). The
    scores are flattened to (N, classes).
    """
    num = scores.shape[0]
    flat = scores.reshape(num, -1)
    label = integer_labels(labels).reshape(num, 1)
    sign = torch.ones_like(flat).scatter(1, label, -1.0)
    # relu has a zero gradient at a zero margin, as Caffe's sign(0) = 0.
    margin = F.relu(1 + sign * flat)
    if norm == L1:
        return margin.sum() / num
    if norm == L2:
        return (margin * margin).sum() / num
    raise ValueError(f"unknown hinge loss norm {norm}; use L1 or L2")


def infogain_loss(
    scores: torch.Tensor,
    labels: torch.Tensor,
    infogain: torch.Tensor,
    axis: int = 1,
    ignore_label: int | None = None,
    normalization: int = VALID,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (loss, prob): ``-sum_l H[label, l] log(max(p_l, 1e-20))``, normalized.

    ``p`` is the softmax of ``scores`` along ``axis`` (non-negative), and
    ``infogain`` is the matrix H, of count ``classes ** 2``, that gets no gradient.
    The gradient is Caffe's ``p * sum_l H[label, l] - H[label, :]``, which ignores
    the clamp. Labels, ``ignore_label`` and ``normalization`` work as in
    :func:`softmax_with_loss`; the returned probabilities are detached.
    """
    outer = count(scores.shape, 0, axis)
    classes = scores.shape[axis]
    inner = count(scores.shape, axis + 1)
    log_prob = torch.log_softmax(scores.reshape(outer, classes, inner), dim=1)
    log_prob = _with_gradient_of(log_prob.clamp(min=math.log(LOG_THRESHOLD)), log_prob)
    label = integer_labels(labels).reshape(outer * inner)
    valid = _valid_mask(label, ignore_label)
    if valid is not None:
        label = torch.where(valid, label, torch.zeros_like(label))
    matrix = infogain.detach().to(scores.dtype).reshape(classes, classes)
    # rows[i, l, j] = H[label of position (i, j), l]
    rows = matrix.index_select(0, label).reshape(outer, inner, classes).transpose(1, 2)
    per_position = -(rows * log_prob).sum(dim=1)
    valid_count = None
    if valid is not None:
        valid = valid.reshape(outer, inner)
        per_position = torch.where(valid, per_position, torch.zeros_like(per_position))
        valid_count = valid.sum()
    loss = per_position.sum() / loss_normalizer(
        normalization, outer, inner, valid_count
    )
    prob = torch.softmax(scores.detach(), dim=axis)
    return loss, prob


def multinomial_logistic_loss(
    probs: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Return ``-sum log(max(p[label], 1e-20)) / N`` for probabilities ``probs``.

    The gradient at the label entry is ``-1 / (N max(p, 1e-20))``, as Caffe's, even
    where the clamp is active; the other entries get zero.
    """
    num = probs.shape[0]
    flat = probs.reshape(num, -1)
    label = integer_labels(labels).reshape(num, 1)
    picked = flat.gather(1, label)
    clamped = picked.clamp(min=LOG_THRESHOLD)
    # d/dp of p / c is 1 / c, which is Caffe's gradient of log(max(p, 1e-20)).
    log_picked = _with_gradient_of(torch.log(clamped), picked / clamped.detach())
    return -log_picked.sum() / num


def contrastive_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    similar: torch.Tensor,
    margin: float = 1.0,
    legacy_version: bool = False,
) -> torch.Tensor:
    """Return the contrastive loss of the pairs (a[i], b[i]), divided by 2 N.

    A pair whose ``similar`` label truncates to a nonzero integer costs ``d^2``
    (``d`` the Euclidean distance); another pair costs ``max(margin - d, 0)^2``, or
    ``max(margin - d^2, 0)`` with ``legacy_version``. The gradient for a non-legacy
    dissimilar pair divides by ``d + 1e-4`` instead of ``d``, as Caffe's does, so it
    stays finite at ``d = 0``. ``similar`` gets no gradient.
    """
    num = a.shape[0]
    diff = a.reshape(num, -1) - b.reshape(num, -1)
    dist_sq = (diff * diff).sum(dim=1)
    is_similar = integer_labels(similar).reshape(num) != 0
    if legacy_version:
        gap = margin - dist_sq.detach()
        dissimilar_cost = F.relu(margin - dist_sq)
        dissimilar_coef = -(gap > 0).to(dist_sq.dtype)
    else:
        dist = torch.sqrt(dist_sq.detach())
        gap = margin - dist
        dissimilar_cost = F.relu(gap) ** 2
        dissimilar_coef = (
            -(gap > 0).to(dist_sq.dtype) * gap / (dist + CONTRASTIVE_EPSILON)
        )
    value = torch.where(is_similar, dist_sq.detach(), dissimilar_cost.detach())
    # d(coef * |diff|^2 / 2)/d(a) = coef * diff, which is Caffe's per-pair gradient.
    coef = torch.where(is_similar, torch.ones_like(dist_sq), dissimilar_coef).detach()
    surrogate = coef * dist_sq / 2
    return _with_gradient_of(value.sum() / num / 2, surrogate.sum() / num)


# =============================================================================== layers
def _legacy_dims(shape: Shape) -> tuple[int, int, int, int] | None:
    """Return Caffe's (num, channels, height, width) of a blob with at most 4 axes."""
    if len(shape) > 4:
        return None
    padded = tuple(shape) + (1,) * (4 - len(shape))
    return padded[0], padded[1], padded[2], padded[3]


class LossLayer(Layer):
    """Common checks of Caffe's loss layers.

    The first top is the scalar loss and weighs 1 unless the prototxt sets
    ``loss_weight``. ``label_bottoms`` lists the bottoms that get no gradient, not
    even under ``force_backward``.
    """

    is_loss = True
    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1
    label_bottoms: ClassVar[tuple[int, ...]] = (1,)
    # Caffe's LossLayer::AutoTopBlobs: a loss layer listed without a top gets an
    # anonymous one (named "(automatic)"), which carries the loss weight.
    # NOTE: brewnet's Net does not read this flag yet, so such a layer fails the
    # top count check.
    auto_top_blobs: ClassVar[bool] = True

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index not in self.label_bottoms

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        self._check_propagate_down()
        self.read_params(bottom_shapes)
        self.check_shapes(bottom_shapes)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        self.check_shapes(bottom_shapes)
        return super().reshape(bottom_shapes)

    # Subclasses override these two.
    def read_params(self, bottom_shapes: Sequence[Shape]) -> None:
        """Read the layer's prototxt fields into attributes."""

    def check_shapes(self, bottom_shapes: Sequence[Shape]) -> None:
        """Raise when the bottom shapes are not what Caffe accepts."""
        self.check_first_dims(bottom_shapes)

    # ------------------------------------------------------------------ checks
    def bottom_name(self, index: int) -> str:
        bottoms = list(self.param.bottom)
        return bottoms[index] if index < len(bottoms) else f"#{index}"

    def describe_bottom(self, index: int, shape: Shape) -> str:
        name = self.bottom_name(index)
        return f"bottom {index} ('{name}') of shape {shape_string(shape)}"

    def check_first_dims(self, bottom_shapes: Sequence[Shape], second: int = 1) -> None:
        """Raise unless bottoms 0 and ``second`` share the first dimension."""
        first, other = bottom_shapes[0], bottom_shapes[second]
        for index, shape in ((0, first), (second, other)):
            if len(shape) == 0:
                raise self.error(
                    f"{self.describe_bottom(index, shape)} has no axes; a loss needs a "
                    f"first (batch) dimension"
                )
        if first[0] != other[0]:
            raise self.error(
                f"{self.describe_bottom(0, first)} and "
                f"{self.describe_bottom(second, other)} differ in the first "
                f"dimension; Caffe needs the same number of samples in both"
            )

    def _check_propagate_down(self) -> None:
        flags = list(self.param.propagate_down)
        weights = list(self.param.loss_weight)
        if self.phase != TRAIN or (weights and not any(weights)):
            return
        for index in self.label_bottoms:
            if index < len(flags) and flags[index]:
                # Caffe aborts in the first backward pass of such a net.
                raise self.error(
                    f"cannot backpropagate to bottom {index} "
                    f"('{self.bottom_name(index)}'), which contains labels; set its "
                    f"propagate_down to false"
                )

    def check_labels(
        self,
        labels: torch.Tensor,
        num_classes: int,
        ignore_label: int | None = None,
        index: int = 1,
    ) -> None:
        """Raise unless every label is in ``[0, num_classes)`` or ``ignore_label``."""
        if is_meta(labels):
            return
        # On the float labels: truncation toward zero maps (-1, num_classes) into
        # [0, num_classes), so this equals the check on the integer labels.
        values = labels.detach().reshape(-1)
        bad = (values <= -1) | (values >= num_classes)
        if ignore_label is not None:
            bad &= torch.trunc(values) != int(ignore_label)
        if not bool(bad.any()):
            return
        position = int(bad.nonzero()[0, 0])
        value = float(labels.detach().reshape(-1)[position])
        allowed = f"an integer in [0, {num_classes - 1}]"
        if ignore_label is not None:
            allowed += f" or the ignore_label {ignore_label}"
        raise self.error(
            f"label {value:g} at index {position} of bottom {index} "
            f"('{self.bottom_name(index)}') is out of range; each label must be "
            f"{allowed}. Fix the label data, or set loss_param.ignore_label for "
            f"positions to skip"
        )

    def ignore_label(self) -> int | None:
        loss_param = self.param.loss_param
        return loss_param.ignore_label if loss_param.HasField("ignore_label") else None


@register_layer
class SoftmaxWithLossLayer(LossLayer):
    """Softmax over the class axis followed by the multinomial logistic loss.

    Args:
        softmax_param.axis: class axis of bottom 0 (default 1; negative counts from
            the end).
        loss_param.ignore_label: label whose positions are skipped.
        loss_param.normalization: FULL, VALID (default), BATCH_SIZE or NONE.
        loss_param.normalize: deprecated, read only without ``normalization``:
            true means VALID, false means BATCH_SIZE.

    Bottom:
        scores (..., C, ...) with C on the axis; labels with one entry per position
        (count = product of the other dimensions, e.g. N x H x W for N x C x H x W),
        integer values in [0, C) or ignore_label. The labels get no gradient.
    Top:
        loss (scalar, loss weight 1 by default); optional prob, the softmax of the
        scores (loss weight 0 by default; no gradient flows back through it).
    """

    type = "SoftmaxWithLoss"
    exact_num_top_blobs = -1
    min_top_blobs = 1
    max_top_blobs = 2

    def read_params(self, bottom_shapes: Sequence[Shape]) -> None:
        self.axis_param = self.param.softmax_param.axis
        self.ignore = self.ignore_label()
        self.normalization = normalization_mode(self.param.loss_param, VALID)

    def check_shapes(self, bottom_shapes: Sequence[Shape]) -> None:
        self.check_first_dims(bottom_shapes)
        scores, labels = bottom_shapes[0], bottom_shapes[1]
        axis = canonical_axis(self, self.axis_param, len(scores), "softmax_param.axis")
        positions = count(scores, 0, axis) * count(scores, axis + 1)
        if count(labels) != positions:
            example = tuple(d for i, d in enumerate(scores) if i != axis)
            raise self.error(
                f"{self.describe_bottom(0, scores)} and "
                f"{self.describe_bottom(1, labels)} do not match; with softmax axis "
                f"{axis} Caffe needs one label per position, {positions} labels "
                f"(e.g. shape {shape_string(example)}), each an integer in "
                f"[0, {scores[axis] - 1}]"
            )
        self.axis = axis

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        scores, labels = bottom
        self.check_labels(labels, scores.shape[self.axis], self.ignore)
        # A SoftmaxWithLoss without tops still has Caffe's automatic loss top.
        with_prob = len(self.param.top) > 1
        loss, prob = softmax_with_loss(
            scores, labels, self.axis, self.ignore, self.normalization, with_prob
        )
        return [loss, prob] if with_prob else [loss]


@register_layer
class EuclideanLossLayer(LossLayer):
    """Half the mean over samples of the squared distance: sum((a - b)^2) / (2 N).

    Bottom:
        a (N, ...) and b (N, ...) with the same count per sample (shapes may
        differ). Both get a gradient.
    Top:
        loss (scalar).
    """

    type = "EuclideanLoss"
    label_bottoms = ()

    def check_shapes(self, bottom_shapes: Sequence[Shape]) -> None:
        self.check_first_dims(bottom_shapes)
        a, b = bottom_shapes[0], bottom_shapes[1]
        if count(a, 1) != count(b, 1):
            raise self.error(
                f"{self.describe_bottom(0, a)} and {self.describe_bottom(1, b)} have "
                f"{count(a, 1)} and {count(b, 1)} values per sample; Caffe needs the "
                f"same count per sample in both"
            )

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [euclidean_loss(bottom[0], bottom[1])]


@register_layer
class SigmoidCrossEntropyLossLayer(LossLayer):
    """Sigmoid of the scores followed by the cross-entropy against targets.

    Args:
        loss_param.ignore_label: target value (after truncation) that is skipped.
        loss_param.normalization: FULL, VALID, BATCH_SIZE or NONE; unset means
            BATCH_SIZE (divide by N), even with ignore_label.
        loss_param.normalize: deprecated, read only without ``normalization``:
            true means VALID, false means BATCH_SIZE.

    Bottom:
        scores (N, ...); targets of the same count, usually in [0, 1]. The targets
        get no gradient.
    Top:
        loss (scalar).
    """

    type = "SigmoidCrossEntropyLoss"

    def read_params(self, bottom_shapes: Sequence[Shape]) -> None:
        self.ignore = self.ignore_label()
        self.normalization = normalization_mode(self.param.loss_param, BATCH_SIZE)

    def check_shapes(self, bottom_shapes: Sequence[Shape]) -> None:
        self.check_first_dims(bottom_shapes)
        scores, targets = bottom_shapes[0], bottom_shapes[1]
        if count(scores) != count(targets):
            raise self.error(
                f"{self.describe_bottom(0, scores)} and "
                f"{self.describe_bottom(1, targets)} differ in count; Caffe needs one "
                f"target per score"
            )

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        return [
            sigmoid_cross_entropy_loss(
                bottom[0], bottom[1], self.ignore, self.normalization
            )
        ]


@register_layer
class HingeLossLayer(LossLayer):
    """One-versus-all hinge loss, as for a linear SVM on the scores.

    Args:
        hinge_loss_param.norm: L1 (default) sums the margins, L2 sums their squares.

    Bottom:
        scores (N, ...), flattened to (N, K); labels, one per sample (count N),
        integers in [0, K). The labels get no gradient.
    Top:
        loss (scalar).
    """

    type = "HingeLoss"

    def read_params(self, bottom_shapes: Sequence[Shape]) -> None:
        self.norm = self.param.hinge_loss_param.norm

    def check_shapes(self, bottom_shapes: Sequence[Shape]) -> None:
        self.check_first_dims(bottom_shapes)
        scores, labels = bottom_shapes[0], bottom_shapes[1]
        # NOTE: Caffe reads the first N labels whatever the label count; brewnet
        # rejects a label blob with more than one label per sample.
        if count(labels) != scores[0]:
            raise self.error(
                f"{self.describe_bottom(0, scores)} and "
                f"{self.describe_bottom(1, labels)} do not match; Caffe needs one "
                f"label per sample, {scores[0]} labels"
            )

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        scores, labels = bottom
        self.check_labels(labels, scores.numel() // max(scores.shape[0], 1))
        return [hinge_loss(scores, labels, self.norm)]


@register_layer
class InfogainLossLayer(LossLayer):
    """Softmax followed by a loss that weighs every log-probability by a matrix H.

    With H the identity this is SoftmaxWithLoss, except that the log clamp is 1e-20.

    Args:
        infogain_loss_param.source: binary BlobProto file with H (C x C values),
            read when there is no third bottom.
        infogain_loss_param.axis: class axis of bottom 0 (default 1).
        loss_param.ignore_label: label whose positions are skipped.
        loss_param.normalization: FULL, VALID (default), BATCH_SIZE or NONE.
        loss_param.normalize: rejected, as Caffe rejects it for this layer.

    Bottom:
        scores (..., C, ...); labels, one per position, integers in [0, C) or
        ignore_label; optional H with C * C values. Labels and H get no gradient.
    Top:
        loss (scalar); optional prob, the softmax of the scores (no gradient flows
        back through it).
    """

    type = "InfogainLoss"
    exact_num_bottom_blobs = -1
    min_bottom_blobs = 2
    max_bottom_blobs = 3
    exact_num_top_blobs = -1
    min_top_blobs = 1
    max_top_blobs = 2
    label_bottoms = (1, 2)

    def read_params(self, bottom_shapes: Sequence[Shape]) -> None:
        loss_param = self.param.loss_param
        if loss_param.HasField("normalize"):
            raise self.error(
                "loss_param.normalize is deprecated and InfogainLoss rejects it, as "
                "Caffe does; use loss_param.normalization (FULL, VALID, BATCH_SIZE "
                "or NONE) instead"
            )
        self.normalization = loss_param.normalization
        self.ignore = self.ignore_label()
        self.axis_param = self.param.infogain_loss_param.axis
        self.infogain = None
        if len(bottom_shapes) < 3:
            self.infogain = self._read_infogain_file()

    def _read_infogain_file(self) -> torch.Tensor:
        from brewnet.io.model import blob_proto_to_array
        from brewnet.io.prototxt import read_binary

        source = self.param.infogain_loss_param.source
        if not self.param.infogain_loss_param.HasField("source"):
            raise self.error(
                "the infogain matrix H is missing; set infogain_loss_param.source to "
                "a binaryproto file, or give H as a third bottom"
            )
        try:
            array = blob_proto_to_array(read_binary(source, caffe_pb2.BlobProto()))
        except (FileNotFoundError, ModelFileError) as error:
            raise self.error(
                f"cannot read the infogain matrix from infogain_loss_param.source "
                f"'{source}': {error}"
            ) from None
        return torch.as_tensor(array, dtype=self.dtype, device=self.device)

    def check_shapes(self, bottom_shapes: Sequence[Shape]) -> None:
        scores, labels = bottom_shapes[0], bottom_shapes[1]
        self.check_first_dims(bottom_shapes)
        axis = canonical_axis(
            self, self.axis_param, len(scores), "infogain_loss_param.axis"
        )
        positions = count(scores, 0, axis) * count(scores, axis + 1)
        if count(labels) != positions:
            raise self.error(
                f"{self.describe_bottom(0, scores)} and "
                f"{self.describe_bottom(1, labels)} do not match; with infogain axis "
                f"{axis} Caffe needs one label per position, {positions} labels"
            )
        classes = scores[axis]
        if len(bottom_shapes) > 2:
            h_shape, where = bottom_shapes[2], self.describe_bottom(2, bottom_shapes[2])
        else:
            h_shape = tuple(self.infogain.shape)
            where = f"the matrix in '{self.param.infogain_loss_param.source}' of shape "
            where += shape_string(h_shape)
        if count(h_shape) != classes * classes:
            raise self.error(
                f"{where} does not fit {self.describe_bottom(0, scores)}; H needs "
                f"{classes} x {classes} = {classes * classes} values for {classes} "
                f"classes"
            )
        self.axis = axis

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        scores, labels = bottom[0], bottom[1]
        matrix = bottom[2] if len(bottom) > 2 else self.infogain
        if is_meta(scores):
            matrix = matrix.to("meta")
        self.check_labels(labels, scores.shape[self.axis], self.ignore)
        loss, prob = infogain_loss(
            scores, labels, matrix, self.axis, self.ignore, self.normalization
        )
        return [loss, prob][: len(self.param.top)]


@register_layer
class MultinomialLogisticLossLayer(LossLayer):
    """Negative log-likelihood of the label under given probabilities.

    Bottom:
        probabilities (N, ...), flattened to (N, K), usually a Softmax output;
        labels (N) or (N, 1, 1, 1), integers in [0, K). The labels get no gradient.
    Top:
        loss (scalar): ``-sum log(max(p[label], 1e-20)) / N``.
    """

    type = "MultinomialLogisticLoss"

    def check_shapes(self, bottom_shapes: Sequence[Shape]) -> None:
        self.check_first_dims(bottom_shapes)
        labels = bottom_shapes[1]
        dims = _legacy_dims(labels)
        if dims is None or dims[1:] != (1, 1, 1):
            raise self.error(
                f"{self.describe_bottom(1, labels)} is not one label per sample; "
                f"Caffe needs labels of shape (N) or (N, 1, 1, 1)"
            )

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        probs, labels = bottom
        self.check_labels(labels, probs.numel() // max(probs.shape[0], 1))
        return [multinomial_logistic_loss(probs, labels)]


@register_layer
class ContrastiveLossLayer(LossLayer):
    """Contrastive loss of feature pairs, for siamese nets.

    Args:
        contrastive_loss_param.margin: distance beyond which dissimilar pairs cost
            nothing (default 1).
        contrastive_loss_param.legacy_version: use ``max(margin - d^2, 0)`` for
            dissimilar pairs instead of ``max(margin - d, 0)^2`` (default false).

    Bottom:
        a (N, C) or (N, C, 1, 1); b of the same shape; similarity labels (N), where
        a value that truncates to a nonzero integer marks a similar pair. a and b
        get a gradient, the labels do not.
    Top:
        loss (scalar): the sum of the pair costs divided by 2 N.
    """

    type = "ContrastiveLoss"
    exact_num_bottom_blobs = 3
    label_bottoms = (2,)

    def read_params(self, bottom_shapes: Sequence[Shape]) -> None:
        param = self.param.contrastive_loss_param
        self.margin = float(param.margin)
        self.legacy_version = bool(param.legacy_version)

    def check_shapes(self, bottom_shapes: Sequence[Shape]) -> None:
        self.check_first_dims(bottom_shapes)
        a, b, similar = bottom_shapes
        dims_a, dims_b, dims_s = (_legacy_dims(s) for s in bottom_shapes)
        expected = (
            "; Caffe needs a and b of shape (N, C) or (N, C, 1, 1) and labels (N)"
        )
        for index, dims in ((0, dims_a), (1, dims_b)):
            if dims is None or dims[2:] != (1, 1):
                shape = bottom_shapes[index]
                raise self.error(
                    f"{self.describe_bottom(index, shape)} is not (N, C){expected}"
                )
        if dims_a[1] != dims_b[1]:
            raise self.error(
                f"{self.describe_bottom(0, a)} and {self.describe_bottom(1, b)} differ "
                f"in channels{expected}"
            )
        if (
            not similar
            or dims_s is None
            or dims_s[1:] != (1, 1, 1)
            or similar[0] != a[0]
        ):
            raise self.error(
                f"{self.describe_bottom(2, similar)} is not one label per pair of "
                f"{self.describe_bottom(0, a)}{expected}"
            )

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        a, b, similar = bottom
        return [contrastive_loss(a, b, similar, self.margin, self.legacy_version)]
