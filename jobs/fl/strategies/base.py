"""The Strategy base class and the registry every aggregation strategy joins."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..params import ParamError, check_schema, validate_params


class Strategy:
    """Aggregates one round's client updates into the next global state.

    Contract: ``Strategy(global_state, params)`` validates ``params`` against ``schema``
    (ParamError with field ``strategy_params.<name>``); ``add(state, num_examples)`` is
    called once per accepted update, in any order; ``result()`` returns a new state
    dict with exactly the names, shapes and dtypes of ``global_state``, on CPU.
    Strategies with ``needs_all_updates = False`` fold each update in as it arrives and
    keep no reference to it, so the caller may load, add and drop updates one by one;
    those that need every update at once (median, Krum) set it to True.
    """

    name: ClassVar[str] = ""
    schema: ClassVar[dict] = {}
    description: ClassVar[str] = ""
    needs_all_updates: ClassVar[bool] = False

    def __init__(self, global_state: dict[str, torch.Tensor], params: dict | None):
        self.global_state = global_state
        self.params = validate_params(self.schema, params, prefix="strategy_params")
        self.num_updates = 0

    def add(self, state: dict[str, torch.Tensor], num_examples: int) -> None:
        """Take one client update trained on ``num_examples`` examples."""
        raise NotImplementedError

    def result(self) -> dict[str, torch.Tensor]:
        """The aggregated state; ValueError if no update was added."""
        raise NotImplementedError

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
