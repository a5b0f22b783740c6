"""The catalog: every model, strategy and optimizer with its parameter schema.

``catalog()`` is what the REST endpoint serves and the job form is generated from, so
it is plain JSON: names, descriptions, and schemas in the format of ``fl.params``.
"""

from __future__ import annotations

import copy

from . import networks, strategies, training


def catalog() -> dict:
    """``{"models": [...], "strategies": [...], "optimizers": [...]}``, JSON-serializable.

    Each list is in registration order (built-ins first, then user models registered
    from ``FLPORTAL_MODELS``). Models and optimizers: ``{"name", "description",
    "schema"}``; strategies add ``needs_all_updates`` (the server must hold every update
    of a round at once) and ``stateful`` (it keeps server state between rounds, see
    ``Strategy.next_server_state``). Schemas are deep copies: changing the catalog does
    not change the registries.
    """
    return {
        "models": [_entry(e.name, e.description, e.schema) for e in networks.MODELS.values()],
        "strategies": [
            {**_entry(cls.name, cls.description, cls.schema),
             "needs_all_updates": bool(cls.needs_all_updates), "stateful": bool(cls.stateful)}
            for cls in strategies.STRATEGIES.values()
        ],
        "optimizers": [_entry(e.name, e.description, e.schema)
                       for e in training.OPTIMIZERS.values()],
    }


def _entry(name: str, description: str, schema: dict) -> dict:
    return {"name": name, "description": description, "schema": copy.deepcopy(schema)}
