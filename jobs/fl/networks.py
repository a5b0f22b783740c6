"""The model registry: models are found by name and built from validated parameters.

Built-ins: ``logreg`` (one linear layer producing logits) and ``mlp`` (a ReLU MLP).
User models come in with ``register_dotted("name", "package.module:factory")``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .params import ParamError, check_schema, validate_params


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: ``factory(**cleaned_params) -> nn.Module``."""

    name: str
    factory: Callable[..., nn.Module]
    schema: dict = field(default_factory=dict)
    description: str = ""


MODELS: dict[str, ModelEntry] = {}


def register_model(
    name: str, factory: Callable[..., nn.Module], schema: dict, description: str = ""
) -> ModelEntry:
    """Add a model to ``MODELS`` and return its entry.

    Registering the same factory and schema again under the same name is a no-op, so
    that a start-up hook that runs twice is harmless; a different model under a taken
    name raises ValueError, as does a malformed schema.
    """
    check_schema(schema)
    entry = ModelEntry(name, factory, schema, description)
    existing = MODELS.get(name)
    if existing is not None and (existing.factory, existing.schema) != (factory, schema):
        raise ValueError(f"model {name!r} is already registered")
    MODELS[name] = entry
    return entry


def register_dotted(name: str, dotted_path: str, description: str = "") -> ModelEntry:
    """Register a user model whose factory lives at ``dotted_path``.

    ``dotted_path`` is ``"package.module:factory"`` or ``"package.module.factory"``. Its
    schema is the factory's ``schema`` attribute when it has one, else empty (the model
    then takes no parameters). Raises ValueError when the factory cannot be imported.
    """
    module_path, _, attr = dotted_path.partition(":")
    if not attr:
        module_path, _, attr = dotted_path.rpartition(".")
    try:
        factory = getattr(importlib.import_module(module_path), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"cannot import model factory {dotted_path!r}: {exc}") from exc
    if not callable(factory):
        raise ValueError(f"model factory {dotted_path!r} is not callable")
    schema = getattr(factory, "schema", None) or {}
    doc = (factory.__doc__ or "").strip().splitlines()
    return register_model(name, factory, schema, description or (doc[0] if doc else ""))


def get_model_entry(name: str) -> ModelEntry:
    """Return the registered entry for ``name``; unknown -> ParamError(field="model")."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(MODELS))
        raise ParamError("model", f"unknown model {name!r} (known: {known})") from None


def build_model(name: str, params: dict, *, seed: int) -> nn.Module:
    """Build model ``name`` from ``params`` with weights initialised from ``seed``.

    The same name, params and seed give identical weights. The global RNG is seeded
    only inside ``torch.random.fork_rng()``, so callers' random streams are untouched.
    Raises ParamError (field ``model`` or ``model_params.<name>``).
    """
    entry = get_model_entry(name)
    cleaned = validate_params(entry.schema, params, prefix="model_params")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return entry.factory(**cleaned)


def logreg(in_features: int, num_classes: int) -> nn.Module:
    """Multinomial logistic regression: a single linear layer producing logits."""
    return nn.Linear(in_features, num_classes)


def mlp(in_features: int, num_classes: int, hidden: list[int], dropout: float) -> nn.Module:
    """ReLU MLP: (Linear, ReLU, Dropout) per hidden width, then a Linear to logits.

    Dropout layers are present even at 0.0 so the state-dict names do not depend on it.
    """
    layers: list[nn.Module] = []
    width = in_features
    for hidden_width in hidden:
        layers += [nn.Linear(width, hidden_width), nn.ReLU(), nn.Dropout(dropout)]
        width = hidden_width
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


_IN_FEATURES = {"type": "int", "required": True, "min": 1, "help": "input features"}
_NUM_CLASSES = {"type": "int", "required": True, "min": 2, "help": "output classes"}

register_model(
    "logreg",
    logreg,
    {"in_features": _IN_FEATURES, "num_classes": _NUM_CLASSES},
    "Logistic regression (one linear layer)",
)
register_model(
    "mlp",
    mlp,
    {
        "in_features": _IN_FEATURES,
        "num_classes": _NUM_CLASSES,
        "hidden": {"type": "int_list", "default": [64], "min": 1, "help": "hidden widths"},
        "dropout": {
            "type": "float", "default": 0.0, "min": 0.0, "max": 1.0,
            "max_exclusive": True, "help": "dropout probability after each hidden layer",
        },
    },
    "Multi-layer perceptron with ReLU activations",
)
