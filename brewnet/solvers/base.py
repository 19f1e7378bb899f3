"""The solver base class: nets, the training loop, testing, logging and snapshots.

:class:`Solver` follows Caffe's ``Solver`` (``solver.cpp``). A subclass provides the
update rule (:meth:`Solver.apply_update`) and the history it keeps; this module
drives it. The log lines use Caffe's wording and C++ stream number formatting (six
significant digits), so that Caffe log parsers read brewnet logs.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import time
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
from google.protobuf import text_format

from brewnet.errors import SolverError
from brewnet.io.hdf5 import save_hdf5
from brewnet.io.legacy import upgrade_solver
from brewnet.io.model import save_caffemodel
from brewnet.io.prototxt import read_text
from brewnet.layers.base import TEST, TRAIN
from brewnet.mode import set_random_seed
from brewnet.net import Net
from brewnet.proto import caffe_pb2
from brewnet.solvers import snapshot as snapshot_io
from brewnet.solvers.lr_policies import check_lr_policy, learning_rate
from brewnet.solvers.parameter import (
    check_general_fields,
    count_test_nets,
    read_solver_parameter,
)

logger = logging.getLogger("brewnet.solver")


class SolverAction(enum.IntEnum):
    """The action a solver takes after an iteration (Caffe's ``SolverAction``)."""

    NONE = 0
    STOP = 1
    SNAPSHOT = 2


def as_solver_action(value) -> SolverAction:
    """Return the SolverAction for ``value``: an action, its number, name or None."""
    if value is None:
        return SolverAction.NONE
    if isinstance(value, str):
        try:
            return SolverAction[value.strip().upper()]
        except KeyError:
            raise SolverError(
                f"unknown solver action '{value}'; the action function must return "
                f"'none', 'stop' or 'snapshot'"
            ) from None
    try:
        return SolverAction(int(value))
    except (TypeError, ValueError):
        raise SolverError(
            f"unknown solver action {value!r}; the action function must return a "
            f"SolverAction, 'none', 'stop' or 'snapshot'"
        ) from None


def format_number(value) -> str:
    """Format a number as a C++ stream does by default (6 significant digits)."""
    return f"{float(value):g}"


_f32 = np.float32


class Solver:
    """A Caffe solver: a train net, test nets, the training loop and snapshots.

    Args:
        param: a solver prototxt path or a ``SolverParameter``. Paths inside it
            (nets, weights, snapshot_prefix) are relative to the working directory,
            as in Caffe.
        dtype: the nets' floating-point type.
        device: the nets' device; the default is that of :mod:`brewnet.mode`.
        source: the name used in error messages for a ``SolverParameter`` that came
            from a file.

    The pycaffe surface: ``net``, ``test_nets``, ``iter``, ``param``, :meth:`step`,
    :meth:`solve`, :meth:`restore`, :meth:`snapshot`, :meth:`add_callback`,
    :meth:`apply_update` and :meth:`share_weights`.
    """

    type: ClassVar[str] = ""

    def __init__(
        self,
        param: str | os.PathLike | caffe_pb2.SolverParameter,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        source: str | None = None,
    ) -> None:
        self.param, self.source = _load_parameter(param, source)
        self._dtype = dtype
        self._device = device
        self.iter = 0
        self.current_step = 0
        self._check_parameter()

        logger.info(
            "Initializing solver from parameters: \n%s",
            text_format.MessageToString(self.param),
        )
        self._check_snapshot_prefix()
        if self.param.random_seed >= 0:
            set_random_seed(self.param.random_seed)
        self.net = self._init_train_net()
        self.test_nets = self._init_test_nets()
        logger.info("Solver scaffolding done.")

        # Hooks, the display state and the update rule's history.
        self._callbacks: list[tuple[Callable | None, Callable | None]] = []
        self._iteration_callbacks: list[Callable[[int, float], None]] = []
        self._action_function: Callable[[], object] | None = None
        self._requested_early_exit = False
        self._losses: list[np.float32] = []
        self._smoothed_loss = _f32(0)
        self._iterations_last: int | None = None
        self._timer_start = time.perf_counter()
        self._output_weights = [
            (name, self.net.blob_loss_weights.get(name, 0.0))
            for name in self.net.outputs
        ]
        self.test_outputs: list[list[tuple[str, float]]] = [[] for _ in self.test_nets]
        self._setup_update()

    # ================================================================== checks
    def _check_parameter(self) -> None:
        check_general_fields(self.param, self.source)
        check_lr_policy(self.param, self.source)
        self._check_type_fields()

    def _check_type_fields(self) -> None:
        """Raise SolverError for settings that this solver type rejects."""

    def _check_snapshot_prefix(self) -> None:
        """Fail early, as Caffe does, when periodic snapshots could not be written."""
        if not self.param.snapshot:
            return
        if not self.param.HasField("snapshot_prefix"):
            raise SolverError(
                f"{self.source}: snapshot is {self.param.snapshot} but snapshot_prefix "
                f"is not given; set snapshot_prefix"
            )
        probe = self._snapshot_filename(".tempfile")
        try:
            with open(probe, "wb"):
                pass
            os.remove(probe)
        except OSError as error:
            raise SolverError(
                f"{self.source}: cannot write to snapshot prefix "
                f"'{self.param.snapshot_prefix}' ({error.strerror}); make sure that "
                f"the directory exists and is writable"
            ) from None

    # ================================================================== nets
    def _init_train_net(self) -> Net:
        param = self.param
        state = param.train_state if param.HasField("train_state") else None
        if param.HasField("train_net_param"):
            logger.info("Creating training net specified in train_net_param.")
            net = self._build_net(param.train_net_param, TRAIN, state)
        elif param.HasField("train_net"):
            logger.info(
                "Creating training net from train_net file: %s", param.train_net
            )
            net = self._build_net(param.train_net, TRAIN, state)
        elif param.HasField("net_param"):
            logger.info("Creating training net specified in net_param.")
            net = self._build_net(param.net_param, TRAIN, state)
        else:
            logger.info("Creating training net from net file: %s", param.net)
            net = self._build_net(param.net, TRAIN, state)
        self._load_weights(net)
        return net

    def _init_test_nets(self) -> list[Net]:
        param = self.param
        sources: list[tuple[str, object]] = []
        for net_param in param.test_net_param:
            sources.append(("test_net_param", net_param))
        for path in param.test_net:
            sources.append((f"test_net file: {path}", path))
        remaining = count_test_nets(param) - len(sources)
        for _ in range(remaining):
            if param.HasField("net_param"):
                sources.append(("net_param", param.net_param))
            else:
                sources.append((f"net file: {param.net}", param.net))
        nets = []
        for index, (description, definition) in enumerate(sources):
            state = param.test_state[index] if param.test_state else None
            logger.info("Creating test net (#%d) specified by %s", index, description)
            net = self._build_net(definition, TEST, state)
            self._load_weights(net)
            nets.append(net)
        return nets

    def _build_net(
        self,
        definition: str | caffe_pb2.NetParameter,
        default_phase: int,
        override: caffe_pb2.NetState | None,
    ) -> Net:
        """Build a net with Caffe's NetState precedence.

        The state starts as ``default_phase``, then the net's own ``state`` is merged
        in, then ``override`` (train_state or test_state): set fields replace earlier
        values and stages accumulate.
        """
        if isinstance(definition, caffe_pb2.NetParameter):
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(definition)
            own_state = net_param.state
        else:
            try:
                own_state = read_text(definition, caffe_pb2.NetParameter()).state
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"{self.source}: net file not found: {definition} (relative paths "
                    f"start at the working directory, {os.getcwd()})"
                ) from None
        phase = default_phase
        if own_state.HasField("phase"):
            phase = own_state.phase
        level = None
        stages: list[str] = []
        if override is not None:
            if override.HasField("phase"):
                phase = override.phase
            if override.HasField("level"):
                level = override.level
            stages = list(override.stage)
        source = (
            net_param if isinstance(definition, caffe_pb2.NetParameter) else definition
        )
        return Net(
            source,
            phase=phase,
            level=level,
            stages=stages,
            dtype=self._dtype,
            device=self._device,
        )

    def _load_weights(self, net: Net) -> None:
        """Copy the models listed in the ``weights`` field (Caffe's fine-tuning)."""
        for entry in self.param.weights:
            for path in entry.split(","):
                path = path.strip()
                if not path:
                    continue
                logger.info("Finetuning from %s", path)
                net.copy_from(path)

    def share_weights(self, net: Net) -> None:
        """Make ``net`` use the train net's parameters for every layer of the same name
        (Caffe's ``ShareTrainedLayersWith``), as each test does for the test nets."""
        net.share_with(self.net)

    # ================================================================== hooks
    def set_action_function(self, function: Callable[[], object] | None) -> None:
        """Poll ``function`` after every iteration (and every test batch).

        It returns a :class:`SolverAction`, or "none", "stop" or "snapshot"; the CLI
        maps signals onto it.
        """
        self._action_function = function

    def add_callback(
        self, on_start: Callable | None, on_gradients: Callable | None
    ) -> None:
        """Call ``on_start()`` before each iteration's forward pass and
        ``on_gradients()`` when its gradients are ready, before the update (pycaffe)."""
        self._callbacks.append((on_start, on_gradients))

    def add_iteration_callback(self, function: Callable[[int, float], None]) -> None:
        """Call ``function(iteration, smoothed_loss)`` after each update."""
        self._iteration_callbacks.append(function)

    def _requested_action(self) -> SolverAction:
        if self._action_function is None:
            return SolverAction.NONE
        return as_solver_action(self._action_function())

    # ================================================================== training
    def step(self, iters: int) -> None:
        """Run ``iters`` iterations: forward, backward and update, with tests,
        display and snapshots as the solver parameters ask."""
        param = self.param
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        average_loss = param.average_loss
        iter_size = param.iter_size
        test_interval = param.test_interval
        display_every = param.display
        snapshot_every = param.snapshot
        self._losses = []
        self._smoothed_loss = _f32(0)
        self._requested_early_exit = False
        self._timer_start = time.perf_counter()
        if self._iterations_last is None:
            self._iterations_last = self.iter - 1

        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if (
                test_interval
                and self.iter % test_interval == 0
                and (self.iter > 0 or param.test_initialization)
            ):
                self.test_all()
                if self._requested_early_exit:
                    break
            for on_start, _ in self._callbacks:
                if on_start is not None:
                    on_start()
            display = bool(display_every) and self.iter % display_every == 0
            loss = self._forward_backward(iter_size)
            self._update_smoothed_loss(loss, start_iter, average_loss)
            if display:
                self._log_train_outputs()
            for _, on_gradients in self._callbacks:
                if on_gradients is not None:
                    on_gradients()
            self.apply_update(display)
            self.iter += 1
            for function in self._iteration_callbacks:
                function(self.iter, float(self._smoothed_loss))

            request = self._requested_action()
            if (snapshot_every and self.iter % snapshot_every == 0) or (
                request == SolverAction.SNAPSHOT
            ):
                self.snapshot()
            if request == SolverAction.STOP:
                self._requested_early_exit = True
                break

    def _forward_backward(self, iter_size: int) -> np.float32:
        """Run ``iter_size`` passes that accumulate gradients; return the mean loss."""
        total = _f32(0)
        for _ in range(iter_size):
            value = self.net.forward_backward()
            if not math.isfinite(value):
                raise self._non_finite_error(value)
            total += _f32(value)
        return total / _f32(iter_size)

    def _update_smoothed_loss(
        self, loss: np.float32, start_iter: int, average_loss: int
    ) -> None:
        """Keep the mean of the last ``average_loss`` losses, in float32 as Caffe."""
        losses = self._losses
        if len(losses) < average_loss:
            losses.append(loss)
            size = len(losses)
            self._smoothed_loss = (self._smoothed_loss * _f32(size - 1) + loss) / _f32(
                size
            )
        else:
            index = (self.iter - start_iter) % average_loss
            self._smoothed_loss += (loss - losses[index]) / _f32(average_loss)
            losses[index] = loss

    def _log_train_outputs(self) -> None:
        now = time.perf_counter()
        # Caffe's CPU timer counts whole milliseconds.
        lapse = _f32(int((now - self._timer_start) * 1000)) / _f32(1000)
        done = _f32(self.iter - self._iterations_last)
        per_second = done / (lapse if lapse else _f32(1))
        logger.info(
            "Iteration %d (%s iter/s, %ss/%d iters), loss = %s",
            self.iter,
            format_number(per_second),
            format_number(lapse),
            self.param.display,
            format_number(self._smoothed_loss),
        )
        self._timer_start = now
        self._iterations_last = self.iter
        index = 0
        for name, weight in self._output_weights:
            values = self.net.blobs[name].data.ravel()
            for value in values:
                logger.info(
                    "    Train net output #%d: %s = %s%s",
                    index,
                    name,
                    format_number(value),
                    _loss_suffix(weight, value),
                )
                index += 1

    def _non_finite_error(self, loss: float) -> SolverError:
        culprit = find_first_non_finite(self.net)
        return SolverError(
            f"Iteration {self.iter}: the loss is {loss} and training stops; the first "
            f"blob with a non-finite value, in layer order, is {culprit}. Lower "
            f"base_lr, set clip_gradients, or check the input data"
        )

    def solve(self, resume_file: str | os.PathLike | None = None) -> None:
        """Train up to ``max_iter`` iterations, resuming from ``resume_file`` if given.

        After training the final snapshot is written unless ``snapshot_after_train``
        is false or the last iteration already wrote one, even when an action stopped
        the run early.
        """
        param = self.param
        logger.info("Solving %s", self.net.name)
        logger.info("Learning Rate Policy: %s", param.lr_policy)
        self._requested_early_exit = False
        if resume_file is not None:
            logger.info(
                "Restoring previous solver status from %s", os.fspath(resume_file)
            )
            self.restore(resume_file)
        start_iter = self.iter
        self.step(param.max_iter - self.iter)
        if param.snapshot_after_train and (
            not param.snapshot or self.iter % param.snapshot != 0
        ):
            self.snapshot()
        if self._requested_early_exit:
            logger.info("Optimization stopped early.")
            return
        # One more forward pass shows the loss of the final parameters.
        if param.display and self.iter % param.display == 0:
            loss = _f32(self.net.forward_no_grad())
            self._update_smoothed_loss(loss, start_iter, param.average_loss)
            logger.info(
                "Iteration %d, loss = %s", self.iter, format_number(self._smoothed_loss)
            )
        if param.test_interval and self.iter % param.test_interval == 0:
            self.test_all()
        logger.info("Optimization Done.")

    # ================================================================== testing
    def test_all(self) -> None:
        """Test every test net, unless an action requested a stop."""
        for index in range(len(self.test_nets)):
            if self._requested_early_exit:
                break
            self.test(index)

    def test(self, test_net_id: int = 0) -> None:
        """Run ``test_iter`` forward passes of a test net and log the mean outputs."""
        logger.info("Iteration %d, Testing net (#%d)", self.iter, test_net_id)
        test_net = self.test_nets[test_net_id]
        self.share_weights(test_net)
        test_iter = self.param.test_iter[test_net_id]
        compute_loss = self.param.test_compute_loss
        loss = _f32(0)
        scores: np.ndarray | None = None
        for _ in range(test_iter):
            self._handle_requests_while_testing()
            if self._requested_early_exit:
                break
            iter_loss = test_net.forward_no_grad()
            if compute_loss:
                loss += _f32(iter_loss)
            values = _output_values(test_net)
            scores = values if scores is None else scores + values
        if self._requested_early_exit:
            logger.info("Test interrupted.")
            return
        if compute_loss:
            loss /= _f32(test_iter)
            logger.info("Test loss: %s", format_number(loss))
        self._log_test_outputs(test_net_id, test_net, scores, test_iter)

    def _handle_requests_while_testing(self) -> None:
        """Act on every pending request before a test batch (each kind at most once)."""
        seen: set[SolverAction] = set()
        request = self._requested_action()
        while request != SolverAction.NONE and request not in seen:
            seen.add(request)
            if request == SolverAction.SNAPSHOT:
                self.snapshot()
            elif request == SolverAction.STOP:
                self._requested_early_exit = True
            request = self._requested_action()

    def _log_test_outputs(
        self, test_net_id: int, test_net: Net, scores: np.ndarray | None, test_iter: int
    ) -> None:
        means: list[tuple[str, float]] = []
        weights = test_net.blob_loss_weights
        index = 0
        for name in test_net.outputs:
            for _ in range(test_net.blobs[name].count):
                mean = scores[index] / _f32(test_iter)
                weight = weights.get(name, 0.0)
                logger.info(
                    "    Test net output #%d: %s = %s%s",
                    index,
                    name,
                    format_number(mean),
                    _loss_suffix(weight, mean),
                )
                means.append((name, float(mean)))
                index += 1
        self.test_outputs[test_net_id] = means

    # ================================================================== updates
    def _setup_update(self) -> None:
        """Create the solver's history; subclasses override."""
        self.history: list[torch.Tensor] = []

    def apply_update(self, display: bool | None = None) -> None:
        """Turn the accumulated gradients into an update; subclasses override this."""
        raise NotImplementedError(f"solver type '{self.type}' has no update rule")

    def get_learning_rate(self) -> float:
        """Return the rate for the current iteration and advance ``current_step``."""
        rate, self.current_step = learning_rate(
            self.param, self.iter, self.current_step
        )
        return rate

    # ================================================================== snapshots
    def _snapshot_filename(self, extension: str) -> str:
        return f"{self.param.snapshot_prefix}_iter_{self.iter}{extension}"

    def snapshot(self) -> tuple[str, str]:
        """Write the model and the solver state; return their paths."""
        hdf5 = self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5
        write_diff = self.param.snapshot_diff
        if hdf5:
            model_path = self._snapshot_filename(".caffemodel.h5")
            logger.info("Snapshotting to HDF5 file %s", model_path)
            save_hdf5(self.net, model_path, write_diff)
        else:
            model_path = self._snapshot_filename(".caffemodel")
            logger.info("Snapshotting to binary proto file %s", model_path)
            save_caffemodel(self.net, model_path, write_diff)
        record = snapshot_io.StateRecord(
            self.iter,
            model_path,
            self.current_step,
            [snapshot_io.tensor_to_array(t) for t in self.history],
        )
        if hdf5:
            state_path = self._snapshot_filename(".solverstate.h5")
            logger.info("Snapshotting solver state to HDF5 file %s", state_path)
            snapshot_io.write_state_hdf5(state_path, record)
        else:
            state_path = self._snapshot_filename(".solverstate")
            logger.info("Snapshotting solver state to binary proto file %s", state_path)
            snapshot_io.write_state_proto(state_path, record)
        return model_path, state_path

    def restore(self, state_file: str | os.PathLike) -> None:
        """Continue from a ``.solverstate`` or ``.solverstate.h5`` file.

        The iteration, the step counter, the history and (through ``learned_net``)
        the model's parameters are restored. A relative ``learned_net`` is looked up
        from the working directory, as in Caffe, and then beside the state file.

        Raises:
            FileNotFoundError: the state file or its model does not exist.
            ModelFileError: a file is not a valid state or model.
            SolverError: the history does not fit this solver's parameters.
        """
        path = os.fspath(state_file)
        if path.endswith(".h5"):
            record = snapshot_io.read_state_hdf5(path)
        else:
            record = snapshot_io.read_state_proto(path)
        self.iter = record.iter
        self._iterations_last = None
        if record.learned_net:
            self.net.copy_from(_locate_learned_net(record.learned_net, path))
        self.current_step = record.current_step
        self._restore_history(record.history, path)

    def _restore_history(self, history: list[np.ndarray], path: str) -> None:
        if len(history) != len(self.history):
            raise SolverError(
                f"{path}: the state has {len(history)} history blobs but a {self.type} "
                f"solver for this net keeps {len(self.history)}; the state belongs to "
                f"another solver type or net"
            )
        for index, (array, tensor) in enumerate(zip(history, self.history)):
            if array.size != tensor.numel():
                raise SolverError(
                    f"{path}: history blob {index} has {array.size} values but the "
                    f"parameter it belongs to has {tensor.numel()}; the state belongs "
                    f"to another net"
                )
            values = torch.from_numpy(np.ascontiguousarray(array)).reshape(tensor.shape)
            with torch.no_grad():
                tensor.copy_(values.to(tensor.dtype))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} net '{self.net.name}', iter {self.iter}>"


# ====================================================================== helpers
def _load_parameter(
    param: str | os.PathLike | caffe_pb2.SolverParameter, source: str | None
) -> tuple[caffe_pb2.SolverParameter, str]:
    if isinstance(param, caffe_pb2.SolverParameter):
        copy = caffe_pb2.SolverParameter()
        copy.CopyFrom(param)
        name = source or "<SolverParameter>"
        upgrade_solver(copy, name)
        return copy, name
    path = os.fspath(param)
    return read_solver_parameter(path), source or path


def _loss_suffix(weight: float, value) -> str:
    if not weight:
        return ""
    weighted = _f32(weight) * _f32(value)
    return f" (* {format_number(weight)} = {format_number(weighted)} loss)"


def _output_values(net: Net) -> np.ndarray:
    """Return every output blob's values, in output order, as one float32 vector."""
    parts = [net.blobs[name].data.ravel() for name in net.outputs]
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(parts).astype(np.float32)


def _locate_learned_net(learned_net: str, state_path: str) -> str:
    if os.path.isabs(learned_net) or os.path.exists(learned_net):
        return learned_net
    beside = os.path.join(os.path.dirname(state_path), os.path.basename(learned_net))
    if os.path.exists(beside):
        return beside
    raise FileNotFoundError(
        f"{state_path}: its model file '{learned_net}' was not found in the working "
        f"directory or beside the state file"
    )


def find_first_non_finite(net: Net) -> str:
    """Describe the first parameter or top, in layer order, holding NaN or infinity."""
    for step in net._steps:
        layer = step.layer
        for index, tensor in enumerate(layer.blobs):
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return f"parameter {index} of layer '{layer.name}'"
        for blob, output in zip(step.tops, step.outputs):
            if (
                isinstance(output, torch.Tensor)
                and output.is_floating_point()
                and not bool(torch.isfinite(output.detach()).all())
            ):
                return f"blob '{blob.name}' (top of layer '{layer.name}')"
    return "none (every blob is finite, so the weighted sum of the losses overflowed)"
