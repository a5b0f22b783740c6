"""Byzantine-robust aggregation: FedMedian, FedTrimmedAvg, Krum / Multi-Krum.

These need every update at once (``needs_all_updates = True``): peak memory is
O(model x clients). They ignore ``num_examples`` (beyond checking it): a count is as easy
to fake as the weights, so weighting by it would hand an attacker the aggregate.
"""

from __future__ import annotations

import math

import torch

from .base import Strategy, as_float64, cast_like, register_strategy

_ALL_UPDATES = " Needs all updates at once (memory O(model × nodes))."


class AllUpdatesStrategy(Strategy):
    """Keeps a private copy of every update; ``combine`` makes each tensor of the result.

    ``combine(name, stacked)`` gets the float64 values of tensor ``name`` from every
    update stacked on dim 0, in the order they were added, and returns the float64
    result; it is cast back like FedAvg's (integer tensors rounded half to even, bool
    tensors ``>= 0.5``). Raises ValueError from ``result()`` if no update was added.
    """

    needs_all_updates = True
    uses_global_values = False  # statistics of the updates alone

    def __init__(self, global_state, params=None, server_state=None):
        super().__init__(global_state, params, server_state)
        self.updates: list[dict[str, torch.Tensor]] = []

    def add(self, state: dict[str, torch.Tensor], num_examples: int) -> None:
        """Keep a CPU copy of ``state`` (``num_examples`` is checked, then ignored)."""
        self.check_update(state, num_examples)
        self.updates.append({name: t.detach().to("cpu", copy=True) for name, t in state.items()})
        self.num_updates += 1

    def result(self) -> dict[str, torch.Tensor]:
        """Each global tensor combined over all updates, in its own dtype."""
        if not self.updates:
            raise ValueError(f"{self.name}: no updates to aggregate")
        self.prepare()
        return {name: cast_like(self.combine(name, self.stacked(name)), reference)
                for name, reference in self.global_state.items()}

    def prepare(self) -> None:
        """Hook run once before ``combine`` is called for each tensor."""

    def stacked(self, name: str) -> torch.Tensor:
        """Tensor ``name`` of every update, float64, stacked on a new dim 0."""
        return torch.stack([as_float64(update[name]) for update in self.updates])

    def combine(self, name: str, stacked: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def coordinate_median(stacked: torch.Tensor) -> torch.Tensor:
    """Median along dim 0; for an even count, the mean of the two middle values (as
    ``numpy.median``; ``torch.median`` would return the lower one)."""
    ordered = stacked.sort(dim=0).values
    n = ordered.shape[0]
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


@register_strategy
class FedMedian(AllUpdatesStrategy):
    """Coordinate-wise median of the client updates (Yin et al. 2018, "Byzantine-Robust
    Distributed Learning: Towards Optimal Statistical Rates"), unweighted.

    Every tensor, integer buffers included, takes the median of its coordinates; for an
    even number of updates the mean of the two middle values (integers: rounded half to
    even; bool: true when at least half are true).
    """

    name = "fedmedian"
    description = "Coordinate-wise median (Yin et al. 2018)." + _ALL_UPDATES
    schema = {}

    def combine(self, name, stacked):
        return coordinate_median(stacked)


@register_strategy
class FedTrimmedAvg(AllUpdatesStrategy):
    """Coordinate-wise trimmed mean (Yin et al. 2018), unweighted.

    For each coordinate the ``k = floor(beta * n)`` smallest and ``k`` largest of the
    ``n`` values are dropped and the rest averaged; ``beta < 0.5`` keeps at least one.
    ``beta = 0`` is the unweighted mean. Default 0.2, as Flower's FedTrimmedAvg.
    """

    name = "fedtrimmedavg"
    description = ("Coordinate-wise trimmed mean (Yin et al. 2018): drops the beta "
                   "fraction of largest and of smallest values." + _ALL_UPDATES)
    schema = {
        "beta": {
            "type": "float", "default": 0.2, "min": 0.0, "max": 0.5, "max_exclusive": True,
            "help": "fraction trimmed from each end, per coordinate (Yin et al. 2018)",
        },
    }

    def combine(self, name, stacked):
        n = stacked.shape[0]
        # The epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from trimming 28.
        k = math.floor(self.params["beta"] * n + 1e-9)
        return stacked.sort(dim=0).values[k:n - k].mean(dim=0)


@register_strategy
class Krum(AllUpdatesStrategy):
    """Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent").

    Each update's score is the sum of its squared Euclidean distances to its
    ``n - f - 2`` nearest other updates, distances taken over all floating-point tensors
    (integer buffers such as ``num_batches_tracked`` would swamp them). The ``m``
    updates with the lowest scores are selected (ties: the earlier added) and averaged
    unweighted; ``m = 1`` is Krum and returns the selected update itself.
    ``selected`` holds their indices in adding order after ``result()``.
    Raises ValueError when ``n <= 2f + 2`` (Krum's requirement ``n > 2f + 2``) or
    ``m > n``.
    """

    name = "krum"
    description = ("Krum / Multi-Krum (Blanchard et al. 2017): averages the m updates "
                   "closest to their n−f−2 nearest neighbours; needs n > 2f+2 updates."
                   + _ALL_UPDATES)
    schema = {
        "f": {"type": "int", "default": 1, "min": 0,
              "help": "number of Byzantine nodes tolerated (Blanchard et al. 2017); "
                      "needs more than 2f+2 updates per round"},
        "m": {"type": "int", "default": 1, "min": 1,
              "help": "updates selected and averaged: 1 is Krum, more is Multi-Krum"},
    }

    def __init__(self, global_state, params=None, server_state=None):
        super().__init__(global_state, params, server_state)
        self.selected: list[int] = []

    @classmethod
    def min_updates(cls, params: dict) -> int:
        return max(2 * params["f"] + 3, params["m"])

    def prepare(self) -> None:
        n, f, m = len(self.updates), self.params["f"], self.params["m"]
        if n <= 2 * f + 2:
            raise ValueError(f"krum: needs more than 2f+2 = {2 * f + 2} updates, got {n}")
        if m > n:
            raise ValueError(f"krum: cannot select m = {m} of {n} updates")
        scores = krum_scores(self.squared_distances(), n - f - 2)
        self.selected = torch.argsort(scores, stable=True)[:m].tolist()

    def squared_distances(self) -> torch.Tensor:
        """(n, n) float64 squared distances between updates over the float tensors."""
        n = len(self.updates)
        distances = torch.zeros(n, n, dtype=torch.float64)
        for name, reference in self.global_state.items():
            if reference.is_floating_point():
                flat = self.stacked(name).reshape(n, -1)
                for i in range(n):
                    distances[i] += (flat - flat[i]).pow(2).sum(dim=1)
        return distances

    def combine(self, name, stacked):
        return stacked[self.selected].mean(dim=0)


def krum_scores(distances: torch.Tensor, neighbours: int) -> torch.Tensor:
    """Per row, the sum of the ``neighbours`` smallest distances to other rows."""
    n = distances.shape[0]
    others = distances[~torch.eye(n, dtype=torch.bool)].reshape(n, n - 1)
    return others.sort(dim=1).values[:, :neighbours].sum(dim=1)
