"""Aggregation strategies, found by name: ``get_strategy("fedavg")(global_state, params)``.

The registry is open: a new strategy subclasses ``Strategy``, sets ``name``,
``schema``, ``description``, ``needs_all_updates`` and ``stateful``, and is decorated
with ``@register_strategy``; importing its module here makes it available.

Built-ins: ``fedavg``, ``fedprox`` (fedavg.py); ``fedavgm`` (server_opt.py);
``fedadagrad``, ``fedadam``, ``fedyogi`` (fedopt.py); ``fedmedian``, ``fedtrimmedavg``,
``krum`` (robust.py).
"""

from .base import STRATEGIES, Strategy, get_strategy, register_strategy
from .fedavg import FedAvg, FedProx
from .fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from .robust import FedMedian, FedTrimmedAvg, Krum
from .server_opt import FedAvgM, ServerOptStrategy

__all__ = [
    "STRATEGIES",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedMedian",
    "FedOpt",
    "FedProx",
    "FedTrimmedAvg",
    "FedYogi",
    "Krum",
    "ServerOptStrategy",
    "Strategy",
    "get_strategy",
    "register_strategy",
]
