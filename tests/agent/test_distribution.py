"""The site agent installs alone: `pip install ./agent` into a fresh virtual environment
gives the `flportal-agent` command, the trainer and the FL core, and nothing of the
portal's stack."""
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.agent.conftest import REPO_ROOT

PORTAL_STACK = ["django", "rest_framework", "celery", "channels", "psycopg", "redis", "uvicorn", "sklearn"]


@pytest.fixture(scope="module")
def site_env(tmp_path_factory) -> Path:
    """A fresh virtual environment (outside the checkout) with the agent's wheel installed."""
    root = tmp_path_factory.mktemp("site")
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    str(REPO_ROOT / "agent")], check=True, capture_output=True, timeout=600)
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    (wheel,) = wheels.glob("flportal_agent-*.whl")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                   check=True, capture_output=True, timeout=900)
    return root / "venv" / "bin"


def run(bin_dir: Path, *argv: str) -> subprocess.CompletedProcess:
    # cwd outside the checkout: the packages must come from the environment, not from here
    return subprocess.run([str(bin_dir / argv[0]), *argv[1:]], cwd=bin_dir, capture_output=True, text=True,
                          timeout=300, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})


@pytest.mark.e2e
def test_the_agent_command_runs_from_its_own_environment(site_env):
    done = run(site_env, "flportal-agent", "--help")
    assert done.returncode == 0, done.stderr
    assert "--portal" in done.stdout and "--data-dir" in done.stdout


@pytest.mark.e2e
def test_the_agent_environment_has_the_trainer_and_fl_core_but_no_portal_stack(site_env):
    code = ("import importlib.util, agent.trainer, agent.local, fl.strategies, fl.serialization, torch\n"
            f"print([name for name in {PORTAL_STACK!r} if importlib.util.find_spec(name)])\n"
            "print(agent.__file__)")
    done = run(site_env, "python", "-c", code)
    assert done.returncode == 0, done.stderr
    missing, location = done.stdout.splitlines()
    assert missing == "[]"
    assert "site-packages" in location and not location.startswith(str(REPO_ROOT) + "/agent")
    refused = run(site_env, "python", "-c", "import django")
    assert refused.returncode != 0 and "No module named 'django'" in refused.stderr
