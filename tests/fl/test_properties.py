"""Property-based tests (hypothesis) of the two validators of hostile input:
``fl.serialization.validate_update_file`` (an uploaded update) and
``fl.params.validate_params`` (a job's model/optimizer/strategy parameters).

Both must refuse anything bad with their own exception (InvalidUpdate, ParamError) and
nothing else, and never accept a bad value. Runs are derandomized (the same examples
in CI and locally) and keep no example database; the profile is this file's own.
"""

import itertools
import json
import math
import string
import struct

import pytest
import torch
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as save_with_metadata

from fl import networks, training
from fl import strategies as fl_strategies
from fl.params import MAX_ABS_FLOAT, MAX_ABS_INT, PARAM_TYPES, ParamError, validate_params
from fl.serialization import (
    _SAFETENSORS_DTYPES,
    HEADER_BYTES_PER_TENSOR,
    MAX_METADATA_BYTES,
    InvalidUpdate,
    dtype_name,
    load_state_dict,
    save_state_dict,
    state_dict_to_bytes,
    tensor_spec,
    validate_update_file,
)

settings.register_profile(
    "fl-properties",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile("fl-properties")


def examples(n: int) -> settings:
    """This file's profile with ``n`` examples."""
    return settings(PROFILE, max_examples=n)


# --------------------------------------------------------------------------------------
# validate_update_file
# --------------------------------------------------------------------------------------

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int64)
ALL_DTYPE_NAMES = sorted(set(_SAFETENSORS_DTYPES.values()))
# Finite values each dtype holds (a float32 above bfloat16's max would round to inf).
_FLOAT_VALUES = {
    torch.float32: st.floats(allow_nan=False, allow_infinity=False, width=32),
    torch.float16: st.floats(allow_nan=False, allow_infinity=False, width=16),
    torch.bfloat16: st.floats(min_value=-(2.0**127), max_value=2.0**127, width=32),
}

tensor_names = st.text(min_size=1, max_size=10).filter(lambda s: s != "__metadata__")
shapes = st.lists(st.integers(0, 4), max_size=3).map(tuple)


@st.composite
def tensors(draw) -> torch.Tensor:
    dtype, shape = draw(st.sampled_from(DTYPES)), draw(shapes)
    n = math.prod(shape)
    values = st.integers(-(2**63), 2**63 - 1) if dtype is torch.int64 else _FLOAT_VALUES[dtype]
    return torch.tensor(draw(st.lists(values, min_size=n, max_size=n)), dtype=dtype).reshape(shape)


state_dicts = st.dictionaries(tensor_names, tensors(), min_size=1, max_size=4)

_file_numbers = itertools.count()


@pytest.fixture(scope="module")
def update_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("updates")


def _write(directory, data: bytes):
    path = directory / f"update-{next(_file_numbers)}.safetensors"
    path.write_bytes(data)
    return path


def _normal(spec) -> dict:
    return {name: (tuple(shape), dtype) for name, (shape, dtype) in spec.items()}


def _accepted(directory, data: bytes, spec) -> bool:
    """Validate ``data`` (as a file) against ``spec``: False when refused with
    InvalidUpdate; any other exception fails the test. When accepted, the file must
    really be a valid update: safetensors' strict loader reads it, the header is small,
    and the names, shapes, dtypes and finiteness are those ``spec`` asks for."""
    path = _write(directory, data)
    try:
        validate_update_file(path, spec)
    except InvalidUpdate as exc:
        event(f"refused: {str(exc).split(':')[0][:30]}")
        return False
    finally:
        path.unlink()
    event("accepted")
    loaded = load_state_dict(data)  # raises on anything safetensors itself refuses
    assert tensor_spec(loaded) == _normal(spec)
    for name, tensor in loaded.items():
        if tensor.is_floating_point():
            assert torch.isfinite(tensor.float()).all(), name
    (header_size,) = struct.unpack("<Q", data[:8])
    assert header_size <= MAX_METADATA_BYTES + HEADER_BYTES_PER_TENSOR * max(len(spec), 1)
    return True


@examples(200)
@given(state_dict=state_dicts)
def test_a_state_dict_validates_against_its_own_spec(update_dir, state_dict):
    spec = tensor_spec(state_dict)
    path = update_dir / f"own-{next(_file_numbers)}.safetensors"
    save_state_dict(state_dict, path)
    validate_update_file(path, spec)
    validate_update_file(path, json.loads(json.dumps(spec)))  # shapes as lists, as stored in JSON
    path.unlink()


@st.composite
def poisoned(draw):
    """A state dict and the same with one element of a floating tensor NaN or ±Inf."""
    state_dict = draw(state_dicts)
    targets = sorted(name for name, t in state_dict.items() if t.is_floating_point() and t.numel())
    assume(targets)
    name = draw(st.sampled_from(targets))
    index = draw(st.integers(0, state_dict[name].numel() - 1))
    bad = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    tensor = state_dict[name].clone()
    tensor.view(-1)[index] = bad
    return {**state_dict, name: tensor}, tensor_spec(state_dict)


@examples(200)
@given(case=poisoned())
def test_a_nan_or_inf_anywhere_is_refused(update_dir, case):
    state_dict, spec = case
    path = _write(update_dir, state_dict_to_bytes(state_dict))
    with pytest.raises(InvalidUpdate, match=r"NaN|infinite"):
        validate_update_file(path, spec)
    path.unlink()


@st.composite
def wrong_specs(draw):
    """A state dict and a spec that differs from its own by one name, shape or dtype."""
    state_dict = draw(state_dicts)
    spec = dict(tensor_spec(state_dict))
    name = draw(st.sampled_from(sorted(spec)))
    shape, dtype = spec[name]
    change = draw(st.sampled_from(["add", "remove", "rename", "shape", "reshape", "dtype"]))
    if change == "add":
        extra = draw(tensor_names.filter(lambda n: n not in spec))
        spec[extra] = (draw(shapes), draw(st.sampled_from(ALL_DTYPE_NAMES)))
    elif change == "remove":
        del spec[name]
    elif change == "rename":
        spec[draw(tensor_names.filter(lambda n: n not in spec))] = spec.pop(name)
    elif change == "shape":
        spec[name] = (draw(shapes.filter(lambda s: s != shape)), dtype)
    elif change == "reshape":  # same number of elements, other shape
        other = draw(st.sampled_from([shape[::-1], (math.prod(shape),), (*shape, 1), (1, *shape)]))
        assume(other != shape)
        spec[name] = (other, dtype)
    else:
        spec[name] = (shape, draw(st.sampled_from([d for d in ALL_DTYPE_NAMES if d != dtype])))
    return state_dict, spec


@examples(300)
@given(case=wrong_specs())
def test_a_spec_off_by_one_name_shape_or_dtype_is_refused(update_dir, case):
    state_dict, spec = case
    assert not _accepted(update_dir, state_dict_to_bytes(state_dict), spec)


SMALL_SPEC = {"w": ((2,), "float32"), "step": ((), "int64")}


@examples(300)
@given(data=st.one_of(st.binary(max_size=300),
                      st.binary(min_size=1, max_size=300).map(lambda b: struct.pack("<Q", len(b)) + b)))
def test_arbitrary_bytes_are_refused(update_dir, data):
    assert not _accepted(update_dir, data, SMALL_SPEC)


@examples(300)
@given(state_dict=state_dicts, cut=st.floats(0, 1, exclude_max=True))
def test_a_truncated_file_is_refused(update_dir, state_dict, cut):
    data = state_dict_to_bytes(state_dict)
    assert not _accepted(update_dir, data[:int(cut * len(data))], tensor_spec(state_dict))


@examples(500)
@given(state_dict=state_dicts, where=st.floats(0, 1, exclude_max=True), xor=st.integers(1, 255),
       in_header=st.booleans())
def test_a_flipped_byte_is_refused_or_still_valid(update_dir, state_dict, where, xor, in_header):
    """Any one byte changed (in the length prefix and JSON header, or anywhere): refused
    with InvalidUpdate, or accepted only if still a valid update (a space of the
    header's padding turned into a tab, a finite value turned into another)."""
    data = bytearray(state_dict_to_bytes(state_dict))
    span = 8 + struct.unpack("<Q", data[:8])[0] if in_header else len(data)
    data[int(where * span)] ^= xor
    _accepted(update_dir, bytes(data), tensor_spec(state_dict))


@st.composite
def forged_files(draw):
    """A spec, and a hand-made safetensors file for it: each header entry right or off
    (dtype code, shape, data offsets: overlapping, reversed, out of bounds, not
    integers), random data bytes of about the right length, odd metadata."""
    spec = {name: (tuple(t.shape), dtype_name(t.dtype)) for name, t in draw(state_dicts).items()}
    codes = {v: k for k, v in _SAFETENSORS_DTYPES.items()}
    header, offset = {}, 0
    for name, (shape, dtype) in spec.items():
        size = math.prod(shape) * torch.empty((), dtype=getattr(torch, dtype)).element_size()
        entry = {"dtype": codes[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
        fault = draw(st.sampled_from([None] * 12 + ["dtype", "shape", "offsets", "junk", "drop"]))
        if fault == "dtype":
            entry["dtype"] = draw(st.sampled_from([*codes.values(), "F32 ", "f32", "", "I128"]))
        elif fault == "shape":
            entry["shape"] = draw(st.lists(st.integers(-2, 2**64), max_size=3))
        elif fault == "offsets":
            entry["data_offsets"] = draw(st.lists(st.integers(-1, offset + 16) | st.sampled_from([2**64, 1.0]),
                                                  min_size=0, max_size=3))
        elif fault == "junk":
            entry[draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))] = draw(
                st.none() | st.text(max_size=3) | st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
        if fault != "drop":
            header[name] = entry
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=4), st.text(max_size=8), max_size=3)
                                      | st.sampled_from([None, [], {"a": 1}, "pt"]))
    if draw(st.booleans()):  # the entries in another order
        header = dict(draw(st.permutations(list(header.items()))))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * draw(st.integers(0, 8))
    length = len(text) + draw(st.sampled_from([0] * 12 + [-1, 1, 8]))
    slack = draw(st.sampled_from([0] * 4 + [-2, -1, 1, 2]))
    body = draw(st.binary(min_size=max(offset + slack, 0), max_size=max(offset + slack, 0)))
    return struct.pack("<Q", max(length, 0)) + text + body, spec


@examples(500)
@given(case=forged_files())
def test_a_forged_header_is_refused_or_valid(update_dir, case):
    data, spec = case
    _accepted(update_dir, data, spec)


@examples(60)
@given(state_dict=state_dicts, size=st.integers(MAX_METADATA_BYTES - 40, MAX_METADATA_BYTES + 40),
       char=st.sampled_from(["x", "é", "\n", '"']))
def test_metadata_is_refused_over_its_limit(update_dir, state_dict, size, char):
    value = char * (size // len(json.dumps(char)[1:-1]))
    metadata = {"format": "pt", "note": value}
    data = save_with_metadata({k: t.contiguous() for k, t in state_dict.items()}, metadata=metadata)
    assert _accepted(update_dir, data, tensor_spec(state_dict)) == (len(json.dumps(metadata)) <= MAX_METADATA_BYTES)


# --------------------------------------------------------------------------------------
# validate_params
# --------------------------------------------------------------------------------------

HUGE = [10**400, -(10**400), 2**53, 2**53 + 1, -(2**53) - 1, 2**63, 2**64 + 1]
ODD_FLOATS = [math.nan, math.inf, -math.inf, 1e308, -1e308, 1e12, math.nextafter(1e12, math.inf), 5e-324, -0.0]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(HUGE), st.floats(),
    st.sampled_from(ODD_FLOATS),
    st.integers(4301, 4400).map(lambda digits: -(10**digits)),  # past str(int)'s 4300-digit limit: repr raises
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.lists(children, max_size=3).map(tuple)
    | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8,
)


def _bounds(kind: str):
    if kind in ("int", "int_list"):
        return st.integers(-1000, 1000) | st.sampled_from([0, 1, -(2**53), 2**53, 10**20])
    return (st.floats(-1e13, 1e13, allow_nan=False) | st.integers(-1000, 1000)
            | st.sampled_from([0.0, 1.0, MAX_ABS_FLOAT, -MAX_ABS_FLOAT, 5e-324]))


@st.composite
def param_specs(draw) -> dict:
    kind = draw(st.sampled_from(PARAM_TYPES))
    spec = {"type": kind}
    if kind in ("int", "float", "int_list"):
        for end in ("min", "max"):
            if draw(st.booleans()):
                spec[end] = draw(_bounds(kind))
                if draw(st.booleans()):
                    spec[f"{end}_exclusive"] = True
    choice_values = {
        "choice": st.integers(0, 1) | st.integers(-3, 3) | st.text(max_size=4) | st.sampled_from([0.5, 1.0, None]),
        "int": st.integers(-5, 5), "float": st.floats(-5, 5) | st.integers(-5, 5),
        "str": st.text(max_size=4), "bool": st.booleans(),
        "int_list": st.lists(st.integers(-3, 3), max_size=2),
    }[kind]
    if kind == "choice" or draw(st.integers(0, 3)) == 0:
        spec["choices"] = draw(st.lists(choice_values, min_size=1, max_size=4))
    if draw(st.integers(0, 3)) == 0:
        spec["required"] = True
    if draw(st.booleans()):
        default = draw(value_for(spec))
        if _expected(spec, default)[0]:  # a schema's default is its author's, and valid
            spec["default"] = default
    return spec


def value_for(spec: dict):
    """Values aimed at ``spec``: anything JSON-ish, its bounds and their neighbours, its
    choices, lists of such numbers."""
    near = [json_values]
    points = [spec[end] for end in ("min", "max") if end in spec]
    if points:
        numbers = [p + d for p in points for d in (-1, 0, 1)]
        numbers += [math.nextafter(float(p), to) for p in points for to in (-math.inf, math.inf)]
        near.append(st.sampled_from(numbers))
        if spec["type"] == "int_list":
            near.append(st.lists(st.sampled_from([p + d for p in points for d in (-1, 0, 1)]), max_size=3))
    if spec.get("choices"):
        near.append(st.sampled_from(spec["choices"]))
        near += [st.sampled_from([look for c in spec["choices"] for look in _lookalikes(c)])] * 2
    if spec["type"] == "int_list":
        near.append(st.lists(st.integers(-10, 10), max_size=3))
    return st.one_of(near)


def _lookalikes(choice) -> list:
    """Values equal to ``choice`` in Python, or close in print, that JSON tells apart."""
    if type(choice) in (int, float):
        return [True, False, float(choice), int(choice), [choice]]
    return [str(choice), [choice]]


def _in_range(spec: dict, x) -> bool:
    low, high = spec.get("min"), spec.get("max")
    if low is not None and not (x > low if spec.get("min_exclusive") else x >= low):
        return False
    return high is None or (x < high if spec.get("max_exclusive") else x <= high)


def _is_int(x) -> bool:
    return type(x) is int


def _expected(spec: dict, value) -> tuple[bool, object]:
    """(accepted?, cleaned value), by the rules of fl/params.py's docstrings, written
    independently of it."""
    kind = spec["type"]
    if kind == "int":
        ok = _is_int(value) and abs(value) <= MAX_ABS_INT and _in_range(spec, value)
        cleaned = value
    elif kind == "float":
        ok = (_is_int(value) or (type(value) is float and math.isfinite(value))) and abs(value) <= MAX_ABS_FLOAT
        cleaned = float(value) if ok else None
        ok = ok and _in_range(spec, cleaned)
    elif kind == "bool":
        ok, cleaned = type(value) is bool, value
    elif kind == "str":
        ok, cleaned = type(value) is str, value
    elif kind == "int_list":
        ok = isinstance(value, (list, tuple)) and all(
            _is_int(i) and abs(i) <= MAX_ABS_INT and _in_range(spec, i) for i in value)
        cleaned = list(value) if ok else None
    else:
        ok, cleaned = True, value
    if ok and "choices" in spec:  # equal to a choice, a bool only to a bool (True is not 1)
        ok = any(c == cleaned and isinstance(c, bool) == isinstance(cleaned, bool) for c in spec["choices"])
    return ok, cleaned


def _satisfies(spec: dict, cleaned) -> bool:
    """A cleaned value as its spec promises: the type exactly, bounds, choices,
    magnitudes within the global limits."""
    kind = spec["type"]
    expected_type = {"int": int, "float": float, "bool": bool, "str": str, "int_list": list}.get(kind)
    if expected_type is not None and type(cleaned) is not expected_type:
        return False
    if kind == "float" and not (math.isfinite(cleaned) and abs(cleaned) <= MAX_ABS_FLOAT):
        return False
    if kind == "int" and abs(cleaned) > MAX_ABS_INT:
        return False
    if kind == "int_list" and not all(_is_int(i) and abs(i) <= MAX_ABS_INT for i in cleaned):
        return False
    if kind in ("int", "float") and not _in_range(spec, cleaned):
        return False
    if kind == "int_list" and not all(_in_range(spec, i) for i in cleaned):
        return False
    return _expected(spec, cleaned)[0]


def _check(schema: dict, params, prefix: str) -> dict | None:
    """validate_params either returns a cleaned dict satisfying every spec, or raises
    ParamError naming a parameter (of the schema, or the unknown one given) under
    ``prefix``; anything else fails the test. Returns the cleaned dict, or None."""
    dotted = f"{prefix}." if prefix and not prefix.endswith(".") else prefix
    try:
        cleaned = validate_params(schema, params, prefix=prefix)
    except ParamError as exc:
        event("ParamError")
        if not isinstance(params, (dict, type(None))):
            assert exc.field == (dotted.rstrip(".") or "params")
        else:
            assert exc.field.startswith(dotted)
            assert exc.field[len(dotted):] in set(schema) | set(params or {})
        assert str(exc)  # the message itself can be made (no repr of a 5000-digit int)
        return None
    event("cleaned")
    assert isinstance(cleaned, dict) and set(cleaned) <= set(schema)
    for name, spec in schema.items():
        if params and name in params:
            assert _satisfies(spec, cleaned[name]), (name, spec, cleaned[name])
        elif "default" in spec:
            assert cleaned[name] == spec["default"]
        else:
            assert name not in cleaned and not spec.get("required")
    json.dumps(cleaned, allow_nan=False)  # the cleaned params go into the database as JSON
    return cleaned


param_names = st.sampled_from(["a", "b", "lr", "x.y", ""]) | st.text(string.ascii_lowercase, min_size=1, max_size=3)
schemas = st.dictionaries(param_names, param_specs(), max_size=4)
prefixes = st.sampled_from(["", "model_params", "optimizer_params.", "strategy_params"])


@st.composite
def params_for(draw, schema: dict):
    """Params for ``schema``: its names with values aimed at their specs, sometimes an
    unknown name, sometimes not a dict at all."""
    if draw(st.integers(0, 15)) == 0:
        return draw(json_values)
    chosen = draw(st.lists(st.sampled_from(sorted(schema)), unique=True)) if schema else []
    params = {name: draw(value_for(schema[name])) for name in chosen}
    if draw(st.integers(0, 7)) == 0:
        params[draw(param_names)] = draw(json_values)
    return params


@examples(400)
@given(data=st.data(), schema=schemas, prefix=prefixes)
def test_validate_params_cleans_or_raises_param_error(data, schema, prefix):
    params = data.draw(params_for(schema))
    cleaned = _check(schema, params, prefix)
    if not isinstance(params, (dict, type(None))) or set(params or {}) - set(schema):
        assert cleaned is None  # not an object, or an unknown name
    else:
        given = params or {}
        accept = all(_expected(spec, given[name])[0] if name in given else not spec.get("required")
                     for name, spec in schema.items())
        assert (cleaned is not None) == accept, (schema, params)


specs_and_values = param_specs().flatmap(lambda spec: st.tuples(st.just(spec), value_for(spec)))


@examples(600)
@given(case=specs_and_values)
@example(case=({"type": "choice", "choices": [0, 1]}, True))  # True == 1 in Python, not in JSON
@example(case=({"type": "choice", "choices": ["a"]}, [-(10**5000)]))  # no repr for the message
@example(case=({"type": "int", "max": 3}, 10**5000))
@example(case=({"type": "float"}, 10**400))
@example(case=({"type": "float", "min": 0, "min_exclusive": True}, 5e-324))
@example(case=({"type": "int_list", "min": 1}, (1, True)))
def test_validate_params_accepts_exactly_what_a_spec_allows(case):
    """One parameter: accepted exactly when the independent reading of the rules says so,
    and the cleaned value is the expected one."""
    spec, value = case
    ok, cleaned = _expected(spec, value)
    got = _check({"p": spec}, {"p": value}, "params")
    assert (got is not None) == ok, (spec, value)
    if ok:
        assert got["p"] == cleaned and type(got["p"]) is type(cleaned)


REGISTRIES = (
    [("optimizer_params", name, entry.schema) for name, entry in training.OPTIMIZERS.items()]
    + [("model_params", name, entry.schema) for name, entry in networks.MODELS.items()]
    + [("strategy_params", name, cls.schema) for name, cls in fl_strategies.STRATEGIES.items()]
)


@pytest.mark.parametrize(("prefix", "name", "schema"), REGISTRIES, ids=[f"{p}-{n}" for p, n, _ in REGISTRIES])
@examples(60)
@given(data=st.data())
def test_registered_schemas_clean_or_raise_param_error(prefix, name, schema, data):
    params = data.draw(params_for(schema))
    cleaned = _check(schema, params, prefix)
    if cleaned is not None and prefix == "strategy_params":
        assert fl_strategies.get_strategy(name).min_updates(cleaned) >= 1
