"""The catalog on the server side, driven synchronously through the services and the
real URLs: server state carried between rounds (FedAdam & co.), opt-in cross-site
validation (its round, the model downloads, the results, the matrix), the catalog
endpoint, what job creation refuses against it, and FedProx's mu in the task."""
import hashlib
import json

import pytest
import torch
from rest_framework.test import APIClient

from core.errors import ValidationFailed
from fl.serialization import load_state_dict, state_dict_to_bytes
from fl.strategies import get_strategy
from jobs.models import CrossSiteResult, Job, MetricPoint, ModelVersion, Round, Update
from jobs.services import artifacts
from jobs.services.node_tasks import task_for_node
from nodes.models import Node
from tests.conftest import BASE_SPEC, NODE_NAMES, create_job, node_auth, register_node, start_job
from tests.jobs.helpers import close, model_state, open_round, submit_eval, submit_train

pytestmark = pytest.mark.django_db

STATEFUL = {"fedadam": ("m", "v"), "fedyogi": ("m", "v"), "fedadagrad": ("m", "v"), "fedavgm": ("v",)}
ALL_STRATEGIES = {"fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm", "fedmedian", "fedtrimmedavg",
                  "krum"}
DIGITS = {"name": "digits", "format": "builtin", "n_examples": 1797, "n_features": 64, "num_classes": 10}


def file_sha256(relative: str) -> str:
    return hashlib.sha256(artifacts.absolute(relative).read_bytes()).hexdigest()


def server_state_files(job) -> list[str]:
    return sorted(p.name for p in artifacts.job_dir(job.pk).iterdir() if p.name.startswith("server-state"))


def train_round(job, nodes, tmp_path, number, weights=(100, 200, 300)):
    """Every node submits a seeded update to the open train round `number`, which is
    then closed; returns [(state, num_examples)] in node-name order (the server's)."""
    rnd = open_round(job, Round.Kind.TRAIN)
    assert rnd.number == number
    sent = []
    for i, (cr, n) in enumerate(sorted(zip(nodes, weights), key=lambda p: p[0].node.name)):
        _, created, state = submit_train(rnd, cr.node, tmp_path, seed=100 * number + i, num_examples=n,
                                         metrics={"train_loss": 1.0 + i})
        assert created
        sent.append((state, n))
    close(rnd)
    return sent


def evaluate_round(job, nodes, metrics_of=lambda i: {"loss": 0.5, "accuracy": 0.75}):
    rnd = open_round(job, Round.Kind.EVALUATE)
    for i, cr in enumerate(nodes):
        submit_eval(rnd, cr.node, num_examples=10 * (i + 1), metrics=metrics_of(i))
    close(rnd)
    return rnd


def reference_run(name, params, start, rounds, reset_before=None):
    """The strategy run in memory, round after round, each round's strategy handed the
    previous one's next_server_state() (never stopped); `reset_before` = a round index
    that gets no state (what a server that forgot it would compute)."""
    global_state, server_state, results, states = start, None, [], []
    for index, updates in enumerate(rounds):
        strategy = get_strategy(name)(global_state, params,
                                      server_state=None if index == reset_before else server_state)
        for state, n in updates:
            strategy.add(state, n)
        global_state = strategy.result()
        server_state = strategy.next_server_state()
        results.append(global_state)
        states.append(server_state)
    return results, states


def assert_same(got: dict, expected: dict):
    assert set(got) == set(expected)
    for name in expected:
        assert got[name].dtype == expected[name].dtype and torch.equal(got[name], expected[name]), name


# --- 1. server state persistence ---------------------------------------------------------------

@pytest.mark.parametrize("strategy", sorted(STATEFUL))
def test_a_stateful_strategy_carries_its_server_state_from_round_to_round(make_started_job, nodes3, tmp_path,
                                                                          strategy):
    params = {"eta": 0.1} if strategy != "fedavgm" else {"server_lr": 0.5}
    job = make_started_job(strategy=strategy, strategy_params=params, rounds=2, evaluate_every=2)
    v0 = ModelVersion.objects.get(job=job, round=0)
    assert v0.server_state_path == ""  # round 0 is the initial model: no step taken yet

    first = train_round(job, nodes3, tmp_path, 1)
    v1 = ModelVersion.objects.get(job=job, round=1)
    assert v1.server_state_path, "round 1 wrote no server state"
    stored = load_state_dict(artifacts.absolute(v1.server_state_path))
    moments = STATEFUL[strategy]
    assert set(stored) == {f"{m}.{n}" for m in moments for n in ("weight", "bias")} | {"step"}
    assert stored["step"].ndim == 0 and int(stored["step"]) == 1
    assert all(stored[f"{m}.weight"].shape == model_state(v1)["weight"].shape for m in moments)
    assert any(stored[f"{m}.weight"].abs().sum() > 0 for m in moments)  # the step moved them off zero

    second = train_round(job, nodes3, tmp_path, 2)  # no evaluate round in between (evaluate_every=2)
    v2 = ModelVersion.objects.get(job=job, round=2)
    assert v2.server_state_path and v2.server_state_path != v1.server_state_path
    assert int(load_state_dict(artifacts.absolute(v2.server_state_path))["step"]) == 2
    assert server_state_files(job) == ["server-state-r00001.safetensors", "server-state-r00002.safetensors"]

    # what one strategy object chain computes in memory, without ever stopping
    results, states = reference_run(strategy, job.strategy_params, model_state(v0), [first, second])
    assert_same(model_state(v1), results[0])
    assert_same(stored, states[0])
    assert_same(model_state(v2), results[1])
    assert_same(load_state_dict(artifacts.absolute(v2.server_state_path)), states[1])
    # and the state mattered: a round 2 started from no state gives another model
    reset, _ = reference_run(strategy, job.strategy_params, model_state(v0), [first, second], reset_before=1)
    assert not torch.equal(reset[1]["weight"], model_state(v2)["weight"])

    evaluate_round(job, nodes3)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job.final_model == v2


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedmedian"])
def test_a_stateless_strategy_writes_no_server_state(make_started_job, nodes3, tmp_path, strategy):
    job = make_started_job(strategy=strategy, rounds=2, evaluate_every=2)
    for number in (1, 2):
        train_round(job, nodes3, tmp_path, number)
    assert list(ModelVersion.objects.filter(job=job).order_by("round").values_list("server_state_path", flat=True)) \
        == ["", "", ""]
    assert server_state_files(job) == []


def test_evaluation_metrics_such_as_auroc_are_aggregated_example_weighted(make_started_job, nodes3, tmp_path):
    job = make_started_job(rounds=1)
    train_round(job, nodes3, tmp_path, 1)
    aurocs = [0.9, 0.6, 0.8]
    evaluate_round(job, nodes3, lambda i: {"loss": 0.4, "accuracy": 0.7, "auroc": aurocs[i]})
    got = dict(MetricPoint.objects.filter(job=job, round=1, phase="eval", node__isnull=True, name="auroc")
               .values_list("name", "value"))
    assert got["auroc"] == pytest.approx((10 * 0.9 + 20 * 0.6 + 30 * 0.8) / 60)


# --- 2. cross-site validation -----------------------------------------------------------------------

def cross_site_url(rnd):
    return f"/api/v1/fl/rounds/{rnd.pk}/cross-site"


def model_url(rnd, source):
    return f"/api/v1/fl/rounds/{rnd.pk}/models/{source}"


def post_results(client, rnd, creds, results):
    return client.post(cross_site_url(rnd), data=json.dumps({"results": results}), content_type="application/json",
                       headers={"Authorization": node_auth(creds)})


def download(client, url, creds) -> tuple[int, bytes, dict]:
    response = client.get(url, headers={"Authorization": node_auth(creds)} if creds else {})
    # joining the streaming content closes the response (the test client's wrapper)
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return response.status_code, body, dict(response.headers)


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"] == code and body["message"]
    return body


def results_for(sources, evaluator_index, n=50):
    """One result per source; the values encode (source, evaluator) so a misplaced
    cell shows."""
    return [{"source": s, "num_examples": n + evaluator_index,
             "metrics": {"accuracy": 0.5 + 0.1 * si + 0.01 * evaluator_index, "loss": float(si + 10 * evaluator_index)}}
            for si, s in enumerate(sources)]


def to_cross_site(job, nodes, tmp_path, rounds=1, before_last_close=None):
    """Run the job's train rounds and the last evaluation; returns the updates of each
    train round."""
    sent = [train_round(job, nodes, tmp_path, number) for number in range(1, rounds + 1)]
    rnd = open_round(job, Round.Kind.EVALUATE)
    for i, cr in enumerate(nodes):
        submit_eval(rnd, cr.node, num_examples=10 * (i + 1), metrics={"loss": 0.3, "accuracy": 0.8})
    if before_last_close:
        before_last_close()
    close(rnd)
    return sent


def test_cross_site_validation_round_downloads_results_and_matrix(make_started_job, nodes3, tmp_path, client,
                                                                  make_node, user, api_client, other_api_client):
    job = make_started_job(rounds=1, cross_site_validation=True)
    assert job.cross_site_validation is True
    [sent] = to_cross_site(job, nodes3, tmp_path)
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING

    cross = open_round(job)
    final = ModelVersion.objects.get(job=job, round=1)
    assert (cross.kind, cross.number, cross.model_version, cross.target_updates) == ("cross_site", 1, final, 3)
    assert sorted(n.name for n in cross.selected.all()) == list(NODE_NAMES)

    sources = ["global", *NODE_NAMES]
    train_updates = {u.node.name: u for u in Update.objects.filter(round__job=job, round__kind="train")}
    for cr in nodes3:
        task = task_for_node(job_id=job.pk, node=cr.node)
        assert task["action"] == "cross_validate" and task["round_id"] == cross.pk and task["model_version"] == 1
        assert [m["source"] for m in task["models"]] == sources
        models = {m["source"]: m for m in task["models"]}
        assert models["global"]["sha256"] == final.sha256 == file_sha256(final.path)
        assert models["global"]["url"] == f"/api/v1/fl/jobs/{job.pk}/models/1"
        for name in NODE_NAMES:
            update = train_updates[name]
            assert models[name]["sha256"] == update.sha256 == file_sha256(update.path)
            assert models[name]["url"] == model_url(cross, name)

    # a selected node downloads another site's model, as its task says
    a, b, c = nodes3
    status, body, headers = download(client, model_url(cross, "site-b"), a)
    assert status == 200 and hashlib.sha256(body).hexdigest() == train_updates["site-b"].sha256
    assert headers["X-Checksum-Sha256"] == train_updates["site-b"].sha256
    got = load_state_dict(artifacts.absolute(train_updates["site-b"].path))
    assert state_dict_to_bytes(got) == body and torch.equal(got["weight"], sent[1][0]["weight"])
    status, body, _ = download(client, f"/api/v1/fl/jobs/{job.pk}/models/1", a)
    assert status == 200 and hashlib.sha256(body).hexdigest() == final.sha256
    # ...but not the global model under a site's name, nor a site that has no model, nor anonymously
    assert download(client, model_url(cross, "global"), a)[0] == 404
    assert download(client, model_url(cross, "site-z"), a)[0] == 404
    assert download(client, model_url(cross, "site-b"), None)[0] == 401
    # a node of another job does not see this round
    stranger = make_node("site-d")
    create_job(user, [stranger])
    assert download(client, model_url(cross, "site-b"), stranger)[0] == 404
    assert_error(post_results(client, cross, stranger, results_for(sources, 0)), 404, "not_found")

    # refused results record nothing
    bad = [
        results_for(sources[:-1], 0),  # site-c missing
        results_for(sources + ["site-z"], 0),  # an extra source
        results_for(["global", "site-a", "site-b", "site-b"], 0),  # a duplicate for a missing one
        results_for(sources + ["site-a"], 0),  # every source, one twice
        [{**r, "num_examples": 0} for r in results_for(sources, 0)],
        [{**r, "metrics": {"accuracy": "high"}} for r in results_for(sources, 0)],
        [],
    ]
    for results in bad:
        assert_error(post_results(client, cross, a, results), 400, "invalid_update")
    response = client.post(f"/api/v1/fl/rounds/{cross.pk}/evaluation", data=json.dumps(
        {"num_examples": 5, "metrics": {"loss": 1.0}}), content_type="application/json",
        headers={"Authorization": node_auth(a)})
    assert_error(response, 400, "invalid_update")  # the evaluation endpoint takes no cross-site results
    assert CrossSiteResult.objects.count() == 0 and not Update.objects.filter(round=cross).exists()

    first = post_results(client, cross, a, results_for(sources, 0))
    assert first.status_code == 201, first.content
    again = post_results(client, cross, a, results_for(sources, 9, n=999))  # a duplicate: answered as before
    assert again.status_code == 200 and again.json()["update_id"] == first.json()["update_id"]
    assert CrossSiteResult.objects.filter(job=job).count() == 4 * 2
    assert task_for_node(job_id=job.pk, node=a.node) == {"action": "wait", "retry_after": 1.0}
    assert post_results(client, cross, b, results_for(sources, 1)).status_code == 201
    cross.refresh_from_db()
    assert cross.status == Round.Status.OPEN  # site-c has not answered
    assert post_results(client, cross, c, results_for(sources, 2)).status_code == 201
    closed = close(cross)

    job.refresh_from_db()
    assert closed.status == Round.Status.CLOSED and closed.result_version is None
    assert job.status == Job.Status.SUCCEEDED and job.final_model == final
    assert not Round.objects.filter(job=job, status=Round.Status.OPEN).exists()
    assert task_for_node(job_id=job.pk, node=b.node)["action"] == "end"
    assert ModelVersion.objects.filter(job=job).count() == 2  # the cross-site round wrote no model
    # once closed, no more downloads; a late duplicate is still answered as before
    late = client.get(model_url(cross, "site-a"), headers={"Authorization": node_auth(b)})
    assert_error(late, 409, "stale_round")
    assert post_results(client, cross, c, results_for(sources, 2)).status_code == 200

    response = api_client.get(f"/api/v1/jobs/{job.pk}/cross-site/")
    assert response.status_code == 200
    matrix = response.json()
    assert matrix["sources"] == sources and matrix["evaluators"] == list(NODE_NAMES)
    assert set(matrix["metrics"]) == {"accuracy", "loss"}
    for si in range(4):
        for ei in range(3):
            assert matrix["metrics"]["accuracy"][si][ei] == pytest.approx(0.5 + 0.1 * si + 0.01 * ei)
            assert matrix["metrics"]["loss"][si][ei] == float(si + 10 * ei)
    assert matrix["num_examples"] == [[50, 51, 52]] * 4  # per source, per evaluator
    assert_error(other_api_client.get(f"/api/v1/jobs/{job.pk}/cross-site/"), 404, "not_found")
    assert APIClient().get(f"/api/v1/jobs/{job.pk}/cross-site/").status_code == 401
    kinds = [r["kind"] for r in api_client.get(f"/api/v1/jobs/{job.pk}/rounds/").json()["results"]]
    assert kinds == ["train", "evaluate", "cross_site"]


def test_cross_site_models_are_each_sites_last_update_and_unselected_nodes_are_refused(make_started_job, nodes3,
                                                                                      tmp_path, client):
    job = make_started_job(rounds=2, evaluate_every=2, cross_site_validation=True)
    a, b, c = nodes3

    def site_c_goes_offline():
        Node.objects.filter(pk=c.node.pk).update(status=Node.Status.OFFLINE)

    to_cross_site(job, nodes3, tmp_path, rounds=2, before_last_close=site_c_goes_offline)
    cross = open_round(job, Round.Kind.CROSS_SITE)
    assert sorted(n.name for n in cross.selected.all()) == ["site-a", "site-b"]

    last = {u.node.name: u for u in Update.objects.filter(round__job=job, round__kind="train", round__number=2)}
    task = task_for_node(job_id=job.pk, node=a.node)
    # site-c is not evaluating, but its last local model (round 2's, not round 1's) is evaluated
    assert {m["source"]: m["sha256"] for m in task["models"]} == {
        "global": ModelVersion.objects.get(job=job, round=2).sha256, **{n: last[n].sha256 for n in NODE_NAMES}}
    status, body, _ = download(client, model_url(cross, "site-c"), a)
    assert status == 200 and hashlib.sha256(body).hexdigest() == last["site-c"].sha256

    assert task_for_node(job_id=job.pk, node=c.node)["action"] == "wait"
    sources = ["global", *NODE_NAMES]
    assert_error(client.get(model_url(cross, "site-a"), headers={"Authorization": node_auth(c)}), 403,
                 "not_selected")
    assert_error(post_results(client, cross, c, results_for(sources, 2)), 403, "not_selected")
    assert CrossSiteResult.objects.count() == 0

    for i, cr in enumerate((a, b)):
        assert post_results(client, cross, cr, results_for(sources, i)).status_code == 201
    close(cross)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert_error(client.get(model_url(cross, "site-a"), headers={"Authorization": node_auth(c)}), 403,
                 "not_selected")


def test_without_cross_site_validation_the_job_ends_after_the_final_evaluation(make_started_job, nodes3, tmp_path,
                                                                               api_client):
    job = make_started_job(rounds=1)
    assert job.cross_site_validation is False
    to_cross_site(job, nodes3, tmp_path)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert list(Round.objects.filter(job=job).values_list("kind", flat=True)) == ["train", "evaluate"]
    assert api_client.get(f"/api/v1/jobs/{job.pk}/cross-site/").json() == {
        "sources": [], "evaluators": [], "metrics": {}, "num_examples": []}
    assert api_client.get(f"/api/v1/jobs/{job.pk}/").json()["spec"]["cross_site_validation"] is False


def test_a_node_named_global_does_not_collide_with_the_global_model(user, make_node, tmp_path):
    try:
        nodes = [register_node("global"), make_node("site-a")]
        job = start_job(create_job(user, nodes, rounds=1, cross_site_validation=True))
    except ValidationFailed:
        return  # refused up front (reserved name): fine
    to_cross_site(job, nodes, tmp_path)
    task = task_for_node(job_id=job.pk, node=nodes[1].node)
    sources = [m["source"] for m in task["models"]]
    assert len(set(sources)) == len(sources) == 3


def test_the_cross_site_round_does_not_show_the_evaluate_rounds_metrics(make_started_job, nodes3, tmp_path,
                                                                        api_client):
    job = make_started_job(rounds=1, cross_site_validation=True)
    to_cross_site(job, nodes3, tmp_path)
    rounds = api_client.get(f"/api/v1/jobs/{job.pk}/rounds/").json()["results"]
    assert rounds[1]["kind"] == "evaluate" and rounds[1]["metrics"]["loss"] == pytest.approx(0.3)
    assert rounds[2]["kind"] == "cross_site" and rounds[2]["metrics"] == {}


# --- 3. the catalog endpoint ------------------------------------------------------------------------

def test_catalog_lists_models_strategies_and_optimizers_with_schemas(api_client):
    response = api_client.get("/api/v1/catalog/")
    assert response.status_code == 200
    cat = response.json()
    assert set(cat) == {"models", "strategies", "optimizers"}
    assert {"logreg", "mlp", "cnn"} <= {m["name"] for m in cat["models"]}
    assert {s["name"] for s in cat["strategies"]} == ALL_STRATEGIES
    assert {"sgd", "adam", "adamw"} <= {o["name"] for o in cat["optimizers"]}
    for entry in cat["models"] + cat["strategies"] + cat["optimizers"]:
        assert isinstance(entry["schema"], dict) and isinstance(entry["description"], str) and entry["description"]
    strategies = {s["name"]: s for s in cat["strategies"]}
    assert {n for n, s in strategies.items() if s["stateful"]} == set(STATEFUL)
    assert {n for n, s in strategies.items() if s["needs_all_updates"]} == {"fedmedian", "fedtrimmedavg", "krum"}
    assert strategies["fedprox"]["schema"]["mu"]["default"] == 0.01
    assert strategies["krum"]["schema"]["f"]["default"] == 1
    assert set({m["name"]: m for m in cat["models"]}["cnn"]["schema"]) >= {"in_channels", "image_size", "channels"}


@pytest.mark.parametrize("authorization", [None, "Token nope"])
def test_catalog_refuses_the_unauthenticated(user, authorization):
    client = APIClient()
    if authorization:
        client.credentials(HTTP_AUTHORIZATION=authorization)
    response = client.get("/api/v1/catalog/")
    assert response.status_code == 401 and response.json()["error"] in ("not_authenticated", "authentication_failed")


def test_every_catalog_entry_creates_a_job_with_its_defaults(api_client, nodes3, make_node):
    five = [*NODE_NAMES, make_node("site-d").node.name, make_node("site-e").node.name]
    cat = api_client.get("/api/v1/catalog/").json()
    created = 0
    for entry in cat["strategies"]:
        spec = {**BASE_SPEC, "strategy": entry["name"]}
        if entry["name"] == "krum":
            spec["clients_required"] = 5  # 2f+3 with the default f=1
        response = api_client.post("/api/v1/jobs/", {"name": entry["name"], "nodes": five, "spec": spec},
                                   format="json")
        assert response.status_code == 201, (entry["name"], response.content)
        defaults = {k: v["default"] for k, v in entry["schema"].items() if "default" in v}
        assert response.json()["spec"]["strategy"] == entry["name"]
        assert response.json()["spec"]["strategy_params"] == defaults
        created += 1
    for entry in cat["optimizers"]:
        spec = {**BASE_SPEC, "optimizer": entry["name"]}
        del spec["optimizer_params"]
        response = api_client.post("/api/v1/jobs/", {"name": entry["name"], "nodes": five, "spec": spec},
                                   format="json")
        assert response.status_code == 201, (entry["name"], response.content)
        created += 1
    make_node("site-img", datasets=[DIGITS])
    for entry in cat["models"]:
        dataset = "digits" if entry["name"] == "cnn" else "breast_cancer"
        nodes = ["site-img"] if dataset == "digits" else five
        response = api_client.post("/api/v1/jobs/", {"name": entry["name"], "nodes": nodes, "spec": {
            **BASE_SPEC, "model": entry["name"], "dataset": dataset}}, format="json")
        assert response.status_code == 201, (entry["name"], response.content)
        created += 1
    assert Job.objects.count() == created


# --- 4. refusals at creation, through the REST API ----------------------------------------------------

@pytest.mark.parametrize(("spec", "field"), [
    ({"model": "cnn"}, "model_params.in_features"),  # 30 features, but 1 * 8^2 pixels
    ({"model": "cnn", "model_params": {"image_size": 5}}, "model_params.in_features"),
    ({"model": "cnn", "model_params": {"in_channels": 30, "image_size": 1, "channels": []}}, "model_params.channels"),
    ({"model": "mlp", "model_params": {"hidden": [10**13]}}, "model_params"),  # cannot be allocated
    ({"strategy": "krum", "clients_required": 3}, "clients_required"),  # needs 2f+3 = 5
    ({"strategy": "krum", "strategy_params": {"f": 0, "m": 3}, "clients_required": 2}, "clients_required"),
    ({"strategy": "krum", "strategy_params": {"f": -1}, "clients_required": 3}, "strategy_params.f"),
    ({"cross_site_validation": "yes"}, "cross_site_validation"),
    ({"cross_site_validation": 1}, "cross_site_validation"),
    ({"cross_site_validation": None}, "cross_site_validation"),
])
def test_job_creation_refuses_what_the_catalog_cannot_run(api_client, nodes3, spec, field):
    response = api_client.post("/api/v1/jobs/", {"name": "x", "nodes": list(NODE_NAMES),
                                                 "spec": {**BASE_SPEC, **spec}}, format="json")
    body = assert_error(response, 400, "invalid")
    assert body["field"] == field, body
    assert body["message"].startswith(field)
    assert Job.objects.count() == 0


def test_job_creation_accepts_what_the_catalog_can_run(api_client, nodes3):
    ok = [
        {"model": "cnn", "model_params": {"in_channels": 30, "image_size": 1, "channels": [4]}},
        {"strategy": "krum", "strategy_params": {"f": 0}, "clients_required": 3},
        {"cross_site_validation": True},
    ]
    for spec in ok:
        response = api_client.post("/api/v1/jobs/", {"name": "x", "nodes": list(NODE_NAMES),
                                                     "spec": {**BASE_SPEC, **spec}}, format="json")
        assert response.status_code == 201, (spec, response.content)
    assert Job.objects.count() == 3
    assert Job.objects.get(strategy="krum").clients_required == 3
    assert Job.objects.filter(cross_site_validation=True).count() == 1


# --- 5. FedProx's mu reaches the sites ----------------------------------------------------------------

@pytest.mark.parametrize(("params", "mu"), [({"mu": 0.25}, 0.25), (None, 0.01)])
def test_a_fedprox_train_task_carries_the_jobs_mu(make_started_job, nodes3, params, mu):
    job = make_started_job(strategy="fedprox", **({"strategy_params": params} if params else {}))
    assert job.strategy_params["mu"] == mu
    task = task_for_node(job_id=job.pk, node=nodes3[0].node)
    assert task["action"] == "train" and task["config"]["strategy"] == "fedprox"
    assert task["config"]["proximal_mu"] == job.strategy_params["mu"] == mu
