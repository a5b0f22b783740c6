"""The Strategy base class and the registry every aggregation strategy joins."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..params import ParamError, check_schema, validate_params


class Strategy:
    """Aggregates one round's client updates into the next global state.

    Contract: ``Strategy(global_state, params, server_state=None)`` validates ``params``
    against ``schema`` (ParamError with field ``strategy_params.<name>``);
    ``add(state, num_examples)`` is called once per accepted update, in any order;
    ``result()`` returns a new state dict with exactly the names, shapes and dtypes of
    ``global_state``, on CPU. Strategies with ``needs_all_updates = False`` fold each
    update in as it arrives and keep no reference to it, so the caller may load, add and
    drop updates one by one; those that need every update at once (median, Krum) set it
    to True.

    Server state: a ``stateful`` strategy (server momentum, FedAdam...) keeps optimizer
    state between rounds. After ``result()``, ``next_server_state()`` returns it as a flat
    dict of CPU tensors (``m.fc.weight``, ``v.fc.weight``, ``step`` as a 0-d tensor), fit
    for a safetensors file; the next round's strategy gets it back as ``server_state``
    and then computes bit-identically to one that was never stopped. ``None`` or ``{}``
    means "first round". Stateless strategies return ``{}`` and refuse a non-empty state
    (ValueError: the caller mixed up jobs or strategies).

    ``uses_global_values = False``: the strategy reads only the names, shapes and dtypes
    of ``global_state`` (the mean of the updates does not depend on the model they
    started from), so the caller may skip reading its data.
    """

    name: ClassVar[str] = ""
    schema: ClassVar[dict] = {}
    description: ClassVar[str] = ""
    needs_all_updates: ClassVar[bool] = False
    stateful: ClassVar[bool] = False
    #: False when only the global state's names, shapes and dtypes matter (never its
    #: values): the caller may then pass empty tensors on the meta device.
    uses_global_values: ClassVar[bool] = True

    @classmethod
    def min_updates(cls, params: dict) -> int:
        """The fewest updates a round needs for this strategy with these (validated)
        params; job creation checks the round policy against it."""
        return 1

    def __init__(
        self,
        global_state: dict[str, torch.Tensor],
        params: dict | None = None,
        server_state: dict[str, torch.Tensor] | None = None,
    ):
        self.global_state = global_state
        self.params = validate_params(self.schema, params, prefix="strategy_params")
        self.num_updates = 0
        if server_state and not self.stateful:
            raise ValueError(f"{self.name or type(self).__name__} keeps no server state, "
                             f"got {len(server_state)} tensors")

    def add(self, state: dict[str, torch.Tensor], num_examples: int) -> None:
        """Take one client update trained on ``num_examples`` examples."""
        raise NotImplementedError

    def result(self) -> dict[str, torch.Tensor]:
        """The aggregated state; ValueError if no update was added."""
        raise NotImplementedError

    def next_server_state(self) -> dict[str, torch.Tensor]:
        """The server state to persist for the next round; ``{}`` when stateless."""
        return {}

    def check_update(self, state: dict[str, torch.Tensor], num_examples: int) -> None:
        """Raise ValueError unless ``state`` matches the global names and shapes and
        ``num_examples`` is a non-negative int."""
        if isinstance(num_examples, bool) or not isinstance(num_examples, int):
            raise ValueError(f"num_examples must be an int, got {num_examples!r}")
        if num_examples < 0:
            raise ValueError(f"num_examples must be >= 0, got {num_examples}")
        if set(state) != set(self.global_state):
            missing = sorted(set(self.global_state) - set(state))
            extra = sorted(set(state) - set(self.global_state))
            raise ValueError(f"update tensors differ: missing {missing}, unexpected {extra}")
        for name, tensor in state.items():
            if tensor.shape != self.global_state[name].shape:
                expected = tuple(self.global_state[name].shape)
                raise ValueError(
                    f"tensor {name!r}: expected shape {expected}, got {tuple(tensor.shape)}"
                )


STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Add ``cls`` to ``STRATEGIES`` under ``cls.name``; usable as a class decorator.

    Raises ValueError for a missing name, a malformed schema, or a name already taken
    by another class.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no 'name'")
    check_schema(cls.schema)
    existing = STRATEGIES.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"strategy {cls.name!r} is already registered")
    STRATEGIES[cls.name] = cls
    return cls


def get_strategy(name: str) -> type[Strategy]:
    """The strategy class registered as ``name``; unknown -> ParamError(field="strategy")."""
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(STRATEGIES))
        raise ParamError("strategy", f"unknown strategy {name!r} (known: {known})") from None


def cast_like(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``value`` (float64) in ``reference``'s dtype, on CPU.

    Floating tensors are cast (round to nearest); integer tensors get ``value`` rounded
    to the nearest integer, ties to even (BatchNorm's ``num_batches_tracked`` averaged
    over 10 and 13 becomes 12); bool tensors are ``value >= 0.5`` (a majority vote when
    ``value`` is a mean of 0/1).
    """
    if reference.dtype == torch.bool:
        return value >= 0.5
    if reference.is_floating_point():
        return value.to(reference.dtype)
    return torch.round(value).to(reference.dtype)


def as_float64(tensor: torch.Tensor) -> torch.Tensor:
    """A detached float64 CPU copy that shares no memory with ``tensor`` (bool -> 0/1)."""
    return tensor.detach().to(device="cpu", dtype=torch.float64, copy=True)
