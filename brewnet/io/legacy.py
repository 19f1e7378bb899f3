"""Upgrades of legacy Caffe definitions, as Caffe's ``upgrade_proto.cpp`` does them.

Nets written for older Caffe versions are rewritten in memory when read:

- V0 nets (``layers { layer { type: "conv" ... } }``) become V1 nets; a ``padding``
  layer disappears and its ``pad`` moves into the convolution or pooling layer that
  reads its output.
- Data transformation settings (``scale``, ``mean_file``, ``crop_size``,
  ``mirror``) move from ``data_param``, ``image_data_param`` and
  ``window_data_param`` into ``transform_param``.
- V1 nets (``layers { type: CONVOLUTION ... }``) become current nets: enum types
  become type names, ``blobs_lr`` and ``weight_decay`` become ``param { lr_mult
  decay_mult }``, ``param`` names and ``blob_share_mode`` move into the same
  ParamSpecs, and stored ``blobs`` are kept.
- BatchNorm layers that declare three ParamSpecs with nonzero learning rates get
  ``lr_mult: 0`` and ``decay_mult: 0``, because their blobs are statistics.

Net-level ``input`` fields are handled by :mod:`brewnet.io.upgrade`. Each upgrade
emits a DeprecationWarning; ``brewnet upgrade IN OUT`` (:func:`upgrade_file`)
writes the upgraded file.
"""

from __future__ import annotations

import logging
import os
import warnings

from brewnet.errors import (
    ModelFileError,
    NetDefinitionError,
    PrototxtError,
    SolverError,
)
from brewnet.proto import caffe_pb2

logger = logging.getLogger(__name__)

V1 = caffe_pb2.V1LayerParameter
V0 = caffe_pb2.V0LayerParameter

# V1 enum value -> current type name.
V1_LAYER_TYPES: dict[int, str] = {
    V1.NONE: "",
    V1.ABSVAL: "AbsVal",
    V1.ACCURACY: "Accuracy",
    V1.ARGMAX: "ArgMax",
    V1.BNLL: "BNLL",
    V1.CONCAT: "Concat",
    V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    V1.CONVOLUTION: "Convolution",
    V1.DECONVOLUTION: "Deconvolution",
    V1.DATA: "Data",
    V1.DROPOUT: "Dropout",
    V1.DUMMY_DATA: "DummyData",
    V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    V1.ELTWISE: "Eltwise",
    V1.EXP: "Exp",
    V1.FLATTEN: "Flatten",
    V1.HDF5_DATA: "HDF5Data",
    V1.HDF5_OUTPUT: "HDF5Output",
    V1.HINGE_LOSS: "HingeLoss",
    V1.IM2COL: "Im2col",
    V1.IMAGE_DATA: "ImageData",
    V1.INFOGAIN_LOSS: "InfogainLoss",
    V1.INNER_PRODUCT: "InnerProduct",
    V1.LRN: "LRN",
    V1.MEMORY_DATA: "MemoryData",
    V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss",
    V1.MVN: "MVN",
    V1.POOLING: "Pooling",
    V1.POWER: "Power",
    V1.RELU: "ReLU",
    V1.SIGMOID: "Sigmoid",
    V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss",
    V1.SILENCE: "Silence",
    V1.SOFTMAX: "Softmax",
    V1.SOFTMAX_LOSS: "SoftmaxWithLoss",
    V1.SPLIT: "Split",
    V1.SLICE: "Slice",
    V1.TANH: "TanH",
    V1.WINDOW_DATA: "WindowData",
    V1.THRESHOLD: "Threshold",
}

# V0 type string -> V1 enum value.
V0_LAYER_TYPES: dict[str, int] = {
    "accuracy": V1.ACCURACY,
    "bnll": V1.BNLL,
    "concat": V1.CONCAT,
    "conv": V1.CONVOLUTION,
    "data": V1.DATA,
    "dropout": V1.DROPOUT,
    "euclidean_loss": V1.EUCLIDEAN_LOSS,
    "flatten": V1.FLATTEN,
    "hdf5_data": V1.HDF5_DATA,
    "hdf5_output": V1.HDF5_OUTPUT,
    "im2col": V1.IM2COL,
    "images": V1.IMAGE_DATA,
    "infogain_loss": V1.INFOGAIN_LOSS,
    "innerproduct": V1.INNER_PRODUCT,
    "lrn": V1.LRN,
    "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS,
    "pool": V1.POOLING,
    "relu": V1.RELU,
    "sigmoid": V1.SIGMOID,
    "softmax": V1.SOFTMAX,
    "softmax_loss": V1.SOFTMAX_LOSS,
    "split": V1.SPLIT,
    "tanh": V1.TANH,
    "window_data": V1.WINDOW_DATA,
}

SOLVER_TYPES: dict[int, str] = {
    caffe_pb2.SolverParameter.SGD: "SGD",
    caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad",
    caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta",
    caffe_pb2.SolverParameter.ADAM: "Adam",
}

# The V1 fields copied unchanged into the current LayerParameter.
_V1_COPIED_PARAMS = (
    "accuracy_param", "argmax_param", "concat_param", "contrastive_loss_param",
    "convolution_param", "data_param", "dropout_param", "dummy_data_param",
    "eltwise_param", "exp_param", "hdf5_data_param", "hdf5_output_param",
    "hinge_loss_param", "image_data_param", "infogain_loss_param",
    "inner_product_param", "lrn_param", "memory_data_param", "mvn_param",
    "pooling_param", "power_param", "relu_param", "sigmoid_param", "softmax_param",
    "slice_param", "tanh_param", "threshold_param", "window_data_param",
    "transform_param", "loss_param",
)  # fmt: skip

# Layers whose own parameter message once held the transformation fields.
_DATA_LAYERS = {
    "Data": "data_param",
    "ImageData": "image_data_param",
    "WindowData": "window_data_param",
}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def _warn(source: str, what: str) -> None:
    warnings.warn(
        f"{source}: {what}. The net was upgraded in memory; run 'brewnet upgrade "
        f"{source} NEW_FILE' to save it in the current format",
        DeprecationWarning,
        stacklevel=4,
    )


# ============================================================================ net
def net_needs_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """Return whether :func:`upgrade_legacy_layers` would change ``net``."""
    return (
        needs_v0_upgrade(net)
        or needs_data_upgrade(net)
        or len(net.layers) > 0
        or needs_batch_norm_upgrade(net)
    )


def upgrade_legacy_layers(net: caffe_pb2.NetParameter, source: str = "<net>") -> None:
    """Upgrade the V0, V1, data-transformation and BatchNorm legacy forms in place.

    A net already in the current format is left unchanged.

    Raises:
        NetDefinitionError: the legacy net cannot be upgraded (an unknown V0 type,
            a padding layer that feeds neither convolution nor pooling, a net
            mixing ``layer`` and ``layers``).
    """
    was_v0 = needs_v0_upgrade(net)
    if was_v0:
        logger.info("Upgrading V0 layer definitions of %s", source)
        _warn(source, "the net uses the V0 layer format ('layers { layer { ... } }')")
        upgrade_v0_net(net, source)
    if needs_data_upgrade(net):
        logger.info(
            "Moving data transformation fields of %s into transform_param", source
        )
        _warn(
            source,
            "scale, mean_file, crop_size and mirror belong in transform_param, not in "
            "the data layer's own parameters",
        )
        upgrade_data_transformation(net)
    if net.layers:
        logger.info("Upgrading V1 layer definitions of %s", source)
        if not was_v0:  # A V0 net passes through V1; one warning is enough.
            _warn(source, "the net uses the V1 layer format ('layers' with enum types)")
        upgrade_v1_net(net, source)
    if needs_batch_norm_upgrade(net):
        logger.info("Freezing the statistics of BatchNorm layers in %s", source)
        _warn(
            source,
            "BatchNorm layers declare three learnable params; their blobs are "
            "statistics, so lr_mult and decay_mult were set to 0",
        )
        upgrade_batch_norm(net)


# ---------------------------------------------------------------------------- V0
def needs_v0_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """Return whether some ``layers`` entry nests a V0 ``layer`` message."""
    return any(entry.HasField("layer") for entry in net.layers)


def upgrade_v0_net(net: caffe_pb2.NetParameter, source: str = "<net>") -> None:
    """Turn a V0 net into a V1 net in place.

    As in Caffe, only the name, the layers, ``input``, ``input_dim`` and
    ``force_backward`` are kept.
    """
    folded = fold_padding_layers(net, source)
    upgraded = caffe_pb2.NetParameter()
    if net.HasField("name"):
        upgraded.name = net.name
    for entry in folded:
        upgraded.layers.append(upgrade_v0_layer(entry, source))
    upgraded.input.extend(net.input)
    upgraded.input_dim.extend(net.input_dim)
    if net.HasField("force_backward"):
        upgraded.force_backward = net.force_backward
    net.CopyFrom(upgraded)


def fold_padding_layers(
    net: caffe_pb2.NetParameter, source: str = "<net>"
) -> list[caffe_pb2.V1LayerParameter]:
    """Return the V0 layers without ``padding`` layers, their pad moved downstream.

    A layer that reads a padding layer's output must be a convolution or pooling
    layer with one bottom; it takes the padding layer's ``pad`` and bottom.

    Raises:
        NetDefinitionError: a bottom names no earlier top or net input, or a padding
            layer feeds another kind of layer or has other than one bottom and top.
    """
    last_writer: dict[str, int] = {name: -1 for name in net.input}
    kept: list[caffe_pb2.V1LayerParameter] = []
    for index, entry in enumerate(net.layers):
        v0 = entry.layer
        if v0.type != "padding":
            copy = caffe_pb2.V1LayerParameter()
            copy.CopyFrom(entry)
            kept.append(copy)
        for bottom_index, bottom in enumerate(entry.bottom):
            if bottom not in last_writer:
                raise NetDefinitionError(
                    f"{source}: V0 layer '{v0.name}' reads unknown blob '{bottom}'; no "
                    f"earlier layer or net input produces it"
                )
            writer = last_writer[bottom]
            if writer < 0 or net.layers[writer].layer.type != "padding":
                continue
            _fold_one(net.layers[writer], entry, kept[-1], bottom_index, source)
        for top in entry.top:
            last_writer[top] = index
    return kept


def _fold_one(padding, entry, target, bottom_index: int, source: str) -> None:
    v0 = entry.layer
    name = padding.layer.name
    if v0.type not in ("conv", "pool"):
        raise NetDefinitionError(
            f"{source}: padding layer '{name}' feeds layer '{v0.name}' of type "
            f"'{v0.type}'; a V0 padding layer may only feed a conv or pool layer"
        )
    if len(entry.bottom) != 1:
        raise NetDefinitionError(
            f"{source}: layer '{v0.name}' reads padding layer '{name}' but has "
            f"{len(entry.bottom)} bottoms; it must have exactly one"
        )
    if len(padding.bottom) != 1 or len(padding.top) != 1:
        raise NetDefinitionError(
            f"{source}: padding layer '{name}' has {len(padding.bottom)} bottoms and "
            f"{len(padding.top)} tops; it must have exactly one of each"
        )
    target.layer.pad = padding.layer.pad
    target.bottom[bottom_index] = padding.bottom[0]


# V0 field -> {V0 type: (parameter message, field, how)}; "set" assigns, "add"
# appends to a repeated field, "copy" copies a message.
_V0_FIELD_MAP: dict[str, dict[str, tuple[str, str, str]]] = {
    "num_output": {
        "conv": ("convolution_param", "num_output", "set"),
        "innerproduct": ("inner_product_param", "num_output", "set"),
    },
    "biasterm": {
        "conv": ("convolution_param", "bias_term", "set"),
        "innerproduct": ("inner_product_param", "bias_term", "set"),
    },
    "weight_filler": {
        "conv": ("convolution_param", "weight_filler", "copy"),
        "innerproduct": ("inner_product_param", "weight_filler", "copy"),
    },
    "bias_filler": {
        "conv": ("convolution_param", "bias_filler", "copy"),
        "innerproduct": ("inner_product_param", "bias_filler", "copy"),
    },
    "pad": {
        "conv": ("convolution_param", "pad", "add"),
        "pool": ("pooling_param", "pad", "set"),
    },
    "kernelsize": {
        "conv": ("convolution_param", "kernel_size", "add"),
        "pool": ("pooling_param", "kernel_size", "set"),
    },
    "group": {"conv": ("convolution_param", "group", "set")},
    "stride": {
        "conv": ("convolution_param", "stride", "add"),
        "pool": ("pooling_param", "stride", "set"),
    },
    "pool": {"pool": ("pooling_param", "pool", "set")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio", "set")},
    "local_size": {"lrn": ("lrn_param", "local_size", "set")},
    "alpha": {"lrn": ("lrn_param", "alpha", "set")},
    "beta": {"lrn": ("lrn_param", "beta", "set")},
    "k": {"lrn": ("lrn_param", "k", "set")},
    "source": {
        "data": ("data_param", "source", "set"),
        "hdf5_data": ("hdf5_data_param", "source", "set"),
        "images": ("image_data_param", "source", "set"),
        "window_data": ("window_data_param", "source", "set"),
        "infogain_loss": ("infogain_loss_param", "source", "set"),
    },
    "batchsize": {
        "data": ("data_param", "batch_size", "set"),
        "hdf5_data": ("hdf5_data_param", "batch_size", "set"),
        "images": ("image_data_param", "batch_size", "set"),
        "window_data": ("window_data_param", "batch_size", "set"),
    },
    "rand_skip": {
        "data": ("data_param", "rand_skip", "set"),
        "images": ("image_data_param", "rand_skip", "set"),
    },
    "shuffle_images": {"images": ("image_data_param", "shuffle", "set")},
    "new_height": {"images": ("image_data_param", "new_height", "set")},
    "new_width": {"images": ("image_data_param", "new_width", "set")},
    "concat_dim": {"concat": ("concat_param", "concat_dim", "set")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold", "set")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold", "set")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction", "set")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad", "set")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode", "set")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", "", "copy")},
}

# V0 fields that move into transform_param whatever the layer type.
_V0_TRANSFORM_MAP = {
    "scale": "scale",
    "meanfile": "mean_file",
    "cropsize": "crop_size",
    "mirror": "mirror",
}


def upgrade_v0_layer(
    entry: caffe_pb2.V1LayerParameter, source: str = "<net>"
) -> caffe_pb2.V1LayerParameter:
    """Return the V1 layer for a V0 layer (a ``layers`` entry with a nested ``layer``).

    A V0 field that does not apply to the layer's type is dropped with a warning,
    as Caffe drops it with an error line and continues.

    Raises:
        NetDefinitionError: the V0 type is unknown.
    """
    upgraded = caffe_pb2.V1LayerParameter()
    upgraded.bottom.extend(entry.bottom)
    upgraded.top.extend(entry.top)
    if not entry.HasField("layer"):
        return upgraded
    v0 = entry.layer
    if v0.HasField("name"):
        upgraded.name = v0.name
    if v0.HasField("type"):
        if v0.type not in V0_LAYER_TYPES:
            raise NetDefinitionError(
                f"{source}: V0 layer '{v0.name}' has unknown type '{v0.type}'; known V0 "
                f"types: {', '.join(sorted(V0_LAYER_TYPES))}"
            )
        upgraded.type = V0_LAYER_TYPES[v0.type]
    upgraded.blobs.extend(v0.blobs)
    upgraded.blobs_lr.extend(v0.blobs_lr)
    upgraded.weight_decay.extend(v0.weight_decay)
    for v0_field, targets in _V0_FIELD_MAP.items():
        if not v0.HasField(v0_field):
            continue
        target = targets.get(v0.type)
        if target is None:
            logger.warning(
                "%s: V0 layer '%s': field '%s' does not apply to type '%s'; dropped",
                source,
                v0.name,
                v0_field,
                v0.type,
            )
            continue
        _assign(upgraded, target, getattr(v0, v0_field))
    for v0_field, transform_field in _V0_TRANSFORM_MAP.items():
        if v0.HasField(v0_field):
            setattr(upgraded.transform_param, transform_field, getattr(v0, v0_field))
    return upgraded


def _assign(layer, target: tuple[str, str, str], value) -> None:
    message_name, field_name, how = target
    holder = getattr(layer, message_name)
    if how == "copy" and not field_name:
        holder.CopyFrom(value)
    elif how == "copy":
        getattr(holder, field_name).CopyFrom(value)
    elif how == "add":
        getattr(holder, field_name).append(value)
    else:
        setattr(holder, field_name, value)


# ---------------------------------------------------------------------------- data
def _data_layer_params(net: caffe_pb2.NetParameter):
    """Yield (layer, parameter message) for data layers of both layer formats."""
    v1_types = {V1.DATA: "data_param", V1.IMAGE_DATA: "image_data_param",
                V1.WINDOW_DATA: "window_data_param"}  # fmt: skip
    for entry in net.layers:
        if entry.type in v1_types and entry.HasField(v1_types[entry.type]):
            yield entry, getattr(entry, v1_types[entry.type])
    for layer in net.layer:
        name = _DATA_LAYERS.get(layer.type)
        if name is not None and layer.HasField(name):
            yield layer, getattr(layer, name)


def _movable_fields(layer) -> tuple[str, ...]:
    """Return the transformation fields to move out of ``layer``'s data parameters.

    A current WindowData layer keeps ``scale``: Caffe's WindowData reads the scale
    from ``window_data_param`` only.
    """
    if isinstance(layer, caffe_pb2.LayerParameter) and layer.type == "WindowData":
        return tuple(name for name in _TRANSFORM_FIELDS if name != "scale")
    return tuple(_TRANSFORM_FIELDS)


def needs_data_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """Return whether a data layer sets transformation fields in its own parameters."""
    return any(
        param.HasField(name)
        for layer, param in _data_layer_params(net)
        for name in _movable_fields(layer)
    )


def upgrade_data_transformation(net: caffe_pb2.NetParameter) -> None:
    """Move scale, mean_file, crop_size and mirror of data layers into transform_param.

    A value moved this way replaces one already in ``transform_param``, as in
    Caffe's upgrade of V1 nets.

    NOTE: Caffe applies this to V1 ``layers`` only and ignores these fields on
    current ``layer`` entries. brewnet moves them there too, so that a setting
    written in the old place is not silently lost.
    """
    for layer, param in list(_data_layer_params(net)):
        for name in _movable_fields(layer):
            if param.HasField(name):
                setattr(layer.transform_param, name, getattr(param, name))
                param.ClearField(name)


# ---------------------------------------------------------------------------- V1
def upgrade_v1_net(net: caffe_pb2.NetParameter, source: str = "<net>") -> None:
    """Replace the V1 ``layers`` of ``net`` by current ``layer`` entries, in place.

    Raises:
        NetDefinitionError: the net also has ``layer`` entries (Caffe would drop
            them), or a V1 type value is unknown.
    """
    if net.layer:
        raise NetDefinitionError(
            f"{source}: the net has both 'layer' entries and legacy 'layers' entries; "
            f"write every layer in one format (upgrade the 'layers' ones with "
            f"'brewnet upgrade')"
        )
    upgraded = [upgrade_v1_layer(entry, source) for entry in net.layers]
    net.ClearField("layers")
    net.layer.extend(upgraded)


def upgrade_v1_layer(
    entry: caffe_pb2.V1LayerParameter, source: str = "<net>"
) -> caffe_pb2.LayerParameter:
    """Return the current LayerParameter for a V1 layer; its blobs are kept."""
    layer = caffe_pb2.LayerParameter()
    layer.bottom.extend(entry.bottom)
    layer.top.extend(entry.top)
    if entry.HasField("name"):
        layer.name = entry.name
    layer.include.extend(entry.include)
    layer.exclude.extend(entry.exclude)
    if entry.HasField("type"):
        layer.type = v1_type_name(entry.type, entry.name, source)
    layer.blobs.extend(entry.blobs)
    for index, name in enumerate(entry.param):
        _param_spec(layer, index).name = name
    for index, mode in enumerate(entry.blob_share_mode):
        _param_spec(layer, index).share_mode = (
            caffe_pb2.ParamSpec.PERMISSIVE
            if mode == V1.PERMISSIVE
            else caffe_pb2.ParamSpec.STRICT
        )
    for index, rate in enumerate(entry.blobs_lr):
        _param_spec(layer, index).lr_mult = rate
    for index, decay in enumerate(entry.weight_decay):
        _param_spec(layer, index).decay_mult = decay
    layer.loss_weight.extend(entry.loss_weight)
    for name in _V1_COPIED_PARAMS:
        if entry.HasField(name):
            getattr(layer, name).CopyFrom(getattr(entry, name))
    return layer


def v1_type_name(value: int, layer_name: str = "", source: str = "<net>") -> str:
    """Return the current type name of the V1 enum ``value``.

    Raises:
        NetDefinitionError: ``value`` is not a V1 layer type.
    """
    try:
        return V1_LAYER_TYPES[value]
    except KeyError:
        raise NetDefinitionError(
            f"{source}: V1 layer '{layer_name}' has unknown type value {value}"
        ) from None


def _param_spec(layer: caffe_pb2.LayerParameter, index: int) -> caffe_pb2.ParamSpec:
    while len(layer.param) <= index:
        layer.param.add()
    return layer.param[index]


# ---------------------------------------------------------------------------- BatchNorm
def needs_batch_norm_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """Return whether a BatchNorm layer lets the solver update its statistics."""
    return any(_batch_norm_learns(layer) for layer in net.layer)


def _batch_norm_learns(layer: caffe_pb2.LayerParameter) -> bool:
    if layer.type != "BatchNorm" or len(layer.param) != 3:
        return False
    return any(
        spec.lr_mult != 0 or (spec.HasField("decay_mult") and spec.decay_mult != 0)
        for spec in layer.param
    )


def upgrade_batch_norm(net: caffe_pb2.NetParameter) -> None:
    """Set lr_mult and decay_mult to 0 on BatchNorm layers that declare three params.

    Caffe does the same to every such layer; layers whose rates are already 0 are
    left untouched here, which changes no number.
    """
    for layer in net.layer:
        if _batch_norm_learns(layer):
            for spec in layer.param:
                spec.lr_mult = 0
                spec.decay_mult = 0


# ============================================================================ solver
def upgrade_solver(
    param: caffe_pb2.SolverParameter, source: str = "<solver>"
) -> caffe_pb2.SolverParameter:
    """Replace the deprecated ``solver_type`` enum by the ``type`` string, in place.

    Returns ``param``.

    Raises:
        SolverError: both ``solver_type`` and ``type`` are set.
    """
    if not param.HasField("solver_type"):
        return param
    if param.HasField("type"):
        raise SolverError(
            f"{source}: both 'solver_type' (deprecated enum) and 'type' are set; "
            f'keep only type: "{param.type}"'
        )
    name = SOLVER_TYPES.get(param.solver_type)
    if name is None:
        raise SolverError(f"{source}: unknown solver_type value {param.solver_type}")
    old_name = caffe_pb2.SolverParameter.SolverType.Name(param.solver_type)
    param.type = name
    param.ClearField("solver_type")
    warnings.warn(
        f"{source}: 'solver_type: {old_name}' is deprecated; write type: \"{name}\"",
        DeprecationWarning,
        stacklevel=2,
    )
    return param


# ============================================================================ files
def upgrade_file(in_path: str | os.PathLike, out_path: str | os.PathLike) -> str:
    """Write the current-format version of a legacy net or solver file.

    A binary model (.caffemodel) is written back as a binary model with its blobs
    copied unchanged (blobs with legacy num/channels/height/width shapes keep them,
    as Caffe's upgrade_net_proto_binary does). A text net definition or a solver is
    written as text. Returns the kind written: ``"binary"``, ``"text"`` or
    ``"solver"``.

    Raises:
        FileNotFoundError: ``in_path`` does not exist.
        PrototxtError: a text file is not a valid net or solver definition.
        ModelFileError: a binary file is not a valid model.
        NetDefinitionError: the legacy net cannot be upgraded.
    """
    in_path, out_path = os.fspath(in_path), os.fspath(out_path)
    text = _read_text_or_none(in_path)
    if text is None:
        _upgrade_binary(in_path, out_path)
        return "binary"
    return _upgrade_text(in_path, out_path, text)


def _read_text_or_none(path: str) -> str | None:
    """Return the file's text if it looks like a text file, else None."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
            if not _is_text(head):
                return None
            rest = handle.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"file not found: {path}") from None
    try:
        return (head + rest).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _is_text(head: bytes) -> bool:
    for cut in range(4):  # The window may end inside a multi-byte character.
        try:
            text = head[: len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return False
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text)


def _upgrade_text(in_path: str, out_path: str, text: str) -> str:
    from brewnet.io.prototxt import parse_text, write_text
    from brewnet.io.upgrade import upgrade_net

    try:
        net = parse_text(text, caffe_pb2.NetParameter(), in_path)
    except PrototxtError as net_error:
        try:
            solver = parse_text(text, caffe_pb2.SolverParameter(), in_path)
        except PrototxtError:
            raise net_error from None
        upgrade_solver(solver, in_path)
        for inline in _inline_nets(solver):
            upgrade_net(inline, f"{in_path} (inline net)")
        write_text(out_path, solver)
        return "solver"
    upgrade_net(net, in_path)
    write_text(out_path, net)
    return "text"


def _inline_nets(solver: caffe_pb2.SolverParameter):
    for name in ("net_param", "train_net_param"):
        if solver.HasField(name):
            yield getattr(solver, name)
    yield from solver.test_net_param


def _upgrade_binary(in_path: str, out_path: str) -> None:
    from brewnet.io.model import raw_payload, scan_caffemodel, write_model_file

    index = scan_caffemodel(in_path)
    net = index.skeleton()
    records = [
        r for r in index.layers if not (r.format == "V0" and r.type == "padding")
    ]
    upgrade_legacy_layers(net, in_path)
    added = upgrade_model_inputs(net, in_path)
    spans = [[]] * added + [record.blob_spans for record in records]
    if len(spans) != len(net.layer):
        raise ModelFileError(
            f"{in_path}: the upgrade produced {len(net.layer)} layers from "
            f"{len(spans)} stored ones; the file cannot be upgraded"
        )
    layers = list(net.layer)
    net.ClearField("layer")
    header = net.SerializeToString()
    with open(in_path, "rb") as source:
        pairs = [
            (layer, [raw_payload(source, start, end) for start, end in layer_spans])
            for layer, layer_spans in zip(layers, spans)
        ]
        write_model_file(out_path, header, pairs)


def upgrade_model_inputs(net: caffe_pb2.NetParameter, source: str) -> int:
    """Upgrade the net-level inputs of a stored model; return the number of layers added.

    A model that names inputs without shapes (as old Caffe versions saved them)
    loses the fields, as in Caffe. Inputs with shapes become an Input layer.
    """
    if not net.input:
        return 0
    if not net.input_shape and not net.input_dim:
        net.ClearField("input")
        return 0
    from brewnet.io.upgrade import upgrade_net_input

    before = len(net.layer)
    upgrade_net_input(net, source)
    return len(net.layer) - before
