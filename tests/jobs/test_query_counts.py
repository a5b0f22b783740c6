"""Pages and list endpoints cost a constant number of queries: the count for a small
world equals the count for a larger one (no N+1), through the real URLs, for every page
and list endpoint there is (flportal/urls.py), paginated ones on a page past the first.

Worlds are made through services, answering whatever round the job opens (train,
evaluate, cross-site), so they do not depend on which kinds of rounds the protocol
opens: finished jobs (each with a final model) for the job lists; jobs run for 2 rounds
on 3 nodes and for 6 rounds on 5 nodes (metrics, log events, then a round in which the
last node drops out at the deadline) for the per-job endpoints; cross-site matrices of
3 and of 5 nodes; 3 and 10 nodes for the node lists."""
import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from core.auth import api_token_create
from jobs.models import Job, Round
from jobs.services.flow import round_close, round_deadline
from jobs.services.job_events import job_event_record
from jobs.services.jobs import job_cancel
from jobs.services.updates import cross_site_submit
from tests.conftest import create_job, register_node, researcher, start_job
from tests.jobs.helpers import close, open_round, submit_eval, submit_train

pytestmark = pytest.mark.django_db

JOB_LISTS = ["/", "/api/v1/jobs/", "/api/v1/jobs/?status=succeeded", "/api/v1/jobs/?limit=1&offset=1"]
PER_JOB = ["/jobs/{id}/", "/api/v1/jobs/{id}/", "/api/v1/jobs/{id}/rounds/",
           "/api/v1/jobs/{id}/rounds/?limit=3&offset=2",
           "/api/v1/jobs/{id}/metrics/", "/api/v1/jobs/{id}/metrics/?limit=7&offset=7",
           "/api/v1/jobs/{id}/metrics/?node=aggregate&name=train_loss",
           "/api/v1/jobs/{id}/metrics/?node=site-b&phase=fit",
           "/api/v1/jobs/{id}/events/", "/api/v1/jobs/{id}/events/?after=3", "/api/v1/jobs/{id}/models/",
           "/api/v1/jobs/{id}/cross-site/"]
NODE_LISTS = ["/nodes/", "/api/v1/nodes/"]


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


def answer(rnd: Round, nodes, tmp_path) -> None:
    """Every node in `nodes` answers the open round as its kind asks (and logs a line);
    then the round closes."""
    for i, creds in enumerate(nodes):
        if rnd.kind == Round.Kind.TRAIN:
            submit_train(rnd, creds.node, tmp_path, seed=rnd.number * 10 + i, num_examples=10 + i,
                         metrics={"train_loss": 1.0 / rnd.number, "compute_s": 0.1})
        elif rnd.kind == Round.Kind.EVALUATE:
            submit_eval(rnd, creds.node, num_examples=10, metrics={"loss": 0.5, "accuracy": 0.75})
        else:  # the global model and every node's last local model (all of them trained)
            sources = ["global", *sorted(c.node.name for c in nodes)]
            cross_site_submit(round_id=rnd.pk, node=creds.node, results=[
                {"source": source, "num_examples": 10 + i, "metrics": {"accuracy": 0.5, "loss": 1.0}}
                for source in sources])
        job_event_record(job=rnd.job, kind="log", message=f"round {rnd.number} {rnd.kind}", node=creds.node)
    close(rnd)


def run_to_the_end(job, nodes, tmp_path) -> Job:
    """Start the job and answer every round it opens until it ends."""
    start_job(job)
    while job.status == Job.Status.RUNNING:
        answer(open_round(job), nodes, tmp_path)
        job.refresh_from_db()
    return job


def run_rounds(job, nodes, tmp_path, rounds: int) -> Job:
    """Answer every round up to train round `rounds`, then one more train round in
    which the last node drops out at the deadline; then cancel (so every state shows)."""
    start_job(job)
    while (rnd := open_round(job)).kind != Round.Kind.TRAIN or rnd.number <= rounds:
        answer(rnd, nodes, tmp_path)
    for i, creds in enumerate(nodes[:-1]):
        submit_train(rnd, creds.node, tmp_path, seed=999 + i, num_examples=10)
    Round.objects.filter(pk=rnd.pk).update(deadline=rnd.opened_at)  # the deadline has passed
    assert round_deadline(round_id=rnd.pk) and round_close(round_id=rnd.pk)
    assert nodes[-1].node in Round.objects.get(pk=rnd.pk).dropped.all()
    job_cancel(job=job, actor=job.owner, reason="enough")
    return job


@pytest.fixture
def nodes(db):
    return [register_node(f"site-{c}") for c in "abcde"]


def assert_same_cost(small, large, urls) -> None:
    """`urls` ({id} filled with each world's job) cost as many queries in both worlds."""
    (small_user, small_id), (large_user, large_id) = small, large
    costs = {url: (count_queries(small_user, url.format(id=small_id)),
                   count_queries(large_user, url.format(id=large_id)))
             for url in urls}
    assert all(a == b for a, b in costs.values()), {url: cost for url, cost in costs.items() if cost[0] != cost[1]}


def test_job_lists_cost_the_same_for_2_and_12_jobs(django_user_model, nodes, tmp_path):
    few = researcher(django_user_model, "few")
    many = researcher(django_user_model, "many")
    for owner, count in ((few, 2), (many, 12)):
        for _ in range(count):
            job = run_to_the_end(create_job(owner, nodes[:1], rounds=1, clients_required=1), nodes[:1], tmp_path)
            assert job.status == Job.Status.SUCCEEDED and job.final_model_id
    assert_same_cost((few, None), (many, None), JOB_LISTS)


def test_job_pages_cost_the_same_for_2_rounds_of_3_nodes_and_6_rounds_of_5(user, nodes, tmp_path):
    short = run_rounds(create_job(user, nodes[:3], rounds=8, clients_required=2), nodes[:3], tmp_path, 2)
    long = run_rounds(create_job(user, nodes, rounds=8, clients_required=2), nodes, tmp_path, 6)
    assert long.rounds_set.filter(kind="train").count() >= 7 and long.rounds_set.count() > short.rounds_set.count() > 3
    assert long.metrics.filter(node__isnull=False).count() > 100 > short.metrics.filter(node__isnull=False).count()
    assert long.events.count() > 2 * short.events.count()
    assert_same_cost((user, short.pk), (user, long.pk), PER_JOB)


def test_the_cross_site_matrix_costs_the_same_for_3_and_5_nodes(user, nodes, tmp_path):
    small, large = (run_to_the_end(create_job(user, group, rounds=1, clients_required=2, cross_site_validation=True),
                                   group, tmp_path) for group in (nodes[:3], nodes))
    assert small.status == large.status == Job.Status.SUCCEEDED
    assert large.cross_site_results.count() == 6 * 5 * 2 and small.cross_site_results.count() == 4 * 3 * 2
    assert_same_cost((user, small.pk), (user, large.pk), ["/api/v1/jobs/{id}/cross-site/", "/jobs/{id}/"])


def test_node_lists_cost_the_same_for_3_and_10_nodes(user, db):
    small = [register_node(f"site-{c}") for c in "abc"]
    before = {url: count_queries(user, url) for url in NODE_LISTS}
    for k in range(6):
        register_node(f"more-{k}")
    register_node("silent", online=False)
    assert len(small) + 7 == 10
    assert {url: count_queries(user, url) for url in NODE_LISTS} == before
