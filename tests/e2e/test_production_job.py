"""The production stack, end to end: PostgreSQL, Redis, a separate `celery worker` and
`celery beat`, the portal under uvicorn on a loopback port, three agent processes."""
import pytest

from tests.e2e.conftest import assert_job_complete, launch

pytestmark = [pytest.mark.e2e, pytest.mark.services]


def test_fedavg_job_succeeds_on_postgres_redis_celery(production_stack):
    """The portal runs no worker in production mode, so every round here was driven by
    the separate Celery worker process through Redis."""
    job_id = launch(production_stack, rounds=5, clients_required=3)
    job = production_stack.wait_job(job_id, timeout=240)
    assert job["status"] == "succeeded", job["status_reason"]
    assert_job_complete(production_stack, job_id, rounds=5, nodes=3)


def test_beat_runs_the_watchdog_which_marks_a_dead_node_offline(production_stack):
    """Only the periodic watchdog (queued by the separate beat process) marks a silent
    node offline."""
    victim = production_stack.agents[0]
    production_stack.kill_agent(victim)

    def offline():
        with production_stack.api() as api:
            return {n["name"]: n["status"] for n in api.get("/api/v1/nodes/").json()}[victim.name] == "offline"

    production_stack.wait_for(offline, 30, f"{victim.name} to go offline")
