"""The user REST API through the real URLs: authentication, create/start/cancel, the
read endpoints' shapes, and that another user's job is a 404 everywhere."""
import hashlib
import json
import re

import pytest
from django.test import Client
from rest_framework.test import APIClient

from jobs.models import Job, JobEvent
from tests.conftest import BASE_SPEC, NODE_NAMES
from tests.jobs.helpers import close, open_round, submit_eval, submit_train

pytestmark = pytest.mark.django_db

JOB_KEYS = {"id", "name", "description", "owner", "status", "status_reason", "current_round", "spec", "final_model",
            "created_at", "queued_at", "started_at", "finished_at", "cloned_from"}


def create_body(**overrides):
    return {"name": "bc", "nodes": list(NODE_NAMES), "spec": dict(BASE_SPEC), **overrides}


def assert_error(response, status, code=None):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) >= {"error", "message"} and body["message"]
    if code:
        assert body["error"] == code
    return body


@pytest.fixture
def finished_round_job(started_job, nodes3, tmp_path):
    """A running job whose round 1 is done: its train round closed, and so is its
    evaluate round where the protocol opens one; train round 2 is open."""
    train = open_round(started_job)
    for i, cr in enumerate(nodes3):
        submit_train(train, cr.node, tmp_path, seed=i, num_examples=10 * (i + 1), metrics={"train_loss": float(i)})
    close(train)
    while (evaluate := open_round(started_job)).kind == "evaluate":
        for cr in nodes3:
            submit_eval(evaluate, cr.node, num_examples=10, metrics={"loss": 0.5, "accuracy": 0.75})
        close(evaluate)
    started_job.refresh_from_db()
    return started_job


# --- authentication -------------------------------------------------------------------------

@pytest.mark.parametrize("authorization", [None, "Token nope", "Token u123.wrong", "Bearer x"])
def test_unauthenticated_requests_are_refused_with_json(user, authorization):
    client = APIClient()
    if authorization:
        client.credentials(HTTP_AUTHORIZATION=authorization)
    for response in (client.get("/api/v1/jobs/"), client.post("/api/v1/jobs/", create_body(), format="json"),
                     client.get("/api/v1/nodes/")):
        body = assert_error(response, 401)
        assert body["error"] in ("not_authenticated", "authentication_failed")
        assert response["WWW-Authenticate"] == "Token"
    assert Job.objects.count() == 0


def test_a_token_of_an_inactive_user_is_refused(user, api_client):
    user.is_active = False
    user.save(update_fields=["is_active"])
    assert_error(api_client.get("/api/v1/jobs/"), 401, "authentication_failed")


def test_session_auth_works_and_enforces_csrf_on_writes(user, nodes3):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.get("/api/v1/jobs/").status_code == 200

    assert_error(client.post("/api/v1/jobs/", create_body(), format="json"), 403, "permission_denied")
    assert Job.objects.count() == 0

    client.get("/login/")  # sets the CSRF cookie
    response = client.post("/api/v1/jobs/", create_body(), format="json",
                           HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value)
    assert response.status_code == 201 and Job.objects.get().owner == user


# --- create, start, cancel ---------------------------------------------------------------------

def test_create_job_answers_201_with_the_job(api_client, user, nodes3):
    response = api_client.post("/api/v1/jobs/", create_body(description="first try"), format="json")

    assert response.status_code == 201
    body = response.json()
    assert set(body) == JOB_KEYS
    job = Job.objects.get()
    assert body["id"] == job.pk and body["owner"] == "alice" and body["status"] == "draft"
    assert body["description"] == "first try" and body["final_model"] is None
    assert body["spec"]["model_params"] == {"in_features": 30, "num_classes": 2}
    assert body["spec"]["rounds"] == 2 and body["spec"]["dataset"] == "breast_cancer"
    assert job.owner == user


def test_create_job_with_start_queues_it(api_client, nodes3, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        response = api_client.post("/api/v1/jobs/", create_body(start=True), format="json")
    assert response.status_code == 201 and response.json()["status"] == "queued"
    assert Job.objects.get().status == Job.Status.QUEUED


@pytest.mark.parametrize(("spec", "field"), [
    ({"rounds": 0}, "rounds"), ({"model": "nope"}, "model"), ({"optimizer_params": {"lr": -1}}, "optimizer_params.lr"),
    ({"dataset": "mnist"}, "dataset"), ({"surprise": 1}, "surprise"),
])
def test_create_job_with_a_bad_spec_names_the_field(api_client, nodes3, spec, field):
    response = api_client.post("/api/v1/jobs/", create_body(spec={**BASE_SPEC, **spec}), format="json")
    body = assert_error(response, 400, "invalid")
    assert body["field"] == field and body["message"].startswith(field)
    assert Job.objects.count() == 0


@pytest.mark.parametrize(("body", "field"), [
    ({"nodes": ["site-a"], "spec": BASE_SPEC}, "name"), ({"name": "x", "spec": BASE_SPEC}, "nodes"),
    ({"name": "x", "nodes": [], "spec": BASE_SPEC}, "nodes"), ({"name": "x", "nodes": ["site-a"], "spec": [1]}, "spec"),
])
def test_create_job_with_a_bad_shape_is_refused(api_client, nodes3, body, field):
    response = assert_error(api_client.post("/api/v1/jobs/", body, format="json"), 400, "invalid")
    assert field in response["fields"] and field in response["message"]
    assert Job.objects.count() == 0


def test_create_job_with_unknown_or_duplicate_nodes_is_refused(api_client, nodes3):
    for nodes in (["site-a", "nowhere"], ["site-a", "site-a"]):
        body = assert_error(api_client.post("/api/v1/jobs/", create_body(nodes=nodes), format="json"), 400, "invalid")
        assert body["field"] == "nodes"
    assert Job.objects.count() == 0


def test_create_job_with_non_finite_json_is_refused(api_client, nodes3):
    response = api_client.post("/api/v1/jobs/", data='{"name": "x", "nodes": ["site-a"], "spec": {"rounds": NaN}}',
                               content_type="application/json")
    assert_error(response, 400)
    assert Job.objects.count() == 0


def test_start_then_cancel(api_client, job, user, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        response = api_client.post(f"/api/v1/jobs/{job.pk}/start/")
    assert response.status_code == 200 and response.json()["status"] == "queued"
    assert_error(api_client.post(f"/api/v1/jobs/{job.pk}/start/"), 409, "illegal_transition")

    response = api_client.post(f"/api/v1/jobs/{job.pk}/cancel/", {"reason": "changed my mind"}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled" and response.json()["status_reason"] == "changed my mind"
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    assert JobEvent.objects.filter(job=job, kind="status").latest("id").actor == user
    assert_error(api_client.post(f"/api/v1/jobs/{job.pk}/cancel/"), 409, "illegal_transition")


def test_cancel_with_a_non_object_body_is_refused(api_client, job):
    api_client.raise_request_exception = False
    response = api_client.post(f"/api/v1/jobs/{job.pk}/cancel/", [1], format="json")
    job.refresh_from_db()
    assert job.status == Job.Status.DRAFT
    assert_error(response, 400)


# --- another user's job ------------------------------------------------------------------------

ENDPOINTS = [
    ("get", "/api/v1/jobs/{id}/"), ("post", "/api/v1/jobs/{id}/start/"), ("post", "/api/v1/jobs/{id}/cancel/"),
    ("get", "/api/v1/jobs/{id}/rounds/"), ("get", "/api/v1/jobs/{id}/metrics/"), ("get", "/api/v1/jobs/{id}/events/"),
    ("get", "/api/v1/jobs/{id}/models/"), ("get", "/api/v1/jobs/{id}/models/0/download/"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize("which", ["draft", "running"])
def test_another_users_job_is_not_found_on_every_endpoint(api_client, other_api_client, job, started_job_factory,
                                                          method, path, which):
    target = job if which == "draft" else started_job_factory()
    before = Job.objects.filter(pk=target.pk).values().get()
    events = JobEvent.objects.count()

    response = getattr(other_api_client, method)(path.format(id=target.pk))

    body = assert_error(response, 404, "not_found")
    assert str(target.pk) in body["message"]
    assert Job.objects.filter(pk=target.pk).values().get() == before and JobEvent.objects.count() == events
    # ... and the same request by the owner is not a 404 (the path is right)
    if method == "get" and (which == "running" or "download" not in path):
        assert getattr(api_client, method)(path.format(id=target.pk)).status_code == 200


@pytest.fixture
def started_job_factory(make_started_job):
    return make_started_job


def test_job_list_shows_only_ones_own_jobs(api_client, other_api_client, job, make_job, other_user):
    theirs = make_job(owner=other_user)
    mine = api_client.get("/api/v1/jobs/").json()
    assert mine["count"] == 1 and [j["id"] for j in mine["results"]] == [job.pk]
    assert [j["id"] for j in other_api_client.get("/api/v1/jobs/").json()["results"]] == [theirs.pk]
    assert api_client.get("/api/v1/jobs/?status=running").json()["count"] == 0
    assert api_client.get("/api/v1/jobs/?status=draft").json()["count"] == 1


# --- reads ---------------------------------------------------------------------------------------

PAGE_KEYS = {"count", "next", "previous", "results"}


def all_pages(client, url, params=None) -> list[dict]:
    """Every result of a paginated endpoint, following `next`."""
    body = client.get(url, params).json()
    results = body["results"]
    while body["next"]:
        body = client.get(body["next"]).json()
        results += body["results"]
    return results


def test_rounds_shape(api_client, finished_round_job, nodes3, tmp_path):
    second = open_round(finished_round_job)
    for i, cr in enumerate(nodes3):  # round 2 brings the evaluation of version 1
        submit_train(second, cr.node, tmp_path, seed=10 + i, num_examples=10,
                     evaluation=(10, {"loss": 0.5, "accuracy": 0.75}))
    close(second)
    body = api_client.get(f"/api/v1/jobs/{finished_round_job.pk}/rounds/").json()

    assert set(body) == PAGE_KEYS and body["count"] == 3 and body["next"] is None and body["previous"] is None
    rounds = body["results"]
    assert [(r["number"], r["kind"], r["status"], r["evaluate_first"]) for r in rounds] == [
        (1, "train", "closed", False), (2, "train", "closed", True), (2, "evaluate", "open", False)]
    train = rounds[0]
    assert set(train) == {"id", "number", "kind", "status", "status_reason", "model_version", "result_version",
                          "selected", "dropped", "target_updates", "evaluate_first", "deadline", "opened_at",
                          "aggregating_at", "closed_at", "updates", "metrics", "evaluation"}
    assert train["selected"] == list(NODE_NAMES) and train["dropped"] == [] and train["model_version"] == 0
    assert train["result_version"]["round"] == 1 and len(train["result_version"]["sha256"]) == 64
    assert [u["node"] for u in train["updates"]] == list(NODE_NAMES)
    assert [u["num_examples"] for u in train["updates"]] == [10, 20, 30]
    assert train["metrics"]["train_loss"] == pytest.approx((0 * 10 + 1 * 20 + 2 * 30) / 60)
    assert train["metrics"]["num_examples"] == 60
    # version 1 was evaluated by round 2's nodes; version 2 waits for the evaluate round
    assert train["evaluation"] == {"loss": 0.5, "accuracy": 0.75, "num_examples": 30.0, "num_nodes": 3.0}
    assert rounds[1]["evaluation"] == {} and rounds[1]["model_version"] == 1
    assert rounds[2]["result_version"] is None and rounds[2]["metrics"] == {} and rounds[2]["evaluation"] == {}


def test_rounds_are_paginated_and_each_page_has_its_own_metrics(api_client, finished_round_job):
    url = f"/api/v1/jobs/{finished_round_job.pk}/rounds/"
    everything = api_client.get(url).json()
    count = everything["count"]
    assert count == len(everything["results"]) >= 2 and everything["next"] is None

    for offset in range(count):  # one round a page: the same rounds, with the same updates and metrics
        body = api_client.get(url, {"limit": 1, "offset": offset}).json()
        assert body["count"] == count and body["results"] == everything["results"][offset:offset + 1]
        assert (f"offset={offset + 1}" in body["next"]) if offset + 1 < count else body["next"] is None
        assert (body["previous"] is None) == (offset == 0)
    train = api_client.get(url, {"limit": 1}).json()["results"][0]
    assert (train["number"], train["kind"]) == (1, "train") and len(train["updates"]) == 3
    assert train["metrics"]["train_loss"] == pytest.approx((0 * 10 + 1 * 20 + 2 * 30) / 60)
    assert all_pages(api_client, url, {"limit": 2}) == everything["results"]


def test_metrics_shape_and_filters(api_client, finished_round_job):
    url = f"/api/v1/jobs/{finished_round_job.pk}/metrics/"
    body = api_client.get(url).json()
    assert set(body) == PAGE_KEYS and body["count"] == len(body["results"]) > 0
    assert set(body["results"][0]) == {"round", "phase", "node", "name", "value", "created_at"}

    aggregate = api_client.get(url, {"node": "aggregate", "phase": "fit", "name": "train_loss"}).json()
    assert aggregate["count"] == 1
    assert [(p["round"], p["phase"], p["node"], p["value"]) for p in aggregate["results"]] == [
        (1, "fit", None, pytest.approx(80 / 60))]
    assert api_client.get(url, {"phase": "eval", "name": "train_loss"}).json() == {
        "count": 0, "next": None, "previous": None, "results": []}
    site_b = api_client.get(url, {"node": "site-b", "name": "train_loss"}).json()["results"]
    assert [(p["node"], p["value"]) for p in site_b] == [("site-b", 1.0)]


def test_metrics_pages_together_are_every_point_once_in_order(api_client, finished_round_job):
    url = f"/api/v1/jobs/{finished_round_job.pk}/metrics/"
    everything = api_client.get(url).json()
    assert everything["next"] is None and everything["count"] > 6  # one page by default (PAGE_SIZE 50)

    pages = all_pages(api_client, url, {"limit": 4})
    assert pages == everything["results"]
    assert [p["round"] for p in pages] == sorted(p["round"] for p in pages)
    evals = api_client.get(url, {"phase": "eval", "limit": 2}).json()
    assert evals["count"] == len(all_pages(api_client, url, {"phase": "eval", "limit": 2})) == len(
        [p for p in everything["results"] if p["phase"] == "eval"])


@pytest.mark.parametrize(("path", "page_class"), [
    ("/api/v1/jobs/{id}/rounds/", "RoundPage"), ("/api/v1/jobs/{id}/metrics/", "MetricPage"),
    ("/api/v1/jobs/", "Page")])
def test_a_limit_above_the_maximum_is_capped_and_the_rest_follows(api_client, finished_round_job, make_job, monkeypatch,
                                                                  path, page_class):
    from jobs import apis

    make_job(), make_job()  # three jobs in the list
    monkeypatch.setattr(getattr(apis, page_class), "max_limit", 1)
    url = path.format(id=finished_round_job.pk)
    capped = api_client.get(url, {"limit": 10**6}).json()
    assert capped["count"] >= 2 and len(capped["results"]) == 1 and "limit=1" in capped["next"]
    assert len(all_pages(api_client, url, {"limit": 10**6})) == capped["count"]


def test_events_models_and_download(api_client, finished_round_job):
    job = finished_round_job
    events = api_client.get(f"/api/v1/jobs/{job.pk}/events/").json()
    assert events[0]["kind"] == "created" and events[0]["actor"] == "alice"
    assert {"status", "round_open", "update_accepted", "round_closed"} <= {e["kind"] for e in events}
    later = api_client.get(f"/api/v1/jobs/{job.pk}/events/", {"after": events[-3]["id"]}).json()
    assert [e["id"] for e in later] == [e["id"] for e in events[-2:]]

    models = api_client.get(f"/api/v1/jobs/{job.pk}/models/").json()
    assert [m["round"] for m in models] == [0, 1]
    response = api_client.get(f"/api/v1/jobs/{job.pk}/models/1/download/")
    data = b"".join(response.streaming_content)
    assert response.status_code == 200 and hashlib.sha256(data).hexdigest() == models[1]["sha256"]
    assert response["X-Checksum-Sha256"] == models[1]["sha256"]
    assert f'filename="job{job.pk}-round1.safetensors"' in response["Content-Disposition"]
    assert_error(api_client.get(f"/api/v1/jobs/{job.pk}/models/9/download/"), 404, "not_found")


def test_node_list(api_client, nodes3):
    nodes = api_client.get("/api/v1/nodes/").json()
    assert [n["name"] for n in nodes] == list(NODE_NAMES)
    assert {n["status"] for n in nodes} == {"online"}
    assert all("token_hash" not in n and "token_key_id" not in n for n in nodes)


# --- the job page --------------------------------------------------------------------------------

def page_json(html: str, element_id: str):
    """The value of a `json_script` element of a page."""
    match = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(match.group(1))


def test_job_page_shows_the_last_rounds_the_metric_series_and_the_last_events(user, other_user, finished_round_job,
                                                                              monkeypatch):
    from jobs import views
    from jobs.models import MetricPoint
    from jobs.services.job_events import job_event_record

    job = finished_round_job
    logs = 510  # more than an events API page (500): the page shows the last, not the first
    for k in range(logs):
        job_event_record(job=job, kind="log", message=f"log line {k}")
    rounds = list(job.rounds_set.order_by("number", "id"))
    monkeypatch.setattr(views, "LAST_ROUNDS", len(rounds) - 1)
    browser = Client()
    browser.force_login(user)
    html = browser.get(f"/jobs/{job.pk}/").content.decode()

    ids = [f"round-{r.number}-{r.kind}" for r in rounds]
    assert f'id="{ids[0]}"' not in html and all(f'id="{i}"' in html for i in ids[1:])
    assert re.search(rf"The last {len(rounds) - 1} of\s+{len(rounds)} rounds", html)
    open_row = re.search(rf'id="{ids[-1]}">(.*?)</tr>', html, re.S).group(1)
    assert re.search(r'data-role="updates">0 / 3<', open_row) and re.search(r'data-role="status">open<', open_row)
    aggregates = MetricPoint.objects.filter(job=job, node=None, name__in=views.CHART_METRICS).order_by("round", "id")
    expected = {}
    for p in aggregates:
        expected.setdefault(p.phase, {}).setdefault(p.name, []).append([p.round, pytest.approx(p.value)])
    series = page_json(html, "metric-series")
    assert series == expected and series["fit"]["train_loss"] == [[1, pytest.approx((0 * 10 + 1 * 20 + 2 * 30) / 60)]]
    first_shown = logs - views.LAST_EVENTS
    assert html.count("log line") == views.LAST_EVENTS and f"log line {first_shown - 1}\n" not in html
    assert html.index(f"log line {first_shown}\n") < html.index(f"log line {logs - 1}\n")  # oldest first

    intruder = Client()
    intruder.force_login(other_user)
    assert intruder.get(f"/jobs/{job.pk}/").status_code == 404


def test_job_page_counts_each_rounds_updates(user, finished_round_job):
    browser = Client()
    browser.force_login(user)
    html = browser.get(f"/jobs/{finished_round_job.pk}/").content.decode()
    row = re.search(r'id="round-1-train">(.*?)</tr>', html, re.S).group(1)
    assert re.search(r'data-role="updates">3 / 3<', row) and "train_loss=1.3333" in row and "num_examples" not in row


def test_job_page_series_come_from_the_metrics_not_from_evaluate_rounds(user, make_started_job, nodes3, tmp_path):
    """Eval metrics of a round that has no evaluate round (recorded with a later train
    round) are in the chart's series all the same."""
    from jobs.models import MetricPoint

    started_job = make_started_job(rounds=2, evaluate_every=2)
    train = open_round(started_job)
    for i, cr in enumerate(nodes3):
        submit_train(train, cr.node, tmp_path, seed=i, num_examples=10, metrics={"train_loss": 0.5})
    close(train)
    MetricPoint.objects.create(job=started_job, round=1, node=None, phase="eval", name="accuracy", value=0.625)
    browser = Client()
    browser.force_login(user)
    html = browser.get(f"/jobs/{started_job.pk}/").content.decode()
    assert page_json(html, "metric-series")["eval"] == {"accuracy": [[1, 0.625]]}
    assert not started_job.rounds_set.filter(kind="evaluate").exists() and "round-1-evaluate" not in html
    assert 'id="round-2-train"' in html
    row = re.search(r'id="round-1-train">(.*?)</tr>', html, re.S).group(1)
    assert re.search(r'data-role="evaluation">accuracy=0.6250 <', row)  # the evaluation of round 1's model
