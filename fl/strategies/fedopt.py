"""FedAdagrad, FedAdam and FedYogi: Reddi et al. 2021, "Adaptive Federated
Optimization" (ICLR 2021, arXiv:2003.00295), Algorithm 2 (FedOpt)."""

from __future__ import annotations

import torch

from .base import register_strategy
from .fedavg import SUMS, WEIGHTED
from .server_opt import ServerOptStrategy

_POSITIVE = {"type": "float", "min": 0.0, "min_exclusive": True}
_DECAY = {"type": "float", "min": 0.0, "max": 1.0, "max_exclusive": True}


def _schema(eta: float, eta_l: float, beta_1: float, beta_2: float | None) -> dict:
    schema = {
        "weighted": {**WEIGHTED, "help": "weight client deltas by examples (Flower); "
                                         "false is the paper's uniform mean over clients"},
        "eta": {**_POSITIVE, "default": eta,
                "help": "server learning rate eta (Reddi et al. 2021, Algorithm 2)"},
        "eta_l": {**_POSITIVE, "default": eta_l,
                  "help": "client learning rate eta_l the paper pairs with eta; "
                          "informational: sites train with the job's optimizer_params"},
        "beta_1": {**_DECAY, "default": beta_1,
                   "help": "first-moment decay: m = beta_1*m + (1-beta_1)*delta"},
        "beta_2": {**_DECAY, "default": beta_2,
                   "help": "second-moment decay beta_2 (Reddi et al. 2021)"},
        "tau": {**_POSITIVE, "default": 1e-3,
                "help": "adaptivity tau: x += eta*m/(sqrt(v)+tau); v starts at tau^2"},
        "sums": SUMS,
    }
    if beta_2 is None:
        del schema["beta_2"]
    return schema


class FedOpt(ServerOptStrategy):
    """Algorithm 2 of Reddi et al. 2021, with ``x`` the global weights:

    ``delta = weighted mean of (client - x)`` (= weighted mean of clients - x),
    ``m = beta_1*m + (1-beta_1)*delta``, ``v`` updated by ``second_moment``,
    ``x <- x + eta * m / (sqrt(v) + tau)``. Initial ``m = 0`` and ``v = tau^2`` (the
    paper asks ``v_{-1} >= tau^2``). No bias correction (the paper has none; Flower's
    FedAdam adds one). State: ``m.<name>``, ``v.<name>``, ``step``.

    Defaults are Flower's (``flwr.serverapp.strategy``, 2025): FedAdam eta 0.1, eta_l
    0.1; FedYogi eta 0.01, eta_l 0.0316; FedAdagrad eta 0.1, eta_l 0.1 and beta_1 0
    (Flower fixes it at 0, as in the paper's analysis); else beta_1 0.9, beta_2 0.99 (as
    in the paper's experiments) and tau 1e-3 (Flower; the paper tunes tau, which
    controls the degree of adaptivity).
    """

    moments = ("m", "v")

    def initial_moment(self, moment, reference):
        if moment == "m":
            return torch.zeros(reference.shape, dtype=torch.float64)
        return torch.full(reference.shape, self.params["tau"] ** 2, dtype=torch.float64)

    def second_moment(self, v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The new ``v`` from the previous ``v`` and this round's ``delta``."""
        raise NotImplementedError

    def server_step(self, name, x, mean):
        delta = mean - x
        beta_1 = self.params["beta_1"]
        m = beta_1 * self._state[f"m.{name}"] + (1.0 - beta_1) * delta
        v = self.second_moment(self._state[f"v.{name}"], delta)
        self._state[f"m.{name}"], self._state[f"v.{name}"] = m, v
        return x + self.params["eta"] * m / (torch.sqrt(v) + self.params["tau"])


@register_strategy
class FedAdagrad(FedOpt):
    """FedAdagrad (Reddi et al. 2021): ``v = v + delta^2``. See ``FedOpt``."""

    name = "fedadagrad"
    description = ("FedAdagrad (Reddi et al. 2021, Algorithm 2): Adagrad on the server; "
                   "keeps m, v between rounds")
    schema = _schema(eta=0.1, eta_l=0.1, beta_1=0.0, beta_2=None)

    def second_moment(self, v, delta):
        return v + delta * delta


@register_strategy
class FedAdam(FedOpt):
    """FedAdam (Reddi et al. 2021): ``v = beta_2*v + (1-beta_2)*delta^2``. See ``FedOpt``."""

    name = "fedadam"
    description = ("FedAdam (Reddi et al. 2021, Algorithm 2): Adam on the server; "
                   "keeps m, v between rounds")
    schema = _schema(eta=0.1, eta_l=0.1, beta_1=0.9, beta_2=0.99)

    def second_moment(self, v, delta):
        beta_2 = self.params["beta_2"]
        return beta_2 * v + (1.0 - beta_2) * delta * delta


@register_strategy
class FedYogi(FedOpt):
    """FedYogi (Reddi et al. 2021): ``v = v - (1-beta_2)*delta^2*sign(v - delta^2)``.
    See ``FedOpt``."""

    name = "fedyogi"
    description = ("FedYogi (Reddi et al. 2021, Algorithm 2): Yogi on the server; "
                   "keeps m, v between rounds")
    schema = _schema(eta=0.01, eta_l=0.0316, beta_1=0.9, beta_2=0.99)

    def second_moment(self, v, delta):
        squared = delta * delta
        return v - (1.0 - self.params["beta_2"]) * squared * torch.sign(v - squared)
