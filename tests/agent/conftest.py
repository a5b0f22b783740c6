"""Fixtures and helpers for the agent and trainer tests (no Django, no database)."""

import os
import sys
import time
from pathlib import Path

import pytest

from flportal.localstack import patience
from tests.agent.fakeportal import FakePortal

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_TOKEN = "node-token-123"
AGENT_KEY = "agent-key-456"


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for agent/trainer subprocesses: importable repo, no proxies."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
           and k not in ("FLPORTAL_NODE_TOKEN", "FLPORTAL_AGENT_KEY")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def wait_for(predicate, *, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; return it, or fail the test.
    ``timeout`` is scaled by FLPORTAL_TEST_TIMEOUT_SCALE (flportal.localstack.patience)."""
    timeout = patience(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def group_alive(pgid: int) -> bool:
    """True while any live (non-zombie) process is in process group ``pgid``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


@pytest.fixture(scope="session")
def site_data(tmp_path_factory) -> Path:
    """breast_cancer split IID over two sites; returns the directory of site-1."""
    from fl.data import write_partitions

    root = tmp_path_factory.mktemp("sites")
    write_partitions("breast_cancer", 2, root, scheme="iid", seed=0)
    return root / "site-1"


@pytest.fixture
def portal():
    fake = FakePortal(token=NODE_TOKEN).start()
    yield fake
    fake.close()


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable
