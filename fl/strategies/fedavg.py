"""FedAvg (McMahan et al., 2017) and FedProx (Li et al., 2020): the weighted mean.

Which dtype the running sums use is the strategy parameter ``sums`` (``SUMS``), in the
schema of FedAvg and of every strategy built on its sums (FedProx, FedAvgM, FedAdam,
FedYogi, FedAdagrad): each job chooses, and job creation validates the choice against
the catalog like any other parameter. It applies to float32, float16 and bfloat16
tensors; integer and bool tensors always sum in float64 (exact up to 2**53), and float64
tensors too.

- ``"float32"`` (the default): 12 bytes of memory traffic per parameter per update (a
  read of the update, a read and a write of the sums) and one float32 model of memory,
  what a raw float32 ``acc.add_(t, alpha=w)`` costs. The sums hold
  ``sum_k (w_k / w_1) * t_k``, relative to the first update's weight, so that term is
  exact and a single update comes back bit for bit. Each element of the mean is within
  ``gamma(N + 3) * sum_k (w_k / W) * |t_k|`` of the exact one,
  ``gamma(n) = n u / (1 - n u)``, ``u = 2**-24``: recursive summation (Higham 2002,
  eq. 4.4) of N terms, each rounded at most N - 1 times by the additions, once as
  ``w_k / w_1`` and once as a product, then twice by the division by ``W / w_1``. That
  is 3.2e-6 of the mean magnitude at N = 50 (bench/aggregation.py measures its worst
  case on random updates). But a sum that cancels loses what is below float32's
  resolution of its largest terms (``1e8 + 1 - 1e8`` gives 0).
- ``"float64"``: a float32 (or float16, bfloat16) value times an integer weight below
  2**29 is exact in float64, and a sum of 50 such terms is correct to about 1e-14 of the
  sum of their magnitudes, so a sum that cancels keeps its small terms
  (``1e8 + 1 - 1e8`` gives 1). It costs 20 bytes of memory traffic per parameter per
  update and two float32 models of memory for the sums.

float32 is the default because the aggregation targets (time within 1.5x a raw float32
in-place sum, peak memory within 3 models above the global state) cannot be met with
float64 sums, which move 5/3 of the bytes and take twice the memory (bench/aggregation.py
measures both), and because float32 sums are what Flower's ``aggregate`` and PyTorch's
all-reduce use; their error stays within the bound above. ``"float64"`` stays
available per job for sums that must survive cancellation (updates of opposite signs and
very different magnitudes).
"""

from __future__ import annotations

import torch

from .base import Strategy, cast_like, register_strategy

#: Elements per slice when a tensor is folded into, or divided out of, sums of another
#: dtype. A plain ``acc64.add_(t32)`` would first copy all of ``t32`` to float64 (twice the
#: update's size, allocated and freed on every update) and run slower. Slice by slice,
#: through one reused buffer, nothing is allocated per update and the result is the same
#: bit for bit (the operations are element-wise: the cast is exact and the add is the same
#: kernel). The slice is 1/32 of the model's elements (a float64 buffer then costs 1/16 of
#: a float32 model), between 64 Ki and 256 Ki elements: longer slices spend less time per
#: call, shorter ones cost less memory.
MIN_SLICE, MAX_SLICE = 1 << 16, 1 << 18

WEIGHTED = {
    "type": "bool", "default": True,
    "help": "weight each update by its number of examples (else equally)",
}

#: The dtype of the running sums of float tensors; every strategy built on FedAvg's sums
#: has it in its schema (see the module docstring).
SUMS = {
    "type": "choice", "choices": ["float32", "float64"], "default": "float32",
    "help": "dtype of the running sums of float32/float16/bfloat16 tensors: float32 (fast, "
            "one model of memory, error within (N+3)·2⁻²⁴ of the mean's magnitude) or "
            "float64 (twice the memory, slower; a sum that cancels keeps its small terms); "
            "integer, bool and float64 tensors always sum in float64",
}


def sum_dtype(dtype: torch.dtype, sums: str) -> torch.dtype:
    """The dtype of the running sum of tensors of ``dtype`` for the ``sums`` parameter:
    float32 for float32, float16 and bfloat16 tensors when ``sums`` is ``"float32"``,
    else float64 (and always for float64, integer and bool tensors)."""
    if sums == "float32" and dtype.is_floating_point and dtype != torch.float64:
        return torch.float32
    return torch.float64


@register_strategy
class FedAvg(Strategy):
    """Weighted average of client states, streamed.

    One running sum per tensor, in ``sum_dtype(dtype, params["sums"])`` (see the module
    docstring for the choice, its precision and why float32 is the default); each update
    is folded in as it arrives (``sum += (w / b) * t``) and not kept, so peak memory is
    O(model), not O(model x clients): the sums (one float32 model with float32 sums, two
    with float64), the update being added and, in ``result()``, the result being
    written. ``w`` is the update's ``num_examples`` when ``weighted`` (the default), else
    1; ``b`` is the first counted update's ``w`` for float32 sums (that term, and a single
    update, stay exact) and 1 for float64 sums (the products are exact). An update with
    ``w = 0`` is checked and counted but adds nothing.

    ``result()`` divides by the total weight (over ``b``) and casts back to each global
    tensor's dtype. Integer tensors (BatchNorm's ``num_batches_tracked``) get the
    weighted mean rounded to the nearest integer (ties to even); bool tensors a weighted
    majority. Raises ValueError if no update was added or the total weight is 0;
    ParamError (``strategy_params.sums``...) for params the schema refuses.
    """

    name = "fedavg"
    description = "Federated averaging (McMahan et al. 2017), weighted by examples"
    schema = {"weighted": WEIGHTED, "sums": SUMS}
    needs_all_updates = False
    uses_global_values = False  # the weighted mean of the updates alone

    def __init__(
        self,
        global_state: dict[str, torch.Tensor],
        params: dict | None = None,
        server_state: dict[str, torch.Tensor] | None = None,
    ):
        super().__init__(global_state, params, server_state)
        self._dtypes = {name: sum_dtype(t.dtype, self.params["sums"]) for name, t in global_state.items()}
        self._sums: dict[str, torch.Tensor] = {}  # made by the first update with a weight > 0
        self._first_weight = 0.0
        self._total_weight = 0.0
        total = sum(t.numel() for t in global_state.values())
        self._slice = min(MAX_SLICE, max(MIN_SLICE, total // 32))
        self._buffers: dict[torch.dtype, torch.Tensor] = {}  # per sum dtype, made on first use

    def add(self, state: dict[str, torch.Tensor], num_examples: int) -> None:
        """Fold one update into the running sums; keeps no reference to ``state``."""
        self.check_update(state, num_examples)
        weight = float(num_examples) if self.params["weighted"] else 1.0
        self.num_updates += 1
        if weight == 0:
            return  # adds nothing; skipping it also keeps a 0 * inf from making NaN
        first = not self._sums
        if first:
            self._first_weight = weight
        for name, tensor in state.items():
            if first:
                self._sums[name] = torch.empty(tensor.shape, dtype=self._dtypes[name])
            self._fold(self._sums[name], tensor.detach().cpu(), weight / self._base(name), first)
        self._total_weight += weight

    def result(self) -> dict[str, torch.Tensor]:
        """The weighted mean, with the names, shapes and dtypes of the global state;
        divided and cast slice by slice, so no copy of the model in the sums' dtype is
        made."""
        self._check_weight()
        return {name: self._mean_like(name, ref) for name, ref in self.global_state.items()}

    def weighted_means(self) -> dict[str, torch.Tensor]:
        """The weighted mean of every tensor in float64, before any cast.

        Raises ValueError if no update was added or the total weight is 0.
        """
        self._check_weight()
        return {name: total.to(torch.float64, copy=True).div_(self._divisor(name))
                for name, total in self._sums.items()}

    def _check_weight(self) -> None:
        if self.num_updates == 0:
            raise ValueError(f"{self.name}: no updates to aggregate")
        if self._total_weight == 0:
            raise ValueError(f"{self.name}: every update has 0 examples")

    def _base(self, name: str) -> float:
        """``b``: the sums of tensor ``name`` hold sum_k (w_k / b) * t_k."""
        return self._first_weight if self._dtypes[name] == torch.float32 else 1.0

    def _divisor(self, name: str) -> float:
        return self._total_weight / self._base(name)

    def _slices(self, numel: int, dtype: torch.dtype | None = None):
        """(start, stop, buffer) over ``numel`` elements in slices; ``buffer`` is a view of
        stop - start elements of a reused ``dtype`` buffer (None without a dtype)."""
        for start in range(0, numel, self._slice):
            stop = min(start + self._slice, numel)
            yield start, stop, None if dtype is None else self._buffer(dtype, stop - start)

    def _buffer(self, dtype: torch.dtype, size: int) -> torch.Tensor:
        """At least ``size`` (at most one slice of) reusable elements of ``dtype``: a small
        tensor (``num_batches_tracked``) gets a small buffer, not a whole slice."""
        buffer = self._buffers.get(dtype)
        if buffer is None or buffer.numel() < size:
            buffer = self._buffers[dtype] = torch.empty(size, dtype=dtype)
        return buffer[:size]

    def _fold(self, total: torch.Tensor, tensor: torch.Tensor, alpha: float, first: bool) -> None:
        """``total = alpha * tensor`` (``first``) or ``total += alpha * tensor``, in place,
        in ``total``'s dtype (``total`` is contiguous)."""
        if tensor.dtype == total.dtype:
            if not first:
                total.add_(tensor, alpha=alpha)
            elif alpha == 1.0:
                total.copy_(tensor)
            else:
                torch.mul(tensor, alpha, out=total)
            return
        flat_total, flat = total.view(-1), tensor.reshape(-1)
        for start, stop, buffer in self._slices(flat.numel(), None if first else total.dtype):
            part = flat_total[start:stop]
            if first:  # the cast straight into the sums, then the product while it is in cache
                part.copy_(flat[start:stop])
                if alpha != 1.0:
                    part.mul_(alpha)
            else:
                buffer.copy_(flat[start:stop])  # the cast promotion made: exact for floats, bool, int32
                part.add_(buffer, alpha=alpha)

    def _mean_like(self, name: str, reference: torch.Tensor) -> torch.Tensor:
        """``cast_like(sum / divisor, reference)``, one slice at a time."""
        total, divisor = self._sums[name], self._divisor(name)
        if not reference.is_floating_point():  # integer and bool buffers: small
            return cast_like(total / divisor, reference)
        out = torch.empty(reference.shape, dtype=reference.dtype)
        if total.dtype == out.dtype:
            return torch.div(total, divisor, out=out)
        flat_out, flat_total = out.view(-1), total.view(-1)
        for start, stop, buffer in self._slices(flat_total.numel(), total.dtype):
            torch.div(flat_total[start:stop], divisor, out=buffer)
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
        "sums": SUMS,
    }
