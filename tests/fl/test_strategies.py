import gc
import weakref

import pytest
import torch

from fl.params import ParamError
from fl.strategies import STRATEGIES, FedAvg, Strategy, get_strategy, register_strategy


def global_state():
    return {
        "w": torch.zeros(2, 2, dtype=torch.float32),
        "b": torch.zeros(2, dtype=torch.float64),
        "h": torch.zeros(1, dtype=torch.float16),
        "count": torch.tensor(0, dtype=torch.int64),
    }


def update(w, b, h, count):
    return {
        "w": torch.tensor(w, dtype=torch.float32),
        "b": torch.tensor(b, dtype=torch.float64),
        "h": torch.tensor([h], dtype=torch.float16),
        "count": torch.tensor(count, dtype=torch.int64),
    }


U1 = ([[1.0, 2.0], [3.0, 4.0]], [1.0, -1.0], 1.0, 10)
U2 = ([[3.0, 6.0], [0.0, 8.0]], [4.0, 2.0], 4.0, 20)


def test_registry_finds_fedavg_and_refuses_unknown():
    assert get_strategy("fedavg") is FedAvg
    assert STRATEGIES["fedavg"] is FedAvg
    assert FedAvg.needs_all_updates is False and FedAvg.description
    with pytest.raises(ParamError) as info:
        get_strategy("fedmagic")
    assert info.value.field == "strategy"


def test_weighted_average_matches_hand_computation():
    agg = FedAvg(global_state(), {})
    agg.add(update(*U1), num_examples=1)
    agg.add(update(*U2), num_examples=3)
    out = agg.result()
    # (1*u1 + 3*u2) / 4
    assert torch.equal(out["w"], torch.tensor([[2.5, 5.0], [0.75, 7.0]]))
    assert torch.equal(out["b"], torch.tensor([3.25, 1.25], dtype=torch.float64))
    assert torch.equal(out["h"], torch.tensor([3.25], dtype=torch.float16))
    assert out["count"].item() == 18  # (10 + 60) / 4 = 17.5, rounded half to even


def test_unweighted_average_matches_hand_computation():
    agg = FedAvg(global_state(), {"weighted": False})
    agg.add(update(*U1), num_examples=1)
    agg.add(update(*U2), num_examples=1000)
    out = agg.result()
    assert torch.equal(out["w"], torch.tensor([[2.0, 4.0], [1.5, 6.0]]))
    assert torch.equal(out["b"], torch.tensor([2.5, 0.5], dtype=torch.float64))
    assert out["count"].item() == 15


def test_integer_buffer_gets_rounded_weighted_mean():
    state = {"num_batches_tracked": torch.tensor(0, dtype=torch.int64),
             "idx": torch.zeros(3, dtype=torch.int32)}
    agg = FedAvg(state, {})
    int32 = torch.int32
    agg.add({"num_batches_tracked": torch.tensor(10), "idx": torch.tensor([1, 2, 3], dtype=int32)}, 2)
    agg.add({"num_batches_tracked": torch.tensor(13), "idx": torch.tensor([2, 2, 9], dtype=int32)}, 1)
    out = agg.result()
    assert out["num_batches_tracked"].dtype == torch.int64
    assert out["num_batches_tracked"].item() == 11  # 33 / 3
    assert out["idx"].tolist() == [1, 2, 5]  # [4/3, 2, 15/3] rounded
    assert out["idx"].dtype == torch.int32


def test_result_keeps_names_shapes_and_dtypes_of_global_state():
    agg = FedAvg(global_state(), None)
    agg.add(update(*U1), 5)
    out = agg.result()
    assert list(out) == list(global_state())
    for name, reference in global_state().items():
        assert out[name].shape == reference.shape
        assert out[name].dtype == reference.dtype


def test_single_update_is_returned_unchanged():
    agg = FedAvg(global_state(), {})
    agg.add(update(*U1), 7)
    out = agg.result()
    for name, tensor in update(*U1).items():
        assert torch.equal(out[name], tensor)


def test_float64_accumulation_avoids_float32_rounding():
    agg = FedAvg({"w": torch.zeros(1)}, {"sums": "float64"})
    for value in [1e8, 1.0, -1e8]:  # float32 running sums lose the 1.0 (test_streaming_aggregation.py)
        agg.add({"w": torch.tensor([value])}, 1)
    assert agg.result()["w"].item() == pytest.approx(1 / 3)


SUMMING = ["fedadagrad", "fedadam", "fedavg", "fedavgm", "fedprox", "fedyogi"]  # built on FedAvg's sums


def test_the_strategies_built_on_fedavgs_sums_offer_their_dtype_float32_by_default():
    assert sorted(name for name, cls in STRATEGIES.items() if "sums" in cls.schema) == SUMMING
    for name in SUMMING:
        spec = get_strategy(name).schema["sums"]
        assert spec["type"] == "choice" and spec["choices"] == ["float32", "float64"] and spec["help"]
        assert get_strategy(name)(global_state(), None).params["sums"] == "float32"
    assert FedAvg(global_state(), {}).params == {"weighted": True, "sums": "float32"}


def test_the_default_sums_are_the_float32_ones():
    """``{}`` and ``{"sums": "float32"}`` give the same bits, ``{"sums": "float64"}`` others."""
    gen = torch.Generator().manual_seed(0)
    updates = [{"w": torch.randn(1000, generator=gen)} for _ in range(7)]
    results = {}
    for key, params in [("default", {}), ("float32", {"sums": "float32"}), ("float64", {"sums": "float64"})]:
        agg = FedAvg({"w": torch.zeros(1000)}, params)
        for k, upd in enumerate(updates):
            agg.add(upd, 3 + 10 * k)
        results[key] = agg.result()["w"]
    assert torch.equal(results["default"], results["float32"])
    assert not torch.equal(results["float32"], results["float64"])


@pytest.mark.parametrize("name", SUMMING)
@pytest.mark.parametrize("bad", ["float16", "bfloat16", "FLOAT32", 32, True, None])
def test_an_unknown_sums_dtype_is_refused(name, bad):
    with pytest.raises(ParamError) as info:
        get_strategy(name)(global_state(), {"sums": bad})
    assert info.value.field == "strategy_params.sums"
    assert "'float32', 'float64'" in info.value.message


def test_streaming_keeps_no_reference_to_added_tensors():
    agg = FedAvg({"w": torch.zeros(3, dtype=torch.float64)}, {})
    refs = []
    for value in (1.0, 2.0, 3.0):
        tensor = torch.full((3,), value, dtype=torch.float64)  # same dtype as the sums
        refs.append(weakref.ref(tensor))
        agg.add({"w": tensor}, 1)
        del tensor
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert torch.equal(agg.result()["w"], torch.full((3,), 2.0, dtype=torch.float64))


def test_aggregator_does_not_alias_added_tensors():
    tensor = torch.ones(3, dtype=torch.float64)
    agg = FedAvg({"w": torch.zeros(3, dtype=torch.float64)}, {})
    agg.add({"w": tensor}, 1)
    tensor.fill_(1000.0)  # a stored view would change the result
    assert torch.equal(agg.result()["w"], torch.ones(3, dtype=torch.float64))


def test_add_does_not_modify_the_update_or_global_state():
    state, upd = global_state(), update(*U1)
    agg = FedAvg(state, {})
    agg.add(upd, 2)
    agg.add(upd, 2)
    assert torch.equal(upd["w"], update(*U1)["w"])
    assert torch.equal(state["w"], torch.zeros(2, 2))
    assert agg.num_updates == 2


def test_result_without_updates_raises():
    with pytest.raises(ValueError, match="no updates"):
        FedAvg(global_state(), {}).result()


def test_all_zero_weights_raise():
    agg = FedAvg(global_state(), {})
    agg.add(update(*U1), 0)
    with pytest.raises(ValueError, match="0 examples"):
        agg.result()


@pytest.mark.parametrize("bad_update, num_examples", [
    ({"w": torch.zeros(2, 2)}, 1),
    ({**update(*U1), "extra": torch.zeros(1)}, 1),
    ({**update(*U1), "w": torch.zeros(4)}, 1),
    (update(*U1), -1),
    (update(*U1), True),
])
def test_mismatched_updates_are_refused(bad_update, num_examples):
    with pytest.raises(ValueError):
        FedAvg(global_state(), {}).add(bad_update, num_examples)


def test_strategy_params_are_validated():
    with pytest.raises(ParamError) as info:
        FedAvg(global_state(), {"weighted": "yes"})
    assert info.value.field == "strategy_params.weighted"


def test_registry_is_open_to_new_strategies(monkeypatch):
    monkeypatch.setattr("fl.strategies.base.STRATEGIES", dict(STRATEGIES))

    @register_strategy
    class KeepGlobal(Strategy):
        name = "keep_global_for_test"

        def add(self, state, num_examples):
            self.num_updates += 1

        def result(self):
            return dict(self.global_state)

    assert get_strategy("keep_global_for_test") is KeepGlobal
    with pytest.raises(ValueError):
        register_strategy(type("Other", (Strategy,), {"name": "keep_global_for_test"}))


def test_weighted_means_leave_the_sums_alone():
    agg = FedAvg(global_state(), {})
    agg.add(update(*U1), num_examples=1)
    agg.add(update(*U2), num_examples=3)
    first = agg.weighted_means()
    assert all(t.dtype == torch.float64 for t in first.values())
    assert torch.equal(first["b"], torch.tensor([3.25, 1.25], dtype=torch.float64))
    first["b"].fill_(0)  # a returned view of the sums would change them
    assert torch.equal(agg.weighted_means()["b"], torch.tensor([3.25, 1.25], dtype=torch.float64))
    assert torch.equal(agg.result()["w"], torch.tensor([[2.5, 5.0], [0.75, 7.0]]))


def test_first_update_may_be_non_contiguous_and_is_copied():
    first = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).t()  # a transposed view
    agg = FedAvg({"w": torch.zeros(2, 2)}, {})
    agg.add({"w": first}, 2)
    first.fill_(1000.0)  # the sums must not share its memory
    agg.add({"w": torch.ones(2, 2)}, 2)
    assert torch.equal(agg.result()["w"], torch.tensor([[1.0, 2.0], [1.5, 2.5]]))


def test_fedavg_reads_only_names_shapes_and_dtypes_of_the_global_state():
    """So a caller may build it from the global file's header (meta tensors, no data)."""
    meta = {name: torch.empty(t.shape, dtype=t.dtype, device="meta") for name, t in global_state().items()}
    agg = FedAvg(meta, {})
    agg.add(update(*U1), num_examples=1)
    agg.add(update(*U2), num_examples=3)
    out = agg.result()
    assert all(t.device.type == "cpu" for t in out.values())
    assert torch.equal(out["w"], torch.tensor([[2.5, 5.0], [0.75, 7.0]]))
    assert out["count"].item() == 18 and out["count"].dtype == torch.int64
