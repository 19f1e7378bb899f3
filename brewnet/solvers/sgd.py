"""SGD and the adaptive solvers, with Caffe's update rules (``sgd_solver.cpp`` and the
Nesterov, AdaGrad, RMSProp, AdaDelta and Adam solvers).

Each iteration, after the gradients of ``iter_size`` passes have been summed into the
parameters' ``.grad``:

1. ClipGradients: if ``clip_gradients >= 0`` and the L2 norm of all gradients together
   exceeds it, every gradient is scaled by ``clip_gradients / norm``.
2. Normalize: every gradient is divided by ``iter_size``.
3. Regularize: ``g += weight_decay * decay_mult * w`` (L2) or ``* sign(w)`` (L1).
4. ComputeUpdateValue: the solver's formula, with the rate ``lr * lr_mult``.
5. ``w -= update``.

With ``g`` the regularized gradient, ``r`` the rate, ``m`` the momentum and ``d`` the
delta, the updates are:

=========  ===================================================================
SGD        ``h = m h + r g``; update ``h``
Nesterov   ``h' = m h + r g``; update ``(1 + m) h' - m h``
AdaGrad    ``h = h + g^2``; update ``r g / (sqrt(h) + d)``
RMSProp    ``h = rms_decay h + (1 - rms_decay) g^2``; update ``r g / (sqrt(h) + d)``
AdaDelta   ``h = m h + (1 - m) g^2``; ``u = g sqrt((s + d) / (h + d))``;
           ``s = m s + (1 - m) u^2``; update ``r u``
Adam       ``a = m a + (1 - m) g``; ``v = m2 v + (1 - m2) g^2``; update
           ``r sqrt(1 - m2^t) / (1 - m^t) * a / (sqrt(v) + d)`` with ``t = iter + 1``
=========  ===================================================================

The history keeps one tensor per learnable parameter (``h``), and AdaDelta and Adam a
second set after the first (``s``, ``v``), in Caffe's order, so that solver states
are interchangeable with Caffe's. The work runs as ``torch._foreach_*`` calls over the
parameters that share an (lr_mult, decay_mult) pair.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from brewnet.errors import SolverError
from brewnet.solvers.base import Solver, format_number

logger = logging.getLogger("brewnet.solver")

_f32 = np.float32


@dataclass
class _Group:
    """Parameters that share an lr_mult and a decay_mult, with their history slots."""

    lr_mult: float
    decay_mult: float
    indices: list[int]
    params: list[torch.Tensor]
    histories: list[list[torch.Tensor]] = field(default_factory=list)


class SGDSolver(Solver):
    """Stochastic gradient descent with momentum (Caffe's ``SGD`` type).

    Solver fields: base_lr, lr_policy and its settings, momentum, weight_decay,
    regularization_type ("L2" or "L1"), clip_gradients, iter_size.
    """

    type = "SGD"
    # How many history tensors each learnable parameter has.
    history_sets = 1

    # ---------------------------------------------------------------- set-up
    def _setup_update(self) -> None:
        learnables = self.net.learnable_params
        self._params = [learnable.tensor for learnable in learnables]
        for tensor in self._params:
            if tensor.grad is None:
                # A parameter that no loss reaches still gets weight decay in Caffe,
                # so it needs a (zero) gradient.
                tensor.grad = torch.zeros_like(tensor)
        count = len(self._params)
        self.history = [
            torch.zeros_like(tensor.detach())
            for _ in range(self.history_sets)
            for tensor in self._params
        ]
        keys: dict[tuple[float, float], _Group] = {}
        for index, learnable in enumerate(learnables):
            key = (learnable.lr_mult, learnable.decay_mult)
            group = keys.get(key)
            if group is None:
                group = keys[key] = _Group(key[0], key[1], [], [])
                group.histories = [[] for _ in range(self.history_sets)]
            group.indices.append(index)
            group.params.append(learnable.tensor)
            for set_index in range(self.history_sets):
                group.histories[set_index].append(
                    self.history[set_index * count + index]
                )
        # NOTE: parameters with lr_mult 0 are skipped. Their values never change, as in
        # Caffe, but the history that Caffe's adaptive solvers would still accumulate
        # for them stays zero.
        self._groups = [group for group in keys.values() if group.lr_mult != 0]

    # ---------------------------------------------------------------- update
    def apply_update(self, display: bool | None = None) -> None:
        """Clip, normalize and regularize the gradients, then update the parameters."""
        rate = self.get_learning_rate()
        if display is None:
            display = bool(self.param.display) and self.iter % self.param.display == 0
        if display:
            logger.info("Iteration %d, lr = %s", self.iter, format_number(rate))
        with torch.no_grad():
            grads = self._gradients()
            if not grads:
                return
            self._clip_gradients(grads)
            if self.param.iter_size != 1:
                torch._foreach_mul_(grads, float(_f32(1) / _f32(self.param.iter_size)))
            weight_decay = _f32(self.param.weight_decay)
            l1 = self.param.regularization_type == "L1"
            for group in self._groups:
                group_grads = [grads[i] for i in group.indices]
                local_decay = float(weight_decay * _f32(group.decay_mult))
                if local_decay:
                    if l1:
                        signs = torch._foreach_sign(group.params)
                        torch._foreach_add_(group_grads, signs, alpha=local_decay)
                    else:
                        torch._foreach_add_(
                            group_grads, group.params, alpha=local_decay
                        )
                local_rate = float(_f32(rate) * _f32(group.lr_mult))
                self._update_group(group, group_grads, local_rate)

    def _gradients(self) -> list[torch.Tensor]:
        grads = [tensor.grad for tensor in self._params]
        for index, grad in enumerate(grads):
            if grad is None:
                grad = torch.zeros_like(self._params[index])
                self._params[index].grad = grad
                grads[index] = grad
        return grads

    def _clip_gradients(self, grads: list[torch.Tensor]) -> None:
        clip = self.param.clip_gradients
        if clip < 0:
            return
        norms = torch._foreach_norm(grads)
        l2norm = float(torch.linalg.vector_norm(torch.stack(norms)))
        if l2norm > clip:
            scale = float(_f32(clip) / _f32(l2norm))
            logger.info(
                "Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale "
                "factor %s",
                format_number(l2norm),
                format_number(clip),
                format_number(scale),
            )
            torch._foreach_mul_(grads, scale)

    def _update_group(
        self, group: _Group, grads: list[torch.Tensor], rate: float
    ) -> None:
        """Apply the solver's update to one group; ``grads`` may be overwritten."""
        history = group.histories[0]
        torch._foreach_mul_(history, self.param.momentum)
        torch._foreach_add_(history, grads, alpha=rate)
        torch._foreach_sub_(group.params, history)


class NesterovSolver(SGDSolver):
    """SGD with Nesterov's accelerated gradient (Caffe's ``Nesterov`` type)."""

    type = "Nesterov"

    def _update_group(
        self, group: _Group, grads: list[torch.Tensor], rate: float
    ) -> None:
        momentum = self.param.momentum
        history = group.histories[0]
        update = torch._foreach_mul(history, -momentum)
        torch._foreach_mul_(history, momentum)
        torch._foreach_add_(history, grads, alpha=rate)
        torch._foreach_add_(update, history, alpha=float(_f32(1) + _f32(momentum)))
        torch._foreach_sub_(group.params, update)


class AdaGradSolver(SGDSolver):
    """Per-weight rates from the sum of squared gradients (Caffe's ``AdaGrad`` type).

    Solver fields: delta (added to the root, default 1e-8); momentum must be 0.
    """

    type = "AdaGrad"

    def _check_type_fields(self) -> None:
        if self.param.momentum != 0:
            raise SolverError(
                f"{self.source}: AdaGrad does not use momentum, got momentum: "
                f"{self.param.momentum:g}; remove momentum or set it to 0"
            )

    def _update_group(
        self, group: _Group, grads: list[torch.Tensor], rate: float
    ) -> None:
        history = group.histories[0]
        torch._foreach_addcmul_(history, grads, grads)
        denominator = torch._foreach_sqrt(history)
        torch._foreach_add_(denominator, self.param.delta)
        torch._foreach_addcdiv_(group.params, grads, denominator, value=-rate)


class RMSPropSolver(SGDSolver):
    """Rates from a running mean of squared gradients (Caffe's ``RMSProp`` type).

    Solver fields: rms_decay (in [0, 1), default 0.99), delta; momentum must be 0.
    """

    type = "RMSProp"

    def _check_type_fields(self) -> None:
        if self.param.momentum != 0:
            raise SolverError(
                f"{self.source}: RMSProp does not use momentum, got momentum: "
                f"{self.param.momentum:g}; remove momentum and tune rms_decay instead"
            )
        decay = self.param.rms_decay
        if not 0 <= decay < 1:
            raise SolverError(
                f"{self.source}: rms_decay must lie in [0, 1), got rms_decay: {decay:g}"
            )

    def _update_group(
        self, group: _Group, grads: list[torch.Tensor], rate: float
    ) -> None:
        decay = self.param.rms_decay
        history = group.histories[0]
        torch._foreach_mul_(history, decay)
        torch._foreach_addcmul_(
            history, grads, grads, value=float(_f32(1) - _f32(decay))
        )
        denominator = torch._foreach_sqrt(history)
        torch._foreach_add_(denominator, self.param.delta)
        torch._foreach_addcdiv_(group.params, grads, denominator, value=-rate)


class AdaDeltaSolver(SGDSolver):
    """Zeiler's AdaDelta, with Caffe's use of the rate (Caffe's ``AdaDelta`` type).

    ``momentum`` is the decay of both running means and ``delta`` the guard added to
    both. Unlike Zeiler's method ("ADADELTA: An Adaptive Learning Rate Method",
    2012), the step is multiplied by ``lr * lr_mult``, so base_lr 1 gives the
    paper's update.
    """

    type = "AdaDelta"
    history_sets = 2

    def _update_group(
        self, group: _Group, grads: list[torch.Tensor], rate: float
    ) -> None:
        momentum = self.param.momentum
        keep = float(_f32(1) - _f32(momentum))
        delta = self.param.delta
        gradient_means, update_means = group.histories
        torch._foreach_mul_(gradient_means, momentum)
        torch._foreach_addcmul_(gradient_means, grads, grads, value=keep)
        numerator = torch._foreach_add(update_means, delta)
        denominator = torch._foreach_add(gradient_means, delta)
        torch._foreach_div_(numerator, denominator)
        torch._foreach_sqrt_(numerator)
        torch._foreach_mul_(grads, numerator)
        torch._foreach_mul_(update_means, momentum)
        torch._foreach_addcmul_(update_means, grads, grads, value=keep)
        torch._foreach_add_(group.params, grads, alpha=-rate)


class AdamSolver(SGDSolver):
    """Kingma and Ba's Adam (Caffe's ``Adam`` type).

    Solver fields: momentum (beta1), momentum2 (beta2, default 0.999), delta
    (epsilon). The bias correction is folded into the rate with ``t = iter + 1``.
    """

    type = "Adam"
    history_sets = 2

    def _check_type_fields(self) -> None:
        for field_name in ("momentum", "momentum2"):
            value = getattr(self.param, field_name)
            if not 0 <= value < 1:
                raise SolverError(
                    f"{self.source}: Adam needs {field_name} in [0, 1), got "
                    f"{field_name}: {value:g}"
                )

    def _update_group(
        self, group: _Group, grads: list[torch.Tensor], rate: float
    ) -> None:
        beta1 = self.param.momentum
        beta2 = self.param.momentum2
        step = self.iter + 1
        correction = _f32((1.0 - beta2**step) ** 0.5 / (1.0 - beta1**step))
        first, second = group.histories
        torch._foreach_mul_(first, beta1)
        torch._foreach_add_(first, grads, alpha=float(_f32(1) - _f32(beta1)))
        torch._foreach_mul_(second, beta2)
        torch._foreach_addcmul_(
            second, grads, grads, value=float(_f32(1) - _f32(beta2))
        )
        denominator = torch._foreach_sqrt(second)
        torch._foreach_add_(denominator, self.param.delta)
        step_size = float(_f32(rate) * correction)
        torch._foreach_addcdiv_(group.params, first, denominator, value=-step_size)
