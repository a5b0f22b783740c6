"""Parameter schemas shared by every registry (models, optimizers, strategies).

A schema is a ``dict[str, dict]`` mapping a parameter name to its spec::

    {"type": "int" | "float" | "bool" | "str" | "int_list" | "choice",
     "default": ..., "min": ..., "max": ..., "choices": [...],
     "required": bool, "help": str,
     "min_exclusive": bool, "max_exclusive": bool}

Only ``type`` is mandatory. ``min``/``max`` are inclusive unless ``min_exclusive`` /
``max_exclusive`` is true (``lr`` must be ``> 0``, ``momentum`` ``< 1``); for
``int_list`` they bound every element. ``choices`` applies to any type and is what a
``choice`` parameter is checked against.
"""

from __future__ import annotations

import copy
import math
from typing import Any

PARAM_TYPES = ("int", "float", "bool", "str", "int_list", "choice")

_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "int_list": "a list of integers",
}


class ParamError(ValueError):
    """A parameter was refused. ``field`` names it (``optimizer_params.lr``)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


def validate_params(schema: dict, params: dict | None, *, prefix: str = "") -> dict:
    """Check ``params`` against ``schema`` and return a cleaned copy with defaults filled.

    ``prefix`` (``"optimizer_params"`` or ``"optimizer_params."``) is prepended to the
    field named in errors. Optional parameters without a default that are not given
    are left out of the result. The result is JSON-serializable (floats are ``float``,
    ``int_list`` is a ``list``).

    Raises ParamError for: ``params`` not a dict, an unknown key, a missing required
    parameter, a wrong type (a bool is not an int; an int is accepted for a float,
    NaN/Inf are not), a value out of range, a value not among ``choices``.
    """
    dotted = f"{prefix}." if prefix and not prefix.endswith(".") else prefix
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ParamError(dotted.rstrip(".") or "params", "must be an object")
    unknown = sorted(set(params) - set(schema), key=str)
    if unknown:
        known = ", ".join(sorted(schema)) or "none"
        raise ParamError(f"{dotted}{unknown[0]}", f"unknown parameter (known: {known})")
    cleaned = {}
    for name, spec in schema.items():
        field = f"{dotted}{name}"
        if name in params:
            cleaned[name] = _clean_value(field, spec, params[name])
        elif spec.get("required"):
            raise ParamError(field, "is required")
        elif "default" in spec:
            cleaned[name] = copy.deepcopy(spec["default"])
    return cleaned


def check_schema(schema: dict) -> None:
    """Raise ValueError if ``schema`` itself is malformed (a programming error)."""
    if not isinstance(schema, dict):
        raise ValueError("a schema must be a dict of name -> spec")
    for name, spec in schema.items():
        if not isinstance(spec, dict) or spec.get("type") not in PARAM_TYPES:
            raise ValueError(f"schema entry {name!r}: 'type' must be one of {PARAM_TYPES}")
        if spec["type"] == "choice" and not spec.get("choices"):
            raise ValueError(f"schema entry {name!r}: a choice needs 'choices'")


def _clean_value(field: str, spec: dict, value: Any) -> Any:
    kind = spec["type"]
    if kind == "choice":
        cleaned = value
    elif kind == "int_list":
        cleaned = _as_int_list(field, value)
        for item in cleaned:
            _check_range(field, spec, item)
    else:
        cleaned = _as_scalar(field, kind, value)
        if kind in ("int", "float"):
            _check_range(field, spec, cleaned)
    choices = spec.get("choices")
    # ``in`` alone would take true for a choice 1 (True == 1): a bool matches only a bool.
    if choices is not None and not any(c == cleaned and isinstance(c, bool) == isinstance(cleaned, bool)
                                       for c in choices):
        allowed = ", ".join(repr(c) for c in choices)
        raise ParamError(field, f"must be one of {allowed}, got {_short_repr(value)}")
    return cleaned


#: Bounds of any number a parameter may hold, whatever its schema: what a float64, a
#: JSON client and a torch module's sizes can all take (a schema bounds most far tighter).
MAX_ABS_INT = 2**53
MAX_ABS_FLOAT = 1e12


def _as_scalar(field: str, kind: str, value: Any) -> Any:
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > MAX_ABS_INT:
            raise ParamError(field, f"must be between -2**53 and 2**53, got {_describe(value)}")
        return int(value)
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ParamError(field, f"must be a finite number, got {value!r}")
        if abs(value) > MAX_ABS_FLOAT:
            raise ParamError(field, f"must be between -{MAX_ABS_FLOAT:g} and {MAX_ABS_FLOAT:g}, got {_describe(value)}")
        return float(value)
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "str" and isinstance(value, str):
        return value
    raise ParamError(field, f"must be {_TYPE_WORDS[kind]}, got {_describe(value)}")


def _as_int_list(field: str, value: Any) -> list[int]:
    if not isinstance(value, (list, tuple)):
        raise ParamError(field, f"must be a list of integers, got {_describe(value)}")
    for item in value:
        if not isinstance(item, int) or isinstance(item, bool):
            raise ParamError(field, f"must be a list of integers, got item {_describe(item)}")
        if abs(item) > MAX_ABS_INT:
            raise ParamError(field, f"items must be between -2**53 and 2**53, got {_describe(item)}")
    return [int(item) for item in value]


def _check_range(field: str, spec: dict, value: int | float) -> None:
    low, high = spec.get("min"), spec.get("max")
    if low is not None:
        if spec.get("min_exclusive") and not value > low:
            raise ParamError(field, f"must be > {low}, got {value!r}")
        if not spec.get("min_exclusive") and not value >= low:
            raise ParamError(field, f"must be >= {low}, got {value!r}")
    if high is not None:
        if spec.get("max_exclusive") and not value < high:
            raise ParamError(field, f"must be < {high}, got {value!r}")
        if not spec.get("max_exclusive") and not value <= high:
            raise ParamError(field, f"must be <= {high}, got {value!r}")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {value!r}"
    return f"{type(value).__name__} {_short_repr(value)}"


def _short_repr(value: Any) -> str:
    """``repr(value)`` cut to 40 characters; a placeholder where there is none (an int
    past Python's 4300-digit str() limit raises ValueError, a structure nested too deep
    RecursionError), so a refusal is always a ParamError."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return "(too large to show)"
    if len(text) > 40:
        text = text[:37] + "..."
    return text


def parse_model_paths(text: str | None) -> dict[str, str]:
    """``FLPORTAL_MODELS`` as the environment gives it ("name=pkg.mod.factory,other=pkg.mod:f")
    to the {name: dotted path} mapping networks.register_from_settings takes. Read by the
    portal's settings and by every site's trainer, which must know the same models."""
    pairs = (item.strip().split("=", 1) for item in (text or "").split(",") if item.strip())
    mapping = {}
    for pair in pairs:
        if len(pair) != 2 or not pair[0].strip() or not pair[1].strip():
            raise ValueError(f"FLPORTAL_MODELS: expected name=dotted.path, got {'='.join(pair)!r}")
        mapping[pair[0].strip()] = pair[1].strip()
    return mapping
