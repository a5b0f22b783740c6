"""A whole portal on this machine: the portal process, N node agents, their data and
credentials. Used by `manage.py demo` and by the end-to-end tests, through the public
paths only (management commands, the REST API, the agent CLI). No Django import: it
drives other processes."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port(preferred: int | None = None) -> int:
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port")


def all_pages(api: httpx.Client, path: str, params: dict | None = None) -> list[dict]:
    """Every result of a paginated REST endpoint (`{"count", "next", "previous",
    "results"}`: /api/v1/jobs/, .../rounds/, .../metrics/), following `next`. Raises
    httpx.HTTPStatusError on an answer that is not 2xx."""
    answer = api.get(path, params=params)
    results = []
    while True:
        body = answer.raise_for_status().json()
        results += body["results"]
        if not body["next"]:
            return results
        answer = api.get(body["next"])


PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_BASE_URL = "redis://127.0.0.1:6379"


def production_env(database: str, redis_db: int = 9) -> dict:
    """Create an empty PostgreSQL database and empty a Redis db on this machine's local
    services; returns the environment that selects the production stack. Raises
    psycopg.Error / redis.RedisError when a service is not reachable."""
    import psycopg
    import redis

    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    redis.Redis.from_url(f"{REDIS_BASE_URL}/{redis_db}", socket_connect_timeout=5).flushdb()
    return {"DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{database}",
            "REDIS_URL": f"{REDIS_BASE_URL}/{redis_db}"}


def drop_database(database: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def child_pids(pid: int) -> list[int]:
    """The pids whose parent is `pid` (from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            pass
    return children


def _child_state(process: subprocess.Popen) -> str:
    """"running", "exited" (not reaped yet) or "reaped", found without reaping it. While
    a child is unreaped its pid, hence its process group's id, cannot be reused, so
    signalling that group cannot reach a stranger."""
    if process.returncode is not None:
        return "reaped"
    try:
        exited = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped by another thread
        return "reaped"
    return "running" if exited is None else "exited"


def _signal(pid: int, sig: signal.Signals, *, group: bool) -> None:
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def freeze_tree(pids: list[int]) -> list[int]:
    """SIGSTOP each of `pids`' process groups and, top-down, every descendant; returns
    the descendants. A stopped parent cannot reap its children, so no pid returned
    here is reused before the caller kills it."""
    for pid in pids:
        _signal(pid, signal.SIGSTOP, group=True)
    found, level = [], list(pids)
    while level:
        level = [child for pid in level for child in child_pids(pid) if child not in found]
        for pid in level:
            _signal(pid, signal.SIGSTOP, group=False)
        found += level
    return found


class StackStopping(RuntimeError):
    """The stack is stopping (or stopped): it starts no more processes."""


def patience(seconds: float) -> float:
    """`seconds` times FLPORTAL_TEST_TIMEOUT_SCALE (default 1): every wait of the tests and
    benchmarks for something real to happen derives from this one factor, to be raised on
    a loaded or slow machine."""
    return seconds * float(os.environ.get("FLPORTAL_TEST_TIMEOUT_SCALE") or 1)


#: The group of the stack's user and nodes (each node's access list names it).
GROUP = "researchers"


@dataclass
class Agent:
    name: str
    port: int
    data_dir: Path
    token: str
    agent_key: str
    process: subprocess.Popen | None = None


@dataclass
class LocalStack:
    """`env` holds what selects the mode (DATABASE_URL/REDIS_URL or neither) and
    FLPORTAL_DATA_DIR; `workdir` gets logs and node data."""

    workdir: Path
    env: dict = field(default_factory=dict)
    port: int | None = None
    heartbeat_interval: float = 1.0
    portal_processes: int = 1  # `serve --processes` (production mode only)
    processes: list = field(default_factory=list)
    agents: list = field(default_factory=list)
    token: str = ""
    portal: subprocess.Popen | None = None
    # stop() may run in another thread than the one starting processes (`manage.py demo`
    # stops on a signal): starting a process and stop()'s snapshot exclude each other
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    _stopping: bool = field(default=False, init=False, repr=False, compare=False)
    _helpers: list = field(default_factory=list, init=False, repr=False, compare=False)  # manage() commands

    def __post_init__(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "DJANGO_SETTINGS_MODULE": "flportal.settings",
                         **self.env}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _popen(self, argv: list[str], registry: list, **kwargs) -> subprocess.Popen:
        """Start a process in its own session and record it in `registry`, unless stop()
        began (StackStopping): then nothing is started."""
        with self._lock:
            if self._stopping:
                raise StackStopping(f"the stack is stopping; not starting {' '.join(argv[:4])}")
            process = subprocess.Popen(argv, cwd=ROOT, start_new_session=True, **kwargs)
            registry.append(process)
        return process

    def manage(self, *args: str) -> str:
        process = self._popen([sys.executable, "manage.py", *args], self._helpers, env=self.full_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            with process:
                try:
                    stdout, stderr = process.communicate(timeout=300)
                except BaseException:  # as subprocess.run: a timeout (or an interrupt) kills it
                    process.kill()
                    raise
        finally:
            with self._lock:
                self._helpers.remove(process)
        if process.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{stdout}\n{stderr}")
        return stdout.strip()

    def spawn(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        with open(self.workdir / f"{name}.log", "ab") as log:  # the child keeps its own copy
            return self._popen(argv, self.processes, env={**self.full_env, **(env or {})}, stdout=log,
                               stderr=subprocess.STDOUT)

    def setup(self, *, username: str, password: str | None = None) -> None:
        self.manage("migrate", "--noinput")
        args = (["api_token", username, "--create", "--group", GROUP]
                + (["--password", password] if password else []))
        self.token = self.manage(*args).splitlines()[-1]

    def make_data(self, *, dataset: str, nodes: int, scheme: str = "iid", alpha: float = 0.5, seed: int = 0):
        self.manage("make_demo_data", "--dataset", dataset, "--nodes", str(nodes), "--out",
                    str(self.workdir / "data"), "--scheme", scheme, "--alpha", str(alpha), "--seed", str(seed))

    def register_nodes(self, count: int) -> list[Agent]:
        for k in range(1, count + 1):
            port = free_port()
            creds = json.loads(self.manage("node_register", f"site-{k}", "--agent-url", f"http://127.0.0.1:{port}",
                                           "--group", GROUP, "--json").splitlines()[-1])
            self.agents.append(Agent(f"site-{k}", port, self.workdir / "data" / f"site-{k}",
                                     creds["token"], creds["agent_key"]))
        return self.agents

    def start_portal(self, *extra: str) -> subprocess.Popen:
        many = ["--processes", str(self.portal_processes)] if self.portal_processes > 1 else []
        self.portal = self.spawn("portal", [sys.executable, "manage.py", "serve", "--port", str(self.port), *many,
                                            *extra])
        self.wait_for(lambda: self._up(f"{self.url}/login/"), 60, "the portal to answer")
        return self.portal

    def start(self, *, celery: bool = False) -> None:
        """Start everything: Celery worker and beat (production mode), the portal, one
        agent per registered node; returns once every node is online."""
        if celery:
            self.start_celery()
        self.start_portal()
        for agent in self.agents:
            self.start_agent(agent)
        self.wait_nodes_online([a.name for a in self.agents])

    def start_celery(self) -> None:
        """Production mode: a separate `celery worker` and `celery beat` process."""
        celery = str(Path(sys.executable).with_name("celery"))
        self.spawn("worker", [celery, "-A", "flportal", "worker", "--pool", "threads", "--concurrency", "4",
                              "--loglevel", "INFO", "--without-gossip", "--without-mingle"])
        self.spawn("beat", [celery, "-A", "flportal", "beat", "--loglevel", "INFO",
                            "--schedule", str(self.workdir / "celerybeat-schedule")])

    def start_agent(self, agent: Agent) -> subprocess.Popen:
        agent.process = self.spawn(agent.name, [
            sys.executable, "-m", "agent", "--portal", self.url, "--name", agent.name,
            "--data-dir", str(agent.data_dir), "--port", str(agent.port),
            "--runs-dir", str(self.workdir / "runs" / agent.name),
            "--heartbeat-interval", str(self.heartbeat_interval), "--stop-grace", "3",
        ], env={"FLPORTAL_NODE_TOKEN": agent.token, "FLPORTAL_AGENT_KEY": agent.agent_key,
                # several trainers share this machine: one math thread each beats contention
                "OMP_NUM_THREADS": "1"})
        return agent.process

    def kill_agent(self, agent: Agent) -> None:
        """A site dies: SIGKILL the agent and, at the same moment, its trainers (each in
        its own process group). An orphaned trainer would exit by itself, but only at
        its next parent check, by which time it may have answered another round."""
        groups = [agent.process.pid] + child_pids(agent.process.pid)
        for pid in groups:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        agent.process.wait(10)

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Token {self.token}"}, timeout=30)

    def wait_nodes_online(self, names: list[str], timeout: float = 60) -> None:
        """Wait until every node in `names` is online. An answer that is not a list of
        nodes (a 500, the portal still starting) is waited through; if the wait times out,
        the error says what the last answer was."""
        last = ["no answer"]
        with self.api() as api:
            def online():
                answer = api.get("/api/v1/nodes/")
                nodes = answer.json() if answer.status_code == 200 else None
                if not isinstance(nodes, list):
                    last[0] = f"{answer.status_code} {answer.text[:300]}"
                    return False
                statuses = {n["name"]: n["status"] for n in nodes}
                last[0] = f"200, statuses {statuses}"
                return all(statuses.get(n) == "online" for n in names)

            try:
                self.wait_for(online, timeout, f"nodes {names} to come online")
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}; the last answer of /api/v1/nodes/: {last[0]}") from None

    def wait_job(self, job_id: int, timeout: float, on_poll=None) -> dict:
        """Poll until the job ends; `on_poll(job, rounds)` sees every poll."""
        end = time.monotonic() + timeout
        with self.api() as api:
            while time.monotonic() < end:
                job = api.get(f"/api/v1/jobs/{job_id}/").json()
                if on_poll:
                    on_poll(job, all_pages(api, f"/api/v1/jobs/{job_id}/rounds/", {"limit": 100}))
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    return job
                self.check_alive()
                time.sleep(0.5)
        raise TimeoutError(f"job {job_id} did not end within {timeout} s")

    def check_alive(self) -> None:
        if self.portal is not None and self.portal.poll() is not None:
            raise RuntimeError(f"the portal exited with {self.portal.returncode}; see {self.workdir / 'portal.log'}")

    @staticmethod
    def wait_for(predicate, timeout: float, what: str) -> None:
        """Poll until `predicate()` holds; `timeout` is scaled by FLPORTAL_TEST_TIMEOUT_SCALE
        (a loaded machine, `patience`). Raises TimeoutError naming `what`."""
        timeout = patience(timeout)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if predicate():
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}")

    @staticmethod
    def _up(url: str) -> bool:
        return httpx.get(url, timeout=2).status_code == 200

    def stop(self, grace: float = 10) -> None:
        """Stop every process this stack started and every process those started, and
        start no more (spawn() and manage() refuse from now on). Safe from another
        thread than the one starting processes, and more than once.

        SIGTERM to each process's group (agents first; an agent stops its trainers and
        its spare trainer by itself, the portal its connections); once all exited, or
        after `grace` seconds, SIGKILL to what is left: the descendants of a process
        still running (trainers live in their own process groups), frozen first so that
        none is reaped and its pid reused before it is killed, and every group."""
        with self._lock:
            self._stopping = True
            processes = [p for p in self.processes + self._helpers if _child_state(p) != "reaped"]
        for process in reversed(processes):
            _signal(process.pid, signal.SIGTERM, group=True)
        end = time.monotonic() + grace
        while any(_child_state(p) == "running" for p in processes) and time.monotonic() < end:
            time.sleep(0.05)
        stuck = [p.pid for p in processes if _child_state(p) == "running"]
        for pid in freeze_tree(stuck) if stuck else []:
            _signal(pid, signal.SIGKILL, group=False)
            _signal(pid, signal.SIGKILL, group=True)  # a trainer leads its group; anyone else: no such group
        for process in processes:  # leaders that exited are not reaped yet: their group ids are still theirs
            if _child_state(process) != "reaped":
                _signal(process.pid, signal.SIGKILL, group=True)
        for process in processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:  # SIGKILLed, so only in uninterruptible sleep; leave it
                pass
