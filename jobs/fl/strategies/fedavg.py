"""FedAvg (McMahan et al., 2017): the example-weighted mean of client weights."""

from __future__ import annotations

import torch

from .base import Strategy, register_strategy


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
    schema = {
        "weighted": {
            "type": "bool", "default": True,
            "help": "weight each update by its number of examples (else equally)",
        },
    }
    needs_all_updates = False

    def __init__(self, global_state: dict[str, torch.Tensor], params: dict | None = None):
        super().__init__(global_state, params)
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
        if self.num_updates == 0:
            raise ValueError("fedavg: no updates to aggregate")
        if self._total_weight == 0:
            raise ValueError("fedavg: every update has 0 examples")
        return {
            name: _cast_like(self._sums[name] / self._total_weight, reference)
            for name, reference in self.global_state.items()
        }


def _cast_like(mean: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    if reference.dtype == torch.bool:
        return mean >= 0.5
    if reference.is_floating_point():
        return mean.to(reference.dtype)
    return torch.round(mean).to(reference.dtype)
