"""Strategies with a server optimizer (FedAvgM, FedOpt): the shared state handling.

The clients' weighted mean is streamed exactly as in FedAvg (with its ``sums``
parameter: float32 running sums by default, float64 on request); ``result()`` then treats
the move from the global model to that mean as a pseudo-gradient and takes one server
optimizer step, whose state (momentum, second moments) is carried from round to round
through ``server_state`` / ``next_server_state()``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import as_float64, cast_like, register_strategy
from .fedavg import SUMS, WEIGHTED, FedAvg

#: Float buffers that are statistics, not parameters: averaged, never stepped.
STATISTICS_BUFFERS = ("running_mean", "running_var")


def is_optimized(name: str, tensor: torch.Tensor) -> bool:
    """Whether the server optimizer steps ``name``: floating-point tensors except
    BatchNorm-style running statistics (a momentum or Adam step could overshoot a
    ``running_var`` below 0)."""
    return tensor.is_floating_point() and name.rsplit(".", 1)[-1] not in STATISTICS_BUFFERS


class ServerOptStrategy(FedAvg):
    """FedAvg followed by one server optimizer step on the optimized tensors.

    Rule for the other tensors: integer and bool buffers (``num_batches_tracked``) and
    float running statistics (``running_mean``, ``running_var``) take the FedAvg result
    (rounded weighted mean, majority for bool), as if the server learning rate were 1
    with no momentum.

    Server state: for each optimized tensor ``n`` and each name ``p`` in ``moments``,
    a float64 tensor ``p.n`` of its shape; plus ``step``, a 0-d int64 tensor counting
    the server steps taken. ``server_state`` must hold exactly these names and shapes
    (ValueError otherwise); ``None`` or ``{}`` starts from ``initial_moment``.
    Subclasses define ``moments``, ``initial_moment`` and ``server_step``.
    """

    stateful = True
    uses_global_values = True  # the server step moves the global model
    moments: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        global_state: dict[str, torch.Tensor],
        params: dict | None = None,
        server_state: dict[str, torch.Tensor] | None = None,
    ):
        super().__init__(global_state, params)
        self._optimized = [n for n, t in global_state.items() if is_optimized(n, t)]
        self._state = self._load_state(server_state or {})
        self._result: dict[str, torch.Tensor] | None = None

    def initial_moment(self, moment: str, reference: torch.Tensor) -> torch.Tensor:
        """The float64 value of moment ``moment`` before the first round."""
        raise NotImplementedError

    def server_step(self, name: str, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """New float64 weights for tensor ``name`` from the global ``x`` and the
        clients' weighted ``mean``; updates ``self._state[f"{moment}.{name}"]``."""
        raise NotImplementedError

    def result(self) -> dict[str, torch.Tensor]:
        """The stepped state (names, shapes and dtypes of the global state); computed
        once, so calling it again neither steps again nor changes the server state."""
        if self._result is None:
            means = self.weighted_means()
            new = dict(means)
            for name in self._optimized:
                new[name] = self.server_step(name, as_float64(self.global_state[name]), means[name])
            self._state["step"] = self._state["step"] + 1
            self._result = {n: cast_like(new[n], ref) for n, ref in self.global_state.items()}
        return {name: tensor.clone() for name, tensor in self._result.items()}

    def next_server_state(self) -> dict[str, torch.Tensor]:
        """The state after this round's step; ValueError before ``result()``."""
        if self._result is None:
            raise ValueError(f"{self.name}: next_server_state() is only known after result()")
        return {name: tensor.clone() for name, tensor in self._state.items()}

    def _load_state(self, server_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not server_state:
            state = {f"{m}.{n}": self.initial_moment(m, self.global_state[n])
                     for m in self.moments for n in self._optimized}
            return {**state, "step": torch.tensor(0, dtype=torch.int64)}
        expected = {f"{m}.{n}": n for m in self.moments for n in self._optimized}
        wanted = set(expected) | {"step"}
        if set(server_state) != wanted:
            missing = sorted(wanted - set(server_state))
            extra = sorted(set(server_state) - wanted)
            raise ValueError(f"{self.name}: server state differs: missing {missing}, "
                             f"unexpected {extra}")
        state = {key: self._checked_moment(key, server_state[key], self.global_state[name])
                 for key, name in expected.items()}
        return {**state, "step": _checked_step(server_state["step"])}

    def _checked_moment(self, key, tensor, reference) -> torch.Tensor:
        if tensor.shape != reference.shape or not tensor.is_floating_point():
            raise ValueError(f"{self.name}: server state {key!r} must be a float tensor of "
                             f"shape {tuple(reference.shape)}, got {tensor.dtype} "
                             f"{tuple(tensor.shape)}")
        return as_float64(tensor)


def _checked_step(step: torch.Tensor) -> torch.Tensor:
    if step.ndim != 0 or step.is_floating_point() or step.dtype == torch.bool or step < 0:
        raise ValueError(f"server state 'step' must be a 0-d integer >= 0, got {step!r}")
    return step.detach().to(device="cpu", dtype=torch.int64, copy=True)


@register_strategy
class FedAvgM(ServerOptStrategy):
    """FedAvgM: FedAvg with server momentum (Hsu, Qi & Brown 2019, "Measuring the
    Effects of Non-Identical Data Distribution for Federated Visual Classification").

    With ``x`` the global weights and ``avg`` the clients' weighted mean:
    ``delta = x - avg`` (a pseudo-gradient), ``v <- momentum * v + delta`` (``v`` starts
    at 0), ``x <- x - server_lr * v``. ``momentum = 0`` and ``server_lr = 1`` give FedAvg.
    Defaults: ``server_lr`` 1.0 (Hsu et al.; Flower's FedAvgM), ``momentum`` 0.9 (the
    paper's usual beta; Flower defaults to 0, i.e. plain FedAvg). State: ``v.<name>``.
    """

    name = "fedavgm"
    description = ("FedAvgM (Hsu et al. 2019): FedAvg with server momentum on the "
                   "pseudo-gradient; keeps the momentum v between rounds")
    schema = {
        "weighted": WEIGHTED,
        "server_lr": {
            "type": "float", "default": 1.0, "min": 0.0, "min_exclusive": True,
            "help": "server learning rate eta (Hsu et al. 2019); 1 with momentum 0 is FedAvg",
        },
        "momentum": {
            "type": "float", "default": 0.9, "min": 0.0, "max": 1.0, "max_exclusive": True,
            "help": "server momentum beta (Hsu et al. 2019): v <- beta*v + (x - avg)",
        },
        "sums": SUMS,
    }
    moments = ("v",)

    def initial_moment(self, moment, reference):
        return torch.zeros(reference.shape, dtype=torch.float64)

    def server_step(self, name, x, mean):
        key = f"v.{name}"
        velocity = self.params["momentum"] * self._state[key] + (x - mean)
        self._state[key] = velocity
        return x - self.params["server_lr"] * velocity
