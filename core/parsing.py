"""Strict parsing of what requests carry in text: a query parameter, a header. Python's
own `int()` takes "1_000", "+7" and " 7 ", and `json.loads` raises RecursionError on
deep nesting; the API takes neither."""
import json
import re

from core.errors import ValidationFailed

_DECIMAL = re.compile(r"-?[0-9]{1,18}")


def parse_int(text: str | None) -> int:
    """Plain decimal digits (an optional leading minus, at most 18 digits) as an int;
    ValueError for anything else."""
    if text is None or not _DECIMAL.fullmatch(text):
        raise ValueError(f"not a plain decimal integer: {text!r}")
    return int(text)


def parse_json(text: str | bytes):
    """`json.loads`, with nesting too deep for the parser a ValueError too."""
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def query_int(request, name: str, *, default: int, low: int, high: int | None = None) -> int:
    """The query parameter `name` as an integer from `low` (to `high`, when given: larger
    values are capped to it), `default` when absent; raises ValidationFailed naming it."""
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = parse_int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        raise ValidationFailed(f"{name}: must be an integer of at least {low}, got {text[:40]!r}", field=name)
    return min(value, high) if high is not None else value


def query_choice(request, name: str, choices) -> str | None:
    """The query parameter `name`, one of `choices` (None when absent); raises
    ValidationFailed naming it."""
    text = request.query_params.get(name)
    if text is None:
        return None
    if text not in choices:
        raise ValidationFailed(f"{name}: must be one of {', '.join(choices)}, got {text[:40]!r}", field=name)
    return text
