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


def pytest_collection_modifyitems(config, items):
    late = [item for item in items if "embedded_worker" in getattr(item, "fixturenames", ())]
    if late:
        items[:] = [item for item in items if item not in late] + late


@pytest.fixture(autouse=True)
def _isolated_artifacts(request, tmp_path):
    """Database tests write artifacts under their own tmp_path (and forget the
    header cache of model files, keyed by a relative path that repeats across tests).
    Passwords use a fast hasher: PBKDF2 would cost 0.4 s per user."""
    if request.node.get_closest_marker("django_db") is None:
        yield
        return
    from jobs.services import artifacts

    settings = request.getfixturevalue("settings")
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed only
    artifacts.tensor_spec_of.cache_clear()
    yield settings.ARTIFACT_ROOT
    artifacts.tensor_spec_of.cache_clear()


# --- users ---------------------------------------------------------------------------

@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user(username="alice", password="pw-alice")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user(username="mallory", password="pw-mallory")


@pytest.fixture
def api_token(user):
    from flportal.auth import api_token_create

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

    from flportal.auth import api_token_create

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_create(user=other_user)}")
    return client


# --- nodes -----------------------------------------------------------------------------

def register_node(name: str, *, datasets=None, online: bool = True):
    """A registered node (NodeCredentials), online after one heartbeat by default."""
    from nodes.services import node_heartbeat, node_register

    creds = node_register(name=name, agent_url=UNREACHABLE_AGENT)
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
    from jobs.services.jobs import job_launch, job_start

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
    return app


def _purge(app):
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(app.conf.task_default_queue)
