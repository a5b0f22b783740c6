"""FedAvg folds updates in through a small buffer, slice by slice, and update validation
reads tensor data block by block: both must give exactly what the whole-tensor
computations give (bench/aggregation.py and bench/transfer.py measure the memory).
With ``{"sums": "float32"}`` (the default) the float sums are float32: their error must
stay within the bound fedavg.py documents; ``{"sums": "float64"}`` gives the whole-tensor
float64 sums exactly."""
import math

import pytest
import torch
from safetensors.torch import save_file

from fl import serialization
from fl.serialization import InvalidUpdate, tensor_spec, validate_update_file
from fl.strategies import FedAvg, FedAvgM
from fl.strategies import fedavg as fedavg_module
from fl.strategies.base import cast_like

F32_TYPES = (torch.float32, torch.float16, torch.bfloat16)
#: FedAvg (and its subclasses) sum float32, float16 and bfloat16 tensors in float32 (the
#: default, spelled out) or in float64.
FLOAT32_SUMS, FLOAT64_SUMS = {"sums": "float32"}, {"sums": "float64"}


def naive_fedavg(global_state, updates, weights):
    """The whole-tensor reference: float64 sums by promotion, divided, cast."""
    sums = {name: torch.zeros(t.shape, dtype=torch.float64) for name, t in global_state.items()}
    for update, weight in zip(updates, weights):
        for name, tensor in update.items():
            sums[name].add_(tensor, alpha=float(weight))
    total = float(sum(weights))
    return {name: cast_like(sums[name] / total, ref) for name, ref in global_state.items()}


def naive_float32_fedavg(global_state, updates, weights):
    """The whole-tensor reference for float32 sums, as fedavg.py documents them: float32,
    float16 and bfloat16 tensors sum (w_k / w_1) * t_k in float32 and divide by W / w_1;
    the others as ``naive_fedavg``."""
    out = naive_fedavg(global_state, updates, weights)
    first, total = float(weights[0]), float(sum(weights))
    for name, ref in global_state.items():
        if ref.dtype in F32_TYPES:
            acc = updates[0][name].to(torch.float32)
            for update, weight in zip(updates[1:], weights[1:]):
                acc = acc.add(update[name].to(torch.float32), alpha=weight / first)
            out[name] = (acc / (total / first)).to(ref.dtype)
    return out


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


def gamma(n, u=2.0 ** -24):
    """Higham's gamma(n) = n u / (1 - n u)."""
    return n * u / (1 - n * u)


@pytest.mark.parametrize("sums", ["float64", "float32"])
@pytest.mark.parametrize("slice_bounds", [(7, 7), (64, 256), (1 << 14, 1 << 18)])
def test_sliced_fedavg_is_bit_identical_to_whole_tensor_sums(monkeypatch, slice_bounds, sums):
    monkeypatch.setattr(fedavg_module, "MIN_SLICE", slice_bounds[0])
    monkeypatch.setattr(fedavg_module, "MAX_SLICE", slice_bounds[1])
    gen = torch.Generator().manual_seed(0)
    global_state = random_state(gen)
    updates = [random_state(gen) for _ in range(5)]
    for k in (0, 2):  # non-contiguous update tensors, the first one included
        updates[k]["w"] = updates[k]["w"].t().contiguous().t()
        updates[k]["h"] = torch.stack([updates[k]["h"], updates[k]["h"]], dim=1)[:, 0]  # stride 2
    weights = [3, 1000, 7, 1, 250]
    agg = FedAvg(global_state, {"sums": sums})
    for update, weight in zip(updates, weights):
        agg.add(update, weight)
    expected = (naive_float32_fedavg if sums == "float32" else naive_fedavg)(global_state, updates, weights)
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
    agg = FedAvgM(global_state, FLOAT64_SUMS)  # float64 sums: the exact means
    for k, update in enumerate(updates):
        agg.add(update, k + 1)
    mean = sum(u["w"].double() * (k + 1) for k, u in enumerate(updates)) / 6
    assert torch.allclose(agg.weighted_means()["w"], mean, rtol=0, atol=1e-12)


def test_server_optimizers_see_float32_sums_within_the_bound():
    gen = torch.Generator().manual_seed(1)
    updates = [{"w": torch.randn(50, 40, generator=gen)} for _ in range(3)]
    agg = FedAvgM({"w": torch.zeros(50, 40)}, FLOAT32_SUMS)
    for k, update in enumerate(updates):
        agg.add(update, k + 1)
    means = agg.weighted_means()["w"]
    exact = sum(u["w"].double() * (k + 1) for k, u in enumerate(updates)) / 6
    magnitude = sum(u["w"].double().abs() * (k + 1) for k, u in enumerate(updates)) / 6
    assert means.dtype == torch.float64
    assert torch.all((means - exact).abs() <= gamma(3 + 2) * magnitude)  # no final rounding to float32


def realistic_round(n, size, seed):
    """A trained layer's global weights (~N(0, 0.05)), n client updates that moved them by
    ~1e-3 with a few outliers, and example counts from 10 to 5000."""
    gen = torch.Generator().manual_seed(seed)
    global_w = torch.randn(size, generator=gen) * 0.05
    updates = [global_w + torch.randn(size, generator=gen) * 1e-3 * (1 + 20 * (k % 7 == 0)) for k in range(n)]
    weights = torch.randint(10, 5000, (n,), generator=gen).tolist()
    return global_w, updates, weights


@pytest.mark.parametrize("n", [2, 5, 50])
def test_float32_sums_stay_within_the_documented_bound(n):
    """Each element within gamma(N + 3) * sum_k (w_k / W) |t_k| of the exact weighted mean
    (computed in float64, whose own error is ~N * 2**-53 of the same magnitude): recursive
    summation (Higham 2002, eq. 4.4), plus the rounding of w_k / w_1, of each scaled term
    and of the final division."""
    global_w, updates, weights = realistic_round(n, 200_000, seed=n)
    agg = FedAvg({"w": global_w}, FLOAT32_SUMS)
    for update, weight in zip(updates, weights):
        agg.add({"w": update}, weight)
    out = agg.result()["w"].double()
    total = float(sum(weights))
    exact = sum(u.double() * w for u, w in zip(updates, weights)) / total
    magnitude = sum(u.double().abs() * w for u, w in zip(updates, weights)) / total
    error = (out - exact).abs() / magnitude
    assert float(error.max()) <= gamma(n + 3)
    assert float(error.max()) > 0  # the sums really were float32: float64 ones give 0 here
    # what a round costs in practice: the mean is float32 either way, 2**-24 of it is its own rounding
    assert float((out - exact).abs().max() / exact.abs().max()) < 4 * 2.0 ** -24 * math.sqrt(n)


def test_float32_sums_lose_what_cancels_below_float32_resolution():
    agg = FedAvg({"w": torch.zeros(1)}, FLOAT32_SUMS)
    for value in [1e8, 1.0, -1e8]:  # what float64 sums keep (tests/fl/test_strategies.py)
        agg.add({"w": torch.tensor([value])}, 1)
    result = agg.result()["w"].item()
    assert result == 0.0  # the 1.0 is below half a float32 step at 1e8 (8)
    assert abs(result - 1 / 3) <= gamma(3 + 3) * (2e8 + 1) / 3  # and that is within the bound


@pytest.mark.parametrize("dtype, unit", [(torch.float16, 2.0 ** -11), (torch.bfloat16, 2.0 ** -8)])
def test_float32_sums_of_half_precision_round_once_more(dtype, unit):
    """float16 and bfloat16 sum in float32, whose error (<= gamma(N + 3)) is far below their
    own half step: the mean is within one of their steps of the exact mean, correctly
    rounded almost everywhere."""
    global_w, updates, weights = realistic_round(50, 50_000, seed=3)
    updates = [u.to(dtype) for u in updates]
    agg = FedAvg({"w": global_w.to(dtype)}, FLOAT32_SUMS)
    for update, weight in zip(updates, weights):
        agg.add({"w": update}, weight)
    out = agg.result()["w"]
    exact = sum(u.double() * w for u, w in zip(updates, weights)) / float(sum(weights))
    assert out.dtype == dtype
    step = exact.abs().clamp(min=2.0 ** -14) * 2 * unit  # one step at |exact|; subnormals: the smallest normal's
    assert torch.all((out.double() - exact).abs() <= step)
    assert float((out != exact.to(dtype)).float().mean()) < 1e-3


def test_float32_sums_return_a_single_update_bit_for_bit():
    gen = torch.Generator().manual_seed(4)
    update = {"w": torch.randn(10_000, generator=gen), "h": torch.randn(99, generator=gen).half()}
    agg = FedAvg({"w": torch.zeros(10_000), "h": torch.zeros(99).half()}, FLOAT32_SUMS)
    agg.add(update, 7)  # float32 (t * 7) / 7 differs from t in about 10 % of elements
    out = agg.result()
    assert torch.equal(out["w"], update["w"]) and torch.equal(out["h"], update["h"])


def test_float32_sums_keep_integer_and_bool_buffers_exact():
    state = {"count": torch.tensor(0), "flag": torch.zeros(3, dtype=torch.bool), "w": torch.zeros(2)}
    agg = FedAvg(state, FLOAT32_SUMS)
    for count, flag, weight in [(11, [1, 0, 1], 3), (12, [0, 0, 1], 3), (14, [1, 1, 0], 2)]:
        agg.add({"count": torch.tensor(count), "flag": torch.tensor(flag, dtype=torch.bool),
                 "w": torch.ones(2)}, weight)
    out = agg.result()
    assert out["count"].item() == 12  # (33 + 36 + 28) / 8 = 12.125; ties and thirds stay exact in float64
    assert out["flag"].tolist() == [True, False, True]  # weighted majorities 5/8, 2/8, 6/8
    assert out["count"].dtype == torch.int64 and out["flag"].dtype == torch.bool


@pytest.mark.parametrize("sums", ["float64", "float32"])
def test_updates_with_no_examples_add_nothing(sums):
    gen = torch.Generator().manual_seed(5)
    update = {"w": torch.randn(300, generator=gen)}
    agg = FedAvg({"w": torch.zeros(300)}, {"sums": sums})
    agg.add({"w": torch.full((300,), 3e38)}, 0)  # first, and 0 * its values would still be added
    agg.add(update, 9)
    agg.add({"w": torch.full((300,), float("inf"))}, 0)
    assert agg.num_updates == 3
    assert torch.equal(agg.result()["w"], update["w"])


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
