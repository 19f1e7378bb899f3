"""Recurrent layers: RNN, LSTM and LSTMUnit.

Caffe builds RNN and LSTM as an unrolled net of InnerProduct, Scale, Eltwise, TanH and
LSTMUnit layers, one group per time step. brewnet runs the same recurrence as a loop
over time steps. The parameter blobs keep the count, order and layout of the
parameters of Caffe's unrolled net, so weights trained by Caffe load unchanged.

Data is time-major: ``x`` is T x N x ..., with T time steps of N independent streams.
``cont`` (T x N) marks sequence starts. At step t the previous hidden state (and, for
LSTM, the previous cell) of stream n is multiplied by ``cont[t, n]``, so 0 starts a new
sequence and 1 continues the current one.

Without ``expose_hidden``, the state at the end of one forward pass is the initial
state of the next, as in Caffe. Before the first pass (and after ``reset_state``) it
is zero. Gradients never flow from one pass into the previous one.

With ``expose_hidden`` the initial state comes from extra bottoms and the final state
goes to extra tops. Caffe shares only the data of those blobs with its unrolled net,
so no gradient reaches the state bottoms and gradients arriving at the state tops are
dropped. brewnet does the same.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar

import torch

from brewnet.layers.base import Layer, Shape, count, is_meta
from brewnet.layers.registry import register_layer

logger = logging.getLogger(__name__)


def _dims(shape: Sequence[int]) -> str:
    return " x ".join(str(int(d)) for d in shape) if len(shape) else "a scalar"


def _given(number: int) -> str:
    return f"{number} {'is' if number == 1 else 'are'} given"


# ==================================================================== pure functions
def lstm_unit(
    c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compute one LSTM step from the gate inputs; return ``(c, h)``.

    ``gates`` (..., 4D) contains the pre-activations of the input, forget and output
    gates and of the candidate cell, in that order (i, f, o, g). With sigmoid s:
    ``c = cont * s(f) * c_prev + s(i) * tanh(g)`` and ``h = s(o) * tanh(c)``.
    ``c_prev`` is (..., D) and ``cont`` has the leading shape (...).

    The gradient is the exact derivative of these formulas, which is what Caffe's
    GPU code computes.
    NOTE: Caffe's CPU backward uses ``cont * s(f)`` where ``s(f)`` belongs in the
    derivative of the forget gate, so for a cont other than 0 or 1 its gradient
    differs from this one (for cont 0 or 1 they agree).
    """
    hidden = c_prev.shape[-1]
    input_gate, forget_gate, output_gate, candidate = gates.split(hidden, dim=-1)
    keep = cont.unsqueeze(-1)
    cell = keep * torch.sigmoid(forget_gate) * c_prev + torch.sigmoid(
        input_gate
    ) * torch.tanh(candidate)
    return cell, torch.sigmoid(output_gate) * torch.tanh(cell)


def _input_transform(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    x_static: torch.Tensor | None,
    static_weight: torch.Tensor | None,
) -> torch.Tensor:
    """Return ``W x_t + b (+ W_static x_static)`` for all steps at once (T x N x G)."""
    steps, num = x.shape[0], x.shape[1]
    result = x.reshape(steps, num, -1) @ weight.t() + bias
    if x_static is not None:
        result = result + (x_static.reshape(num, -1) @ static_weight.t()).unsqueeze(0)
    return result


def _initial_state(
    state: torch.Tensor | None, x: torch.Tensor, hidden: int
) -> torch.Tensor:
    num = x.shape[1]
    if state is None:
        return torch.zeros(num, hidden, dtype=x.dtype, device=x.device)
    return state.reshape(num, hidden)


def rnn(
    x: torch.Tensor,
    cont: torch.Tensor,
    w_xh: torch.Tensor,
    b_h: torch.Tensor,
    w_hh: torch.Tensor,
    w_ho: torch.Tensor,
    b_o: torch.Tensor,
    *,
    h0: torch.Tensor | None = None,
    x_static: torch.Tensor | None = None,
    w_xh_static: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run Caffe's RNN over T steps; return the outputs o (T x N x H) and h_T (1 x N x H).

    For each step: ``h_t = tanh(W_hh (cont_t * h_{t-1}) + W_xh x_t + b_h
    + W_xh_static x_static)`` and ``o_t = tanh(W_ho h_t + b_o)``. ``x`` is T x N x ...
    (flattened from axis 2), ``x_static`` is N x ... (flattened from axis 1) and ``h0``
    is 1 x N x H (zeros when None).
    """
    hidden = w_hh.shape[0]
    pre_activation = _input_transform(x, w_xh, b_h, x_static, w_xh_static)
    h = _initial_state(h0, x, hidden)
    hidden_states = []
    for t in range(x.shape[0]):
        h_conted = h * cont[t].unsqueeze(-1)
        h = torch.tanh(pre_activation[t] + h_conted @ w_hh.t())
        hidden_states.append(h)
    h_all = torch.stack(hidden_states)
    output = torch.tanh(h_all @ w_ho.t() + b_o)
    return output, h.unsqueeze(0)


def lstm(
    x: torch.Tensor,
    cont: torch.Tensor,
    w_xc: torch.Tensor,
    b_c: torch.Tensor,
    w_hc: torch.Tensor,
    *,
    h0: torch.Tensor | None = None,
    c0: torch.Tensor | None = None,
    x_static: torch.Tensor | None = None,
    w_xc_static: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run Caffe's LSTM over T steps; return h (T x N x H), h_T and c_T (1 x N x H).

    For each step the gate inputs are ``W_hc (cont_t * h_{t-1}) + W_xc x_t + b_c
    + W_xc_static x_static`` (4H values in the order i, f, o, g), and
    :func:`lstm_unit` turns them into ``c_t`` and ``h_t``. Shapes are as in
    :func:`rnn`; ``h0`` and ``c0`` default to zeros.
    """
    hidden = w_hc.shape[1]
    gate_inputs = _input_transform(x, w_xc, b_c, x_static, w_xc_static)
    h = _initial_state(h0, x, hidden)
    c = _initial_state(c0, x, hidden)
    hidden_states = []
    for t in range(x.shape[0]):
        h_conted = h * cont[t].unsqueeze(-1)
        gates = gate_inputs[t] + h_conted @ w_hc.t()
        c, h = lstm_unit(c, gates, cont[t])
        hidden_states.append(h)
    return torch.stack(hidden_states), h.unsqueeze(0), c.unsqueeze(0)


# ============================================================================ layers
class _RecurrentLayer(Layer):
    """Shared set-up, shape checks and state handling of RNN and LSTM."""

    # Blob names for messages: the initial-state bottoms and final-state tops that
    # expose_hidden adds, and the main top.
    state_bottom_names: ClassVar[tuple[str, ...]] = ()
    state_top_names: ClassVar[tuple[str, ...]] = ()
    output_name: ClassVar[str] = ""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.static_input = False
        self._input_size = 0
        self._static_size = 0
        self._carried_state: list[torch.Tensor] | None = None

    # ------------------------------------------------------------------ parameters
    @property
    def num_output(self) -> int:
        return int(self.param.recurrent_param.num_output)

    @property
    def expose_hidden(self) -> bool:
        return bool(self.param.recurrent_param.expose_hidden)

    @property
    def _num_exposed(self) -> int:
        return len(self.state_bottom_names) if self.expose_hidden else 0

    def check_blob_counts(self, num_bottom: int, num_top: int) -> None:
        """Raise unless the blob counts fit expose_hidden and the optional x_static."""
        states = list(self.state_bottom_names) if self.expose_hidden else []
        plain = ["x", "cont"] + states
        static = ["x", "cont", "x_static"] + states
        reason = " because expose_hidden is set" if self.expose_hidden else ""
        if num_bottom not in (len(plain), len(static)):
            raise self.error(
                f"takes {len(plain)} bottoms ({', '.join(plain)}) or {len(static)} "
                f"({', '.join(static)}){reason}, but {_given(num_bottom)}"
            )
        tops = [self.output_name] + (list(self.state_top_names) if states else [])
        if num_top != len(tops):
            hint = (
                "; set expose_hidden in recurrent_param to get the final state tops"
                if num_top > len(tops) and not self.expose_hidden
                else ""
            )
            raise self.error(
                f"takes {len(tops)} top{'s' if len(tops) > 1 else ''} "
                f"({', '.join(tops)}){reason}, but {_given(num_top)}{hint}"
            )

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        if self.num_output <= 0:
            raise self.error(
                "recurrent_param.num_output must be positive (the size of the hidden "
                f"state), but it is {self.num_output}"
            )
        self.static_input = len(bottom_shapes) > 2 + self._num_exposed
        self._check_shapes(bottom_shapes)
        self._input_size = count(bottom_shapes[0], 2)
        if self.static_input:
            self._static_size = count(bottom_shapes[2], 1)
        self.blobs = self._make_blobs()
        logger.info(
            "Initializing recurrent layer %s: %d timesteps of %d independent streams",
            self.name,
            bottom_shapes[0][0],
            bottom_shapes[0][1],
        )

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        self._check_shapes(bottom_shapes)
        self._check_feature_sizes(bottom_shapes)
        steps, num = bottom_shapes[0][0], bottom_shapes[0][1]
        state_shape = (1, num, self.num_output)
        return [(steps, num, self.num_output)] + [state_shape] * self._num_exposed

    def allow_force_backward(self, bottom_index: int) -> bool:
        # cont contains sequence indicators, which take no gradient.
        return bottom_index != 1

    def reset_state(self) -> None:
        """Forget the state carried over from the previous forward pass."""
        self._carried_state = None

    # ---------------------------------------------------------------- shape checks
    def _check_shapes(self, bottom_shapes: Sequence[Shape]) -> None:
        x_shape, cont_shape = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if len(x_shape) < 3:
            raise self.error(
                f"bottom x has shape {_dims(x_shape)}, but it needs at least 3 axes: "
                f"T timesteps x N streams x input features; reshape x to T x N x ..."
            )
        if len(cont_shape) != 2:
            raise self.error(
                f"bottom cont has shape {_dims(cont_shape)}, but it needs exactly 2 "
                f"axes: T timesteps x N streams"
            )
        if cont_shape != x_shape[:2]:
            raise self.error(
                f"bottom cont has shape {_dims(cont_shape)}, but x is "
                f"{_dims(x_shape)}, so cont must be {_dims(x_shape[:2])} (T x N)"
            )
        num = x_shape[1]
        if self.static_input:
            static_shape = tuple(bottom_shapes[2])
            if len(static_shape) < 2 or static_shape[0] != num:
                raise self.error(
                    f"bottom x_static has shape {_dims(static_shape)}, but it must be "
                    f"N x ... with N = {num} streams (the second axis of x) and at "
                    f"least 2 axes"
                )
        offset = 3 if self.static_input else 2
        expected = (1, num, self.num_output)
        for index, name in enumerate(self.state_bottom_names[: self._num_exposed]):
            shape = tuple(bottom_shapes[offset + index])
            if shape != expected:
                raise self.error(
                    f"bottom {name} (bottom {offset + index}) has shape "
                    f"{_dims(shape)}, but the hidden state is {_dims(expected)} "
                    f"(1 x N streams x num_output)"
                )

    def _check_feature_sizes(self, bottom_shapes: Sequence[Shape]) -> None:
        size = count(bottom_shapes[0], 2)
        if size != self._input_size:
            raise self.error(
                f"bottom x has shape {_dims(bottom_shapes[0])}, {size} features per "
                f"timestep and stream, but the layer was set up for "
                f"{self._input_size}; keep the axes after the second one unchanged"
            )
        if self.static_input:
            size = count(bottom_shapes[2], 1)
            if size != self._static_size:
                raise self.error(
                    f"bottom x_static has shape {_dims(bottom_shapes[2])}, {size} "
                    f"features per stream, but the layer was set up for "
                    f"{self._static_size}; keep the axes after the first one unchanged"
                )

    # ------------------------------------------------------------------- forward
    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        x = bottom[0]
        cont = bottom[1].detach()
        x_static = bottom[2] if self.static_input else None
        if self.expose_hidden:
            offset = 3 if self.static_input else 2
            # Caffe shares only the data of the state bottoms, never their diffs.
            initial = [state.detach() for state in bottom[offset:]]
        else:
            initial = self._initial_from_carry(x)
        output, final = self._compute(x, cont, x_static, initial)
        if self.expose_hidden:
            return [output] + [state.detach() for state in final]
        if not is_meta(x):
            self._carried_state = [state.detach() for state in final]
        return [output]

    def _initial_from_carry(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        carried = self._carried_state
        expected = (1, x.shape[1], self.num_output)
        if (
            carried is None
            or is_meta(x)
            or any(
                state.shape != expected
                or state.dtype != x.dtype
                or state.device != x.device
                for state in carried
            )
        ):
            # NOTE: when N changes between passes Caffe copies stale memory into h_0;
            # brewnet starts from zeros instead.
            return [None] * len(self.state_bottom_names)
        return list(carried)

    def _compute(self, x, cont, x_static, initial):
        raise NotImplementedError


@register_layer
class RNNLayer(_RecurrentLayer):
    """Caffe's simple recurrent layer with a tanh hidden state and a tanh output.

    ``h_t = tanh(W_hh (cont_t * h_{t-1}) + W_xh x_t + b_h + W_xh_static x_static)``,
    ``o_t = tanh(W_ho h_t + b_o)``.

    Args (``recurrent_param``):
        num_output: H, the size of the hidden state and of the output.
        weight_filler: filler of W_xh, W_xh_static, W_hh and W_ho.
        bias_filler: filler of b_h and b_o.
        debug_info: accepted and ignored.
        expose_hidden: add the bottom h_0 and the top h_T.

    Bottom: x (T x N x ...), cont (T x N), optional x_static (N x ...), then h_0
    (1 x N x H) with expose_hidden.
    Top: o (T x N x H), then h_T (1 x N x H) with expose_hidden.
    Parameters, in Caffe's order: W_xh (H x K), b_h (H), W_xh_static (H x K_static,
    only with x_static), W_hh (H x H), W_ho (H x H), b_o (H). K is the count of x
    from axis 2 and K_static the count of x_static from axis 1.
    """

    type = "RNN"
    state_bottom_names = ("h_0",)
    state_top_names = ("h_T",)
    output_name = "o"

    def _make_blobs(self) -> list[torch.Tensor]:
        recurrent = self.param.recurrent_param
        hidden = self.num_output
        weight, bias = recurrent.weight_filler, recurrent.bias_filler
        blobs = [
            self.new_blob((hidden, self._input_size), weight),
            self.new_blob((hidden,), bias),
        ]
        if self.static_input:
            blobs.append(self.new_blob((hidden, self._static_size), weight))
        blobs += [
            self.new_blob((hidden, hidden), weight),
            self.new_blob((hidden, hidden), weight),
            self.new_blob((hidden,), bias),
        ]
        return blobs

    def _compute(self, x, cont, x_static, initial):
        if self.static_input:
            w_xh, b_h, w_static, w_hh, w_ho, b_o = self.blobs
        else:
            (w_xh, b_h, w_hh, w_ho, b_o), w_static = self.blobs, None
        output, h_last = rnn(
            x, cont, w_xh, b_h, w_hh, w_ho, b_o,
            h0=initial[0], x_static=x_static, w_xh_static=w_static,
        )  # fmt: skip
        return output, [h_last]


@register_layer
class LSTMLayer(_RecurrentLayer):
    """Caffe's long short-term memory layer.

    The gate inputs ``W_hc (cont_t * h_{t-1}) + W_xc x_t + b_c + W_xc_static x_static``
    are 4H values in the order input gate, forget gate, output gate, candidate cell
    (i, f, o, g). :class:`LSTMUnitLayer` gives the formulas that turn them into c_t
    and h_t.

    Args (``recurrent_param``):
        num_output: H, the size of the hidden state and of the cell.
        weight_filler: filler of W_xc, W_xc_static and W_hc.
        bias_filler: filler of b_c.
        debug_info: accepted and ignored.
        expose_hidden: add the bottoms h_0, c_0 and the tops h_T, c_T.

    Bottom: x (T x N x ...), cont (T x N), optional x_static (N x ...), then h_0 and
    c_0 (1 x N x H each) with expose_hidden.
    Top: h (T x N x H), then h_T and c_T (1 x N x H each) with expose_hidden.
    Parameters, in Caffe's order: W_xc (4H x K), b_c (4H), W_xc_static (4H x K_static,
    only with x_static), W_hc (4H x H). K is the count of x from axis 2 and K_static
    the count of x_static from axis 1.
    """

    type = "LSTM"
    state_bottom_names = ("h_0", "c_0")
    state_top_names = ("h_T", "c_T")
    output_name = "h"

    def _make_blobs(self) -> list[torch.Tensor]:
        recurrent = self.param.recurrent_param
        hidden = self.num_output
        rows = 4 * hidden
        weight, bias = recurrent.weight_filler, recurrent.bias_filler
        blobs = [
            self.new_blob((rows, self._input_size), weight),
            self.new_blob((rows,), bias),
        ]
        if self.static_input:
            blobs.append(self.new_blob((rows, self._static_size), weight))
        blobs.append(self.new_blob((rows, hidden), weight))
        return blobs

    def _compute(self, x, cont, x_static, initial):
        if self.static_input:
            w_xc, b_c, w_static, w_hc = self.blobs
        else:
            (w_xc, b_c, w_hc), w_static = self.blobs, None
        output, h_last, c_last = lstm(
            x, cont, w_xc, b_c, w_hc,
            h0=initial[0], c0=initial[1], x_static=x_static, w_xc_static=w_static,
        )  # fmt: skip
        return output, [h_last, c_last]


@register_layer
class LSTMUnitLayer(Layer):
    """One step of an LSTM cell, as the unrolled LSTM layer uses it.

    With sigmoid s and the gate inputs split into four D-wide parts (i, f, o, g):
    ``c_t = cont_t * s(f) * c_{t-1} + s(i) * tanh(g)`` and ``h_t = s(o) * tanh(c_t)``.

    Bottom: c_{t-1} (1 x N x D), gate inputs (1 x N x 4D), cont (1 x N).
    Top: c_t (1 x N x D), h_t (1 x N x D).
    """

    type = "LSTMUnit"
    exact_num_bottom_blobs = 3
    exact_num_top_blobs = 2

    def setup(self, bottom_shapes: Sequence[Shape]) -> None:
        self._check_shapes(bottom_shapes)

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        self._check_shapes(bottom_shapes)
        return [tuple(bottom_shapes[0])] * 2

    def allow_force_backward(self, bottom_index: int) -> bool:
        # cont contains sequence indicators, which take no gradient.
        return bottom_index != 2

    def _check_shapes(self, bottom_shapes: Sequence[Shape]) -> None:
        names = ("c_prev", "gates", "cont")
        cell_shape = tuple(bottom_shapes[0])
        for index, name in enumerate(names):
            shape = tuple(bottom_shapes[index])
            axes = 2 if name == "cont" else 3
            layout = "1 x N" if name == "cont" else "1 x N x ..."
            if len(shape) != axes or shape[0] != 1:
                raise self.error(
                    f"bottom {name} (bottom {index}) has shape {_dims(shape)}, but it "
                    f"must be {layout} with {axes} axes (a single timestep)"
                )
            if shape[1] != cell_shape[1]:
                raise self.error(
                    f"bottom {name} (bottom {index}) has shape {_dims(shape)}, but "
                    f"c_prev is {_dims(cell_shape)}, so it must have "
                    f"N = {cell_shape[1]} streams on axis 1"
                )
        gates_shape = tuple(bottom_shapes[1])
        if gates_shape[2] != 4 * cell_shape[2]:
            raise self.error(
                f"bottom gates has shape {_dims(gates_shape)}, but c_prev is "
                f"{_dims(cell_shape)}, so gates must be "
                f"1 x {cell_shape[1]} x {4 * cell_shape[2]} (4 gate inputs per cell)"
            )

    def forward(self, bottom: list[torch.Tensor]) -> list[torch.Tensor]:
        c_prev, gates, cont = bottom[0], bottom[1], bottom[2].detach()
        cell, hidden = lstm_unit(c_prev, gates, cont)
        return [cell, hidden]
