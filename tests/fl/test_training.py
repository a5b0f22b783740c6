import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fl.data import sklearn_dataset, train_val_split
from fl.networks import build_model
from fl.params import ParamError
from fl.training import (
    OPTIMIZERS,
    TrainingDiverged,
    build_optimizer,
    evaluate,
    pick_device,
    train_local,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cancer_split():
    X, y = sklearn_dataset("breast_cancer")
    return train_val_split(X, y, val_fraction=0.2, seed=0)


def logreg(seed=0):
    return build_model("logreg", {"in_features": 30, "num_classes": 2}, seed=seed)


def train(model, X, y, **overrides):
    kwargs = dict(epochs=2, batch_size=32, optimizer="sgd", optimizer_params={"lr": 0.1},
                  seed=0, device=CPU)
    return train_local(model, X, y, **{**kwargs, **overrides})


def test_logreg_learns_breast_cancer(cancer_split):
    X_tr, y_tr, X_val, y_val = cancer_split
    model = logreg()
    before = evaluate(model, X_val, y_val, device=CPU)
    stats = train(model, X_tr, y_tr, epochs=3)
    after = evaluate(model, X_val, y_val, device=CPU)
    assert stats["num_examples"] == len(X_tr)
    assert stats["train_accuracy"] > 0.9 and stats["train_loss"] < before["loss"]
    assert after["accuracy"] > 0.9 and after["loss"] < before["loss"]
    assert after["num_examples"] == len(X_val)


def test_training_is_deterministic_for_a_seed(cancer_split):
    X_tr, y_tr, _, _ = cancer_split
    a, b, c = logreg(), logreg(), logreg()
    stats_a = train(a, X_tr, y_tr)
    stats_b = train(b, X_tr, y_tr)
    train(c, X_tr, y_tr, seed=1)
    assert stats_a == stats_b
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)


def test_dropout_training_is_deterministic_too(cancer_split):
    X_tr, y_tr, _, _ = cancer_split
    params = {"in_features": 30, "num_classes": 2, "hidden": [8], "dropout": 0.5}
    a, b = build_model("mlp", params, seed=0), build_model("mlp", params, seed=0)
    train(a, X_tr, y_tr, epochs=1)
    train(b, X_tr, y_tr, epochs=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_proximal_term_pulls_towards_start_weights(cancer_split):
    X_tr, y_tr, _, _ = cancer_split
    start = logreg().weight.detach().clone()
    plain, prox = logreg(), logreg()
    train(plain, X_tr, y_tr)
    train(prox, X_tr, y_tr, proximal_mu=1.0)
    assert not torch.equal(plain.weight, prox.weight)
    assert (prox.weight - start).norm() < (plain.weight - start).norm()


def test_model_returns_to_cpu_and_its_mode(cancer_split):
    X_tr, y_tr, X_val, y_val = cancer_split
    model = logreg().eval()
    train(model, X_tr[:40], y_tr[:40], epochs=1, device=None)
    evaluate(model, X_val, y_val)
    assert not model.training and model.weight.device.type == "cpu"


def test_evaluate_matches_hand_computation():
    model = torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    X = np.array([[1.0], [-1.0], [2.0]], dtype=np.float32)
    y = np.array([0, 0, 1])
    result = evaluate(model, X, y, batch_size=2, device=CPU)
    logits = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [2.0, -2.0]])
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor(y)).item()
    assert result["loss"] == pytest.approx(expected)
    assert result["accuracy"] == pytest.approx(1 / 3) and result["num_examples"] == 3


def test_labels_beyond_model_outputs_are_refused_plainly(cancer_split):
    X_tr, _y_tr, _, _ = cancer_split
    with pytest.raises(ValueError, match="labels go up to 5"):
        train(logreg(), X_tr[:10], np.full(10, 5))
    with pytest.raises(ValueError, match="labels go up to 5"):
        evaluate(logreg(), X_tr[:10], np.full(10, 5), device=CPU)


def test_divergence_is_reported(cancer_split):
    X_tr, y_tr, _, _ = cancer_split
    with pytest.raises(TrainingDiverged):
        train(logreg(), X_tr * 1e30, y_tr, optimizer_params={"lr": 10.0})  # the largest lr allowed


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"batch_size": 0}, {"proximal_mu": -1.0}])
def test_bad_training_arguments(cancer_split, kwargs):
    X_tr, y_tr, _, _ = cancer_split
    with pytest.raises(ValueError):
        train(logreg(), X_tr, y_tr, **kwargs)


def test_optimizer_registry_defaults_and_refusals():
    assert set(OPTIMIZERS) >= {"sgd", "adam", "adamw"}
    weight = [torch.nn.Parameter(torch.zeros(1))]
    sgd = build_optimizer("sgd", weight, {})
    assert sgd.defaults["lr"] == 0.1 and sgd.defaults["momentum"] == 0.0
    adam = build_optimizer("adam", weight, {"beta1": 0.8})
    assert adam.defaults["betas"] == (0.8, 0.999) and adam.defaults["lr"] == 0.001
    assert build_optimizer("adamw", weight, None).defaults["weight_decay"] == 0.01
    for name, params, field in [
        ("rmsprop", {}, "optimizer"),
        ("sgd", {"lr": 0}, "optimizer_params.lr"),
        ("sgd", {"momentum": 1.0}, "optimizer_params.momentum"),
        ("sgd", {"nesterov": True}, "optimizer_params.nesterov"),
        ("adam", {"beta2": 1.0}, "optimizer_params.beta2"),
        ("adamw", {"weight_decay": -0.1}, "optimizer_params.weight_decay"),
    ]:
        with pytest.raises(ParamError) as info:
            build_optimizer(name, weight, params)
        assert info.value.field == field


def test_pick_device_follows_cuda_availability():
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_cnn_learns_digits_with_and_without_batch_norm():
    X, y = sklearn_dataset("digits")
    X_tr, y_tr, X_val, y_val = train_val_split(X, y, val_fraction=0.2, seed=0)
    for batch_norm in (False, True):
        model = build_model("cnn", {"in_features": 64, "num_classes": 10,
                                    "batch_norm": batch_norm}, seed=0)
        train(model, X_tr, y_tr, epochs=3, optimizer="adam", optimizer_params={"lr": 0.01})
        result = evaluate(model, X_val, y_val, device=CPU)
        assert result["accuracy"] > 0.6, (batch_norm, result)
        assert "auroc" not in result  # 10 classes: not a binary task


def test_evaluate_adds_exact_auroc_for_binary_tasks():
    model = torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0], [1.0]]))  # score = logit_1 - logit_0 = x
    X = np.array([[0.1], [0.4], [0.35], [0.8], [0.4]], dtype=np.float32)
    y = np.array([0, 0, 1, 1, 1])
    result = evaluate(model, X, y, batch_size=2, device=CPU)
    # positives 0.35, 0.8, 0.4 against negatives 0.1, 0.4:
    # 0.35 > 0.1, < 0.4 -> 1; 0.8 beats both -> 2; 0.4 > 0.1, ties 0.4 -> 1.5; U = 4.5 of 6
    assert result["auroc"] == 0.75
    assert result["auroc"] == pytest.approx(roc_auc_score(y, X[:, 0]), abs=1e-12)


def test_auroc_is_left_out_when_the_split_has_one_class(cancer_split):
    _, _, X_val, y_val = cancer_split
    model = logreg()
    assert "auroc" in evaluate(model, X_val, y_val, device=CPU)
    ones = y_val == 1
    assert "auroc" not in evaluate(model, X_val[ones], y_val[ones], device=CPU)


def test_auroc_of_a_trained_model_matches_sklearn(cancer_split):
    X_tr, y_tr, X_val, y_val = cancer_split
    model = logreg()
    train(model, X_tr, y_tr, epochs=1)
    result = evaluate(model, X_val, y_val, device=CPU)
    with torch.no_grad():
        probabilities = torch.softmax(model(torch.as_tensor(X_val)).double(), dim=1)[:, 1]
    assert result["auroc"] == pytest.approx(roc_auc_score(y_val, probabilities.numpy()), abs=1e-12)
    assert 0.9 < result["auroc"] <= 1.0


def test_optimizer_schemas_have_sensible_ranges():
    sgd, adam, adamw = (OPTIMIZERS[n].schema for n in ("sgd", "adam", "adamw"))
    assert set(sgd) == {"lr", "momentum", "weight_decay", "nesterov"}
    assert set(adam) == set(adamw) == {"lr", "beta1", "beta2", "weight_decay"}
    for schema in (sgd, adam, adamw):
        assert schema["lr"]["min"] == 0.0 and schema["lr"]["min_exclusive"]
        assert schema["weight_decay"]["min"] == 0.0
        assert all(spec.get("help") and "default" in spec for spec in schema.values())
    for schema, key in ((sgd, "momentum"), (adam, "beta1"), (adam, "beta2"), (adamw, "beta2")):
        assert (schema[key]["min"], schema[key]["max"], schema[key]["max_exclusive"]) == (0.0, 1.0, True)
    assert sgd["nesterov"] == {"type": "bool", "default": False, "help": "Nesterov momentum"}
    weight = [torch.nn.Parameter(torch.zeros(1))]
    opt = build_optimizer("sgd", weight, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4})
    assert opt.defaults["nesterov"] and opt.defaults["weight_decay"] == 1e-4
    assert OPTIMIZERS["adamw"].description and "Loshchilov" in OPTIMIZERS["adamw"].description
