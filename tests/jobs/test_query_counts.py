"""Pages and list endpoints cost a constant number of queries: the count for a small
world equals the count for a larger one (no N+1), through the real URLs.

Worlds are made through services: finished jobs (each with a final model) for the job
lists; jobs run for 2 and for 6 rounds on 3 nodes (a train and an evaluate round each,
metrics, log events, a dropped node) for the per-job endpoints; 3 and 9 nodes for the
node lists."""
import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from flportal.auth import api_token_create
from jobs.services.jobs import job_cancel, job_event_record
from jobs.services.rounds import round_close, round_deadline
from jobs.models import Round
from tests.conftest import create_job, register_node, start_job
from tests.jobs.helpers import close, open_round, submit_eval, submit_train

pytestmark = pytest.mark.django_db

JOB_PAGES = ["/", "/api/v1/jobs/"]
PER_JOB = ["/jobs/{id}/", "/api/v1/jobs/{id}/rounds/", "/api/v1/jobs/{id}/metrics/", "/api/v1/jobs/{id}/events/",
           "/api/v1/jobs/{id}/models/", "/api/v1/jobs/{id}/"]
NODE_PAGES = ["/nodes/", "/api/v1/nodes/"]


def clients(user) -> tuple[Client, APIClient]:
    """A browser session (pages) and a token client (API), both as `user`."""
    browser = Client()
    browser.force_login(user)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {api_token_create(user=user)}")
    return browser, api


def count_queries(user, url: str) -> int:
    browser, api = clients(user)
    client = api if url.startswith("/api/") else browser
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, (url, response.content[:300])
    return len(captured)


def run_rounds(job, nodes, tmp_path, rounds: int):
    """Train and evaluate `rounds` rounds with every node, then one more train round in
    which the last node drops out at the deadline; then cancel (so every state shows)."""
    start_job(job)
    for number in range(1, rounds + 1):
        train = open_round(job, Round.Kind.TRAIN)
        for i, creds in enumerate(nodes):
            submit_train(train, creds.node, tmp_path, seed=number * 10 + i, num_examples=10 + i,
                         metrics={"train_loss": 1.0 / number, "compute_s": 0.1})
            job_event_record(job=job, kind="log", message=f"round {number}", node=creds.node)
        close(train)
        evaluate = open_round(job, Round.Kind.EVALUATE)
        for creds in nodes:
            submit_eval(evaluate, creds.node, num_examples=10, metrics={"loss": 0.5, "accuracy": 0.75})
        close(evaluate)
    last = open_round(job, Round.Kind.TRAIN)
    for i, creds in enumerate(nodes[:-1]):
        submit_train(last, creds.node, tmp_path, seed=999 + i, num_examples=10)
    Round.objects.filter(pk=last.pk).update(deadline=last.opened_at)  # the deadline has passed
    assert round_deadline(round_id=last.pk) and round_close(round_id=last.pk)
    job_cancel(job=job, actor=job.owner, reason="enough")
    return job


@pytest.fixture
def nodes(db):
    return [register_node(name) for name in ("site-a", "site-b", "site-c")]


def finished_jobs(owner, node, tmp_path, count: int) -> None:
    """`count` one-round jobs that succeeded (each has a final model)."""
    for _ in range(count):
        job = start_job(create_job(owner, [node], rounds=1, clients_required=1))
        rnd = open_round(job)
        submit_train(rnd, node.node, tmp_path, seed=job.pk, num_examples=5)
        close(rnd)
        rnd = open_round(job, Round.Kind.EVALUATE)
        submit_eval(rnd, node.node, num_examples=5, metrics={"loss": 0.1})
        close(rnd)
        job.refresh_from_db()
        assert job.status == "succeeded" and job.final_model_id


def test_job_lists_cost_the_same_for_2_and_12_jobs(django_user_model, nodes, tmp_path):
    few = django_user_model.objects.create_user(username="few")
    many = django_user_model.objects.create_user(username="many")
    finished_jobs(few, nodes[0], tmp_path, 2)
    finished_jobs(many, nodes[0], tmp_path, 12)
    for url in JOB_PAGES:
        assert count_queries(few, url) == count_queries(many, url), url


def test_job_pages_cost_the_same_for_2_and_6_rounds(user, nodes, tmp_path):
    short = run_rounds(create_job(user, nodes, rounds=8, clients_required=2), nodes, tmp_path, 2)
    long = run_rounds(create_job(user, nodes, rounds=8, clients_required=2), nodes, tmp_path, 6)
    assert long.rounds_set.count() == 14 and long.metrics.filter(node__isnull=False).count() > 100
    for url in PER_JOB:
        assert count_queries(user, url.format(id=short.pk)) == count_queries(user, url.format(id=long.pk)), url


def test_node_lists_cost_the_same_for_3_and_9_nodes(user, nodes):
    before = {url: count_queries(user, url) for url in NODE_PAGES}
    for k in range(6):
        register_node(f"more-{k}")
    register_node("silent", online=False)
    assert {url: count_queries(user, url) for url in NODE_PAGES} == before
