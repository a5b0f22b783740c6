"""Aggregation strategies, found by name: ``get_strategy("fedavg")(global_state, params)``.

The registry is open: a new strategy subclasses ``Strategy``, sets ``name``,
``schema``, ``description`` and ``needs_all_updates``, and is decorated with
``@register_strategy``; importing its module here makes it available.
"""

from .base import STRATEGIES, Strategy, get_strategy, register_strategy
from .fedavg import FedAvg

__all__ = ["STRATEGIES", "Strategy", "get_strategy", "register_strategy", "FedAvg"]
