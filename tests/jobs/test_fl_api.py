"""The node-facing FL API through the real URLs (docs/PROTOCOL.md, section 1): status
codes, error bodies, and that a refusal changes nothing on the portal."""
import asyncio
import base64
import hashlib
import json
import math
import time

import pytest
import torch
from asgiref.sync import async_to_sync, sync_to_async
from django.test import AsyncClient

from core.body_limit import BodyLimit
from jobs import events
from jobs.models import JobEvent, MetricPoint, ModelVersion, Round, Update
from jobs.services import artifacts
from jobs.services.jobs import job_cancel
from jobs.services.node_tasks import task_for_node
from jobs.services.transitions import round_transition
from nodes.models import Node
from tests.conftest import BREAST_CANCER, create_job, node_auth
from tests.jobs.helpers import close, open_round, perturbed, row_counts, submit_train, update_bytes

HEARTBEAT = "/api/v1/fl/heartbeat"


def upload_url(rnd):
    return f"/api/v1/fl/rounds/{rnd.pk}/update"


def evaluation_url(rnd):
    return f"/api/v1/fl/rounds/{rnd.pk}/evaluation"


def upload(client, rnd, creds, body: bytes, *, num_examples="100", metrics='{"train_loss": 0.5}', query="", **headers):
    sent = {"Authorization": node_auth(creds), **headers}
    if num_examples is not None:
        sent["X-Num-Examples"] = num_examples
    if metrics is not None:
        sent["X-Metrics"] = metrics
    return client.post(upload_url(rnd) + query, data=body, content_type="application/octet-stream", headers=sent)


def evaluate(client, rnd, creds, body):
    return client.post(evaluation_url(rnd), data=json.dumps(body), content_type="application/json",
                       headers={"Authorization": node_auth(creds)})


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["error"] == code and isinstance(body["message"], str) and body["message"]
    return body


def leftovers(job):
    """Files in the job's artifact directory other than its model versions."""
    directory = artifacts.job_dir(job.pk)
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("model-"))


@pytest.fixture
def rnd(started_job):
    return open_round(started_job)


@pytest.fixture
def good_body(rnd):
    return update_bytes(perturbed(rnd, seed=1))


@pytest.fixture
def evaluate_round(make_started_job, nodes3, tmp_path):
    """The evaluate round of a 1-round job (only the last model gets a round of its own)."""
    job = make_started_job(rounds=1)
    train = open_round(job)
    for i, cr in enumerate(nodes3):
        submit_train(train, cr.node, tmp_path, seed=i, num_examples=10)
    close(train)
    return open_round(job, Round.Kind.EVALUATE)


@pytest.fixture
def second_round(started_job, nodes3, tmp_path):
    """Train round 2, whose nodes evaluate version 1 first."""
    train = open_round(started_job)
    for i, cr in enumerate(nodes3):
        submit_train(train, cr.node, tmp_path, seed=i, num_examples=10)
    close(train)
    return open_round(started_job)


# --- heartbeat and authentication ------------------------------------------------------------

@pytest.mark.django_db
def test_heartbeat_brings_a_node_online_and_stores_what_it_reports(client, make_node):
    creds = make_node("site-x", online=False)
    assert creds.node.status == Node.Status.OFFLINE
    body = {"version": "1.2", "datasets": [BREAST_CANCER], "resources": {"cpus": 8, "gpus": 0}}

    response = client.post(HEARTBEAT, data=body, content_type="application/json",
                           headers={"Authorization": node_auth(creds)})

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "node": "site-x", "heartbeat_interval_s": 5.0}
    node = Node.objects.get(pk=creds.node.pk)
    assert node.status == Node.Status.ONLINE and node.last_heartbeat_at is not None
    assert (node.version, node.datasets, node.resources) == ("1.2", [BREAST_CANCER], {"cpus": 8, "gpus": 0})


@pytest.mark.django_db
@pytest.mark.parametrize("body", ["not json", "[1, 2]", '{"datasets": {"a": 1}}', '{"resources": []}'])
def test_heartbeat_refuses_a_bad_body(client, make_node, body):
    creds = make_node("site-x", online=False)
    response = client.post(HEARTBEAT, data=body, content_type="application/json",
                           headers={"Authorization": node_auth(creds)})
    assert_error(response, 400, "invalid_update")
    assert Node.objects.get(pk=creds.node.pk).status == Node.Status.OFFLINE


@pytest.mark.django_db
@pytest.mark.parametrize("datasets", [[{"name": "breast_cancer"}], ["breast_cancer"],
                                      [{"name": "breast_cancer", "n_features": 30}]])
def test_a_malformed_dataset_report_cannot_break_job_creation(client, nodes3, api_client, datasets):
    api_client.raise_request_exception = False
    response = client.post(HEARTBEAT, data={"version": "1", "datasets": datasets, "resources": {}},
                           content_type="application/json", headers={"Authorization": node_auth(nodes3[0])})
    if response.status_code == 200:  # accepted: then job creation must still answer with a validation error
        created = api_client.post("/api/v1/jobs/", {"name": "x", "nodes": [c.node.name for c in nodes3],
                                                    "spec": {"model": "logreg", "dataset": "breast_cancer"}},
                                  format="json")
        assert created.status_code == 400, created.content
    else:
        assert_error(response, 400, "invalid_update")


@pytest.mark.django_db
@pytest.mark.parametrize("authorization", [
    None, "", "Node", "Node ", "Node garbage", "Node n000000000000.secret", "Bearer {token}", "Token {token}",
    "Node {key_id}.wrong-secret", "node {token}",
])
@pytest.mark.parametrize("method, url", [
    ("post", HEARTBEAT), ("get", "/api/v1/fl/jobs/{job}/models/0"), ("post", "/api/v1/fl/rounds/{round}/update"),
    ("post", "/api/v1/fl/rounds/{round}/evaluation"), ("post", "/api/v1/fl/jobs/{job}/logs"),
])
def test_every_sync_endpoint_answers_401_without_a_valid_node_token(client, started_job, nodes3, authorization,
                                                                    method, url):
    creds = nodes3[0]
    url = url.format(job=started_job.pk, round=open_round(started_job).pk)
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization.format(token=creds.token, key_id=creds.token.split(".")[0])
    before = (row_counts(), Node.objects.get(pk=creds.node.pk).last_heartbeat_at)

    response = getattr(client, method)(url, data=b"{}", content_type="application/json", headers=headers) \
        if method == "post" else client.get(url, headers=headers)

    body = assert_error(response, 401, "unauthenticated")
    assert "Node <token>" in body["message"]
    assert (row_counts(), Node.objects.get(pk=creds.node.pk).last_heartbeat_at) == before


@pytest.mark.django_db
def test_wrong_methods_are_refused(client, nodes3):
    assert client.get(HEARTBEAT, headers={"Authorization": node_auth(nodes3[0])}).status_code == 405


# --- updates ------------------------------------------------------------------------------

@pytest.mark.django_db
def test_upload_is_accepted_and_recorded(client, rnd, nodes3, good_body):
    response = upload(client, rnd, nodes3[0], good_body, num_examples="123",
                      metrics='{"train_loss": 0.25, "compute_s": 1.5}')

    assert response.status_code == 201
    update = Update.objects.get()
    assert response.json() == {"status": "accepted", "update_id": update.pk}
    assert (update.round, update.node, update.num_examples) == (rnd, nodes3[0].node, 123)
    stored = artifacts.absolute(update.path).read_bytes()
    assert stored == good_body and update.sha256 == hashlib.sha256(good_body).hexdigest()
    assert update.bytes == len(good_body)
    points = dict(MetricPoint.objects.filter(node=nodes3[0].node).values_list("name", "value"))
    assert points == {"train_loss": 0.25, "compute_s": 1.5, "num_examples": 123.0}
    assert JobEvent.objects.filter(kind="update_accepted", node=nodes3[0].node).count() == 1
    assert leftovers(rnd.job) == [update.path.rsplit("/", 1)[1]]


@pytest.mark.django_db
def test_duplicate_upload_is_answered_with_the_first_update(client, rnd, nodes3, good_body):
    first = upload(client, rnd, nodes3[0], good_body)
    counts = row_counts()
    second = upload(client, rnd, nodes3[0], update_bytes(perturbed(rnd, seed=2)), num_examples="5")
    garbage = upload(client, rnd, nodes3[0], b"garbage")  # a duplicate is answered before the body is read

    assert first.status_code == 201
    assert second.status_code == 200 and garbage.status_code == 200
    assert second.json() == garbage.json() == first.json()
    assert row_counts() == counts and Update.objects.get().num_examples == 100
    assert artifacts.absolute(Update.objects.get().path).read_bytes() == good_body


@pytest.mark.django_db
def test_upload_to_a_round_that_is_no_longer_open_is_stale(client, rnd, nodes3, good_body):
    round_transition(rnd, Round.Status.FAILED, reason="deadline")
    counts = row_counts()
    body = assert_error(upload(client, rnd, nodes3[0], good_body), 409, "stale_round")
    assert "failed" in body["message"]
    assert row_counts() == counts and leftovers(rnd.job) == []


@pytest.mark.django_db
def test_upload_from_a_node_not_selected_for_the_round_is_forbidden(client, make_started_job, nodes3):
    job = make_started_job(clients_per_round=2)
    rnd = open_round(job)
    (outsider,) = [cr for cr in nodes3 if not rnd.selected.filter(pk=cr.node.pk).exists()]
    counts = row_counts()
    body = assert_error(upload(client, rnd, outsider, update_bytes(perturbed(rnd, 1))), 403, "not_selected")
    assert outsider.node.name in body["message"]
    assert row_counts() == counts and leftovers(job) == []


@pytest.mark.django_db
def test_upload_from_a_node_of_another_job_is_not_found(client, rnd, make_node, user, good_body):
    stranger = make_node("site-z")
    create_job(user, [stranger])
    counts = row_counts()
    assert_error(upload(client, rnd, stranger, good_body), 404, "not_found")
    assert_error(client.post("/api/v1/fl/rounds/999999/update", data=good_body,
                             content_type="application/octet-stream",
                             headers={"Authorization": node_auth(stranger), "X-Num-Examples": "1"}), 404, "not_found")
    assert row_counts() == counts


def _renamed(state):
    state["weights"] = state.pop("weight")
    return state


def _extra(state):
    state["extra"] = torch.zeros(1)
    return state


def _missing(state):
    del state["bias"]
    return state


def _reshaped(state):
    state["weight"] = state["weight"].reshape(-1)
    return state


def _transposed(state):
    state["weight"] = state["weight"].t().contiguous()
    return state


def _float64(state):
    state["bias"] = state["bias"].double()
    return state


def _int(state):
    state["bias"] = state["bias"].to(torch.int32)
    return state


def _nan(state):
    state["weight"][0, 3] = math.nan
    return state


def _inf(state):
    state["bias"][1] = -math.inf
    return state


@pytest.mark.django_db
@pytest.mark.parametrize(("mutate", "needle"), [
    (_renamed, "missing tensors: 'weight'"), (_extra, "unexpected tensors: 'extra'"), (_missing, "missing tensors"),
    (_reshaped, "expected shape"), (_transposed, "expected shape (2, 30)"), (_float64, "expected dtype float32"),
    (_int, "expected dtype float32"), (_nan, "NaN"), (_inf, "infinite"),
])
def test_upload_with_wrong_tensors_is_refused_and_leaves_nothing(client, rnd, nodes3, mutate, needle):
    body = update_bytes(mutate(perturbed(rnd, seed=3)))
    counts = row_counts()
    response = assert_error(upload(client, rnd, nodes3[0], body), 400, "invalid_update")
    assert needle in response["message"]
    assert row_counts() == counts and leftovers(rnd.job) == []


@pytest.mark.django_db
@pytest.mark.parametrize("body", [b"", b"garbage bytes, not safetensors", b"\xff" * 8 + b"{}",
                                  b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"a": "b"}      '])
def test_unreadable_upload_is_refused(client, rnd, nodes3, body):
    counts = row_counts()
    assert_error(upload(client, rnd, nodes3[0], body), 400, "invalid_update")
    assert row_counts() == counts and leftovers(rnd.job) == []


@pytest.mark.django_db
def test_truncated_upload_is_refused(client, rnd, nodes3, good_body):
    counts = row_counts()
    assert_error(upload(client, rnd, nodes3[0], good_body[:-16]), 400, "invalid_update")
    assert row_counts() == counts and leftovers(rnd.job) == []


@pytest.mark.django_db
@pytest.mark.parametrize(("num_examples", "metrics"), [
    (None, "{}"), ("", "{}"), ("abc", "{}"), ("1.5", "{}"), ("0", "{}"), ("-3", "{}"),
    ("10", "not json"), ("10", "[1, 2]"), ("10", '"loss"'), ("10", '{"loss": "low"}'), ("10", '{"loss": NaN}'),
    ("10", '{"loss": Infinity}'), ("10", '{"loss": true}'), ("10", '{"": 1}'), ("10", json.dumps({"x" * 65: 1})),
    ("10", json.dumps({f"m{i}": i for i in range(65)})), ("10", '{"loss": null}'),
    ("1_000", "{}"), ("+7", "{}"), (" 7", "{}"), ("7 ", "{}"), ("99999999999999999999999", "{}"),
    ("10", '{"accuracy": 1e308}'), ("10", '{"loss": -1e16}'), ("10", "[" * 100_000 + "]" * 100_000),
    ("10", '{"loss": ' + "[" * 5000 + "]" * 5000 + "}"),
])
def test_upload_with_bad_headers_is_refused(client, rnd, nodes3, good_body, num_examples, metrics):
    counts = row_counts()
    body = assert_error(upload(client, rnd, nodes3[0], good_body, num_examples=num_examples, metrics=metrics),
                        400, "invalid_update")
    bad_count = num_examples is None or not num_examples.isdigit() or not 0 < int(num_examples) < 2**31
    assert body["field"].startswith("X-Num-Examples" if bad_count else "X-Metrics"), body
    assert row_counts() == counts and leftovers(rnd.job) == []


@pytest.mark.django_db
def test_upload_over_the_size_limit_is_refused(client, rnd, nodes3, good_body, settings):
    settings.FLPORTAL_MAX_UPDATE_BYTES = len(good_body) - 1
    counts = row_counts()
    body = assert_error(upload(client, rnd, nodes3[0], good_body), 413, "too_large")
    assert str(len(good_body) - 1) in body["message"]
    assert row_counts() == counts and leftovers(rnd.job) == []
    settings.FLPORTAL_MAX_UPDATE_BYTES = len(good_body)  # exactly the limit is fine
    assert upload(client, rnd, nodes3[0], good_body).status_code == 201


@pytest.mark.django_db
def test_upload_with_a_huge_integer_metric_is_refused(client, rnd, nodes3, good_body):
    client.raise_request_exception = False
    counts = row_counts()
    response = upload(client, rnd, nodes3[0], good_body, metrics='{"loss": 1' + "0" * 400 + "}")
    assert_error(response, 400, "invalid_update")
    assert row_counts() == counts


@pytest.mark.django_db
def test_upload_with_an_out_of_range_example_count_is_refused(client, rnd, nodes3, good_body):
    client.raise_request_exception = False
    counts = row_counts()
    response = upload(client, rnd, nodes3[0], good_body, num_examples=str(10 ** 20))
    assert_error(response, 400, "invalid_update")
    assert row_counts() == counts


# --- model download ---------------------------------------------------------------------------

@pytest.mark.django_db
def test_model_download_streams_the_version_with_its_checksum(client, started_job, nodes3):
    version = ModelVersion.objects.get(job=started_job, round=0)
    response = client.get(f"/api/v1/fl/jobs/{started_job.pk}/models/0", headers={"Authorization": node_auth(nodes3[1])})

    assert response.status_code == 200 and response["Content-Type"] == "application/octet-stream"
    data = b"".join(response.streaming_content)
    assert hashlib.sha256(data).hexdigest() == response["X-Checksum-Sha256"] == version.sha256
    assert int(response["Content-Length"]) == len(data) == version.bytes
    assert data == artifacts.absolute(version.path).read_bytes()


@pytest.mark.django_db
def test_model_download_of_another_job_or_version_is_not_found(client, started_job, make_node, user):
    stranger = make_node("site-z")
    other = create_job(user, [stranger])
    auth = {"Authorization": node_auth(stranger)}
    assert_error(client.get(f"/api/v1/fl/jobs/{started_job.pk}/models/0", headers=auth), 404, "not_found")
    assert_error(client.get(f"/api/v1/fl/jobs/{other.pk}/models/0", headers=auth), 404, "not_found")  # none yet
    assert_error(client.get(f"/api/v1/fl/jobs/{started_job.pk}/models/7", headers=auth), 404, "not_found")


# --- evaluation -----------------------------------------------------------------------------

@pytest.mark.django_db
def test_evaluation_is_accepted_and_a_duplicate_repeats_the_answer(client, evaluate_round, nodes3):
    response = evaluate(client, evaluate_round, nodes3[0], {"num_examples": 40, "metrics": {"loss": 0.3,
                                                                                            "accuracy": 0.9}})
    assert response.status_code == 201
    update = Update.objects.get(round=evaluate_round)
    assert response.json() == {"status": "accepted", "update_id": update.pk}
    assert update.path == "" and update.num_examples == 40
    points = dict(MetricPoint.objects.filter(round=1, phase="eval", node=nodes3[0].node).values_list("name", "value"))
    assert points == {"loss": 0.3, "accuracy": 0.9, "num_examples": 40.0}
    counts = row_counts()

    again = evaluate(client, evaluate_round, nodes3[0], {"num_examples": 1, "metrics": {"loss": 9.0}})

    assert again.status_code == 200 and again.json() == response.json()
    assert row_counts() == counts


@pytest.mark.django_db
@pytest.mark.parametrize("body", [
    {"metrics": {"loss": 0.3}}, {"num_examples": 0, "metrics": {}}, {"num_examples": -1, "metrics": {}},
    {"num_examples": "40", "metrics": {}}, {"num_examples": 4.5, "metrics": {}}, {"num_examples": True, "metrics": {}},
    {"num_examples": 40}, {"num_examples": 40, "metrics": [0.3]}, {"num_examples": 40, "metrics": {"loss": "x"}},
])
def test_evaluation_with_bad_fields_is_refused(client, evaluate_round, nodes3, body):
    counts = row_counts()
    assert_error(evaluate(client, evaluate_round, nodes3[0], body), 400, "invalid_update")
    assert row_counts() == counts


@pytest.mark.django_db
@pytest.mark.parametrize("raw", ['{"num_examples": 40, "metrics": {"loss": NaN}}',
                                 '{"num_examples": 40, "metrics": {"accuracy": Infinity}}',
                                 '{"num_examples": 40, "metrics": {"loss": -Infinity}}',
                                 "not json", "[40]"])
def test_evaluation_with_a_non_finite_metric_or_a_bad_body_is_refused(client, evaluate_round, nodes3, raw):
    counts = row_counts()
    response = client.post(evaluation_url(evaluate_round), data=raw, content_type="application/json",
                           headers={"Authorization": node_auth(nodes3[0])})
    assert_error(response, 400, "invalid_update")
    assert row_counts() == counts


@pytest.mark.django_db
def test_results_for_the_wrong_kind_of_round_are_refused(client, rnd, nodes3, good_body, evaluate_round):
    counts = row_counts()
    body = assert_error(evaluate(client, rnd, nodes3[0], {"num_examples": 5, "metrics": {}}), 400, "invalid_update")
    assert "train round" in body["message"] and row_counts() == counts

    counts = row_counts()
    body = assert_error(upload(client, evaluate_round, nodes3[0], good_body), 400, "invalid_update")
    assert "evaluate round" in body["message"]
    assert row_counts() == counts
    assert [name.rsplit("-", 1)[0] for name in leftovers(evaluate_round.job)] == [
        f"update-r00001-train-{cr.node.name}" for cr in nodes3]


EVALUATION = {"X-Eval-Examples": "40", "X-Eval-Metrics": '{"loss": 0.25, "accuracy": 0.9, "eval_s": 0.01}'}


@pytest.mark.django_db
def test_an_update_of_a_round_that_evaluates_first_carries_the_evaluation(client, second_round, nodes3):
    assert second_round.evaluate_first
    response = upload(client, second_round, nodes3[0], update_bytes(perturbed(second_round, seed=1)), **EVALUATION)
    assert response.status_code == 201, response.content
    points = {(p.round, p.phase, p.name): p.value for p in MetricPoint.objects.filter(node=nodes3[0].node)}
    assert points[(1, "eval", "loss")] == 0.25 and points[(1, "eval", "accuracy")] == 0.9  # version 1's evaluation
    assert points[(1, "eval", "num_examples")] == 40.0 and points[(2, "fit", "train_loss")] == 0.5


@pytest.mark.django_db
@pytest.mark.parametrize("headers", [
    {}, {"X-Eval-Metrics": '{"loss": 0.2}'}, {"X-Eval-Examples": "40"}, {**EVALUATION, "X-Eval-Examples": "0"},
    {**EVALUATION, "X-Eval-Examples": "many"}, {**EVALUATION, "X-Eval-Metrics": '{"loss": NaN}'},
    {**EVALUATION, "X-Eval-Metrics": "[1]"}])
def test_an_update_without_a_good_evaluation_is_refused_where_the_round_asks_for_one(client, second_round, nodes3,
                                                                                    headers):
    counts = row_counts()
    response = upload(client, second_round, nodes3[0], update_bytes(perturbed(second_round, seed=1)), **headers)
    body = assert_error(response, 400, "invalid_update")
    assert "X-Eval" in body["message"] or "evaluation" in body["message"]
    assert row_counts() == counts and [name.rsplit("-", 1)[0] for name in leftovers(second_round.job)] == [
        f"update-r00001-train-{cr.node.name}" for cr in nodes3]


@pytest.mark.django_db
def test_evaluation_to_a_train_round_already_trained_is_refused(client, rnd, nodes3, good_body):
    assert upload(client, rnd, nodes3[0], good_body).status_code == 201
    counts = row_counts()
    response = evaluate(client, rnd, nodes3[0], {"num_examples": 5, "metrics": {"loss": 0.1}})
    assert row_counts() == counts
    assert_error(response, 400, "invalid_update")


@pytest.mark.django_db
def test_evaluation_to_a_closed_round_is_stale(client, evaluate_round, nodes3):
    round_transition(evaluate_round, Round.Status.FAILED)
    counts = row_counts()
    assert_error(evaluate(client, evaluate_round, nodes3[0], {"num_examples": 5, "metrics": {}}), 409, "stale_round")
    assert row_counts() == counts


# --- logs --------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_logs_are_stored_as_one_event(client, started_job, nodes3, make_node):
    url = f"/api/v1/fl/jobs/{started_job.pk}/logs"
    auth = {"Authorization": node_auth(nodes3[2])}
    response = client.post(url, data={"lines": ["epoch 1", "epoch 2"]}, content_type="application/json", headers=auth)
    assert response.status_code == 201 and response.json() == {"status": "ok"}
    event = JobEvent.objects.get(job=started_job, kind="log")
    assert event.message == "epoch 1\nepoch 2" and event.node == nodes3[2].node

    assert_error(client.post(url, data={"lines": "epoch"}, content_type="application/json", headers=auth),
                 400, "invalid_update")
    stranger = {"Authorization": node_auth(make_node("site-z"))}
    assert_error(client.post(url, data={"lines": ["x"]}, content_type="application/json", headers=stranger),
                 404, "not_found")
    assert JobEvent.objects.filter(kind="log").count() == 1


# --- the task long poll (an async view) ---------------------------------------------------------

def get_task(job_id, creds, query="wait=0", timeout=10.0):
    """GET the task endpoint through AsyncClient; returns (response, seconds)."""

    async def call():
        started = time.monotonic()
        response = await asyncio.wait_for(
            AsyncClient().get(f"/api/v1/fl/jobs/{job_id}/task?{query}",
                              headers={"Authorization": node_auth(creds)} if creds else {}),
            timeout)
        return response, time.monotonic() - started

    return async_to_sync(call)()


@pytest.mark.django_db
def test_task_answers_train_then_end(started_job, nodes3):
    rnd = open_round(started_job)
    response, _ = get_task(started_job.pk, nodes3[0])
    assert response.status_code == 200
    task = response.json()
    v0 = ModelVersion.objects.get(job=started_job, round=0)
    assert task.pop("weights") == base64.b64encode(artifacts.absolute(v0.path).read_bytes()).decode()
    assert task == {
        "action": "train", "job_id": started_job.pk, "round_id": rnd.pk, "round": 1, "model_version": 0,
        "model_url": f"/api/v1/fl/jobs/{started_job.pk}/models/0", "sha256": v0.sha256,
        "deadline": rnd.deadline.isoformat(), "evaluate_first": False,
        "config": {"model": "logreg", "model_params": {"in_features": 30, "num_classes": 2}, "optimizer": "sgd",
                   "optimizer_params": {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False},
                   "local_epochs": 1, "batch_size": 32, "dataset": "breast_cancer", "val_fraction": 0.2,
                   "seed": 0, "strategy": "fedavg", "proximal_mu": 0.0},
    }

    job_cancel(job=started_job, reason="stop")
    response, _ = get_task(started_job.pk, nodes3[0], "wait=20")
    assert response.status_code == 200 and response.json() == {"action": "end", "reason": "job cancelled: stop"}


@pytest.mark.django_db
def test_task_refuses_strangers_and_bad_waits(started_job, make_node):
    stranger = make_node("site-z")
    assert_error(get_task(started_job.pk, None)[0], 401, "unauthenticated")
    assert_error(get_task(started_job.pk, stranger)[0], 404, "not_found")
    assert_error(get_task(started_job.pk, stranger, "wait=soon")[0], 400, "invalid_update")


@pytest.mark.django_db
def test_task_long_poll_waits_up_to_the_cap(started_job, nodes3, tmp_path, settings):
    settings.FLPORTAL_TASK_LONG_POLL_MAX_S = 0.4
    submit_train(open_round(started_job), nodes3[0].node, tmp_path, seed=1, num_examples=5)

    response, seconds = get_task(started_job.pk, nodes3[0], "wait=0.2")
    assert response.json() == {"action": "wait", "retry_after": 1.0} and 0.15 < seconds < 1.5
    response, seconds = get_task(started_job.pk, nodes3[0], "wait=1000")  # capped
    assert response.json()["action"] == "wait" and 0.35 < seconds < 1.5
    response, seconds = get_task(started_job.pk, nodes3[0], "wait=-5")
    assert response.json()["action"] == "wait" and seconds < 0.3


@pytest.mark.django_db
def test_task_long_poll_with_wait_nan_still_ends(started_job, nodes3, tmp_path, settings):
    settings.FLPORTAL_TASK_LONG_POLL_MAX_S = 0.4
    submit_train(open_round(started_job), nodes3[0].node, tmp_path, seed=1, num_examples=5)
    response, seconds = get_task(started_job.pk, nodes3[0], "wait=nan", timeout=2.0)
    assert response.status_code in (200, 400) and seconds < 1.5


def run_broadcasts(callbacks):
    """Run the captured live events (broadcasts), not the Celery tasks (partials, jobs/services/dispatch.py)."""
    for callback in callbacks:
        if not hasattr(callback, "func"):
            callback()


def poll_while(job, creds, action, *, wait=20):
    """Start a long poll for `creds`, run `action` (sync) once it waits; returns
    (response or None if it did not answer within 5 s, seconds from action to answer)."""

    async def scenario():
        poll = asyncio.ensure_future(AsyncClient().get(f"/api/v1/fl/jobs/{job.pk}/task?wait={wait}",
                                                       headers={"Authorization": node_auth(creds)}))
        await asyncio.sleep(0.3)
        assert not poll.done()
        started = time.monotonic()
        await sync_to_async(action)()
        try:
            response = await asyncio.wait_for(asyncio.shield(poll), 5)
        except TimeoutError:
            poll.cancel()
            response = None
        return response, time.monotonic() - started

    return async_to_sync(scenario)()


@pytest.mark.django_db
def test_task_long_poll_is_handed_the_next_rounds_task_when_it_opens(started_job, nodes3, tmp_path,
                                                                    django_capture_on_commit_callbacks):
    """A trainer waiting for round 2 gets its task as soon as round 1 closes: from the
    wake-up, which carries the round's task (the same as read from the database), not
    after the long poll's re-check (5 s)."""
    train = open_round(started_job)
    for i, cr in enumerate(nodes3[:2]):
        submit_train(train, cr.node, tmp_path, seed=i, num_examples=5)

    def finish_round():
        submit_train(train, nodes3[2].node, tmp_path, seed=2, num_examples=5)
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            close(train)
        run_broadcasts(callbacks)

    response, seconds = poll_while(started_job, nodes3[0], finish_round)
    task = response.json()
    assert (task["action"], task["round"], task["model_version"], task["evaluate_first"]) == ("train", 2, 1, True)
    assert task == task_for_node(job_id=started_job.pk, node=nodes3[0].node)
    assert seconds < 0.45  # woken (~0.05 s), not found by a re-check


@pytest.mark.django_db
def test_a_wake_up_hands_its_task_only_to_the_nodes_it_names(started_job, nodes3, tmp_path,
                                                            django_capture_on_commit_callbacks):
    """The task in a wake-up is answered as is, with no query, to the nodes it names
    (here one the database would tell to wait); any other node reads its task again."""
    train = open_round(started_job)
    a, b = nodes3[0], nodes3[1]
    for i, cr in enumerate((a, b)):
        submit_train(train, cr.node, tmp_path, seed=i, num_examples=5)  # both now have to wait
    carried = {"action": "train", "round": 99, "round_id": train.pk + 100, "from": "the wake-up"}

    def wake_b(task=carried):
        with django_capture_on_commit_callbacks(execute=True):
            events.round_task_ready(started_job.pk, task, [b.node.pk])

    response, seconds = poll_while(started_job, b, wake_b)
    assert response.json() == carried and seconds < 0.45
    response, seconds = poll_while(started_job, a, wake_b, wait=1.5)
    assert response.json() == {"action": "wait", "retry_after": 1.0} and seconds > 1.0
    # a late wake-up of the round b already answered is not handed to it again
    response, seconds = poll_while(started_job, b, lambda: wake_b({**carried, "round_id": train.pk}), wait=1.5)
    assert response.json() == {"action": "wait", "retry_after": 1.0} and seconds > 1.0


# --- the body-size guard of the ASGI app ----------------------------------------------------------

class FakeApp:
    """An inner ASGI app that reads the whole body (as Django does) and answers 200."""

    def __init__(self):
        self.bodies, self.disconnected = [], False

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


def call_asgi(app, path, chunks, headers=()):
    async def run():
        sent, queue = [], list(chunks)

        async def receive():
            if not queue:
                return {"type": "http.disconnect"}
            body = queue.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(queue)}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": path, "headers": list(headers), "query_string": b"",
                 "http_version": "1.1", "scheme": "http", "server": ("testserver", 80), "client": ("127.0.0.1", 1),
                 "root_path": "", "asgi": {"version": "3.0"}}
        await app(scope, receive, send)
        return sent

    return async_to_sync(run)()


def response_of(sent):
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


def test_body_limit_refuses_a_declared_length_over_the_limit_without_calling_the_app():
    inner = FakeApp()
    sent = call_asgi(BodyLimit(inner, prefix="/api/v1/fl/", limit=100), "/api/v1/fl/rounds/1/update",
                     [b"x" * 101], headers=[(b"content-length", b"101")])
    status, headers, body = response_of(sent)
    assert status == 413 and headers[b"content-type"] == b"application/json"
    assert json.loads(body)["error"] == "too_large" and "100" in json.loads(body)["message"]
    assert inner.bodies == [] and not inner.disconnected


def test_body_limit_refuses_a_streamed_body_once_past_the_limit():
    inner = FakeApp()
    sent = call_asgi(BodyLimit(inner, prefix="/api/v1/fl/", limit=100), "/api/v1/fl/rounds/1/update",
                     [b"x" * 60, b"x" * 60, b"x" * 60])  # chunked: no Content-Length
    status, _, body = response_of(sent)
    assert status == 413 and json.loads(body)["error"] == "too_large"
    assert inner.disconnected and inner.bodies == []
    assert len([m for m in sent if m["type"] == "http.response.start"]) == 1


@pytest.mark.parametrize(("path", "chunks", "headers"), [
    ("/api/v1/fl/rounds/1/update", [b"x" * 50, b"x" * 50], []),
    ("/api/v1/fl/rounds/1/update", [b"x" * 100], [(b"content-length", b"100")]),
    ("/api/v1/jobs/", [b"x" * 500], [(b"content-length", b"500")]),  # not the FL API: not limited here
])
def test_body_limit_passes_bodies_within_the_limit_or_outside_the_prefix(path, chunks, headers):
    inner = FakeApp()
    status, _, body = response_of(call_asgi(BodyLimit(inner, prefix="/api/v1/fl/", limit=100), path, chunks, headers))
    assert status == 200 and body == b"ok" and inner.bodies == [b"".join(chunks)]


def test_the_asgi_app_puts_the_fl_api_behind_the_limit(settings):
    from flportal.asgi import application

    too_big = str(settings.FLPORTAL_MAX_UPDATE_BYTES + 1).encode()
    sent = call_asgi(application, "/api/v1/fl/rounds/1/update", [b""], headers=[(b"content-length", too_big)])
    status, _, body = response_of(sent)
    assert status == 413 and json.loads(body)["error"] == "too_large"


@pytest.mark.django_db
def test_django_behind_the_limit_answers_413_for_a_streamed_upload(rnd, nodes3, good_body):
    """The real Django ASGI handler behind BodyLimit: a chunked upload past the limit is
    cut off before the view runs, and nothing is stored."""
    from django.core.asgi import get_asgi_application

    app = BodyLimit(get_asgi_application(), prefix="/api/v1/fl/", limit=len(good_body) - 1)
    counts = row_counts()
    headers = [(b"authorization", node_auth(nodes3[0]).encode()), (b"x-num-examples", b"10"),
               (b"content-type", b"application/octet-stream"), (b"host", b"testserver")]
    half = len(good_body) // 2
    status, _, body = response_of(call_asgi(app, upload_url(rnd), [good_body[:half], good_body[half:]], headers))
    assert status == 413 and json.loads(body)["error"] == "too_large"
    assert row_counts() == counts


# --- the node API's own handler --------------------------------------------------------------------

def asgi_request(method: str, path: str, headers: list, body: bytes = b"", host: bytes = b"localhost"):
    """One request through the real ASGI app; (status, headers by lower-case name, body). The client stays
    connected until the answer is sent (Django stops a request on a disconnect)."""
    from flportal.asgi import application

    async def run():
        sent, chunks = [], [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if chunks:
                return chunks.pop()
            await asyncio.Event().wait()  # connected until cancelled

        async def send(message):
            sent.append(message)

        await application({"type": "http", "method": method, "path": path, "query_string": b"",
                           "headers": [(b"host", host), *headers], "http_version": "1.1", "scheme": "http",
                           "server": ("localhost", 80), "client": ("127.0.0.1", 1), "root_path": "",
                           "asgi": {"version": "3.0"}}, receive, send)
        return sent

    status, headers, answer = response_of(async_to_sync(run)())
    return status, {name.lower(): value for name, value in headers.items()}, answer


@pytest.mark.django_db(transaction=True)
def test_the_node_api_runs_without_the_browser_middleware_and_pages_with_it(nodes3):
    """Through the real ASGI app: a heartbeat gets no frame-options header, no session or
    CSRF cookie (none of the browser middleware ran), and its JSON; the login page,
    through the same app, still has them."""
    body = json.dumps({"version": "x", "datasets": [BREAST_CANCER], "resources": {}}).encode()
    status, headers, answer = asgi_request("POST", HEARTBEAT, [
        (b"authorization", node_auth(nodes3[0]).encode()), (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode())], body)
    assert status == 200 and json.loads(answer)["node"] == nodes3[0].node.name
    assert b"x-frame-options" not in headers and b"set-cookie" not in headers
    assert Node.objects.get(pk=nodes3[0].node.pk).version == "x"

    assert headers[b"x-content-type-options"] == b"nosniff"
    status, _, _ = asgi_request("POST", HEARTBEAT, [(b"authorization", node_auth(nodes3[0]).encode())], body,
                                host=b"evil.example")
    assert status == 400  # ALLOWED_HOSTS still holds

    status, headers, _ = asgi_request("GET", "/login/", [])
    assert status == 200 and headers[b"x-frame-options"] == b"DENY" and b"csrftoken" in headers.get(b"set-cookie", b"")


# --- an upload that waits for the next task ----------------------------------------------------

def upload_waiting(rnd, creds, body: bytes, action, *, wait=20):
    """POST the update with `?wait=` through AsyncClient, run `action` (sync) while it
    waits; returns (response, seconds from action to answer)."""

    async def scenario():
        post = asyncio.ensure_future(AsyncClient().post(
            f"{upload_url(rnd)}?wait={wait}", data=body, content_type="application/octet-stream",
            headers={"Authorization": node_auth(creds), "X-Num-Examples": "10", "X-Metrics": "{}"}))
        await asyncio.sleep(0.4)
        assert not post.done()  # accepted, now waiting for the round to move on
        started = time.monotonic()
        await sync_to_async(action)()
        response = await asyncio.wait_for(post, 5)
        return response, time.monotonic() - started

    return async_to_sync(scenario)()


@pytest.mark.django_db
def test_an_upload_with_wait_answers_the_next_rounds_task_when_it_opens(started_job, nodes3, tmp_path,
                                                                       django_capture_on_commit_callbacks):
    train = open_round(started_job)

    def others_finish_the_round():
        for i, cr in enumerate(nodes3[1:]):
            submit_train(train, cr.node, tmp_path, seed=1 + i, num_examples=5)
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            close(train)
        run_broadcasts(callbacks)

    response, seconds = upload_waiting(train, nodes3[0], update_bytes(perturbed(train, seed=0)),
                                       others_finish_the_round)
    body = response.json()
    assert response.status_code == 201 and body["status"] == "accepted"
    assert Update.objects.get(pk=body["update_id"]).node == nodes3[0].node
    assert (body["next"]["action"], body["next"]["round"], body["next"]["evaluate_first"]) == ("train", 2, True)
    assert body["next"] == task_for_node(job_id=started_job.pk, node=nodes3[0].node) and seconds < 0.45


@pytest.mark.django_db
def test_an_upload_with_wait_answers_wait_when_nothing_came_and_a_duplicate_reads_the_task(
        client, started_job, nodes3, settings):
    settings.FLPORTAL_TASK_LONG_POLL_MAX_S = 0.5
    train = open_round(started_job)
    body = update_bytes(perturbed(train, seed=0))
    started = time.monotonic()
    first = upload(client, train, nodes3[0], body, query="?wait=20")  # capped at 0.5 s
    assert first.status_code == 201 and first.json()["next"] == {"action": "wait", "retry_after": 1.0}
    assert 0.4 < time.monotonic() - started < 3
    job_cancel(job=started_job, reason="enough")
    again = upload(client, train, nodes3[0], body, query="?wait=20")
    assert again.status_code == 200 and again.json()["update_id"] == first.json()["update_id"]
    assert again.json()["next"] == {"action": "end", "reason": "job cancelled: enough"}
    assert_error(upload(client, train, nodes3[1], body, query="?wait=soon"), 400, "invalid_update")
    assert Update.objects.filter(round=train).count() == 1
