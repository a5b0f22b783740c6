"""Every strategy driving a few real rounds, as the portal does: a BatchNorm CNN on
digits split over three sites, the server state handed from round to round."""
import pytest

from fl.data import partition_indices, sklearn_dataset, train_val_split
from fl.networks import build_model
from fl.strategies import STRATEGIES, get_strategy
from fl.training import evaluate, train_local

CNN = {"in_features": 64, "num_classes": 10, "batch_norm": True}


@pytest.fixture(scope="module")
def digits_sites():
    X, y = sklearn_dataset("digits")
    X_tr, y_tr, X_val, y_val = train_val_split(X, y, val_fraction=0.2, seed=0)
    parts = partition_indices(y_tr, 3, scheme="iid", seed=0)
    return [(X_tr[idx], y_tr[idx]) for idx in parts], (X_val, y_val)


def site_update(global_state, X, y, seed, mu):
    model = build_model("cnn", CNN, seed=0)
    model.load_state_dict(global_state)
    stats = train_local(model, X, y, epochs=1, batch_size=32, optimizer="sgd",
                        optimizer_params={"lr": 0.1, "momentum": 0.9}, seed=seed,
                        device="cpu", proximal_mu=mu)
    return model.state_dict(), stats["num_examples"]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_three_rounds_of_each_strategy_learn_digits(name, digits_sites):
    sites, (X_val, y_val) = digits_sites
    params = {"f": 0} if name == "krum" else {}
    model = build_model("cnn", CNN, seed=0)
    global_state, server_state = model.state_dict(), None
    for round_number in range(3):
        strategy = get_strategy(name)(global_state, params, server_state=server_state)
        mu = float(strategy.params.get("mu", 0.0))  # what the portal sends the trainer
        for i, (X, y) in enumerate(sites):
            strategy.add(*site_update(global_state, X, y, 10 * round_number + i, mu))
        global_state, server_state = strategy.result(), strategy.next_server_state()
    model.load_state_dict(global_state)  # strict: names, shapes and dtypes all fit
    assert global_state["features.1.num_batches_tracked"].item() > 0
    assert evaluate(model, X_val, y_val, device="cpu")["accuracy"] > 0.6
