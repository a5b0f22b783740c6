"""Example user model factories, to copy when writing your own.

A factory is any callable returning an ``nn.Module``; its ``schema`` attribute (same
format as ``fl.params``) says which keyword arguments it takes. Register it with a
dotted path in the portal's settings::

    FLPORTAL_MODELS = {"tiny_mlp": "fl.examples.tiny_mlp"}

Taking both ``in_features`` and ``num_classes`` lets the portal fill them from the
dataset the nodes offer.
"""

from __future__ import annotations

from torch import nn


def tiny_mlp(in_features: int, num_classes: int, width: int = 32) -> nn.Module:
    """A one-hidden-layer ReLU MLP (an example user model)."""
    return nn.Sequential(nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, num_classes))


tiny_mlp.schema = {
    "in_features": {"type": "int", "required": True, "min": 1, "help": "input features"},
    "num_classes": {"type": "int", "required": True, "min": 2, "help": "output classes"},
    "width": {"type": "int", "default": 32, "min": 1, "help": "hidden width"},
}
