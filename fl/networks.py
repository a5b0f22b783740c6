"""The model registry: models are found by name and built from validated parameters.

Built-ins: ``logreg`` (one linear layer producing logits), ``mlp`` (a ReLU MLP) and
``cnn`` (a small CNN for image-shaped rows, e.g. 8x8 digits). User models come in with
``register_dotted("name", "package.module:factory")``, or all of the
``FLPORTAL_MODELS`` setting at once with ``register_from_settings``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

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


def register_from_settings(mapping: dict[str, str]) -> list[ModelEntry]:
    """Register every ``{"name": "dotted.path"}`` of ``FLPORTAL_MODELS``, in order.

    The caller (the portal's start-up) passes the setting; nothing here reads settings.
    Each path goes through ``register_dotted``, so running this twice is harmless.
    Raises ValueError for a mapping that is not ``str -> str``, or (naming the model)
    for a factory that cannot be imported or a name taken by another model.
    """
    if not isinstance(mapping, dict):
        raise ValueError(f"FLPORTAL_MODELS must be a dict of name -> dotted path, got {mapping!r}")
    entries = []
    for name, dotted_path in mapping.items():
        if not (isinstance(name, str) and name and isinstance(dotted_path, str)):
            raise ValueError(f"FLPORTAL_MODELS: bad entry {name!r}: {dotted_path!r}")
        try:
            entries.append(register_dotted(name, dotted_path))
        except ValueError as exc:
            raise ValueError(f"FLPORTAL_MODELS[{name!r}]: {exc}") from exc
    return entries


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


class ImageCNN(nn.Module):
    """A small CNN over rows that are flattened images.

    Input ``(N, in_channels * image_size**2)`` (a dataset row, as the sites load them)
    or ``(N, in_channels, image_size, image_size)``. Per width in ``channels``: a 3x3
    convolution (padding 1), BatchNorm2d when ``batch_norm``, ReLU, and a 2x2 max-pool
    while the image is at least 2 pixels wide; then dropout and a linear layer to
    logits. For 8x8 digits and the default ``[16, 32]``: 8 -> 4 -> 2, 128 features.
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int,
                 channels: list[int], dropout: float, batch_norm: bool):
        super().__init__()
        self.image_shape = (in_channels, image_size, image_size)
        layers: list[nn.Module] = []
        width, size = in_channels, image_size
        for out_width in channels:
            layers.append(nn.Conv2d(width, out_width, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_width))
            layers.append(nn.ReLU())
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            width = out_width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(width * size * size, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            x = x.reshape(x.shape[0], *self.image_shape)
        return self.head(self.features(x))


def cnn(num_classes: int, in_channels: int, image_size: int, channels: list[int],
        dropout: float, batch_norm: bool, in_features: int | None = None) -> nn.Module:
    """``ImageCNN``; ``in_features`` (filled by the portal from the dataset) must equal
    ``in_channels * image_size**2``, else ParamError on ``model_params.in_features``."""
    pixels = in_channels * image_size * image_size
    if in_features is not None and in_features != pixels:
        raise ParamError("model_params.in_features",
                         f"is {in_features} but in_channels * image_size^2 is {pixels}")
    if not channels:
        raise ParamError("model_params.channels", "needs at least one convolution width")
    return ImageCNN(in_channels, image_size, num_classes, channels, dropout, batch_norm)


_IN_FEATURES = {"type": "int", "required": True, "min": 1, "help": "input features"}
_NUM_CLASSES = {"type": "int", "required": True, "min": 2, "help": "output classes"}
_DROPOUT = {
    "type": "float", "default": 0.0, "min": 0.0, "max": 1.0,
    "max_exclusive": True, "help": "dropout probability after each hidden layer",
}

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
        "dropout": _DROPOUT,
    },
    "Multi-layer perceptron with ReLU activations",
)
register_model(
    "cnn",
    cnn,
    {
        "in_features": {"type": "int", "min": 1,
                        "help": "input features; must be in_channels*image_size^2"},
        "num_classes": _NUM_CLASSES,
        "in_channels": {"type": "int", "default": 1, "min": 1, "help": "image channels"},
        "image_size": {"type": "int", "default": 8, "min": 1,
                       "help": "image height = width, in pixels (8 for digits)"},
        "channels": {"type": "int_list", "default": [16, 32], "min": 1,
                     "help": "output channels of each 3x3 convolution block"},
        "dropout": {**_DROPOUT, "help": "dropout probability before the linear head"},
        "batch_norm": {"type": "bool", "default": False,
                       "help": "BatchNorm2d after each convolution"},
    },
    "Small CNN for square images given as flattened rows (e.g. 8x8 digits)",
)
