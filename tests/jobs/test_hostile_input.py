"""Hostile input to the REST API and the FL API: each refused with a clear JSON error
(a 400 naming the field where there is one), nothing created or changed, never a 500
(issue "Hostile input and production posture", findings 2, 3, 4, 5 and 7)."""
import json
import struct

import pytest

from fl.serialization import MAX_METADATA_BYTES, InvalidUpdate, validate_update_file
from jobs.models import Job, JobEvent, MetricPoint
from jobs.services.jobs import job_cancel
from jobs.services.updates import MAX_LOG_LINE, MAX_LOG_LINES
from tests.conftest import BASE_SPEC, NODE_NAMES, node_auth
from tests.jobs.helpers import open_round, perturbed, row_counts, update_bytes
from tests.jobs.test_apis import assert_error

pytestmark = pytest.mark.django_db


def create_body(**overrides):
    return {"name": "bc", "nodes": list(NODE_NAMES), "spec": dict(BASE_SPEC), **overrides}


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


# --- query parameters --------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "field"), [
    ("/api/v1/jobs/?status=bogus", "status"), ("/api/v1/jobs/?status=", "status"),
    ("/api/v1/jobs/?limit=abc", "limit"), ("/api/v1/jobs/?limit=-1", "limit"), ("/api/v1/jobs/?limit=0", "limit"),
    ("/api/v1/jobs/?limit=1_0", "limit"), ("/api/v1/jobs/?limit=+7", "limit"),
    ("/api/v1/jobs/?offset=abc", "offset"), ("/api/v1/jobs/?offset=-5", "offset"),
    ("/api/v1/jobs/?offset=99999999999999999999", "offset"),
    ("/api/v1/jobs/{id}/metrics/?phase=bogus", "phase"), ("/api/v1/jobs/{id}/metrics/?limit=x", "limit"),
    ("/api/v1/jobs/{id}/rounds/?offset=-1", "offset"),
    ("/api/v1/jobs/{id}/events/?after=abc", "after"), ("/api/v1/jobs/{id}/events/?after=1e3", "after"),
    ("/api/v1/jobs/{id}/events/?after=-1", "after"),
])
def test_a_bad_query_parameter_is_a_400_naming_it(api_client, started_job, url, field):
    body = assert_error(api_client.get(url.format(id=started_job.pk)), 400, "invalid")
    assert body["field"] == field and field in body["message"]


def test_good_query_parameters_still_work(api_client, started_job):
    assert api_client.get("/api/v1/jobs/?status=running&limit=1&offset=0").json()["count"] == 1
    assert api_client.get("/api/v1/jobs/?limit=100000").status_code == 200  # capped, as documented
    assert api_client.get(f"/api/v1/jobs/{started_job.pk}/metrics/?phase=eval").status_code == 200
    assert api_client.get(f"/api/v1/jobs/{started_job.pk}/events/?after=2").status_code == 200


# --- job creation ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "named"), [
    ({"owner": "mallory"}, "owner"), ({"status": "running"}, "status"), ({"id": 7}, "id"),
    ({"start": "yes"}, "start"), ({"start": 1}, "start"), ({"description": "x" * 5001}, "description"),
    ({"spec": {**BASE_SPEC, "rounds": 10**400}}, "rounds"),
    ({"spec": {**BASE_SPEC, "rounds": 1e308}}, "rounds"),
    ({"spec": {**BASE_SPEC, "optimizer_params": {"lr": 1e308}}}, "optimizer_params.lr"),
    ({"spec": {**BASE_SPEC, "optimizer_params": {"lr": 11.0}}}, "optimizer_params.lr"),
    ({"spec": {**BASE_SPEC, "model": "mlp", "model_params": {"hidden": [10**400]}}}, "model_params.hidden"),
    ({"spec": {**BASE_SPEC, "strategy": "fedprox", "strategy_params": {"mu": 10**30}}}, "strategy_params.mu"),
])
def test_a_job_body_with_a_bad_field_is_refused_naming_it(api_client, nodes3, overrides, named):
    response = api_client.post("/api/v1/jobs/", data=json.dumps(create_body(**overrides)),
                               content_type="application/json")
    body = assert_error(response, 400)
    assert named in body["message"] and body["field"] in (named, named.split(".")[0]), body
    assert Job.objects.count() == 0


@pytest.mark.parametrize("url", ["/api/v1/jobs/", "/api/v1/jobs/{id}/cancel/"])
def test_json_nested_too_deeply_is_a_400(api_client, job, url):
    before = (Job.objects.count(), Job.objects.get(pk=job.pk).status)
    response = api_client.post(url.format(id=job.pk), data=deep(100_000), content_type="application/json")
    assert_error(response, 400)
    assert (Job.objects.count(), Job.objects.get(pk=job.pk).status) == before


# --- the FL API ----------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [deep(100_000), '{"datasets": ' + deep(5000) + "}"])
def test_heartbeat_and_logs_nested_too_deeply_are_a_400(client, started_job, nodes3, body):
    headers = {"Authorization": node_auth(nodes3[0])}
    for url in ("/api/v1/fl/heartbeat", f"/api/v1/fl/jobs/{started_job.pk}/logs"):
        response = client.post(url, data=body, content_type="application/json", headers=headers)
        assert_error(response, 400, "invalid_update")


def test_a_huge_finite_metric_is_refused_and_results_stay_json(client, started_job, nodes3, api_client):
    rnd = open_round(started_job)
    before = row_counts()
    response = client.post(f"/api/v1/fl/rounds/{rnd.pk}/update", data=update_bytes(perturbed(rnd, seed=1)),
                           content_type="application/octet-stream",
                           headers={"Authorization": node_auth(nodes3[0]), "X-Num-Examples": "10",
                                    "X-Metrics": '{"accuracy": 1e308}'})
    body = assert_error(response, 400, "invalid_update")
    assert body["field"] == "X-Metrics.accuracy"
    assert row_counts() == before and not MetricPoint.objects.exists()
    assert api_client.get(f"/api/v1/jobs/{started_job.pk}/rounds/").status_code == 200


def with_metadata(data: bytes, metadata: dict) -> bytes:
    """A safetensors file's bytes with its header's __metadata__ replaced."""
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    header["__metadata__"] = metadata
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + data[8 + size:]


def test_an_update_with_a_large_metadata_is_refused_unread(client, started_job, nodes3, tmp_path):
    rnd = open_round(started_job)
    good = update_bytes(perturbed(rnd, seed=1))
    spec = {"weight": ((2, 30), "float32"), "bias": ((2,), "float32")}
    small = tmp_path / "small.safetensors"
    small.write_bytes(with_metadata(good, {"format": "pt", "note": "x" * 100}))
    validate_update_file(small, spec)  # a small metadata is fine
    big = tmp_path / "big.safetensors"
    big.write_bytes(with_metadata(good, {"format": "pt", "note": "x" * (MAX_METADATA_BYTES + 1)}))
    with pytest.raises(InvalidUpdate, match="__metadata__ exceeds"):
        validate_update_file(big, spec)
    before = row_counts()
    response = client.post(f"/api/v1/fl/rounds/{rnd.pk}/update", data=with_metadata(good, {"x": "y" * 1_000_000}),
                           content_type="application/octet-stream",
                           headers={"Authorization": node_auth(nodes3[0]), "X-Num-Examples": "10"})
    assert_error(response, 400, "invalid_update")
    assert row_counts() == before


# --- logs (finding 4: unbounded growth) -----------------------------------------------------------

def post_logs(client, job, creds, lines):
    return client.post(f"/api/v1/fl/jobs/{job.pk}/logs", data={"lines": lines}, content_type="application/json",
                       headers={"Authorization": node_auth(creds)})


def log_count(job) -> int:
    return JobEvent.objects.filter(job=job, kind="log").count()


def test_logs_for_an_ended_job_are_refused(client, started_job, nodes3):
    job_cancel(job=started_job)
    assert_error(post_logs(client, started_job, nodes3[0], ["late"]), 409, "stale_round")
    assert log_count(started_job) == 0


@pytest.mark.parametrize("lines", [[], ["x"] * (MAX_LOG_LINES + 1), [1, 2], "one line"])
def test_a_log_batch_out_of_shape_is_refused(client, started_job, nodes3, lines):
    body = assert_error(post_logs(client, started_job, nodes3[0], lines), 400, "invalid_update")
    assert body["field"] == "lines" and log_count(started_job) == 0


def test_log_lines_are_cut_and_batches_bounded_per_node(client, started_job, nodes3, monkeypatch):
    from jobs.services import updates

    assert post_logs(client, started_job, nodes3[0], ["y" * 5000]).status_code == 201
    assert JobEvent.objects.get(job=started_job, kind="log").message == "y" * MAX_LOG_LINE
    monkeypatch.setattr(updates, "MAX_LOG_BATCHES", 3)
    for _ in range(2):
        assert post_logs(client, started_job, nodes3[0], ["more"]).status_code == 201
    assert_error(post_logs(client, started_job, nodes3[0], ["one too many"]), 413, "log_quota")
    assert post_logs(client, started_job, nodes3[1], ["another node has its own"]).status_code == 201
    assert log_count(started_job) == 4
