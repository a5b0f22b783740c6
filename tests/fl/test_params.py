import json

import pytest

from fl.params import ParamError, check_schema, validate_params

SCHEMA = {
    "lr": {"type": "float", "default": 0.1, "min": 0.0, "min_exclusive": True},
    "momentum": {"type": "float", "default": 0.0, "min": 0.0, "max": 1.0, "max_exclusive": True},
    "epochs": {"type": "int", "required": True, "min": 1, "max": 100},
    "nesterov": {"type": "bool", "default": False},
    "label": {"type": "str", "default": "x"},
    "hidden": {"type": "int_list", "default": [64], "min": 1},
    "mode": {"type": "choice", "choices": ["a", "b"], "default": "a"},
    "note": {"type": "str"},
}


def refusal(params, prefix=""):
    with pytest.raises(ParamError) as info:
        validate_params(SCHEMA, params, prefix=prefix)
    return info.value


def test_defaults_filled_and_result_is_json_serializable():
    cleaned = validate_params(SCHEMA, {"epochs": 3})
    assert cleaned == {"lr": 0.1, "momentum": 0.0, "epochs": 3, "nesterov": False,
                       "label": "x", "hidden": [64], "mode": "a"}
    assert json.loads(json.dumps(cleaned)) == cleaned


def test_default_list_is_copied_not_shared():
    cleaned = validate_params(SCHEMA, {"epochs": 1})
    cleaned["hidden"].append(5)
    assert SCHEMA["hidden"]["default"] == [64]


def test_int_accepted_for_float_and_tuple_for_int_list():
    cleaned = validate_params(SCHEMA, {"epochs": 1, "lr": 1, "hidden": (3, 4)})
    assert cleaned["lr"] == 1.0 and isinstance(cleaned["lr"], float)
    assert cleaned["hidden"] == [3, 4]


def test_none_params_means_empty():
    assert validate_params({"a": {"type": "int", "default": 2}}, None) == {"a": 2}


def test_error_str_and_attributes_with_prefix():
    error = refusal({"epochs": 1, "lr": 0}, prefix="optimizer_params")
    assert error.field == "optimizer_params.lr"
    assert error.message.startswith("must be > 0")
    assert str(error).startswith("optimizer_params.lr: must be > 0")
    assert isinstance(error, ValueError)


def test_prefix_with_trailing_dot_is_not_doubled():
    assert refusal({"epochs": 0}, prefix="p.").field == "p.epochs"


@pytest.mark.parametrize("params, field, words", [
    ({"epochs": 1, "bogus": 1}, "bogus", "unknown parameter"),
    ({}, "epochs", "is required"),
    ({"epochs": True}, "epochs", "must be an integer"),
    ({"epochs": 1.5}, "epochs", "must be an integer"),
    ({"epochs": "3"}, "epochs", "must be an integer"),
    ({"epochs": 1, "lr": True}, "lr", "must be a number"),
    ({"epochs": 1, "lr": "0.1"}, "lr", "must be a number"),
    ({"epochs": 1, "lr": float("nan")}, "lr", "finite"),
    ({"epochs": 1, "nesterov": 1}, "nesterov", "true or false"),
    ({"epochs": 1, "label": 3}, "label", "must be a string"),
    ({"epochs": 1, "hidden": 64}, "hidden", "list of integers"),
    ({"epochs": 1, "hidden": [64, True]}, "hidden", "list of integers"),
    ({"epochs": 0}, "epochs", "must be >= 1"),
    ({"epochs": 101}, "epochs", "must be <= 100"),
    ({"epochs": 1, "lr": -0.5}, "lr", "must be > 0"),
    ({"epochs": 1, "momentum": 1.0}, "momentum", "must be < 1"),
    ({"epochs": 1, "hidden": [8, 0]}, "hidden", "must be >= 1"),
    ({"epochs": 1, "mode": "c"}, "mode", "must be one of"),
    ({"epochs": 1, "note": None}, "note", "got null"),
])
def test_each_kind_of_refusal_names_the_field(params, field, words):
    error = refusal(params)
    assert error.field == field
    assert words in error.message


def test_params_must_be_a_dict():
    assert refusal([1, 2], prefix="model_params").field == "model_params"


def test_malformed_schema_is_a_programming_error():
    with pytest.raises(ValueError):
        check_schema({"x": {"type": "complex"}})
    with pytest.raises(ValueError):
        check_schema({"x": {"type": "choice"}})
