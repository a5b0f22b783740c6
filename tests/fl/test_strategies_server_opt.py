"""FedAvgM, FedAdagrad, FedAdam, FedYogi against hand computations, and their state.

Numbers are chosen so that every step is exact in binary floating point: the expected
values are written out and compared with ``torch.equal``.
"""
import pytest
import torch
from torch import nn

from fl.serialization import load_state_dict, save_state_dict, state_dict_to_bytes
from fl.strategies import STRATEGIES, FedAdagrad, FedAdam, FedAvgM, FedYogi, get_strategy

F64 = torch.float64
STATEFUL = sorted(name for name, cls in STRATEGIES.items() if cls.stateful)


def f32(*values):
    return torch.tensor(values, dtype=torch.float32)


def f64(*values):
    return torch.tensor(values, dtype=F64)


def run_round(cls, global_state, params, updates, server_state=None):
    strategy = cls(global_state, params, server_state=server_state)
    for state, num_examples in updates:
        strategy.add(state, num_examples)
    return strategy.result(), strategy.next_server_state()


def test_stateful_strategies_are_the_server_optimizers():
    assert STATEFUL == ["fedadagrad", "fedadam", "fedavgm", "fedyogi"]


def test_fedavgm_two_rounds_by_hand():
    params = {"server_lr": 0.5, "momentum": 0.5}
    g0 = {"w": f32(1.0, 2.0), "count": torch.tensor(0)}
    updates = [({"w": f32(-3.0, 1.0), "count": torch.tensor(10)}, 1),
               ({"w": f32(1.0, 3.0), "count": torch.tensor(20)}, 3)]
    out1, state1 = run_round(FedAvgM, g0, params, updates)
    # avg = (1*[-3, 1] + 3*[1, 3]) / 4 = [0, 2.5]; delta = x - avg = [1, -0.5]
    # v1 = 0.5*0 + delta = [1, -0.5]; x1 = x - 0.5*v1 = [0.5, 2.25]
    assert torch.equal(out1["w"], f32(0.5, 2.25))
    assert out1["count"].item() == 18  # FedAvg rule: (10 + 60) / 4 = 17.5, half to even
    assert set(state1) == {"v.w", "step"}  # no momentum for the integer buffer
    assert torch.equal(state1["v.w"], f64(1.0, -0.5)) and state1["step"].item() == 1

    out2, state2 = run_round(FedAvgM, out1, params, [({"w": f32(0.5, 2.0), "count": torch.tensor(18)}, 5)], state1)
    # delta = [0.5, 2.25] - [0.5, 2.0] = [0, 0.25]; v2 = 0.5*[1, -0.5] + [0, 0.25] = [0.5, 0]
    # x2 = [0.5 - 0.5*0.5, 2.25 - 0] = [0.25, 2.25]
    assert torch.equal(out2["w"], f32(0.25, 2.25))
    assert torch.equal(state2["v.w"], f64(0.5, 0.0)) and state2["step"].item() == 2


def test_fedavgm_with_lr_1_and_no_momentum_is_fedavg():
    g0 = {"w": f32(1.0, 2.0)}
    updates = [({"w": f32(-3.0, 1.0)}, 1), ({"w": f32(1.0, 3.0)}, 3)]
    out, _ = run_round(FedAvgM, g0, {"server_lr": 1.0, "momentum": 0.0}, updates)
    assert torch.equal(out["w"], f32(0.0, 2.5))


ADAM = {"eta": 1.0, "beta_1": 0.5, "beta_2": 0.75, "tau": 1.0}


def test_fedadam_two_rounds_by_hand():
    g0 = {"w": f32(1.0, 1.0)}
    out1, state1 = run_round(FedAdam, g0, ADAM, [({"w": f32(0.5, 1.0)}, 1), ({"w": f32(2.5, 1.0)}, 3)])
    # avg = ([0.5, 1] + 3*[2.5, 1]) / 4 = [2, 1]; delta = avg - x = [1, 0]
    # m0 = 0, v0 = tau^2 = 1
    # m1 = 0.5*0 + 0.5*[1, 0] = [0.5, 0]; v1 = 0.75*1 + 0.25*[1, 0] = [1, 0.75]
    # x1 = x + 1 * m1 / (sqrt(v1) + 1) = [1 + 0.5/2, 1 + 0] = [1.25, 1]
    assert torch.equal(out1["w"], f32(1.25, 1.0))
    assert torch.equal(state1["m.w"], f64(0.5, 0.0))
    assert torch.equal(state1["v.w"], f64(1.0, 0.75))

    out2, state2 = run_round(FedAdam, out1, ADAM, [({"w": f32(0.25, 1.0)}, 2)], state1)
    # delta = [0.25 - 1.25, 0] = [-1, 0]; m2 = 0.5*[0.5, 0] + 0.5*[-1, 0] = [-0.25, 0]
    # v2 = 0.75*[1, 0.75] + 0.25*[1, 0] = [1, 0.5625]; x2 = [1.25 - 0.25/2, 1] = [1.125, 1]
    assert torch.equal(out2["w"], f32(1.125, 1.0))
    assert torch.equal(state2["m.w"], f64(-0.25, 0.0))
    assert torch.equal(state2["v.w"], f64(1.0, 0.5625)) and state2["step"].item() == 2


def test_fedadam_unweighted_uses_the_plain_mean_of_deltas():
    params = {**ADAM, "weighted": False}
    out, _ = run_round(FedAdam, {"w": f32(1.0)}, params, [({"w": f32(0.0)}, 1), ({"w": f32(4.0)}, 99)])
    # delta = (0 + 4)/2 - 1 = 1: m = 0.5, v = 0.75 + 0.25 = 1, x = 1 + 0.5/2
    assert torch.equal(out["w"], f32(1.25))


def test_fedyogi_fresh_state_by_hand_sign_negative():
    params = {"eta": 1.0, "beta_1": 0.5, "beta_2": 0.75, "tau": 1.5}
    out, state = run_round(FedYogi, {"w": f32(0.0)}, params, [({"w": f32(4.0)}, 1)])
    # delta = 4, delta^2 = 16; v0 = tau^2 = 2.25; sign(2.25 - 16) = -1
    # v1 = 2.25 - 0.25*16*(-1) = 6.25; m1 = 0.5*4 = 2; x1 = 2/(sqrt(6.25) + 1.5) = 2/4
    assert torch.equal(out["w"], f32(0.5))
    assert torch.equal(state["v.w"], f64(6.25)) and torch.equal(state["m.w"], f64(2.0))


def test_fedyogi_given_state_by_hand_sign_positive_and_zero():
    params = {"eta": 1.0, "beta_1": 0.5, "beta_2": 0.75, "tau": 2.0}
    given = {"m.w": f64(1.0, 0.5), "v.w": f64(4.25, 1.0), "step": torch.tensor(3)}
    out, state = run_round(FedYogi, {"w": f32(0.0, 0.0)}, params, [({"w": f32(1.0, 1.0)}, 1)], given)
    # delta = [1, 1], delta^2 = [1, 1]
    # first:  sign(4.25 - 1) = +1: v = 4.25 - 0.25*1 = 4;   m = 0.5 + 0.5 = 1;  x = 1/(2 + 2)
    # second: sign(1 - 1) = 0:     v = 1 (unchanged);        m = 0.25 + 0.5 = 0.75; x = 0.75/(1 + 2)
    assert torch.equal(out["w"], f32(0.25, 0.25))
    assert torch.equal(state["v.w"], f64(4.0, 1.0)) and torch.equal(state["m.w"], f64(1.0, 0.75))
    assert state["step"].item() == 4
    assert torch.equal(given["v.w"], f64(4.25, 1.0))  # the caller's state is not modified


def test_fedadagrad_two_rounds_by_hand_with_default_beta_1():
    params = {"eta": 1.0, "tau": 3.0}
    out1, state1 = run_round(FedAdagrad, {"w": f32(0.0)}, params, [({"w": f32(4.0)}, 1)])
    # beta_1 = 0 (default): m1 = delta = 4; v1 = tau^2 + 16 = 25; x1 = 4/(5 + 3) = 0.5
    assert torch.equal(out1["w"], f32(0.5)) and torch.equal(state1["v.w"], f64(25.0))
    out2, state2 = run_round(FedAdagrad, out1, params, [({"w": f32(-11.5)}, 1)], state1)
    # delta = -12: v2 = 25 + 144 = 169; x2 = 0.5 - 12/(13 + 3) = -0.25
    assert torch.equal(out2["w"], f32(-0.25)) and torch.equal(state2["v.w"], f64(169.0))


def bn_state(weight, bias, mean, var, tracked):
    bn = nn.BatchNorm1d(2)
    with torch.no_grad():
        for name, value in [("weight", weight), ("bias", bias), ("running_mean", mean),
                            ("running_var", var)]:
            bn.state_dict()[name].copy_(torch.tensor(value))
        bn.num_batches_tracked.fill_(tracked)
    return {f"bn.{k}": v.clone() for k, v in bn.state_dict().items()}


def test_batchnorm_running_stats_and_counter_are_averaged_not_stepped():
    g0 = bn_state([1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0], 0)
    u1 = bn_state([2.0, 1.0], [1.0, 0.0], [0.5, -1.0], [0.25, 4.0], 3)
    u2 = bn_state([2.0, 1.0], [1.0, 0.0], [1.5, 1.0], [0.75, 2.0], 4)
    out, state = run_round(FedAdam, g0, ADAM, [(u1, 1), (u2, 1)])
    # weight, bias: delta = [1, 0] as in test_fedadam_two_rounds_by_hand -> x + [0.25, 0]
    assert torch.equal(out["bn.weight"], f32(1.25, 1.0))
    assert torch.equal(out["bn.bias"], f32(0.25, 0.0))
    # running stats: the plain weighted mean (an Adam step could push a variance below 0)
    assert torch.equal(out["bn.running_mean"], f32(1.0, 0.0))
    assert torch.equal(out["bn.running_var"], f32(0.5, 3.0))
    assert out["bn.num_batches_tracked"].dtype == torch.int64
    assert out["bn.num_batches_tracked"].item() == 4  # 3.5 rounded half to even
    assert set(state) == {"m.bn.weight", "m.bn.bias", "v.bn.weight", "v.bn.bias", "step"}


def random_updates(global_state, rounds, clients, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(rounds):
        yield [({n: (t + torch.randn(t.shape, generator=gen)).to(t.dtype) if t.is_floating_point()
                 else t + int(torch.randint(0, 5, (), generator=gen)) for n, t in global_state.items()},
                int(torch.randint(1, 50, (), generator=gen))) for _ in range(clients)]


def small_model_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("sums", [None, "float64"])  # None: the default, float32 sums
@pytest.mark.parametrize("name", STATEFUL)
def test_restart_from_a_persisted_state_is_bit_identical(name, sums, tmp_path):
    cls, rounds = get_strategy(name), list(random_updates(small_model_state(), 4, 3, seed=1))
    params = {"sums": sums} if sums else None
    kept_global, kept_state = small_model_state(), None
    disk_global, disk_state = small_model_state(), None
    for number, updates in enumerate(rounds):
        kept_global, kept_state = run_round(cls, kept_global, params, updates, kept_state)
        # The restarted worker reads the model and the server state back from safetensors.
        disk_global, state = run_round(cls, disk_global, params, updates, disk_state)
        save_state_dict(state, tmp_path / f"state-{number}.safetensors")
        disk_state = load_state_dict(tmp_path / f"state-{number}.safetensors")
        disk_global = load_state_dict(state_dict_to_bytes(disk_global))
        for key in kept_global:
            assert torch.equal(kept_global[key], disk_global[key]), (number, key)
        assert kept_state.keys() == disk_state.keys()
        assert all(torch.equal(kept_state[k], disk_state[k]) for k in kept_state)
    assert kept_state["step"].item() == 4


def reference_fedopt(name, x, means, params):
    """Algorithm 2 written out on plain float64 tensors, one tensor, several rounds."""
    m, v = torch.zeros_like(x), torch.full_like(x, params["tau"] ** 2)
    for mean in means:
        delta = mean - x
        m = params["beta_1"] * m + (1 - params["beta_1"]) * delta
        if name == "fedadagrad":
            v = v + delta ** 2
        elif name == "fedadam":
            v = params["beta_2"] * v + (1 - params["beta_2"]) * delta ** 2
        else:
            v = v - (1 - params["beta_2"]) * delta ** 2 * torch.sign(v - delta ** 2)
        x = x + params["eta"] * m / (v.sqrt() + params["tau"])
    return x


@pytest.mark.parametrize("name", ["fedadagrad", "fedadam", "fedyogi"])
def test_three_rounds_match_a_plain_rewrite_of_algorithm_2(name):
    params = {"eta": 0.3, "beta_1": 0.8, "tau": 0.01}
    if name != "fedadagrad":
        params["beta_2"] = 0.9
    gen = torch.Generator().manual_seed(2)
    means = [torch.randn(5, generator=gen, dtype=F64) for _ in range(3)]
    x, state = {"w": torch.zeros(5, dtype=F64)}, None
    for mean in means:
        x, state = run_round(get_strategy(name), x, params, [({"w": mean}, 7)], state)
    expected = reference_fedopt(name, torch.zeros(5, dtype=F64), means, params)
    assert torch.allclose(x["w"], expected, rtol=1e-12, atol=0)


def test_result_is_computed_once_and_state_only_after_result():
    strategy = FedAdam({"w": f32(1.0)}, ADAM)
    with pytest.raises(ValueError, match="after result"):
        strategy.next_server_state()
    strategy.add({"w": f32(2.0)}, 1)
    first = strategy.result()
    assert torch.equal(strategy.result()["w"], first["w"])  # not stepped twice
    assert strategy.next_server_state()["step"].item() == 1


@pytest.mark.parametrize("bad", [
    {"m.w": f64(0.0)},                                                   # v.w and step missing
    {"m.w": f64(0.0), "v.w": f64(1.0), "step": torch.tensor(1), "x": f64(0.0)},  # unexpected
    {"m.w": f64(0.0, 0.0), "v.w": f64(1.0), "step": torch.tensor(1)},   # wrong shape
    {"m.w": torch.tensor([0]), "v.w": f64(1.0), "step": torch.tensor(1)},  # not float
    {"m.w": f64(0.0), "v.w": f64(1.0), "step": torch.tensor([1])},      # step not 0-d
    {"m.w": f64(0.0), "v.w": f64(1.0), "step": torch.tensor(-1)},       # negative step
])
def test_mismatched_server_state_is_refused(bad):
    with pytest.raises(ValueError, match="server state"):
        FedAdam({"w": f32(1.0)}, None, server_state=bad)


def test_empty_server_state_means_first_round():
    a, _ = run_round(FedAdam, {"w": f32(1.0)}, ADAM, [({"w": f32(2.0)}, 1)], server_state={})
    b, _ = run_round(FedAdam, {"w": f32(1.0)}, ADAM, [({"w": f32(2.0)}, 1)], server_state=None)
    assert torch.equal(a["w"], b["w"])


def test_fedopt_defaults_follow_flower_and_the_paper():
    # float32 sums, as Flower's aggregate sums float32 updates
    assert {k: v["default"] for k, v in FedAdam.schema.items()} == {
        "weighted": True, "eta": 0.1, "eta_l": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3, "sums": "float32"}
    assert {k: v["default"] for k, v in FedYogi.schema.items()} == {
        "weighted": True, "eta": 0.01, "eta_l": 0.0316, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3,
        "sums": "float32"}
    assert {k: v["default"] for k, v in FedAdagrad.schema.items()} == {
        "weighted": True, "eta": 0.1, "eta_l": 0.1, "beta_1": 0.0, "tau": 1e-3, "sums": "float32"}
    assert {k: v["default"] for k, v in FedAvgM.schema.items()} == {
        "weighted": True, "server_lr": 1.0, "momentum": 0.9, "sums": "float32"}
    for cls in (FedAdam, FedYogi, FedAdagrad):
        assert "Reddi" in cls.description and "informational" in cls.schema["eta_l"]["help"]
