"""FedMedian, FedTrimmedAvg and Krum / Multi-Krum against hand computations."""
import numpy as np
import pytest
import torch
from torch import nn

from fl.params import ParamError
from fl.strategies import FedMedian, FedTrimmedAvg, Krum


def aggregate(cls, params, updates, global_state):
    strategy = cls(global_state, params)
    for update in updates:
        strategy.add(update, 1)
    return strategy, strategy.result()


def state(w, count, flag):
    return {"w": torch.tensor(w, dtype=torch.float32), "count": torch.tensor(count),
            "flag": torch.tensor(flag)}


GLOBAL = state([0.0, 0.0, 0.0], 0, False)


def test_robust_strategies_need_all_updates_and_say_so():
    for cls in (FedMedian, FedTrimmedAvg, Krum):
        assert cls.needs_all_updates and not cls.stateful
        assert "needs all updates" in cls.description.lower()


def test_median_of_an_even_count_averages_the_middle_pair():
    updates = [state([1.0, 5.0, -1.0], 1, True), state([2.0, 0.0, -1.0], 2, False),
               state([10.0, 1.0, 7.0], 3, True), state([3.0, 2.0, 0.0], 100, False)]
    _, out = aggregate(FedMedian, {}, updates, GLOBAL)
    # sorted columns: [1,2,3,10] -> 2.5; [0,1,2,5] -> 1.5; [-1,-1,0,7] -> -0.5
    assert torch.equal(out["w"], torch.tensor([2.5, 1.5, -0.5]))
    assert out["count"].item() == 2  # [1,2,3,100] -> 2.5, rounded half to even
    assert out["flag"].item() is True  # [0,0,1,1] -> 0.5 -> at least half are true
    assert (out["w"].dtype, out["count"].dtype, out["flag"].dtype) == (
        torch.float32, torch.int64, torch.bool)


def test_median_of_an_odd_count_ignores_weights_and_outliers():
    strategy = FedMedian({"w": torch.zeros(2)}, {})
    for w, n in [([1.0, 1e9], 1000), ([2.0, 3.0], 1), ([-1e9, 4.0], 1)]:
        strategy.add({"w": torch.tensor(w)}, n)
    assert torch.equal(strategy.result()["w"], torch.tensor([1.0, 4.0]))


def test_trimmed_mean_by_hand():
    columns = [[1.0, 2.0, 3.0, 4.0, 100.0], [-50.0, 0.0, 1.0, 2.0, 3.0]]
    counts = [5, 6, 7, 8, 1000]
    updates = [{"w": torch.tensor([a, b]), "count": torch.tensor(c)}
               for a, b, c in zip(*columns, counts)]
    g = {"w": torch.zeros(2), "count": torch.tensor(0)}
    _, out = aggregate(FedTrimmedAvg, {}, updates, g)
    # beta 0.2 (default), n = 5: k = 1 dropped at each end
    # [2,3,4] -> 3; [0,1,2] -> 1; counts [6,7,8] -> 7
    assert torch.equal(out["w"], torch.tensor([3.0, 1.0])) and out["count"].item() == 7
    _, out = aggregate(FedTrimmedAvg, {"beta": 0.0}, updates, g)
    # plain unweighted mean: 110/5 = 22; -44/5 = -8.8; 1026/5 = 205.2 -> 205
    assert torch.equal(out["w"], torch.tensor([22.0, -8.8])) and out["count"].item() == 205
    _, out = aggregate(FedTrimmedAvg, {"beta": 0.4}, updates, g)
    # k = 2: only the median is left
    assert torch.equal(out["w"], torch.tensor([3.0, 1.0])) and out["count"].item() == 7


def test_trimmed_fraction_is_refused_at_one_half():
    with pytest.raises(ParamError) as info:
        FedTrimmedAvg({"w": torch.zeros(1)}, {"beta": 0.5})
    assert info.value.field == "strategy_params.beta"


KRUM_W = [0.0, 1.0, 2.0, 3.0, 100.0]


def krum_updates(counts=(10, 20, 30, 40, 50)):
    return [{"w": torch.tensor([w, -w]), "count": torch.tensor(c)} for w, c in zip(KRUM_W, counts)]


KRUM_GLOBAL = {"w": torch.zeros(2), "count": torch.tensor(0)}


def test_krum_selects_the_update_closest_to_its_neighbours():
    strategy, out = aggregate(Krum, {"f": 1}, krum_updates(), KRUM_GLOBAL)
    # n = 5, f = 1: n - f - 2 = 2 nearest neighbours; squared distance of (a,-a), (b,-b)
    # is 2(a-b)^2. Scores: 0 -> 2(1+4) = 10; 1 -> 2(1+1) = 4; 2 -> 2(1+1) = 4;
    # 3 -> 2(1+4) = 10; 100 -> 2(97^2+98^2) = 38026. Tie 1/2: the earlier one.
    assert strategy.selected == [1]
    assert torch.equal(out["w"], torch.tensor([1.0, -1.0])) and out["count"].item() == 20


def test_multi_krum_averages_the_m_best_unweighted():
    strategy, out = aggregate(Krum, {"f": 1, "m": 3}, krum_updates(), KRUM_GLOBAL)
    assert strategy.selected == [1, 2, 0]  # scores 4, 4, 10 (tie 10 with index 3: earlier)
    assert torch.equal(out["w"], torch.tensor([1.0, -1.0]))  # (1 + 2 + 0) / 3
    assert out["count"].item() == 20  # (20 + 30 + 10) / 3
    _, out = aggregate(Krum, {"f": 1, "m": 2}, krum_updates(), KRUM_GLOBAL)
    assert torch.equal(out["w"], torch.tensor([1.5, -1.5])) and out["count"].item() == 25


def test_krum_distances_ignore_integer_buffers():
    # Were counts part of the distance, update 1 (count 10**6) would never be chosen.
    strategy, out = aggregate(Krum, {"f": 1}, krum_updates(counts=(7, 10**6, 9, 9, 9)), KRUM_GLOBAL)
    assert strategy.selected == [1] and out["count"].item() == 10**6


@pytest.mark.parametrize("params, n, message", [
    ({"f": 1}, 4, "more than 2f\\+2 = 4"),
    ({"f": 0}, 2, "more than 2f\\+2 = 2"),
    ({"f": 0, "m": 4}, 3, "cannot select m = 4"),
])
def test_krum_refuses_too_few_updates(params, n, message):
    strategy = Krum(KRUM_GLOBAL, params)
    for update in krum_updates()[:n]:
        strategy.add(update, 1)
    with pytest.raises(ValueError, match=message):
        strategy.result()


def test_krum_with_f_0_works_on_3_updates():
    strategy, out = aggregate(Krum, {"f": 0}, krum_updates()[:3], KRUM_GLOBAL)
    # n - f - 2 = 1 neighbour: scores 2*1, 2*1, 2*1 -> the first
    assert strategy.selected == [0] and torch.equal(out["w"], torch.tensor([0.0, 0.0]))


def bn_update(mean, var, tracked):
    bn = nn.BatchNorm1d(2)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor(mean))
        bn.running_var.copy_(torch.tensor(var))
        bn.num_batches_tracked.fill_(tracked)
    return {k: v.clone() for k, v in bn.state_dict().items()}


def test_batchnorm_buffers_under_median_and_trimmed_mean():
    updates = [bn_update([0.0, 1.0], [1.0, 2.0], 3), bn_update([2.0, -1.0], [0.5, 8.0], 10),
               bn_update([1.0, 0.0], [4.0, 1.0], 4)]
    g = bn_update([0.0, 0.0], [1.0, 1.0], 0)
    _, out = aggregate(FedMedian, {}, updates, g)
    assert torch.equal(out["running_mean"], torch.tensor([1.0, 0.0]))
    assert torch.equal(out["running_var"], torch.tensor([1.0, 2.0]))
    assert out["num_batches_tracked"].item() == 4 and out["num_batches_tracked"].dtype == torch.int64
    _, out = aggregate(FedTrimmedAvg, {"beta": 0.0}, updates, g)  # n=3: the mean
    assert torch.equal(out["running_var"], torch.tensor([5.5 / 3, 11.0 / 3]))
    assert out["num_batches_tracked"].item() == 6  # 17 / 3 = 5.67


def test_added_updates_are_copied():
    w = torch.ones(2)
    strategy = FedMedian({"w": torch.zeros(2)}, {})
    strategy.add({"w": w}, 1)
    w.fill_(5.0)
    assert torch.equal(strategy.result()["w"], torch.ones(2))


def test_agrees_with_flower_when_installed():
    aggregate_fns = pytest.importorskip("flwr.server.strategy.aggregate")
    rng = np.random.default_rng(0)
    weights = [[rng.normal(size=(3, 2)), rng.normal(size=4)] for _ in range(7)]
    g = {"a": torch.zeros(3, 2, dtype=torch.float64), "b": torch.zeros(4, dtype=torch.float64)}
    updates = [{"a": torch.from_numpy(a), "b": torch.from_numpy(b)} for a, b in weights]
    results = [(w, 1) for w in weights]
    for cls, params, expected in [
        (FedMedian, {}, aggregate_fns.aggregate_median(results)),
        (FedTrimmedAvg, {"beta": 0.2}, aggregate_fns.aggregate_trimmed_avg(results, 0.2)),
        (Krum, {"f": 2}, aggregate_fns.aggregate_krum(results, 2, 0)),
    ]:
        _, out = aggregate(cls, params, updates, g)
        assert np.allclose(out["a"].numpy(), expected[0]) and np.allclose(out["b"].numpy(), expected[1])
