"""The production stack, end to end: PostgreSQL, Redis, a separate `celery worker` and
`celery beat`, the portal under uvicorn on a loopback port, three agent processes."""
import httpx
import psycopg
import pytest

from flportal.localstack import PG_ADMIN_URL
from tests.e2e.conftest import assert_job_complete, launch

pytestmark = [pytest.mark.e2e, pytest.mark.services]


def test_fedavg_job_succeeds_on_postgres_redis_celery(production_stack):
    """The portal runs no worker in production mode, so every round here was driven by
    the separate Celery worker process through Redis."""
    job_id = launch(production_stack, rounds=5, clients_required=3)
    job = production_stack.wait_job(job_id, timeout=240)
    assert job["status"] == "succeeded", job["status_reason"]
    assert_job_complete(production_stack, job_id, rounds=5, nodes=3)


def test_no_secret_reaches_a_log_or_an_error_body(production_stack):
    """After a whole job (and refused calls with wrong credentials), no node token, agent
    key or user token appears in any process's log (portal, worker, beat, agents,
    trainers) nor in an error body."""
    stack = production_stack
    job_id = launch(stack, rounds=2, clients_required=3)
    assert stack.wait_job(job_id, timeout=240)["status"] == "succeeded"
    secrets = {"the user's API token": stack.token}
    for agent in stack.agents:
        secrets[f"{agent.name}'s token"] = agent.token
        secrets[f"{agent.name}'s agent key"] = agent.agent_key
    secrets.update({f"the secret half of {name}": value.partition(".")[2] for name, value in list(secrets.items())
                    if "." in value})
    wrong = {"Authorization": f"Node {stack.agents[0].token}x"}
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        bodies = [client.post("/api/v1/fl/heartbeat", json={}, headers=wrong).text,
                  client.get("/api/v1/jobs/", headers={"Authorization": f"Token {stack.token}x"}).text,
                  client.get(f"http://127.0.0.1:{stack.agents[0].port}/runs",
                             headers={"Authorization": f"Bearer {stack.agents[0].agent_key}x"}).text]
    logs = {path: path.read_text(errors="replace") for path in stack.workdir.rglob("*.log")}
    assert len(logs) >= 3 + len(stack.agents)  # portal, worker, beat, agents (and the trainers' runs)
    leaks = [f"{name} in {where}" for name, value in secrets.items() if value
             for where, text in [*logs.items(), *(("an error body", b) for b in bodies)] if value in text]
    assert leaks == []


def test_pooled_connections_broken_by_postgresql_are_replaced_not_failed_on(production_stack):
    """Every backend of the portal's database is terminated (as a PostgreSQL restart does to
    them); the pooled connections are health-checked as they are handed out, so not one
    request fails for it."""
    stack = production_stack
    database = stack.env["DATABASE_URL"].rsplit("/", 1)[1]
    with stack.api() as api:
        assert all(api.get("/api/v1/nodes/").status_code == 200 for _ in range(5))  # the pools hold connections
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE datname = %s AND pid <> pg_backend_pid()", [database]).fetchone()[0]
        assert killed >= 1
        statuses = [api.get("/api/v1/nodes/").status_code for _ in range(20)]
    assert statuses == [200] * 20


def test_beat_runs_the_watchdog_which_marks_a_dead_node_offline(production_stack):
    """Only the periodic watchdog (queued by the separate beat process) marks a silent
    node offline."""
    victim = production_stack.agents[0]
    production_stack.kill_agent(victim)

    def offline():
        with production_stack.api() as api:
            return {n["name"]: n["status"] for n in api.get("/api/v1/nodes/").json()}[victim.name] == "offline"

    production_stack.wait_for(offline, 30, f"{victim.name} to go offline")
