"""The embedded default, end to end: a portal process with its in-process worker,
three real agent processes and their trainers, on SQLite."""
import time
from datetime import datetime

import numpy as np
import pytest
import torch

from fl.data import load_dataset, train_val_split
from fl.networks import build_model
from fl.serialization import load_state_dict
from fl.training import evaluate, train_local
from flportal.localstack import all_pages
from tests.e2e.conftest import assert_job_complete, launch

pytestmark = pytest.mark.e2e
ROUNDS, LR, BATCH, SEED, VAL = 5, 0.1, 8, 0, 0.2
finished = {}


def test_fedavg_job_succeeds_on_three_agents(embedded_stack):
    job_id = launch(embedded_stack, rounds=ROUNDS, clients_required=3, seed=SEED)
    job = embedded_stack.wait_job(job_id, timeout=240)
    assert job["status"] == "succeeded", job["status_reason"]
    rounds = assert_job_complete(embedded_stack, job_id, rounds=ROUNDS, nodes=3)
    assert job["final_model"]["round"] == ROUNDS
    assert all(r["dropped"] == [] for r in rounds)
    finished["job"] = job_id


def _splits(stack):
    parts = [train_val_split(*load_dataset(a.data_dir / "breast_cancer.npz"), val_fraction=VAL, seed=SEED)
             for a in stack.agents]
    join = lambda i: np.concatenate([p[i] for p in parts])
    return join(0), join(1), join(2), join(3)


def test_learning_is_real_fedavg_matches_centralized(embedded_stack):
    """FedAvg's final model, on the union of the nodes' validation splits, is within 2
    points of the same model trained centrally for the same total epochs."""
    job_id = finished.get("job") or pytest.fail("the FedAvg job did not finish")
    X_tr, y_tr, X_val, y_val = _splits(embedded_stack)
    with embedded_stack.api() as api:
        blob = api.get(f"/api/v1/jobs/{job_id}/models/{ROUNDS}/download/").content
    params = {"in_features": X_tr.shape[1], "num_classes": 2}
    federated = build_model("logreg", params, seed=SEED)
    federated.load_state_dict(load_state_dict(blob))
    fed_acc = evaluate(federated, X_val, y_val)["accuracy"]
    central = build_model("logreg", params, seed=SEED)
    train_local(central, X_tr, y_tr, epochs=ROUNDS, batch_size=BATCH, optimizer="sgd",
                optimizer_params={"lr": LR}, seed=SEED)
    central_acc = evaluate(central, X_val, y_val)["accuracy"]
    print(f"federated accuracy {fed_acc:.4f}, centralized {central_acc:.4f}")
    assert fed_acc > 0.85
    assert abs(fed_acc - central_acc) <= 0.02
    assert torch.isfinite(next(iter(federated.state_dict().values()))).all()


def _wait_round_open(stack, job_id, number, timeout=60):
    end = time.monotonic() + timeout
    with stack.api() as api:
        while time.monotonic() < end:
            rounds = all_pages(api, f"/api/v1/jobs/{job_id}/rounds/")
            if any(r["number"] >= number and r["kind"] == "train" for r in rounds):
                return
            time.sleep(0.2)
    pytest.fail(f"round {number} of job {job_id} never opened")


def _node_status(stack, name):
    with stack.api() as api:
        return {n["name"]: n["status"] for n in api.get("/api/v1/nodes/").json()}[name]


def test_dead_node_is_dropped_and_job_still_succeeds(embedded_stack):
    """clients_required=2 of 3: killing one agent mid-job drops it from its round, the
    job succeeds, and the node goes offline after the heartbeat timeout."""
    victim = embedded_stack.agents[2]
    # many rounds: a round takes a fraction of a second, and the site must die mid-job
    job_id = launch(embedded_stack, rounds=40, clients_required=2, round_timeout_s=20, seed=1)
    _wait_round_open(embedded_stack, job_id, 2)
    embedded_stack.kill_agent(victim)
    job = embedded_stack.wait_job(job_id, timeout=180)
    assert job["status"] == "succeeded", job["status_reason"]
    with embedded_stack.api() as api:
        rounds = all_pages(api, f"/api/v1/jobs/{job_id}/rounds/")
    assert any(victim.name in r["dropped"] for r in rounds), rounds
    embedded_stack.wait_for(lambda: _node_status(embedded_stack, victim.name) == "offline", 15,
                            f"{victim.name} to go offline")
    embedded_stack.start_agent(victim)
    embedded_stack.wait_nodes_online([victim.name])


def test_dead_node_fails_job_that_requires_every_node(embedded_stack):
    """clients_required=3 of 3: the job ends failed, with a reason that names the
    missing node, and is never left running."""
    victim = embedded_stack.agents[1]
    job_id = launch(embedded_stack, rounds=40, clients_required=3, round_timeout_s=20, seed=2)
    _wait_round_open(embedded_stack, job_id, 2)
    embedded_stack.kill_agent(victim)
    job = embedded_stack.wait_job(job_id, timeout=120)
    assert job["status"] == "failed"
    assert victim.name in job["status_reason"], job["status_reason"]
    embedded_stack.start_agent(victim)


def job_events(api, job_id: int) -> list[dict]:
    """Every event of the job (the API answers 500 at a time after `?after=`)."""
    events, after = [], 0
    while page := api.get(f"/api/v1/jobs/{job_id}/events/", params={"after": after}).json():
        events += page
        after = page[-1]["id"]
    return events


def test_a_site_whose_agent_restarts_trains_again_in_later_rounds(embedded_stack):
    """Its agent dies with its trainer and comes back: the agent's heartbeats list no
    trainer for the running job, so the watchdog asks it for a new one (an event), and
    the site's results are in the job's later rounds again; the job succeeds."""
    victim = embedded_stack.agents[0]
    embedded_stack.wait_nodes_online([a.name for a in embedded_stack.agents])  # the tests before restart agents
    # a first round must leave time for a cold trainer (the warm spares may be in use)
    job_id = launch(embedded_stack, rounds=80, clients_required=2, round_timeout_s=10, seed=3)
    _wait_round_open(embedded_stack, job_id, 3)
    embedded_stack.kill_agent(victim)
    embedded_stack.start_agent(victim)
    with embedded_stack.api() as api:
        embedded_stack.wait_for(lambda: any(e["kind"] == "trainer_lost" and e["node"] == victim.name
                                            for e in job_events(api, job_id)),
                                60, f"a new trainer asked of {victim.name}")
    job = embedded_stack.wait_job(job_id, timeout=300)
    assert job["status"] == "succeeded", job["status_reason"]
    with embedded_stack.api() as api:
        rounds = all_pages(api, f"/api/v1/jobs/{job_id}/rounds/")
        events = job_events(api, job_id)
    lost_at = next(datetime.fromisoformat(e["created_at"]) for e in events
                   if e["kind"] == "trainer_lost" and e["node"] == victim.name)
    back = [r["number"] for r in rounds if r["kind"] == "train" and datetime.fromisoformat(r["opened_at"]) > lost_at
            and victim.name in {u["node"] for u in r["updates"]}]
    assert back, f"{victim.name} answered no round opened after its new trainer was asked for"
    runs = [e for e in events if e["kind"] == "run_started" and e["node"] == victim.name]
    assert len(runs) == 2  # the first trainer, and the one asked for after the restart
