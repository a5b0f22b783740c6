"""FedAvg (McMahan et al., 2017) and FedProx (Li et al., 2020): the weighted mean."""

from __future__ import annotations

import torch

from .base import Strategy, cast_like, register_strategy

#: Elements per slice when a tensor is folded into, or cast out of, the float64 sums.
#: A plain ``acc64.add_(t32)`` would first copy all of ``t32`` to float64 (twice the
#: update's size, allocated and freed on every update) and run slower. Slice by slice,
#: through one reused float64 buffer, nothing is allocated per update and the result is
#: the same bit for bit (the operations are element-wise: the cast is exact and the add
#: is the same kernel). The slice is 1/32 of the model's elements (the buffer then costs
#: 1/16 of a float32 model), between 64 Ki and 256 Ki elements (512 KiB to 2 MiB of
#: float64): longer slices spend less time per call, shorter ones cost less memory.
MIN_SLICE, MAX_SLICE = 1 << 16, 1 << 18

WEIGHTED = {
    "type": "bool", "default": True,
    "help": "weight each update by its number of examples (else equally)",
}


@register_strategy
class FedAvg(Strategy):
    """Weighted average of client states, streamed.

    One float64 accumulator per tensor; each update is folded in as it arrives
    (``acc += w * t``, slice by slice) and not kept, so peak memory is O(model), not
    O(model x clients): the float64 sums (twice a float32 model), the update being added
    and, in ``result()``, the result being written.
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
        total = sum(t.numel() for t in global_state.values())
        self._slice = min(MAX_SLICE, max(MIN_SLICE, total // 32))
        self._buffer: torch.Tensor | None = None  # self._slice float64 values, made on first use

    def add(self, state: dict[str, torch.Tensor], num_examples: int) -> None:
        """Fold one update into the running sums; keeps no reference to ``state``."""
        self.check_update(state, num_examples)
        weight = float(num_examples) if self.params["weighted"] else 1.0
        for name, tensor in state.items():
            self._add_scaled(self._sums[name], tensor.detach().cpu(), weight)
        self._total_weight += weight
        self.num_updates += 1

    def result(self) -> dict[str, torch.Tensor]:
        """The weighted mean, with the names, shapes and dtypes of the global state;
        divided and cast slice by slice, so no float64 copy of the model is made."""
        self._check_weight()
        return {name: self._mean_like(self._sums[name], ref) for name, ref in self.global_state.items()}

    def weighted_means(self) -> dict[str, torch.Tensor]:
        """The float64 weighted mean of every tensor, before any cast.

        Raises ValueError if no update was added or the total weight is 0.
        """
        self._check_weight()
        return {name: total / self._total_weight for name, total in self._sums.items()}

    def _check_weight(self) -> None:
        if self.num_updates == 0:
            raise ValueError(f"{self.name}: no updates to aggregate")
        if self._total_weight == 0:
            raise ValueError(f"{self.name}: every update has 0 examples")

    def _slices(self, numel: int):
        """(start, stop, float64 buffer view of stop - start values) over ``numel``."""
        if self._buffer is None:
            self._buffer = torch.empty(self._slice, dtype=torch.float64)
        for start in range(0, numel, self._slice):
            stop = min(start + self._slice, numel)
            yield start, stop, self._buffer[:stop - start]

    def _add_scaled(self, total: torch.Tensor, tensor: torch.Tensor, weight: float) -> None:
        """``total += weight * tensor`` in place, in float64 (``total`` is contiguous)."""
        if tensor.dtype == total.dtype:
            total.add_(tensor, alpha=weight)
            return
        flat_total, flat = total.view(-1), tensor.reshape(-1)
        for start, stop, buffer in self._slices(flat.numel()):
            buffer.copy_(flat[start:stop])  # the cast promotion made: exact for floats, bool, int32
            flat_total[start:stop].add_(buffer, alpha=weight)

    def _mean_like(self, total: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``cast_like(total / total_weight, reference)``, one slice at a time."""
        if not reference.is_floating_point():  # integer and bool buffers: small
            return cast_like(total / self._total_weight, reference)
        out = torch.empty(reference.shape, dtype=reference.dtype)
        flat_out, flat_total = out.view(-1), total.view(-1)
        for start, stop, buffer in self._slices(flat_total.numel()):
            torch.div(flat_total[start:stop], self._total_weight, out=buffer)
            flat_out[start:stop].copy_(buffer)  # rounds to nearest, as cast_like's .to()
        return out


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
