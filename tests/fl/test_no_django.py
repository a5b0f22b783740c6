import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

CHECK = (
    "import jobs.fl.networks, jobs.fl.strategies, jobs.fl.serialization, jobs.fl.data, "
    "jobs.fl.training, jobs.fl.params, jobs.fl.catalog, jobs.fl.examples, jobs.fl.metrics, sys; "
    "leaked = [m for m in sys.modules if m == 'django' or m.startswith('django.')]; "
    "assert not leaked, leaked"
)


def test_fl_core_imports_no_django():
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_no_django_import_statement_in_fl_sources():
    """Catches imports the subprocess check would miss (inside functions)."""
    pattern = re.compile(r"^\s*(import|from)\s+django\b", re.MULTILINE)
    sources = (REPO_ROOT / "jobs" / "fl").rglob("*.py")
    assert not [p for p in sources if pattern.search(p.read_text())]
