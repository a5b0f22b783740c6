import hashlib

import pytest
import torch
from safetensors.torch import save_file

from fl.serialization import (
    InvalidUpdate,
    file_sha256,
    load_state_dict,
    save_state_dict,
    state_dict_to_bytes,
    tensor_spec,
    validate_update_file,
)


@pytest.fixture
def state():
    return {
        "fc.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "fc.bias": torch.tensor([0.5, -0.5]),
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
    }


@pytest.fixture
def spec(state):
    return tensor_spec(state)


def write(tmp_path, tensors, name="update.safetensors"):
    path = tmp_path / name
    save_file(tensors, str(path))
    return path


def refusal(path, spec):
    with pytest.raises(InvalidUpdate) as info:
        validate_update_file(path, spec)
    return str(info.value)


def test_tensor_spec_names_shapes_and_dtypes(spec):
    assert spec == {
        "fc.weight": ((2, 3), "float32"),
        "fc.bias": ((2,), "float32"),
        "bn.num_batches_tracked": ((), "int64"),
    }


def test_round_trip_through_bytes_and_file(tmp_path, state):
    from_bytes = load_state_dict(state_dict_to_bytes(state))
    path = tmp_path / "model.safetensors"
    save_state_dict(state, path)
    from_file = load_state_dict(path)
    for loaded in (from_bytes, from_file):
        assert set(loaded) == set(state)
        for name, tensor in state.items():
            assert torch.equal(loaded[name], tensor)
            assert loaded[name].dtype == tensor.dtype
            assert loaded[name].is_contiguous() and loaded[name].device.type == "cpu"
    assert list(tmp_path.iterdir()) == [path]  # the temp file was renamed away


def test_save_accepts_views_and_tied_weights():
    base = torch.randn(4, 4, requires_grad=True)
    tied = {"a": base, "b": base, "t": base.t()}
    loaded = load_state_dict(state_dict_to_bytes(tied))
    assert torch.equal(loaded["b"], base.detach())
    assert torch.equal(loaded["t"], base.detach().t())
    assert not loaded["a"].requires_grad


def test_load_refuses_garbage_bytes():
    with pytest.raises(ValueError, match="unreadable safetensors"):
        load_state_dict(b"not a safetensors file at all")


def test_valid_update_passes(tmp_path, state, spec):
    validate_update_file(write(tmp_path, state), spec)


def test_spec_shapes_may_be_lists_after_json(tmp_path, state, spec):
    json_like = {name: (list(shape), dtype) for name, (shape, dtype) in spec.items()}
    validate_update_file(write(tmp_path, state), json_like)


def test_garbage_bytes_are_unreadable(tmp_path, spec):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\x00\x01garbage" * 50)
    assert refusal(path, spec).startswith("unreadable safetensors: ")


def test_truncated_file_is_unreadable(tmp_path, state, spec):
    path = write(tmp_path, state)
    path.write_bytes(path.read_bytes()[:-4])
    assert refusal(path, spec).startswith("unreadable safetensors: ")


def test_empty_file_is_unreadable(tmp_path, spec):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    assert refusal(path, spec).startswith("unreadable safetensors: ")


def test_missing_tensor_is_named(tmp_path, state, spec):
    del state["fc.bias"]
    assert refusal(write(tmp_path, state), spec) == "missing tensors: 'fc.bias'"


def test_extra_tensor_is_named(tmp_path, state, spec):
    state["sneaky"] = torch.zeros(1)
    assert refusal(write(tmp_path, state), spec) == "unexpected tensors: 'sneaky'"


def test_wrong_shape_names_tensor_expected_and_got(tmp_path, state, spec):
    state["fc.weight"] = torch.zeros(3, 2)
    message = refusal(write(tmp_path, state), spec)
    assert message == "tensor 'fc.weight': expected shape (2, 3), got (3, 2)"


def test_wrong_dtype_names_tensor_expected_and_got(tmp_path, state, spec):
    state["fc.bias"] = state["fc.bias"].double()
    message = refusal(write(tmp_path, state), spec)
    assert message == "tensor 'fc.bias': expected dtype float32, got float64"


def test_wrong_integer_dtype(tmp_path, state, spec):
    state["bn.num_batches_tracked"] = torch.tensor(7, dtype=torch.int32)
    assert "expected dtype int64, got int32" in refusal(write(tmp_path, state), spec)


@pytest.mark.parametrize("bad, word", [(float("nan"), "NaN"), (float("inf"), "infinite"),
                                       (float("-inf"), "infinite")])
def test_non_finite_values_are_refused(tmp_path, state, spec, bad, word):
    state["fc.weight"][1, 2] = bad
    assert refusal(write(tmp_path, state), spec) == f"tensor 'fc.weight' contains {word} values"


def test_non_finite_check_covers_half_precision(tmp_path):
    half = {"w": torch.tensor([1.0, float("nan")], dtype=torch.bfloat16)}
    assert "NaN" in refusal(write(tmp_path, half), tensor_spec(half))


def test_file_sha256_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"abc" * 1000)
    assert file_sha256(path, chunk=7) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_the_header_alone_gives_names_shapes_and_dtypes_on_the_meta_device(tmp_path):
    from fl.serialization import file_tensor_spec, load_state_dict_header

    state = {"w": torch.randn(3, 4), "b": torch.zeros(4, dtype=torch.float64), "n": torch.tensor(7)}
    path = tmp_path / "m.safetensors"
    save_state_dict(state, path)
    header = load_state_dict_header(path)
    assert {k: (tuple(t.shape), t.dtype, t.device.type) for k, t in header.items()} == {
        "w": ((3, 4), torch.float32, "meta"), "b": ((4,), torch.float64, "meta"), "n": ((), torch.int64, "meta")}
    assert file_tensor_spec(path) == {"w": ((3, 4), "float32"), "b": ((4,), "float64"), "n": ((), "int64")}
    path.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(ValueError, match="unreadable safetensors"):
        load_state_dict_header(path)
