"""The catalog end to end: FedProx and FedAdam over three real agents on non-IID
(Dirichlet α=0.3) digits partitions, per-round federated evaluation, and cross-site
validation."""
import numpy as np
import pytest

from fl.data import load_dataset, train_val_split
from fl.networks import build_model
from fl.serialization import load_state_dict
from fl.training import evaluate
from flportal.localstack import all_pages
from tests.e2e.conftest import launch

pytestmark = pytest.mark.e2e
ROUNDS = 8


def _accuracy_of_version(stack, job_id: int, version: int) -> float:
    parts = [train_val_split(*load_dataset(a.data_dir / "digits.npz"), val_fraction=0.2, seed=0) for a in stack.agents]
    X_val, y_val = np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts])
    with stack.api() as api:
        blob = api.get(f"/api/v1/jobs/{job_id}/models/{version}/download/").content
    model = build_model("logreg", {"in_features": 64, "num_classes": 10}, seed=0)
    model.load_state_dict(load_state_dict(blob))
    return evaluate(model, X_val, y_val)["accuracy"]


@pytest.mark.parametrize("strategy, strategy_params, extra", [
    ("fedprox", {"mu": 0.01}, {}),
    ("fedadam", {"eta": 0.05}, {"cross_site_validation": True}),
])
def test_strategy_learns_on_non_iid_digits(digits_stack, strategy, strategy_params, extra):
    job_id = launch(digits_stack, dataset="digits", strategy=strategy, strategy_params=strategy_params,
                    rounds=ROUNDS, batch_size=16, clients_required=3, **extra)
    job = digits_stack.wait_job(job_id, timeout=300)
    assert job["status"] == "succeeded", job["status_reason"]
    start, final = _accuracy_of_version(digits_stack, job_id, 0), _accuracy_of_version(digits_stack, job_id, ROUNDS)
    print(f"{strategy}: round-0 accuracy {start:.4f}, final {final:.4f}")
    assert final > start + 0.2
    with digits_stack.api() as api:
        trained = [r for r in all_pages(api, f"/api/v1/jobs/{job_id}/rounds/") if r["kind"] == "train"]
        assert [r["number"] for r in trained] == list(range(1, ROUNDS + 1))
        assert all(0 <= r["evaluation"]["accuracy"] <= 1 and r["evaluation"]["num_nodes"] == 3 for r in trained)
        per_node = all_pages(api, f"/api/v1/jobs/{job_id}/metrics/", {"phase": "eval", "name": "accuracy"})
        assert len([p for p in per_node if p["node"]]) == 3 * ROUNDS
        if extra.get("cross_site_validation"):
            matrix = api.get(f"/api/v1/jobs/{job_id}/cross-site/").json()
            names = [a.name for a in digits_stack.agents]
            assert matrix["sources"] == ["global"] + names and matrix["evaluators"] == names
            accuracy = matrix["metrics"]["accuracy"]
            assert all(value is not None and 0 <= value <= 1 for row in accuracy for value in row)
            # the global model does better across sites than the average local model
            assert np.mean(accuracy[0]) >= np.mean(accuracy[1:]) - 0.05
