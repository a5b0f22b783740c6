"""The site side must run without Django: nothing under nodes/agent may import it."""

import re
import subprocess
import sys
from pathlib import Path

from tests.agent.conftest import REPO_ROOT, subprocess_env

AGENT_DIR = REPO_ROOT / "nodes" / "agent"
MODULES = sorted(f"nodes.agent.{p.stem}" for p in AGENT_DIR.glob("*.py") if p.stem != "__init__")


def test_agent_modules_exist():
    assert {"nodes.agent.__main__", "nodes.agent.server", "nodes.agent.trainer"} <= set(MODULES)


def test_importing_the_agent_and_trainer_loads_no_django():
    code = (
        "import importlib, sys\n"
        f"for name in ['nodes.agent'] + {MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'django' or m.startswith('django.'))\n"
        "print('DJANGO:', bad)\n"
    )
    env = subprocess_env()
    env.pop("DJANGO_SETTINGS_MODULE", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "DJANGO: []" in proc.stdout


def test_no_source_file_mentions_a_django_import():
    pattern = re.compile(r"^\s*(import|from)\s+(django|rest_framework|channels|celery)\b", re.M)
    offenders = [str(p) for p in Path(AGENT_DIR).rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
