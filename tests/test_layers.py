"""The house's floors (README, "Layout"): imports point one way, with no circle.

    flportal (config: settings, urls, asgi, celery, embedded, serve/demo)
        │
      jobs ──────┐
        │        │
      nodes      │
        │        │
      core      fl  ◀── agent (its own distribution: flportal-agent)

Every import counts here, function-local ones too, so none can dodge a circle. fl and
agent import neither Django nor any app; nodes does not import jobs; nothing imports
flportal but flportal itself (manage.py, the ASGI and Celery entries only name it)."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flportal", "jobs", "nodes", "core", "fl", "agent")
#: what each package may import of the others (it may always import itself)
ALLOWED = {
    "flportal": {"jobs", "nodes", "core", "fl"},
    "jobs": {"nodes", "core", "fl"},
    "nodes": {"core", "fl"},
    "core": set(),
    "fl": set(),
    "agent": {"fl"},
}
PORTAL_STACK = ("django", "rest_framework", "celery", "channels", "channels_redis", "psycopg", "psycopg_pool",
                "redis", "uvicorn", "kombu")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    """Every module of the six packages (migrations aside: Django writes them)."""
    return {module_name(p): p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py")
            if "migrations" not in p.parts}


def imports_of(name: str, path: Path) -> set[str]:
    """Every module name `path` imports, anywhere in it, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def module_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (`from a import b` of a module b counts as a.b)."""
    mods = sources()
    graph = {}
    for name, path in mods.items():
        edges = set()
        for imported in imports_of(name, path):
            while imported and imported not in mods:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                edges.add(imported)
        graph[name] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_every_package_and_its_imports():
    graph = module_graph()
    assert {name.split(".")[0] for name in graph} == set(PACKAGES)
    assert "fl.serialization" in graph["agent.local"] and "core.errors" in graph["jobs.exceptions"]


def test_no_import_circle_anywhere():
    assert circles(module_graph()) == []


def test_the_circle_finder_finds_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_down(package):
    crossing = sorted(f"{name} -> {target}" for name, targets in module_graph().items()
                      if name.split(".")[0] == package
                      for target in targets if target.split(".")[0] not in ALLOWED[package] | {package})
    assert crossing == []


@pytest.mark.parametrize("package", ["fl", "agent"])
def test_fl_and_agent_sources_name_no_portal_library(package):
    offenders = sorted(f"{name}: {imported}" for name, path in sources().items() if name.split(".")[0] == package
                       for imported in imports_of(name, path) if imported.split(".")[0] in PORTAL_STACK)
    assert offenders == []


def test_importing_every_fl_and_agent_module_loads_nothing_of_the_portal():
    """What the sources say, checked by Python itself: a fresh interpreter imports every
    module of fl and agent and has loaded no Django, no app and no portal library."""
    names = sorted(name for name in sources() if name.split(".")[0] in ("fl", "agent"))
    banned = (*PORTAL_STACK, "flportal", "jobs", "nodes", "core")
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({banned!r})))\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert len(names) > 20


def test_settings_import_no_app():
    path = REPO_ROOT / "flportal" / "settings.py"
    ours = {imported.split(".")[0] for imported in imports_of("flportal.settings", path)} & set(PACKAGES)
    assert ours == set()
