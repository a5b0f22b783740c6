"""Properties every registered strategy has: names, shapes and dtypes of the result,
self-description, server state fit for safetensors, streaming where promised."""
import gc
import weakref

import pytest
import torch
from torch import nn

from fl.params import ParamError, validate_params
from fl.serialization import load_state_dict, state_dict_to_bytes
from fl.strategies import STRATEGIES, FedAvg, FedProx, get_strategy

ALL = sorted(STRATEGIES)
STREAMING = [name for name in ALL if not STRATEGIES[name].needs_all_updates]


def test_the_catalogue_of_strategies():
    assert ALL == ["fedadagrad", "fedadam", "fedavg", "fedavgm", "fedmedian", "fedprox",
                   "fedtrimmedavg", "fedyogi", "krum"]
    assert [n for n in ALL if STRATEGIES[n].needs_all_updates] == ["fedmedian", "fedtrimmedavg", "krum"]


def mixed_global_state():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3)
    return {
        "linear.weight": torch.randn(2, 3),
        "half": torch.randn(3).half(),
        "bfloat": torch.randn(2).bfloat16(),
        "double": torch.randn(2, dtype=torch.float64),
        "scalar": torch.tensor(1.5),
        "index": torch.tensor([1, 2, 3], dtype=torch.int32),
        "mask": torch.tensor([True, False]),
        **{f"bn.{k}": v.clone() for k, v in bn.state_dict().items()},
    }


def noisy_update(global_state, seed):
    gen = torch.Generator().manual_seed(seed)
    update = {}
    for name, t in global_state.items():
        if t.dtype == torch.bool:
            update[name] = torch.randint(0, 2, t.shape, generator=gen).bool()
        elif t.is_floating_point():
            update[name] = (t.double() + torch.rand(t.shape, generator=gen, dtype=torch.float64)).to(t.dtype)
        else:
            update[name] = t + torch.randint(0, 7, t.shape, generator=gen).to(t.dtype)
    return update


@pytest.mark.parametrize("name", ALL)
def test_result_has_the_global_names_shapes_and_dtypes(name):
    g = mixed_global_state()
    strategy = get_strategy(name)(g, None)
    for seed in range(5):  # krum's default f = 1 needs more than 4
        strategy.add(noisy_update(g, seed), 10 + seed)
    out = strategy.result()
    assert list(out) == list(g)
    for key, reference in g.items():
        assert out[key].shape == reference.shape, key
        assert out[key].dtype == reference.dtype, key
        assert out[key].device.type == "cpu", key
        if reference.is_floating_point():
            assert torch.isfinite(out[key].double()).all(), key


@pytest.mark.parametrize("name", ALL)
def test_server_state_is_flat_tensors_that_survive_safetensors(name):
    g = mixed_global_state()
    cls = get_strategy(name)
    strategy = cls(g, None)
    for seed in range(5):
        strategy.add(noisy_update(g, seed), 1)
    strategy.result()
    state = strategy.next_server_state()
    assert bool(state) == cls.stateful
    assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    back = load_state_dict(state_dict_to_bytes(state)) if state else {}
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in state.items())
    cls(g, None, server_state=back)  # accepted as the next round's state


@pytest.mark.parametrize("name", [n for n in ALL if not STRATEGIES[n].stateful])
def test_stateless_strategies_refuse_a_server_state(name):
    g = {"w": torch.zeros(1)}
    get_strategy(name)(g, None, server_state={})
    get_strategy(name)(g, None, server_state=None)
    with pytest.raises(ValueError, match="keeps no server state"):
        get_strategy(name)(g, None, server_state={"v.w": torch.zeros(1)})


@pytest.mark.parametrize("name", ALL)
def test_each_strategy_describes_itself(name):
    cls = get_strategy(name)
    assert cls.name == name and len(cls.description) > 20
    assert any(str(year) in cls.description for year in range(2017, 2022))  # cites its paper
    for param, spec in cls.schema.items():
        assert spec.get("help"), (name, param)
        assert "default" in spec, (name, param)
    validate_params(cls.schema, {})  # the defaults are valid


@pytest.mark.parametrize("name", STREAMING)
def test_streaming_strategies_keep_no_reference_to_updates(name):
    strategy = get_strategy(name)({"w": torch.zeros(3, dtype=torch.float64)}, None)
    refs = []
    for value in (1.0, 2.0, 3.0):
        tensor = torch.full((3,), value, dtype=torch.float64)
        refs.append(weakref.ref(tensor))
        strategy.add({"w": tensor}, 1)
        del tensor
    gc.collect()
    assert all(ref() is None for ref in refs)
    strategy.result()


@pytest.mark.parametrize("name", ALL)
def test_every_strategy_refuses_an_empty_round(name):
    with pytest.raises(ValueError, match="no updates"):
        get_strategy(name)({"w": torch.zeros(1)}, None).result()


def test_fedprox_aggregates_exactly_as_fedavg_and_carries_mu():
    g = mixed_global_state()
    prox, avg = FedProx(g, {"mu": 0.5}), FedAvg(g, {})
    for seed in range(3):
        prox.add(noisy_update(g, seed), seed + 1)
        avg.add(noisy_update(g, seed), seed + 1)
    a, b = prox.result(), avg.result()
    assert all(torch.equal(a[k], b[k]) for k in g)
    assert FedProx(g, None).params == {"weighted": True, "mu": 0.01, "sums": "float32"}
    with pytest.raises(ParamError) as info:
        FedProx(g, {"mu": -0.1})
    assert info.value.field == "strategy_params.mu"


@pytest.mark.parametrize("name", [n for n in ALL if not STRATEGIES[n].uses_global_values])
def test_a_strategy_that_uses_no_global_values_gives_the_same_result_from_the_meta_device(name):
    """The worker hands these strategies the global model's header only (meta tensors)."""
    g = mixed_global_state()
    meta = {key: torch.empty(t.shape, dtype=t.dtype, device="meta") for key, t in g.items()}
    results = []
    for global_state in (g, meta):
        strategy = get_strategy(name)(global_state, None)
        for seed in range(5):
            strategy.add(noisy_update(g, seed), 10 + seed)
        results.append(strategy.result())
    assert all(torch.equal(results[0][key], results[1][key]) and results[1][key].device.type == "cpu" for key in g)


def test_the_server_optimizers_are_the_strategies_that_read_the_global_values():
    assert sorted(n for n in ALL if STRATEGIES[n].uses_global_values) == ["fedadagrad", "fedadam", "fedavgm", "fedyogi"]
