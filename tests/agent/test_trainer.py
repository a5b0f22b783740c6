"""The real trainer process (``python -m agent.trainer``) against the fake portal."""

import base64
import hashlib
import json
import math
import socket
import subprocess
import threading
import time

import pytest

from fl.data import load_dataset, train_val_split
from fl.networks import build_model
from fl.serialization import load_state_dict, state_dict_to_bytes
from tests.agent.conftest import NODE_TOKEN, subprocess_env, wait_for
from tests.agent.fakeportal import FakePortal

MODEL_PARAMS = {"in_features": 30, "num_classes": 2}
CONFIG = {"model": "logreg", "model_params": MODEL_PARAMS, "optimizer": "sgd",
          "optimizer_params": {"lr": 0.1}, "local_epochs": 2, "batch_size": 32,
          "dataset": "breast_cancer", "val_fraction": 0.2, "seed": 0,
          "strategy": "fedavg", "proximal_mu": 0.0}
# breast cancer is a binary task: AUROC too; on_cuda says which device trained
UPDATE_METRICS = {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_auroc", "compute_s", "on_cuda"}
EVAL_METRICS = {"loss", "accuracy", "auroc", "eval_s"}  # eval_s: seconds of the evaluation's local work


def model_bytes(seed: int) -> bytes:
    return state_dict_to_bytes(build_model("logreg", MODEL_PARAMS, seed=seed).state_dict())


def round_task(action: str, round_no: int, round_id: int, version: int, data: bytes) -> dict:
    return {"action": action, "job_id": 7, "round_id": round_id, "round": round_no,
            "model_version": version, "model_url": f"/api/v1/fl/jobs/7/models/{version}",
            "sha256": hashlib.sha256(data).hexdigest(), "config": CONFIG}


def trainer_argv(python, portal_url, site_data, *extra):
    return [python, "-m", "agent.trainer", "--portal", portal_url, "--job", "7",
            "--data-dir", str(site_data), "--dataset", "breast_cancer", "--wait", "1",
            "--backoff-cap", "0.3", *extra]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def split_sizes(site_data) -> tuple[int, int]:
    X, y = load_dataset(site_data / "breast_cancer.npz")
    _, y_tr, _, y_val = train_val_split(X, y, val_fraction=0.2, seed=0)
    return len(y_tr), len(y_val)


@pytest.fixture(scope="module")
def scripted_run(site_data, python):
    """One full trainer run: portal down at first, then 503s, a corrupted download,
    train round 1, evaluate round 1, wait, train round 2 answered 409, end."""
    v0, v1 = model_bytes(0), model_bytes(1)
    portal = FakePortal(token=NODE_TOKEN, models={0: v0, 1: v1},
                        inject={"task": [503, 503], "update:12": [409]}, corrupt={1: 1},
                        tasks=[round_task("train", 1, 11, 0, v0), round_task("evaluate", 1, 11, 1, v1),
                               {"action": "wait", "retry_after": 0.1}, round_task("train", 2, 12, 1, v1)])
    port = free_port()
    proc = subprocess.Popen(trainer_argv(python, f"http://127.0.0.1:{port}", site_data),
                            env=subprocess_env(FLPORTAL_NODE_TOKEN=NODE_TOKEN),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("task poll failed" in line for line in lines), timeout=30,
                 what="a refused connection")
        portal.start(port)
        proc.wait(timeout=60)
        reader.join(timeout=5)
    finally:
        proc.kill()
        portal.close()
    return proc.returncode, "".join(lines), portal


def test_trainer_ends_with_status_0(scripted_run):
    returncode, output, portal = scripted_run
    assert returncode == 0, output
    assert "ended: script done" in output
    assert not portal.tasks, "every scripted task was consumed"


def test_trainer_retries_connection_refused_and_5xx_with_backoff(scripted_run):
    _, output, portal = scripted_run
    assert "Connection refused" in output
    assert [status for _, status in portal.task_polls[:3]] == [503, 503, 200]
    retries = [line for line in output.splitlines() if "task poll failed" in line]
    assert len(retries) >= 3  # at least one refused connection plus the two 503s
    assert "task poll: succeeded after" in output


def test_trainer_refuses_a_checksum_mismatch_and_downloads_again(scripted_run):
    _, output, portal = scripted_run
    assert portal.downloads[:3] == [(0, False), (1, True), (1, False)]
    assert "model download failed" in output and "sha256" in output


def test_trainer_uploads_a_valid_update(scripted_run, site_data):
    _, _output, portal = scripted_run
    accepted = [u for u in portal.uploads if u.status == 201]
    assert [u.round_id for u in accepted] == [11]
    update = load_state_dict(accepted[0].body)
    expected = build_model("logreg", MODEL_PARAMS, seed=0).state_dict()
    assert {k: tuple(v.shape) for k, v in update.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    assert all(t.dtype == expected[k].dtype and t.isfinite().all() for k, t in update.items())
    assert not all((update[k] == expected[k]).all() for k in expected), "training changed nothing"
    n_train, _ = split_sizes(site_data)
    assert accepted[0].num_examples == str(n_train)
    metrics = json.loads(accepted[0].metrics)
    assert set(metrics) == UPDATE_METRICS
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert 0.0 <= metrics["train_accuracy"] <= 1.0 and 0.0 <= metrics["val_accuracy"] <= 1.0
    assert metrics["compute_s"] > 0


def test_trainer_posts_the_evaluation_on_its_validation_split(scripted_run, site_data):
    _, _, portal = scripted_run
    _, n_val = split_sizes(site_data)
    [(round_id, status, body)] = portal.evaluations
    assert (round_id, status, body["num_examples"]) == (11, 201, n_val)
    assert set(body["metrics"]) == EVAL_METRICS
    assert math.isfinite(body["metrics"]["loss"]) and 0.0 <= body["metrics"]["accuracy"] <= 1.0
    assert body["metrics"]["eval_s"] > 0


def test_trainer_drops_an_update_answered_409(scripted_run):
    _, output, portal = scripted_run
    assert [(u.round_id, u.status) for u in portal.uploads] == [(11, 201), (12, 409)]
    assert "round 2: dropped" in output


def run_script(python, site_data, portal: FakePortal) -> tuple[int, str]:
    portal.start()
    try:
        proc = subprocess.run(trainer_argv(python, portal.url, site_data),
                              env=subprocess_env(FLPORTAL_NODE_TOKEN=NODE_TOKEN),
                              capture_output=True, text=True, timeout=90)
    finally:
        portal.close()
    return proc.returncode, proc.stdout + proc.stderr


def inline(task: dict, data: bytes) -> dict:
    return {**task, "weights": base64.b64encode(data).decode()}


@pytest.fixture(scope="module")
def folded_run(site_data, python):
    """Train rounds that evaluate the received model first, with the model inside the
    task: intact (round 2, nothing downloaded), damaged (round 3: downloaded instead)."""
    v1, v2 = model_bytes(1), model_bytes(2)
    portal = FakePortal(token=NODE_TOKEN, models={2: v2}, tasks=[
        {**inline(round_task("train", 2, 12, 1, v1), v1), "evaluate_first": True},
        {**inline(round_task("train", 3, 13, 2, v2), v1), "evaluate_first": True}])
    returncode, output = run_script(python, site_data, portal)
    return returncode, output, portal


def test_trainer_evaluates_first_and_sends_the_evaluation_with_the_update(folded_run, site_data):
    returncode, output, portal = folded_run
    assert returncode == 0, output
    _, n_val = split_sizes(site_data)
    assert [(u.round_id, u.status, u.eval_examples) for u in portal.uploads] == [(12, 201, str(n_val)),
                                                                               (13, 201, str(n_val))]
    evaluation = json.loads(portal.uploads[0].eval_metrics)
    assert set(evaluation) == EVAL_METRICS and 0.0 <= evaluation["accuracy"] <= 1.0
    assert set(json.loads(portal.uploads[0].metrics)) == UPDATE_METRICS
    assert portal.evaluations == []  # no separate evaluation request
    assert output.index("round 2: evaluated on") < output.index("round 2: trained on")


def test_trainer_uses_the_model_inside_the_task_and_downloads_a_damaged_one(folded_run):
    _, _output, portal = folded_run
    assert portal.downloads == [(2, False)]  # round 2 downloaded nothing; round 3's copy did not match


def test_trainer_takes_the_next_task_from_a_results_answer_without_polling(site_data, python):
    """The portal answers an upload (and an evaluation) made with ?wait= with the next
    task: the trainer polls only for its first task."""
    v0, v1, v2 = model_bytes(0), model_bytes(1), model_bytes(2)
    portal = FakePortal(token=NODE_TOKEN, models={0: v0, 1: v1, 2: v2}, piggyback=True, tasks=[
        round_task("train", 1, 11, 0, v0), round_task("train", 2, 12, 1, v1), round_task("evaluate", 2, 13, 2, v2)])
    returncode, output = run_script(python, site_data, portal)
    assert returncode == 0, output
    assert [u.round_id for u in portal.uploads] == [11, 12] and [e[0] for e in portal.evaluations] == [13]
    assert len(portal.task_polls) == 1 and "ended: script done" in output


def test_trainer_without_evaluate_first_sends_no_evaluation(scripted_run):
    _, _, portal = scripted_run
    assert all(u.eval_examples is None and u.eval_metrics is None for u in portal.uploads)


def test_trainer_exits_nonzero_when_the_token_is_refused(site_data, python, portal):
    proc = subprocess.run(trainer_argv(python, portal.url, site_data),
                          env=subprocess_env(FLPORTAL_NODE_TOKEN="wrong"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "401 unauthenticated" in proc.stdout
    assert len(portal.task_polls) == 0  # the fake portal refuses before counting a poll


def test_trainer_refuses_to_start_without_a_token(site_data, python, portal):
    proc = subprocess.run(trainer_argv(python, portal.url, site_data), env=subprocess_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "FLPORTAL_NODE_TOKEN" in proc.stdout


def test_trainer_gives_up_after_max_offline(site_data, python):
    started = time.monotonic()
    proc = subprocess.run(
        trainer_argv(python, f"http://127.0.0.1:{free_port()}", site_data, "--max-offline", "1.5"),
        env=subprocess_env(FLPORTAL_NODE_TOKEN=NODE_TOKEN), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stdout
    assert "giving up" in proc.stdout
    assert time.monotonic() - started < 30
