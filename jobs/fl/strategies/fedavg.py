"""FedAvg (McMahan et al., 2017) and FedProx (Li et al., 2020): the weighted mean."""

from __future__ import annotations

import torch

from .base import Strategy, cast_like, register_strategy

WEIGHTED = {
    "type": "bool", "default": True,
    "help": "weight each update by its number of examples (else equally)",
}


@register_strategy
class FedAvg(Strategy):
    """Weighted average of client states, streamed.

    One float64 accumulator per tensor; each update is folded in as it arrives
    (``acc += w * t``) and not kept, so peak memory is O(model), not O(model x clients).
    ``w`` is the update's ``num_examples`` when ``weighted`` (the default), else 1.

    ``result()`` divides by the total weight and casts back to each global tensor's
    dtype. Integer tensors (BatchNorm's ``num_batches_tracked``) get the weighted mean
    rounded to the nearest integer (ties to even); bool tensors a weighted majority.
    Raises ValueError if no update was added or the total weight is 0.
    """

    name = "fedavg"
    description = "Federated averaging (McMahan et al. 2017), weighted by examples"
    schema = {"weighted": WEIGHTED}
    needs_all_updates = False

    def __init__(
        self,
        global_state: dict[str, torch.Tensor],
        params: dict | None = None,
        server_state: dict[str, torch.Tensor] | None = None,
    ):
        super().__init__(global_state, params, server_state)
        self._sums = {
            name: torch.zeros(t.shape, dtype=torch.float64, device="cpu")
            for name, t in global_state.items()
        }
        self._total_weight = 0.0

    def add(self, state: dict[str, torch.Tensor], num_examples: int) -> None:
        """Fold one update into the running sums; keeps no reference to ``state``."""
        self.check_update(state, num_examples)
        weight = float(num_examples) if self.params["weighted"] else 1.0
        for name, tensor in state.items():
            # In-place add with promotion: the product is computed in float64.
            self._sums[name].add_(tensor.detach().cpu(), alpha=weight)
        self._total_weight += weight
        self.num_updates += 1

    def result(self) -> dict[str, torch.Tensor]:
        """The weighted mean, with the names, shapes and dtypes of the global state."""
        means = self.weighted_means()
        return {name: cast_like(means[name], ref) for name, ref in self.global_state.items()}

    def weighted_means(self) -> dict[str, torch.Tensor]:
        """The float64 weighted mean of every tensor, before any cast.

        Raises ValueError if no update was added or the total weight is 0.
        """
        if self.num_updates == 0:
            raise ValueError(f"{self.name}: no updates to aggregate")
        if self._total_weight == 0:
            raise ValueError(f"{self.name}: every update has 0 examples")
        return {name: total / self._total_weight for name, total in self._sums.items()}


@register_strategy
class FedProx(FedAvg):
    """FedProx (Li et al., 2020, "Federated Optimization in Heterogeneous Networks").

    The server aggregates exactly as FedAvg. What differs is local training: each site
    adds the proximal term ``mu/2 * ||w - w_global||^2`` to its loss; the portal passes
    ``strategy_params["mu"]`` to ``training.train_local(..., proximal_mu=mu)``.
    ``mu = 0`` is FedAvg. The default 0.01 is within the grid the paper searched
    ({0.001, 0.01, 0.1, 1}).
    """

    name = "fedprox"
    description = ("FedProx (Li et al. 2020): FedAvg aggregation; sites add the proximal "
                   "term mu/2·||w − w_global||² to their local loss")
    schema = {
        "weighted": WEIGHTED,
        "mu": {
            "type": "float", "default": 0.01, "min": 0.0,
            "help": "proximal coefficient mu (Li et al. 2020) used by the sites' "
                    "trainer; 0 makes FedProx FedAvg",
        },
    }
