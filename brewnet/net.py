"""Nets: a filtered list of layers wired by blob name, with forward and backward.

Building a net follows Caffe's ``Net::Init`` in named steps: read and upgrade the
definition, filter layers by NetState, create and wire every layer, infer shapes,
attach parameters (with sharing), record loss weights and decide which layers need
backward. The hot path is :meth:`Net._run_forward`, a loop over prepared steps that
touches only tensors.

Gradients come from autograd. The net loss is ``sum(loss_weight * sum(top))`` over all
weighted tops, so backward differentiates one scalar, and a blob that feeds several
layers receives the sum of their gradients, as Caffe's split layers give.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from brewnet.blob import Blob, ParamBlob, shape_string
from brewnet.errors import NetDefinitionError, UnknownLayerTypeError
from brewnet.io.prototxt import find_text_position, read_text
from brewnet.io.upgrade import upgrade_net
from brewnet.layers import layer_class
from brewnet.layers.base import TEST, TRAIN, Layer
from brewnet.proto import caffe_pb2
from brewnet.pycaffe import PycaffeNet
from brewnet.state import filter_net, make_state

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]


@dataclass
class LearnableParam:
    """A parameter tensor that a solver updates, with its owner's multipliers."""

    tensor: torch.Tensor
    lr_mult: float
    decay_mult: float
    layer_name: str
    index: int
    name: str = ""


@dataclass
class _Step:
    """One layer prepared for the forward loop."""

    layer: Layer
    bottoms: list[Blob]
    tops: list[Blob]
    loss_weights: list[float]
    bottom_need_backward: list[bool]
    need_backward: bool = False
    first_writer: list[bool] = field(default_factory=list)
    # The top tensors of the last forward pass, in top order.
    outputs: list[torch.Tensor] = field(default_factory=list)
    # The bottom tensors the last forward pass read, before any detaching.
    inputs: list[torch.Tensor] = field(default_factory=list)
    # Set at build time: whether some bottom must be detached before the call.
    detach_any: bool = False
    # Indices of tops that carry a nonzero loss weight.
    weighted: list[int] = field(default_factory=list)


def load_net_parameter(model: str | os.PathLike | caffe_pb2.NetParameter) -> tuple[
    caffe_pb2.NetParameter, str, str | None
]:
    """Return (upgraded NetParameter, source name, source text) for a path or message."""
    if isinstance(model, caffe_pb2.NetParameter):
        param = caffe_pb2.NetParameter()
        param.CopyFrom(model)
        return upgrade_net(param, "<NetParameter>"), "<NetParameter>", None
    path = os.fspath(model)
    param = read_text(path, caffe_pb2.NetParameter())
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    return upgrade_net(param, path), path, text


class Net(PycaffeNet):
    """A Caffe net built for one phase, with pycaffe's surface.

    ``Net(model, phase)``, ``Net(model, weights, phase)`` and the keyword forms
    ``Net(model, phase=TEST, weights=..., level=0, stages=[...])`` are accepted, as in
    pycaffe. ``model`` is a prototxt path or a ``NetParameter``.
    """

    def __init__(
        self,
        model: str | os.PathLike | caffe_pb2.NetParameter,
        *args,
        phase: int | None = None,
        weights: str | os.PathLike | None = None,
        level: int | None = None,
        stages: Sequence[str] | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        phase, weights = _parse_positional(args, phase, weights)
        if phase is None:
            phase = TRAIN
        from brewnet import mode

        self.dtype = dtype
        self.device = torch.device(device) if device is not None else mode.default_device()
        param, self.source, self._source_text = load_net_parameter(model)
        state = make_state(phase, level, stages, base=param.state)
        self.phase = state.phase
        self._param = filter_net(param, state)
        logger.debug("Initializing net from parameters:\n%s", self._param)
        self.name = self._param.name
        self._build()
        if weights is not None:
            self.copy_from(weights)
        logger.info("Network initialization done.")

    # =================================================================== building
    def _build(self) -> None:
        self.blobs: OrderedDict[str, Blob] = OrderedDict()
        # The layer objects; the pycaffe views are net.layers and net.layer_dict.
        self._layers: list[Layer] = []
        self._layer_dict: OrderedDict[str, Layer] = OrderedDict()
        self.params: OrderedDict[str, list[ParamBlob]] = OrderedDict()
        self.learnable_params: list[LearnableParam] = []
        self._steps: list[_Step] = []
        self._blob_loss_weights: dict[str, float] = {}
        self._param_owners: dict[str, tuple[str, int, caffe_pb2.ParamSpec]] = {}
        self.bottom_names: OrderedDict[str, list[str]] = OrderedDict()
        self.top_names: OrderedDict[str, list[str]] = OrderedDict()
        self.inputs: list[str] = []

        available: dict[str, Blob] = {}
        blob_need_backward: dict[str, bool] = {}
        memory = 0
        for layer_param in self._param.layer:
            step = self._create_step(layer_param, available, blob_need_backward)
            memory = self._setup_step(step, memory)
            self._attach_params(step)
            step.need_backward = any(step.bottom_need_backward) or any(
                t.requires_grad for t in step.layer.blobs
            )
            for top in step.tops:
                blob_need_backward[top.name] = step.need_backward
        self.outputs = list(available)
        self._decide_backward()
        self._finish_param_grads()
        self._load_inline_blobs()
        self.loss: float | None = None
        # Whether forward_backward also fills blob diffs (pycaffe reads them).
        self.fill_blob_diffs = True
        for name in self.outputs:
            logger.info("This network produces output %s", name)

    def _create_step(
        self,
        layer_param: caffe_pb2.LayerParameter,
        available: dict[str, Blob],
        blob_need_backward: dict[str, bool],
    ) -> _Step:
        name = layer_param.name
        if name in self._layer_dict:
            # Caffe accepts repeated names; lookups by name then find the last layer.
            logger.warning(
                "%s: more than one layer is named '%s'; binary weights files load "
                "into the first of them, HDF5 weights and layer_dict use the last",
                self.source, name,
            )
        try:
            cls = layer_class(layer_param.type)
        except UnknownLayerTypeError as error:
            raise UnknownLayerTypeError(
                f"{self._where('type', layer_param.type)}layer '{name}': {error}"
            ) from None
        layer = cls(layer_param, phase=self.phase, dtype=self.dtype, device=self.device)
        auto_tops = _automatic_top_count(layer, len(layer_param.top))
        layer.check_blob_counts(len(layer_param.bottom), len(layer_param.top) + auto_tops)
        logger.info("Creating Layer %s", name)

        # Bottoms: each must be a blob that an earlier layer produced.
        if layer_param.propagate_down and len(layer_param.propagate_down) != len(
            layer_param.bottom
        ):
            raise NetDefinitionError(
                f"layer '{name}': propagate_down has {len(layer_param.propagate_down)} "
                f"entries but the layer has {len(layer_param.bottom)} bottoms; give one "
                f"per bottom or none"
            )
        bottoms: list[Blob] = []
        bottom_need_backward: list[bool] = []
        for index, bottom_name in enumerate(layer_param.bottom):
            blob = available.pop(bottom_name, None)
            if blob is None:
                if bottom_name in self.blobs:
                    blob = self.blobs[bottom_name]
                else:
                    raise NetDefinitionError(
                        f"layer '{name}' (type {layer_param.type}): unknown bottom blob "
                        f"'{bottom_name}' (bottom index {index}); no earlier layer "
                        f"produces it"
                    )
            logger.info("%s <- %s", name, bottom_name)
            bottoms.append(blob)
            need = blob_need_backward.get(bottom_name, False)
            if layer_param.propagate_down:
                need = bool(layer_param.propagate_down[index])
            bottom_need_backward.append(need)

        # Tops: a name equal to one of the bottoms makes the layer in-place.
        tops: list[Blob] = []
        first_writer: list[bool] = []
        bottom_names = list(layer_param.bottom)
        for index, top_name in enumerate(layer_param.top):
            if top_name in bottom_names:
                logger.info("%s -> %s (in-place)", name, top_name)
                blob = self.blobs[top_name]
                first_writer.append(False)
            else:
                if top_name in self.blobs:
                    raise NetDefinitionError(
                        f"layer '{name}': top blob '{top_name}' is produced by more "
                        f"than one layer; only an in-place layer (top equal to its "
                        f"bottom) may write an existing blob"
                    )
                logger.info("%s -> %s", name, top_name)
                blob = Blob(top_name, (), self.dtype, self.device)
                self.blobs[top_name] = blob
                first_writer.append(True)
            if top_name in [t.name for t in tops]:
                raise NetDefinitionError(f"layer '{name}': top '{top_name}' is listed twice")
            tops.append(blob)
            available[top_name] = blob
        top_names = list(layer_param.top)
        for _ in range(auto_tops):
            # Caffe's unnamed loss top: weighted, but neither an output nor readable.
            blob = Blob(AUTOMATIC_TOP, (), self.dtype, self.device)
            self.blobs[AUTOMATIC_TOP] = blob
            tops.append(blob)
            top_names.append(AUTOMATIC_TOP)
            first_writer.append(True)
            logger.info("%s -> %s", name, AUTOMATIC_TOP)
        if layer.keeps_top_data:
            self.inputs.extend(layer_param.top)

        step = _Step(
            layer=layer,
            bottoms=bottoms,
            tops=tops,
            loss_weights=self._loss_weights(layer, layer_param, len(tops)),
            bottom_need_backward=bottom_need_backward,
            first_writer=first_writer,
        )
        self._layers.append(layer)
        self._layer_dict[name] = layer
        self.bottom_names[name] = bottom_names
        self.top_names[name] = top_names
        self._steps.append(step)
        return step

    def _loss_weights(
        self, layer: Layer, layer_param: caffe_pb2.LayerParameter, num_tops: int
    ) -> list[float]:
        """Return one loss weight per top, by the rules of Caffe's loss specification."""
        if layer_param.loss_weight:
            if len(layer_param.loss_weight) != num_tops:
                raise NetDefinitionError(
                    f"layer '{layer_param.name}' (type {layer_param.type}): "
                    f"{len(layer_param.loss_weight)} loss_weight values for {num_tops} "
                    f"tops; give one loss_weight per top, or none"
                )
            weights = [float(w) for w in layer_param.loss_weight]
        elif layer.is_loss and num_tops > 0:
            weights = [1.0] + [0.0] * (num_tops - 1)
        else:
            weights = [0.0] * num_tops
        if not layer.can_backward and any(w != 0 for w in weights):
            raise NetDefinitionError(
                f"layer '{layer_param.name}' (type {layer_param.type}) cannot "
                f"backpropagate, so its tops cannot carry a nonzero loss_weight; remove "
                f"the loss_weight or weigh a layer that can backpropagate"
            )
        return weights

    def _setup_step(self, step: _Step, memory: int) -> int:
        layer = step.layer
        bottom_shapes = [blob.shape for blob in step.bottoms]
        logger.info("Setting up %s", layer.name)
        layer.setup(bottom_shapes)
        top_shapes = layer.reshape(bottom_shapes)
        if len(top_shapes) != len(step.tops):
            raise NetDefinitionError(
                f"layer '{layer.name}' (type {layer.type}) produced {len(top_shapes)} "
                f"tops but lists {len(step.tops)}"
            )
        for index, (blob, shape) in enumerate(zip(step.tops, top_shapes)):
            if blob.shape != tuple(shape) or blob._data is None:
                blob.reshape(shape)
            logger.info("Top shape: %s", shape_string(shape))
            weight = step.loss_weights[index]
            # As in Caffe, the last layer that writes a blob sets its loss weight.
            self._blob_loss_weights[blob.name] = weight
            if weight:
                logger.info("    with loss weight %g", weight)
                step.weighted.append(index)
            memory += blob.count
        logger.info("Memory required for data: %d", memory * _itemsize(self.dtype))
        if layer.keeps_top_data:
            for blob in step.tops:
                blob.tensor  # allocate, so that users can write into it
        return memory

    def _attach_params(self, step: _Step) -> None:
        """Turn the layer's blobs into leaf tensors, applying ParamSpec sharing."""
        layer = step.layer
        specs = list(layer.param.param)
        if len(specs) > len(layer.blobs):
            raise NetDefinitionError(
                f"layer '{layer.name}' (type {layer.type}) has {len(layer.blobs)} "
                f"parameter blobs but {len(specs)} param specs; give at most one "
                f"param {{ }} per blob"
            )
        param_blobs: list[ParamBlob] = []
        for index, tensor in enumerate(layer.blobs):
            spec = specs[index] if index < len(specs) else caffe_pb2.ParamSpec()
            tensor = self._share_or_own(layer, index, tensor.detach(), spec)
            layer.blobs[index] = tensor
            param_blobs.append(ParamBlob(f"{layer.name}[{index}]", tensor))
        if param_blobs:
            self.params[layer.name] = param_blobs

    def _share_or_own(
        self, layer: Layer, index: int, tensor: torch.Tensor, spec: caffe_pb2.ParamSpec
    ) -> torch.Tensor:
        if spec.name and spec.name in self._param_owners:
            owner_name, owner_index, owner_spec = self._param_owners[spec.name]
            owner = self._layer_dict[owner_name].blobs[owner_index]
            _check_shared_shape(spec, owner_name, owner, layer.name, tensor)
            learnable = self._learnable_for(owner)
            for field_name in ("lr_mult", "decay_mult"):
                if spec.HasField(field_name):
                    if owner_spec.HasField(field_name) and getattr(owner_spec, field_name) != getattr(spec, field_name):
                        raise NetDefinitionError(
                            f"shared param '{spec.name}' has mismatched {field_name}: "
                            f"{getattr(owner_spec, field_name):g} in layer '{owner_name}' "
                            f"and {getattr(spec, field_name):g} in layer '{layer.name}'; "
                            f"give both the same value or set it on one side only"
                        )
                    setattr(owner_spec, field_name, getattr(spec, field_name))
                    setattr(learnable, field_name, float(getattr(spec, field_name)))
            return owner
        owned = tensor.clone().requires_grad_(True)
        if spec.name:
            stored_spec = caffe_pb2.ParamSpec()
            stored_spec.CopyFrom(spec)
            self._param_owners[spec.name] = (layer.name, index, stored_spec)
        self.learnable_params.append(
            LearnableParam(owned, float(spec.lr_mult), float(spec.decay_mult), layer.name, index, spec.name)
        )
        return owned

    def _learnable_for(self, tensor: torch.Tensor) -> LearnableParam:
        for learnable in self.learnable_params:
            if learnable.tensor is tensor:
                return learnable
        raise RuntimeError("shared parameter has no owner entry")

    def _decide_backward(self) -> None:
        """Mark the layers and bottoms that take part in backward, as Caffe does."""
        # Caffe decides this on split copies of blobs that feed several layers, so a
        # blob skips backprop only when none of the layers reading it needs its
        # gradient.
        under_loss: set[str] = set()
        consumed: set[str] = set()
        needed: set[str] = set()
        for step in reversed(self._steps):
            contributes = False
            skip = True
            for index, top in enumerate(step.tops):
                if step.loss_weights[index] or top.name in under_loss:
                    contributes = True
                if top.name not in consumed or top.name in needed:
                    skip = False
            if step.need_backward and skip:
                step.need_backward = False
                step.bottom_need_backward = [False] * len(step.bottoms)
            if not contributes:
                step.need_backward = False
            for index, bottom in enumerate(step.bottoms):
                if contributes:
                    under_loss.add(bottom.name)
                else:
                    step.bottom_need_backward[index] = False
                consumed.add(bottom.name)
                if step.bottom_need_backward[index]:
                    needed.add(bottom.name)
        if self._param.force_backward:
            for step in self._steps:
                step.need_backward = True
                step.bottom_need_backward = [
                    need or step.layer.allow_force_backward(i)
                    for i, need in enumerate(step.bottom_need_backward)
                ]
        for step in reversed(self._steps):
            verdict = "needs" if step.need_backward else "does not need"
            logger.info("%s %s backward computation.", step.layer.name, verdict)
        for step in self._steps:
            step.detach_any = not all(step.bottom_need_backward)

    def _finish_param_grads(self) -> None:
        """Freeze parameters that never receive a gradient (lr_mult 0, no backward)."""
        force = self._param.force_backward
        needed: set[int] = set()
        for step in self._steps:
            if not step.need_backward:
                continue
            for tensor in step.layer.blobs:
                learnable = self._learnable_for(tensor)
                if force or learnable.lr_mult != 0:
                    needed.add(id(tensor))
        for learnable in self.learnable_params:
            learnable.tensor.requires_grad_(id(learnable.tensor) in needed)
        consumers_needing: set[str] = set()
        for step in self._steps:
            for blob, need in zip(step.bottoms, step.bottom_need_backward):
                if need:
                    consumers_needing.add(blob.name)
        # Input blobs that some layer backpropagates to: fresh leaves every forward.
        self._input_leaves: list[Blob] = [
            self.blobs[name] for name in self.inputs if name in consumers_needing
        ]

    def _load_inline_blobs(self) -> None:
        """Start layers from the ``blobs`` written in their definition, as Caffe does.

        Old nets and V1 models carry their weights inside the layer definitions.
        """
        layers = [layer for layer in self._param.layer if layer.blobs]
        if not layers:
            return
        from brewnet.io.model import copy_layers_from_proto

        copy_layers_from_proto(self, layers, self.source)
        for layer in self._param.layer:
            del layer.blobs[:]

    def _where(self, field_name: str, value: str) -> str:
        if self._source_text is None:
            return f"{self.source}: "
        position = find_text_position(self._source_text, field_name, value)
        if position is None:
            return f"{self.source}: "
        return f"{self.source}:{position[0]}:{position[1]}: "

    # =================================================================== forward
    def _run_forward(self, start: int, end: int) -> torch.Tensor | float:
        """Run steps ``start..end`` (inclusive) and return their weighted loss."""
        loss: torch.Tensor | float = 0.0
        if start == 0:
            for blob in self._input_leaves:
                blob._data = blob.tensor.detach().requires_grad_(True)
        else:
            self._cut_graph_at(start, end)
        for step in self._steps[start : end + 1]:
            layer = step.layer
            if layer.keeps_top_data:
                step.outputs = [blob.tensor for blob in step.tops]
            else:
                bottom = [blob.tensor for blob in step.bottoms]
                step.inputs = bottom
                if step.detach_any:
                    bottom = [
                        t if need else t.detach()
                        for t, need in zip(bottom, step.bottom_need_backward)
                    ]
                if step.need_backward:
                    outputs = layer.forward(bottom)
                else:
                    with torch.no_grad():
                        outputs = layer.forward(bottom)
                step.outputs = outputs
                for blob, output in zip(step.tops, outputs):
                    blob._data = output
            for index in step.weighted:
                term = _weighted_sum(step.outputs[index], step.loss_weights[index])
                loss = term if isinstance(loss, float) else loss + term
        return loss

    def _cut_graph_at(self, start: int, end: int) -> None:
        """Prepare the blobs that steps ``start..end`` read from earlier layers.

        A blob still attached to the graph of an earlier forward pass stays attached,
        so that a later backward reaches the layers before ``start`` through the
        stored values, as Caffe's does. Any other blob becomes a leaf.
        """
        produced: set[str] = set()
        for step in self._steps[start : end + 1]:
            for blob, need in zip(step.bottoms, step.bottom_need_backward):
                if blob.name not in produced and not blob.tensor.requires_grad:
                    blob._data = blob.tensor.detach().requires_grad_(need)
            produced.update(blob.name for blob in step.tops)

    def _layer_index(self, name: str | None, default: int) -> int:
        if name is None:
            return default
        for index, step in enumerate(self._steps):
            if step.layer.name == name:
                return index
        raise KeyError(f"net '{self.name}' has no layer named '{name}'")

    def forward(
        self,
        blobs: Iterable[str] | None = None,
        start: str | None = None,
        end: str | None = None,
        **inputs: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Run forward and return the output blobs (and ``blobs``) by name.

        Keyword arguments write arrays into input blobs first, as pycaffe's do. The
        weighted loss of the layers run is stored in :attr:`loss`.
        """
        for name, value in inputs.items():
            if name not in self.blobs:
                raise KeyError(f"net '{self.name}' has no blob named '{name}'")
            blob = self.blobs[name]
            value = np.asarray(value)
            if tuple(value.shape) != blob.shape:
                raise ValueError(
                    f"input '{name}' has shape {value.shape} but the blob has shape "
                    f"{blob.shape}; reshape the blob first"
                )
            blob.data[...] = value
        start_index = self._layer_index(start, 0)
        end_index = self._layer_index(end, len(self._steps) - 1)
        loss = self._run_forward(start_index, end_index)
        self.loss = _scalar(loss)
        self._reset_output_diffs()
        names = list(self.outputs) if end is None else list(self.top_names[self._steps[end_index].layer.name])
        names += [name for name in (blobs or ()) if name not in names]
        return {name: self.blobs[name].data.copy() for name in names}

    def _reset_output_diffs(self) -> None:
        for name in self.outputs:
            blob = self.blobs[name]
            weight = self._blob_loss_weights.get(name, 0.0)
            blob.grad = torch.full(blob.shape, weight, dtype=self.dtype, device=self.device)

    def forward_backward(self) -> float:
        """Run one forward and one backward pass for training and return the loss.

        Parameter gradients accumulate into their ``.grad``. Blob diffs are filled
        too, as after Caffe's Backward, unless :attr:`fill_blob_diffs` is False (the
        command line turns it off, because only pycaffe-style inspection reads them).
        """
        loss = self._run_forward(0, len(self._steps) - 1)
        if isinstance(loss, torch.Tensor) and loss.requires_grad:
            if self.fill_blob_diffs:
                targets = self._blob_grad_targets(self._steps)
                for _, tensor in targets:
                    if not tensor.is_leaf:
                        tensor.retain_grad()
                    elif tensor.grad is not None:
                        tensor.grad = None
                loss.backward()
                for blob, tensor in targets:
                    blob.grad = tensor.grad
            else:
                loss.backward()
        value = _scalar(loss)
        self.loss = value
        return value

    def forward_no_grad(self) -> float:
        """Run forward without recording a graph (testing); return the loss."""
        with torch.no_grad():
            loss = self._run_forward(0, len(self._steps) - 1)
        self.loss = _scalar(loss)
        return self.loss

    # =================================================================== backward
    def backward(
        self,
        diffs: Iterable[str] | None = None,
        start: str | None = None,
        end: str | None = None,
        **top_diffs: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Backpropagate from the weighted tops and the diffs of the output blobs.

        Parameter gradients are added to the params' diffs (call
        :meth:`clear_param_diffs` to reset them, as a solver does each iteration), and
        the diff of every blob that takes part in backward is overwritten. Keyword
        arguments set the diffs of output blobs first, as pycaffe's do. Returns the
        diffs of the bottoms of the last layer run, and of ``diffs``, by name.
        """
        start_index = self._layer_index(start, len(self._steps) - 1)
        end_index = self._layer_index(end, 0)
        for name, value in top_diffs.items():
            if name not in self.blobs:
                raise KeyError(f"net '{self.name}' has no blob named '{name}'")
            self.blobs[name].diff[...] = np.asarray(value)
        steps = self._steps[end_index : start_index + 1]
        objective = self._backward_objective(steps, start_index)

        targets: list[torch.Tensor] = []
        sinks: list[tuple[str, object]] = []
        seen: set[int] = set()
        for step in steps:
            for tensor in step.layer.blobs:
                if tensor.requires_grad and id(tensor) not in seen:
                    seen.add(id(tensor))
                    targets.append(tensor)
                    sinks.append(("param", tensor))
        blob_targets = self._blob_grad_targets(steps)
        for blob, tensor in blob_targets:
            targets.append(tensor)
            sinks.append(("blob", blob))
        if objective is None or not targets:
            for blob, _ in blob_targets:
                blob.grad = torch.zeros(blob.shape, dtype=self.dtype, device=self.device)
        else:
            try:
                grads = torch.autograd.grad(
                    objective, targets, retain_graph=True, allow_unused=True
                )
            except RuntimeError as error:
                if "second time" not in str(error):
                    raise
                raise RuntimeError(
                    f"net '{self.name}': the graph of the last forward pass was freed "
                    f"by a training step; run net.forward() before net.backward()"
                ) from None
            for (kind, sink), grad in zip(sinks, grads):
                if kind == "param":
                    if grad is not None:
                        if sink.grad is None:
                            sink.grad = grad.detach().clone()
                        else:
                            sink.grad += grad.detach()
                else:
                    sink.grad = (
                        grad.detach()
                        if grad is not None
                        else torch.zeros(sink.shape, dtype=self.dtype, device=self.device)
                    )
        if end is None:
            names = list(self.inputs)
        else:
            names = list(self.bottom_names[self._steps[end_index].layer.name])
        names += [name for name in (diffs or ()) if name not in names]
        return {name: self.blobs[name].diff.copy() for name in names}

    def _backward_objective(self, steps: list[_Step], start_index: int) -> torch.Tensor | None:
        """Return the scalar whose gradient is Caffe's backward over ``steps``."""
        terms: list[torch.Tensor] = []
        weighted_outputs: set[str] = set()
        for step in steps:
            for index in step.weighted:
                top = step.tops[index]
                output = step.outputs[index]
                if top.name in self.outputs and output is top._data:
                    # An output's diff contains its loss weight unless the user changed it.
                    weighted_outputs.add(top.name)
                    terms.append((output * top.grad.detach()).sum())
                elif output.requires_grad:
                    terms.append(step.loss_weights[index] * output.sum())

        # The first layer of the range starts from its tops' diffs, as Caffe's
        # Backward does: values the caller wrote, or left by an earlier backward.
        last = self._steps[start_index]
        for index, top in enumerate(last.tops):
            if top.name in weighted_outputs or index >= len(last.outputs):
                continue
            output = last.outputs[index]
            seed = top.grad.detach()
            if not output.requires_grad or tuple(seed.shape) != tuple(output.shape):
                continue
            if bool(seed.any()):
                terms.append((output * seed).sum())

        terms = [term for term in terms if term.requires_grad]
        if not terms:
            return None
        return sum(terms[1:], terms[0])

    def _blob_grad_targets(self, steps: list[_Step]) -> list[tuple[Blob, torch.Tensor]]:
        """Return (blob, tensor) pairs whose gradient becomes the blob's diff.

        A blob's diff is the gradient with respect to its first version in the range,
        which for an in-place chain is the output of the layer that created the blob.
        """
        chosen: dict[str, tuple[Blob, torch.Tensor]] = {}
        for step in steps:
            if not step.need_backward and not any(step.bottom_need_backward):
                continue
            # A blob created before the range: the version its first reader read.
            for blob, tensor, need in zip(step.bottoms, step.inputs, step.bottom_need_backward):
                if need and blob.name not in chosen and tensor.requires_grad:
                    chosen[blob.name] = (blob, tensor)
            for index, blob in enumerate(step.tops):
                if step.first_writer[index] and blob.name not in chosen:
                    output = step.outputs[index] if index < len(step.outputs) else None
                    if output is not None and output.requires_grad:
                        chosen[blob.name] = (blob, output)
        for blob in self._input_leaves:
            if blob.name not in chosen and blob._data is not None and blob._data.requires_grad:
                chosen[blob.name] = (blob, blob._data)
        return list(chosen.values())

    def clear_param_diffs(self) -> None:
        """Zero every parameter gradient, as a solver does before each iteration."""
        for learnable in self.learnable_params:
            if learnable.tensor.grad is not None:
                learnable.tensor.grad.zero_()

    # =================================================================== shapes
    def reshape(self) -> None:
        """Infer every blob's shape again from the current input shapes."""
        for step in self._steps:
            if step.layer.keeps_top_data:
                continue
            shapes = step.layer.reshape([blob.shape for blob in step.bottoms])
            for blob, shape in zip(step.tops, shapes):
                if blob.shape != tuple(shape):
                    blob.reshape(shape)

    # =================================================================== weights
    @property
    def blob_loss_weights(self) -> OrderedDict[str, float]:
        """Each blob's loss weight (0 for blobs that no layer weighs)."""
        return OrderedDict(
            (name, self._blob_loss_weights.get(name, 0.0)) for name in self.blobs
        )

    def copy_from(self, path: str | os.PathLike) -> None:
        """Copy parameters by layer name from a .caffemodel (or .h5) file."""
        from brewnet.io.model import copy_trained_layers

        copy_trained_layers(self, path)

    def save(self, path: str | os.PathLike) -> None:
        """Write the net's parameters as a binary .caffemodel that Caffe reads."""
        from brewnet.io.model import save_caffemodel

        save_caffemodel(self, path)

    def to_proto(self, write_diff: bool = False) -> caffe_pb2.NetParameter:
        """Return the filtered net definition with every layer's parameter blobs."""
        from brewnet.io.model import net_to_proto

        return net_to_proto(self, write_diff)

    def share_with(self, other: "Net") -> None:
        """Use the parameter tensors of ``other``'s same-named layers, as Caffe's
        ``ShareTrainedLayersWith`` does for test nets.

        Raises:
            NetDefinitionError: a same-named layer has another number or shape of blobs.
        """
        for layer in self._layers:
            source = other._layer_dict.get(layer.name)
            if source is None or not layer.blobs:
                continue
            if len(source.blobs) != len(layer.blobs):
                raise NetDefinitionError(
                    f"cannot share layer '{layer.name}': {len(source.blobs)} parameter "
                    f"blobs in the source net, {len(layer.blobs)} in this one"
                )
            for index, tensor in enumerate(source.blobs):
                if tuple(tensor.shape) != tuple(layer.blobs[index].shape):
                    raise NetDefinitionError(
                        f"cannot share param {index} of layer '{layer.name}': shape "
                        f"{shape_string(tensor.shape)} in the source net, "
                        f"{shape_string(layer.blobs[index].shape)} in this one"
                    )
                layer.blobs[index] = tensor
                self.params[layer.name][index].tensor = tensor
        for learnable in self.learnable_params:
            learnable.tensor = self._layer_dict[learnable.layer_name].blobs[learnable.index]

    @property
    def net_param(self) -> caffe_pb2.NetParameter:
        """The filtered NetParameter this net was built from."""
        return self._param

    def layer_loss_weights(self, layer_name: str) -> list[float]:
        """Return the loss weight of each top of ``layer_name``."""
        return list(self._steps[self._layer_index(layer_name, 0)].loss_weights)

    def __repr__(self) -> str:
        phase = "TRAIN" if self.phase == TRAIN else "TEST"
        return f"<Net '{self.name}' {phase}, {len(self._layers)} layers>"


AUTOMATIC_TOP = "(automatic)"


def _automatic_top_count(layer: Layer, num_tops: int) -> int:
    """Return how many unnamed tops Caffe adds to ``layer`` (loss layers with none)."""
    if not getattr(layer, "auto_top_blobs", False):
        return 0
    needed = max(layer.min_top_blobs, layer.exact_num_top_blobs)
    return max(0, needed - num_tops)


def _parse_positional(args: tuple, phase: int | None, weights) -> tuple[int | None, object]:
    """Accept pycaffe's (phase) and (weights, phase) positional forms."""
    remaining = list(args)
    if remaining and isinstance(remaining[0], (str, os.PathLike)):
        if weights is not None:
            raise TypeError("weights given both positionally and by keyword")
        weights = remaining.pop(0)
    if remaining:
        if phase is not None:
            raise TypeError("phase given both positionally and by keyword")
        phase = remaining.pop(0)
    if remaining:
        raise TypeError(f"unexpected extra arguments {remaining!r}")
    if phase is not None and phase not in (TRAIN, TEST):
        raise ValueError(f"phase must be brewnet.TRAIN (0) or brewnet.TEST (1), got {phase!r}")
    return phase, weights


def _check_shared_shape(
    spec: caffe_pb2.ParamSpec, owner_name: str, owner: torch.Tensor, layer_name: str,
    tensor: torch.Tensor,
) -> None:
    permissive = spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE
    if permissive:
        if owner.numel() != tensor.numel():
            raise NetDefinitionError(
                f"cannot share param '{spec.name}' owned by layer '{owner_name}' with "
                f"layer '{layer_name}': count mismatch, {shape_string(owner.shape)} in "
                f"the owner and {shape_string(tensor.shape)} in the sharing layer"
            )
    elif tuple(owner.shape) != tuple(tensor.shape):
        raise NetDefinitionError(
            f"cannot share param '{spec.name}' owned by layer '{owner_name}' with layer "
            f"'{layer_name}': shape mismatch, {shape_string(owner.shape)} in the owner "
            f"and {shape_string(tensor.shape)} in the sharing layer; use share_mode: "
            f"PERMISSIVE to share blobs of equal count"
        )


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _weighted_sum(top: torch.Tensor, weight: float) -> torch.Tensor:
    """Return ``weight * sum(top)`` with no extra operations for the common scalar
    loss of weight 1, which keeps the autograd graph of a training step small."""
    total = top if top.dim() == 0 else top.sum()
    return total if weight == 1.0 else total * weight


def _scalar(loss: torch.Tensor | float) -> float:
    """Return the loss as a float without keeping it in the autograd graph."""
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
