"""FedAvg folds updates in through a small float64 buffer, slice by slice, and update
validation reads tensor data block by block: both must give exactly what the whole-tensor
computations give (bench/aggregation.py and bench/transfer.py measure the memory)."""
import pytest
import torch
from safetensors.torch import save_file

from jobs.fl import serialization
from jobs.fl.serialization import InvalidUpdate, tensor_spec, validate_update_file
from jobs.fl.strategies import FedAvg, FedAvgM
from jobs.fl.strategies import fedavg as fedavg_module
from jobs.fl.strategies.base import cast_like


def naive_fedavg(global_state, updates, weights):
    """The whole-tensor reference: float64 sums by promotion, divided, cast."""
    sums = {name: torch.zeros(t.shape, dtype=torch.float64) for name, t in global_state.items()}
    for update, weight in zip(updates, weights):
        for name, tensor in update.items():
            sums[name].add_(tensor, alpha=float(weight))
    total = float(sum(weights))
    return {name: cast_like(sums[name] / total, ref) for name, ref in global_state.items()}


def random_state(gen):
    return {
        "w": torch.randn(37, 53, generator=gen) * 100,
        "h": (torch.randn(1001, generator=gen) * 10).half(),
        "b": torch.randn(777, generator=gen).bfloat16(),
        "d": torch.randn(300, generator=gen, dtype=torch.float64),
        "n": torch.randint(0, 50, (), generator=gen),
        "i": torch.randint(0, 1000, (999,), generator=gen).int(),
        "mask": torch.rand(500, generator=gen) > 0.5,
    }


@pytest.mark.parametrize("slice_bounds", [(7, 7), (64, 256), (1 << 14, 1 << 18)])
def test_sliced_fedavg_is_bit_identical_to_whole_tensor_sums(monkeypatch, slice_bounds):
    monkeypatch.setattr(fedavg_module, "MIN_SLICE", slice_bounds[0])
    monkeypatch.setattr(fedavg_module, "MAX_SLICE", slice_bounds[1])
    gen = torch.Generator().manual_seed(0)
    global_state = random_state(gen)
    updates = [random_state(gen) for _ in range(5)]
    updates[2]["w"] = updates[2]["w"].t().contiguous().t()  # a non-contiguous update tensor
    weights = [3, 1000, 7, 1, 250]
    agg = FedAvg(global_state, {})
    for update, weight in zip(updates, weights):
        agg.add(update, weight)
    expected = naive_fedavg(global_state, updates, weights)
    for _ in range(2):  # result() may be called again
        out = agg.result()
        for name, tensor in expected.items():
            assert out[name].dtype == tensor.dtype and out[name].shape == tensor.shape
            assert torch.equal(out[name], tensor), name


def test_server_optimizers_see_the_same_means(monkeypatch):
    monkeypatch.setattr(fedavg_module, "MAX_SLICE", 64)
    monkeypatch.setattr(fedavg_module, "MIN_SLICE", 64)
    gen = torch.Generator().manual_seed(1)
    global_state = {"w": torch.randn(50, 40, generator=gen)}
    updates = [{"w": torch.randn(50, 40, generator=gen)} for _ in range(3)]
    agg = FedAvgM(global_state, {})
    for k, update in enumerate(updates):
        agg.add(update, k + 1)
    mean = sum(u["w"].double() * (k + 1) for k, u in enumerate(updates)) / 6
    assert torch.allclose(agg.weighted_means()["w"], mean, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bad, word", [(float("nan"), "NaN"), (float("inf"), "infinite"),
                                       (float("-inf"), "infinite")])
@pytest.mark.parametrize("where", [0, 4095, 10_000, -1])
def test_non_finite_values_are_found_in_any_block(tmp_path, monkeypatch, bad, word, where):
    monkeypatch.setattr(serialization, "CHECK_BLOCK", 4096)  # 1024 float32 values per block
    state = {"a": torch.ones(3), "big": torch.randn(10_001), "z": torch.zeros(0, 5),
             "half": torch.ones(2000, dtype=torch.float16)}
    path = tmp_path / "update.safetensors"
    save_file(state, str(path))
    validate_update_file(path, tensor_spec(state))  # all finite
    state["big"][where] = bad
    save_file(state, str(path))
    with pytest.raises(InvalidUpdate, match=f"tensor 'big' contains {word}"):
        validate_update_file(path, tensor_spec(state))


def test_block_check_of_every_float_dtype(tmp_path, monkeypatch):
    monkeypatch.setattr(serialization, "CHECK_BLOCK", 64)
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16,
                  torch.float8_e4m3fn, torch.float8_e5m2):
        values = torch.linspace(-2, 2, 300).to(dtype)
        path = tmp_path / f"{dtype}.safetensors"
        save_file({"x": values, "s": torch.tensor(1.5).to(dtype)}, str(path))
        validate_update_file(path, tensor_spec({"x": values, "s": torch.tensor(1.5).to(dtype)}))
        if dtype == torch.float8_e4m3fn:
            continue  # no infinity, and its NaN does not survive every cast
        values[-1] = float("nan")
        save_file({"x": values, "s": torch.tensor(1.5).to(dtype)}, str(path))
        with pytest.raises(InvalidUpdate, match="tensor 'x' contains NaN"):
            validate_update_file(path, tensor_spec({"x": values, "s": torch.tensor(1.5).to(dtype)}))
