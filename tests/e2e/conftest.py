"""End-to-end fixtures: real processes (portal, agents, trainers; in production mode
PostgreSQL, Redis, a Celery worker and beat) driven through public paths only."""
import hashlib
import os
import uuid

import psycopg
import pytest
import redis

from flportal.localstack import LocalStack, all_pages, drop_database, production_env

FAST = {  # short timings so fault tests end in seconds, not minutes
    "FLPORTAL_HEARTBEAT_INTERVAL_S": "1",
    "FLPORTAL_NODE_OFFLINE_AFTER_S": "4",
    "FLPORTAL_WATCHDOG_INTERVAL_S": "1",
}
E2E_PASSWORD = "e2e-Password-1"
CHROMIUM = "/usr/bin/chromium"


def services_missing(reason: str):
    """Skip, or fail when FLPORTAL_REQUIRE_SERVICES=1 (CI): a green run that skipped the
    real stack would be a lie."""
    if os.environ.get("FLPORTAL_REQUIRE_SERVICES") == "1":
        pytest.fail(f"FLPORTAL_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


def make_stack(tmp_path_factory, name: str, env: dict, **data) -> LocalStack:
    workdir = tmp_path_factory.mktemp(name)
    stack = LocalStack(workdir=workdir, env={**FAST, "FLPORTAL_DATA_DIR": str(workdir / "portal"), **env})
    stack.setup(username="e2e", password=E2E_PASSWORD)
    stack.make_data(**{"dataset": "breast_cancer", "nodes": 3, **data})
    stack.register_nodes(3)
    return stack


EMBEDDED = {"DATABASE_URL": "", "REDIS_URL": ""}


def serve(stack: LocalStack, **start):
    try:
        stack.start(**start)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def embedded_stack(tmp_path_factory):
    yield from serve(make_stack(tmp_path_factory, "embedded", EMBEDDED))


@pytest.fixture(scope="module")
def digits_stack(tmp_path_factory):
    """Non-IID digits: Dirichlet(0.3) label skew over three sites."""
    yield from serve(make_stack(tmp_path_factory, "digits", EMBEDDED, dataset="digits", scheme="dirichlet",
                                alpha=0.3, seed=0))


@pytest.fixture(scope="module")
def production_stack(tmp_path_factory):
    database = f"flportal_e2e_{uuid.uuid4().hex[:8]}"
    try:
        env = production_env(database)
    except (psycopg.Error, redis.RedisError) as exc:
        services_missing(f"PostgreSQL or Redis is not reachable: {exc}")
    try:
        yield from serve(make_stack(tmp_path_factory, "production", env), celery=True)
    finally:
        drop_database(database)


def launch(stack: LocalStack, **spec) -> int:
    body = {"name": "e2e", "start": True, "nodes": [a.name for a in stack.agents],
            "spec": {"model": "logreg", "dataset": "breast_cancer", "optimizer_params": {"lr": 0.1},
                     "batch_size": 8, "rounds": 5, "round_timeout_s": 60, **spec}}
    body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
    with stack.api() as api:
        response = api.post("/api/v1/jobs/", json=body)
        assert response.status_code == 201, response.text
        return response.json()["id"]


def assert_job_complete(stack: LocalStack, job_id: int, *, rounds: int, nodes: int) -> list[dict]:
    """Every train round has `nodes` accepted updates, a model version whose sha256
    matches its downloaded bytes, and aggregated metrics; returns the rounds."""
    with stack.api() as api:
        all_rounds = all_pages(api, f"/api/v1/jobs/{job_id}/rounds/")
        train = [r for r in all_rounds if r["kind"] == "train"]
        assert [r["number"] for r in train] == list(range(1, rounds + 1))
        for rnd in train:
            assert rnd["status"] == "closed", rnd
            assert len(rnd["updates"]) == nodes, rnd
            version = rnd["result_version"]
            assert version["round"] == rnd["number"]
            blob = api.get(f"/api/v1/jobs/{job_id}/models/{rnd['number']}/download/").content
            assert hashlib.sha256(blob).hexdigest() == version["sha256"] and len(blob) == version["bytes"]
            assert {"train_loss", "val_accuracy", "num_examples"} <= set(rnd["metrics"]), rnd["metrics"]
        # every model was evaluated: on the way into the next round, the last in its own round
        assert all({"loss", "accuracy"} <= set(r["evaluation"]) for r in train), [r["evaluation"] for r in train]
        assert [r["number"] for r in all_rounds if r["kind"] == "evaluate"] == [rounds]
    return all_rounds


@pytest.fixture
def browser_page():
    """A page in Debian's Chromium driven by Playwright (no browser download)."""
    if not os.path.exists(CHROMIUM):
        services_missing(f"Chromium is not installed at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            yield browser.new_page()
        finally:
            browser.close()
