"""Shared fixtures for the portal's database tests (tests/jobs, tests/nodes).

Everything is made through services: nodes with `node_register` + `node_heartbeat`,
jobs with `job_create` / `job_launch` / `job_start`. Every database test gets its own
ARTIFACT_ROOT, so model and update files are never shared between tests.

Tests that start the embedded Celery worker (fixture `embedded_worker`) are moved to
the end of the session: once started, the worker thread lives until the process ends,
and it must not compete for the SQLite test database with other tests.
"""
import pytest

BREAST_CANCER = {"name": "breast_cancer", "format": "builtin", "n_examples": 569, "n_features": 30,
                 "num_classes": 2}
UNREACHABLE_AGENT = "http://127.0.0.1:9"  # discard port: connection refused at once
NODE_NAMES = ("site-a", "site-b", "site-c")
BASE_SPEC = {"model": "logreg", "dataset": "breast_cancer", "rounds": 2, "evaluate_every": 1,
             "optimizer": "sgd", "optimizer_params": {"lr": 0.1}}


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, tmp_path_factory):
    """The test database is a file, as the embedded portal's is, not SQLite's shared
    in-memory database: there, a second thread (the embedded worker, a websocket
    consumer's database_sync_to_async) gets "database table is locked" at once instead
    of waiting for the lock (busy timeout)."""
    from django.conf import settings

    default = settings.DATABASES["default"]
    if default["ENGINE"] == "django.db.backends.sqlite3":
        default.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")


def pytest_collection_modifyitems(config, items):
    late = [item for item in items if "embedded_worker" in getattr(item, "fixturenames", ())]
    if late:
        ids = {id(item) for item in late}
        items[:] = [item for item in items if id(item) not in ids] + late


@pytest.fixture(autouse=True)
def _isolated_artifacts(request, tmp_path):
    """Database tests write artifacts under their own tmp_path and start with empty
    artifact caches (job ids, hence artifact paths, repeat across rolled-back tests).
    Passwords use a fast hasher: PBKDF2 would cost 0.4 s per user."""
    uses_db = request.node.get_closest_marker("django_db") is not None or \
        {"db", "transactional_db"} & set(request.fixturenames)
    if not uses_db:
        yield
        return
    from jobs.services import artifacts

    settings = request.getfixturevalue("settings")
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed only
    _clear_caches(artifacts)
    yield settings.ARTIFACT_ROOT
    _clear_caches(artifacts)


def _clear_caches(module):
    for value in vars(module).values():
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()


# --- users ---------------------------------------------------------------------------

RESEARCHERS = "researchers"  # the group every test node's access list names


def researcher(django_user_model, username: str):
    """A user (password pw-<name>) in the group RESEARCHERS, so the test nodes are theirs to use."""
    from django.contrib.auth.models import Group

    user = django_user_model.objects.create_user(username=username, password=f"pw-{username}")
    user.groups.add(Group.objects.get_or_create(name=RESEARCHERS)[0])
    return user


@pytest.fixture
def user(django_user_model):
    return researcher(django_user_model, "alice")


@pytest.fixture
def other_user(django_user_model):
    return researcher(django_user_model, "mallory")


@pytest.fixture
def api_token(user):
    from core.auth import api_token_create

    return api_token_create(user=user)


@pytest.fixture
def api_client(api_token):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token}")
    return client


@pytest.fixture
def other_api_client(other_user):
    from rest_framework.test import APIClient

    from core.auth import api_token_create

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_create(user=other_user)}")
    return client


# --- nodes -----------------------------------------------------------------------------

def register_node(name: str, *, datasets=None, online: bool = True):
    """A registered node (NodeCredentials) the group RESEARCHERS may use, online after
    one heartbeat by default."""
    from nodes.services import node_grant, node_heartbeat, node_register

    creds = node_register(name=name, agent_url=UNREACHABLE_AGENT)
    node_grant(node=creds.node, groups=[RESEARCHERS])
    if online:
        node_heartbeat(node=creds.node, version="test-1", datasets=[BREAST_CANCER] if datasets is None else datasets,
                       resources={"cpus": 2})
        creds.node.refresh_from_db()
    return creds


@pytest.fixture
def make_node(db):
    return register_node


@pytest.fixture
def nodes3(db):
    """Three online nodes offering breast_cancer (30 features, 2 classes)."""
    return [register_node(name) for name in NODE_NAMES]


def node_auth(creds) -> str:
    return f"Node {creds.token}"


# --- jobs ------------------------------------------------------------------------------

def create_job(owner, nodes, **spec_overrides):
    from jobs.services.jobs import job_create

    names = [c.node.name if hasattr(c, "node") else c.name for c in nodes]
    return job_create(owner=owner, name="breast cancer", node_names=names, spec={**BASE_SPEC, **spec_overrides})


@pytest.fixture
def make_job(user, nodes3):
    """make_job(nodes=None, owner=None, **spec) -> a draft job (default: all 3 nodes)."""

    def make(nodes=None, owner=None, **spec):
        return create_job(owner or user, nodes or nodes3, **spec)

    return make


@pytest.fixture
def job(make_job):
    return make_job()


def start_job(job):
    """draft → queued (job_launch) → running with round 1 open (job_start, run here
    synchronously instead of by the worker)."""
    from jobs.services.flow import job_start
    from jobs.services.jobs import job_launch

    job_launch(job=job, actor=job.owner)
    job_start(job_id=job.pk)
    job.refresh_from_db()
    return job


@pytest.fixture
def make_started_job(make_job):
    return lambda **kw: start_job(make_job(**kw))


@pytest.fixture
def started_job(job):
    return start_job(job)


# --- the embedded worker ----------------------------------------------------------------

@pytest.fixture
def embedded_worker(transactional_db):
    """The in-process Celery worker (thread pool, in-memory broker) and beat; started
    once per process. Messages other tests left on the in-memory broker are purged
    first, so the worker runs only what this test sends."""
    from flportal.celery import app
    from flportal.embedded import start_embedded_worker

    _purge(app)
    start_embedded_worker(concurrency=2)
    _wait_until_consuming()
    return app


def _purge(app):
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(app.conf.task_default_queue)


def _wait_until_consuming(timeout: float = 10.0):
    """Send the watchdog a silent node and wait until the worker has marked it offline:
    the worker is then consuming, and beat's first (start-up) sweep is behind us."""
    import time
    from datetime import timedelta

    from django.utils import timezone

    from jobs.models import WatchdogClock
    from jobs.tasks import watchdog
    from nodes.models import Node

    probe = register_node("worker-probe")
    Node.objects.filter(pk=probe.node.pk).update(last_heartbeat_at=timezone.now() - timedelta(days=1))
    WatchdogClock.objects.update_or_create(pk=1, defaults={  # a portal that has been up for long
        "last_sweep_at": timezone.now(), "listening_since": timezone.now() - timedelta(days=1)})
    watchdog.delay()
    deadline = time.monotonic() + timeout
    while Node.objects.get(pk=probe.node.pk).status != Node.Status.OFFLINE:
        assert time.monotonic() < deadline, "the embedded worker did not run the watchdog"
        time.sleep(0.02)
