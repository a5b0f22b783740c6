"""Simulated sites for the benchmarks: many lightweight nodes in one asyncio process
that talk to a real portal through its public paths only.

- `register_nodes`: set-up, not measured. Registers many nodes through the same service
  `manage.py node_register` calls (`nodes.services.node_register`), in one
  `manage.py shell -c` run per batch instead of one process per node.
- `FakeAgents`: one small HTTP server standing in for every node's agent. Each node is
  registered with its own agent URL `http://127.0.0.1:<port>/<node>`, so the portal's
  Celery tasks call `POST <agent_url>/runs` as they would a real agent; the fake answers
  201 with a run (the agent key is checked on the agent side; the fake accepts any) and
  tells the benchmark which node's trainer to start.
- `SimNode`: a node's heartbeat and its trainer loop (long-polled task, the model from
  the task or downloaded, checked; a precomputed update, with an evaluation when the
  round evaluates first, or an evaluation), no training. Every answer that is not 2xx
  is counted as a failure.
"""
import asyncio
import base64
import hashlib
import json
import json as _json
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

BREAST_CANCER = {"name": "breast_cancer", "format": "builtin", "n_examples": 569, "n_features": 30,
                 "num_classes": 2}

_REGISTER = """
import json
from nodes.services import node_grant, node_register
for name in {names!r}:
    creds = node_register(name=name, agent_url={agent_base!r} + "/" + name)
    node_grant(node=creds.node, groups=[{group!r}])  # the stack's user may use it
    print("NODE " + json.dumps({{"name": name, "token": creds.token}}))
"""


def register_nodes(stack, names: list[str], agent_base: str, batch: int = 500) -> dict[str, str]:
    """{name: node token}; each node's agent URL is `<agent_base>/<name>`, and the
    stack's group may use it."""
    from flportal.localstack import GROUP

    tokens = {}
    for start in range(0, len(names), batch):
        out = stack.manage("shell", "-c", _REGISTER.format(names=names[start:start + batch], agent_base=agent_base,
                                                                  group=GROUP))
        for line in out.splitlines():
            if line.startswith("NODE "):
                row = json.loads(line[5:])
                tokens[row["name"]] = row["token"]
    missing = set(names) - set(tokens)
    if missing:
        raise RuntimeError(f"{len(missing)} nodes were not registered")
    return tokens


class FakeAgents:
    """`POST /<node>/runs` → 201 run (calls `on_run(node, job_id)`), `POST
    /<node>/runs/<id>/stop` → 200, `GET /<node>/health` → 200. HTTP/1.1, one request
    per connection (the portal's agent client opens one per call)."""

    def __init__(self, on_run=None):
        self.on_run = on_run
        self.calls: list[tuple[str, str]] = []
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=4096)
        self.port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
            body = await reader.readexactly(int(headers.get("content-length", 0) or 0))
            status, answer = self._answer(method, path, json.loads(body) if body else {})
            payload = json.dumps(answer).encode()
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}"
                         f"\r\nConnection: close\r\n\r\n".encode() + payload)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    def _answer(self, method: str, path: str, body: dict) -> tuple[int, dict]:
        parts = path.strip("/").split("/")
        node = parts[0]
        self.calls.append((method, path))
        run = {"run_id": uuid.uuid4().hex[:12], "job_id": body.get("job_id"), "pid": 0, "state": "running",
               "returncode": None, "started_at": time.time(), "ended_at": None}
        if method == "POST" and parts[1:] == ["runs"]:
            if self.on_run:
                self.on_run(node, int(body["job_id"]))
            return 201, run
        if method == "POST" and len(parts) == 4 and parts[1] == "runs" and parts[3] == "stop":
            return 200, {**run, "run_id": parts[2], "state": "exited", "returncode": -15}
        if method == "GET" and parts[1:] == ["health"]:
            return 200, {"status": "ok", "node": node, "version": "fake", "runs": []}
        return 404, {"error": "not_found", "message": path}


def perturbed_updates(model_bytes: bytes, count: int, seed: int = 0) -> list[bytes]:
    """`count` safetensors payloads: the model's tensors plus seeded noise (same names,
    shapes and dtypes, finite), made once before a benchmark."""
    tensors = st_load(model_bytes)
    rng = np.random.default_rng(seed)
    return [st_save({name: (t + rng.normal(0, 0.01, t.shape)).astype(t.dtype) for name, t in tensors.items()})
            for _ in range(count)]


@dataclass
class Stats:
    """Requests made and failed; `kinds` counts failures by request and answer, with
    ids and node names taken out."""
    requests: int = 0
    failed: int = 0
    stale: int = 0  # 409 answers: not failures, the trainer drops that work (PROTOCOL.md)
    kinds: dict = field(default_factory=dict)

    def fail(self, what: str) -> None:
        import re

        self.failed += 1
        kind = re.sub(r"\b(sim|site)-\d+\b", "<node>", what)
        kind = re.sub(r"/\d+(/|\b)", r"/<id>\1", kind)
        kind = re.sub(r"(job|round) \d+", r"\1 <n>", kind)[:200]
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    @property
    def failures(self) -> list[str]:
        return [f"{n} × {kind}" for kind, n in sorted(self.kinds.items(), key=lambda kv: -kv[1])]


class TransportError(Exception):
    """The connection failed or the answer did not come in time."""


@dataclass
class Answer:
    status_code: int
    headers: dict
    content: bytes

    def json(self):
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class NodeHTTP:
    """One node's own keep-alive HTTP/1.1 connections to the portal (as the real
    trainer has), on asyncio streams. httpx spends more CPU on a request than the
    portal's node API does (measured: the simulator of 100 nodes took 45 % of the scale
    benchmark's CPU, 206 ms per update at 1000), which would make the simulator, not the
    portal, what the benchmark measures. A request on a connection the portal closed
    while idle is made once more on a new one (the FL API's calls are idempotent)."""

    def __init__(self, base_url: str):
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(self, method: str, path: str, *, headers: dict | None = None, content: bytes | None = None,
                      json: dict | None = None, timeout: float = 60) -> Answer:
        body = content if content is not None else (_json.dumps(json).encode() if json is not None else b"")
        sent = {"Host": f"{self.host}:{self.port}", "Content-Length": str(len(body)),
                **({"Content-Type": "application/json"} if json is not None else {}), **(headers or {})}
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in sent.items()) + "\r\n"
        for attempt in (1, 2):
            reused = attempt == 1 and bool(self.idle)  # a second attempt always on a new connection
            try:
                reader, writer = self.idle.pop() if reused else await asyncio.open_connection(self.host, self.port)
            except OSError as exc:
                raise TransportError(f"connect: {exc}") from None
            try:
                writer.write(head.encode("latin-1") + body)
                answer, keep = await asyncio.wait_for(_read_answer(reader), timeout)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                writer.close()
                if reused:  # the portal closed it while idle (uvicorn: after 5 s); the others too, likely
                    self._drop_idle()
                    continue
                raise TransportError(f"{type(exc).__name__} {exc}") from None
            except TimeoutError:
                writer.close()
                raise TransportError(f"no answer in {timeout:g} s") from None
            if keep:
                self.idle.append((reader, writer))
            else:
                writer.close()
            return answer
        raise AssertionError("unreachable")

    def _drop_idle(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def _read_answer(reader: asyncio.StreamReader) -> tuple[Answer, bool]:
    """One HTTP/1.1 answer (Content-Length or chunked); and whether the connection stays open."""
    lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
    else:
        return Answer(status, headers, await reader.read()), False
    return Answer(status, headers, body), headers.get("connection", "").lower() != "close"


class SimNode:
    """One site: its heartbeat, and its trainer loop once its agent is asked to start."""

    def __init__(self, name: str, token: str, base_url: str, stats: Stats, updates: list[bytes] | None = None):
        self.name, self.client, self.stats = name, NodeHTTP(base_url), stats
        self.headers = {"Authorization": f"Node {token}"}
        self.updates = updates or []
        self.trainer: asyncio.Task | None = None


    async def request(self, method: str, path: str, **kw) -> Answer | None:
        """One request; a transport error or a non-2xx answer other than 409 is counted as
        a failure."""
        self.stats.requests += 1
        try:
            response = await self.client.request(method, path, headers={**self.headers, **kw.pop("headers", {})}, **kw)
        except TransportError as exc:
            self.stats.fail(f"{self.name} {method} {path}: {type(exc).__name__} {exc}")
            return None
        if response.status_code == 409:  # the protocol's "the round moved on" (here: a cancelled job)
            self.stats.stale += 1
            return None
        if response.status_code >= 300:
            self.stats.fail(f"{self.name} {method} {path}: {response.status_code} {response.text[:200]}")
            return None
        return response

    async def heartbeat(self) -> dict | None:
        response = await self.request("POST", "/api/v1/fl/heartbeat", json={
            "version": "sim-1", "datasets": [BREAST_CANCER],
            "resources": {"cpus": 1, "ram_bytes": 1 << 30, "gpus": 0, "disk_free_bytes": 1 << 30}})
        return response.json() if response is not None else None

    async def heartbeat_forever(self, interval: float) -> None:
        await asyncio.sleep(random.uniform(0, interval))  # sites are not in lock step
        while True:
            await self.heartbeat()
            await asyncio.sleep(interval)

    def start_trainer(self, job_id: int, wait_s: float = 20.0) -> None:
        if self.trainer is None or self.trainer.done():
            self.trainer = asyncio.create_task(self.train_loop(job_id, wait_s))

    async def train_loop(self, job_id: int, wait_s: float) -> str:
        """The trainer's protocol (agent/trainer.py) without the training: the
        next task comes with a result's answer (`?wait=`), else from a long poll."""
        task = None
        while True:
            started = time.monotonic()
            if task is None or task["action"] == "wait":
                response = await self.request("GET", f"/api/v1/fl/jobs/{job_id}/task?wait={wait_s:g}",
                                              timeout=wait_s + 15)
                if response is None:
                    await asyncio.sleep(1.0)
                    continue
                task = response.json()
            if task["action"] == "end":
                return task.get("reason", "")
            if task["action"] in ("train", "evaluate"):
                task = await self.do_task(task, wait=wait_s)
                continue
            pause = float(task.get("retry_after", 1.0)) - (time.monotonic() - started)
            if pause > 0:
                await asyncio.sleep(pause)

    async def do_task(self, task: dict, wait: float = 0) -> dict | None:
        """Answer a train or evaluate task; returns the next task when the portal sent it
        with the answer (`wait` > 0), else None."""
        if not await self.model_of(task):
            return None
        if task["action"] == "train":
            evaluation = (50, {"loss": 0.4, "accuracy": 0.85, "eval_s": 0.0}) if task.get("evaluate_first") else None
            answer = await self.post_update(task["round_id"], task["round"], evaluation=evaluation, wait=wait)
        else:
            answer = await self.post_evaluation(task["round_id"], task["round"], wait=wait)
        return answer.json().get("next") if answer is not None else None

    async def model_of(self, task: dict) -> bytes | None:
        """The task's model: inside the task when it is small, else downloaded; checked
        against its sha256 (a mismatch is a failure)."""
        if task.get("weights"):
            data = base64.b64decode(task["weights"])
        else:
            model = await self.request("GET", task["model_url"], timeout=60)
            if model is None:
                return None
            data = model.content
        if hashlib.sha256(data).hexdigest() != task["sha256"]:
            self.stats.fail(f"{self.name}: checksum mismatch for {task['model_url']}")
            return None
        return data

    async def post_update(self, round_id: int, round_number: int, metrics: dict | None = None,
                          evaluation: tuple[int, dict] | None = None, wait: float = 0):
        body = self.updates[hash((self.name, round_number)) % len(self.updates)]
        metrics = metrics or {"train_loss": 0.5, "train_accuracy": 0.8, "compute_s": 0.0}
        headers = {"Content-Type": "application/octet-stream", "X-Num-Examples": "100",
                   "X-Metrics": json.dumps(metrics)}
        if evaluation is not None:
            headers.update({"X-Eval-Examples": str(evaluation[0]), "X-Eval-Metrics": json.dumps(evaluation[1])})
        return await self.request("POST", f"/api/v1/fl/rounds/{round_id}/update?wait={wait:g}", content=body,
                                  timeout=60 + wait, headers=headers)

    async def post_evaluation(self, round_id: int, round_number: int, metrics: dict | None = None, wait: float = 0):
        metrics = metrics or {"loss": 0.4, "accuracy": 0.85}
        return await self.request("POST", f"/api/v1/fl/rounds/{round_id}/evaluation?wait={wait:g}", timeout=60 + wait,
                                  json={"num_examples": 50, "metrics": metrics})


def async_client(base_url: str, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, timeout=60, follow_redirects=False,
                             limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections))


# --- a portal to benchmark -------------------------------------------------------------

MODES = ("production", "embedded")


class PrivatePostgres:
    """A throwaway PostgreSQL server of this machine's own build (initdb, postgres: the
    same version and defaults as the shared one on :5432) in a temporary directory, on
    a free port, run as the `postgres` user. For benchmarks that open many connections:
    they must not exhaust the shared server other work on this machine depends on.
    `max_connections` defaults to PostgreSQL's own default (100)."""

    def __init__(self, max_connections: int = 100):
        self.max_connections, self.process, self.dir = max_connections, None, None

    def __enter__(self) -> str:
        import shutil
        import subprocess
        import tempfile
        from pathlib import Path

        from flportal.localstack import free_port

        self.dir = Path(tempfile.mkdtemp(prefix="flportal-bench-pg-"))
        shutil.chown(self.dir, "postgres")
        data = self.dir / "data"
        subprocess.run(["runuser", "-u", "postgres", "--", "initdb", "-D", str(data), "-A", "trust", "-U", "postgres",
                        "--no-sync"], check=True, capture_output=True, timeout=120)
        self.port = free_port()
        self.process = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", "postgres", "-D", str(data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
             "-c", f"max_connections={self.max_connections}"],
            stdout=open(self.dir / "postgres.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _wait_ready(self, timeout: float = 60) -> None:
        import psycopg

        end = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", connect_timeout=2).close()
                return
            except psycopg.Error:
                if time.monotonic() > end or self.process.poll() is not None:
                    raise RuntimeError(f"private PostgreSQL did not start; see {self.dir / 'postgres.log'}") from None
                time.sleep(0.2)

    def __exit__(self, *exc):
        import shutil
        import signal
        import subprocess

        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        return False


class BenchStack:
    """A LocalStack in `mode`: "production" (PostgreSQL + Redis, separate Celery worker
    and beat processes) or "embedded" (SQLite, in-process worker and channel layer).
    `with BenchStack(...) as bench:` migrates and makes the user (`bench.stack` is the
    LocalStack); `bench.start()` starts the portal (and workers); leaving stops every
    process, drops the PostgreSQL database, empties the Redis db and removes files, also
    when the benchmark is stopped with SIGTERM. `private_pg`: run PostgreSQL apart (a
    PrivatePostgres with that max_connections) instead of the shared one on :5432."""

    def __init__(self, mode: str, name: str, *, redis_db: int, env: dict | None = None, private_pg: int | None = None,
                 username: str = "bench", password: str = "bench-password-1"):
        self.mode, self.name, self.redis_db, self.extra_env = mode, name, redis_db, env or {}
        self.username, self.password = username, password
        self.database = f"flportal_bench_{name}_{uuid.uuid4().hex[:8]}"
        self.private = PrivatePostgres(private_pg) if private_pg and mode == "production" else None
        self.stack = None

    def __enter__(self):
        import signal
        import tempfile
        from pathlib import Path

        from flportal.localstack import LocalStack, production_env

        signal.signal(signal.SIGTERM, _interrupt)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"flportal-bench-{self.name}-"))
        env = {"FLPORTAL_DATA_DIR": str(self.workdir / "portal"), **self.extra_env}
        try:
            if self.mode == "production" and self.private is not None:
                env.update(self._private_env(self.private.__enter__()))
            elif self.mode == "production":
                env.update(production_env(self.database, redis_db=self.redis_db))
            else:
                env.update({"DATABASE_URL": "", "REDIS_URL": ""})
            # production: one portal process per core, as README's production section says
            self.stack = LocalStack(workdir=self.workdir, env=env,
                                    portal_processes=(os.cpu_count() or 1) if self.mode == "production" else 1)
            self.stack.setup(username=self.username, password=self.password)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _private_env(self, admin_url: str) -> dict:
        import psycopg
        import redis

        from flportal.localstack import REDIS_BASE_URL

        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        redis.Redis.from_url(f"{REDIS_BASE_URL}/{self.redis_db}", socket_connect_timeout=5).flushdb()
        return {"DATABASE_URL": admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgres://") + f"/{self.database}",
                "REDIS_URL": f"{REDIS_BASE_URL}/{self.redis_db}"}

    def start(self) -> None:
        if self.mode == "production":
            self.stack.start_celery()
        self.stack.start_portal()

    def server_errors(self) -> list[str]:
        """The exceptions the portal and worker logged, by kind (count × last line of the
        traceback, numbers taken out), most frequent first: what a failed request hid."""
        import re

        kinds: dict[str, int] = {}
        for name in ("portal.log", "worker.log"):
            path = self.workdir / name
            text = path.read_text(errors="replace") if path.exists() else ""
            for line in text.splitlines():
                if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Timeout)\b.*:", line):
                    kind = f"{name.split('.')[0]}: " + re.sub(r"\d+", "<n>", line)[:160]
                    kinds[kind] = kinds.get(kind, 0) + 1
        return [f"{n} × {kind}" for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1])][:10]

    def __exit__(self, *exc):
        import shutil
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
        try:
            if self.stack is not None:
                self.stack.stop()
        finally:
            if self.mode == "production":
                self._drop()
            if os.environ.get("BENCH_KEEP"):  # logs of the portal, worker and beat, for a post-mortem
                print(f"kept {self.workdir}", flush=True)
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
        return False

    def _drop(self) -> None:
        import redis

        from flportal.localstack import REDIS_BASE_URL, drop_database

        try:
            if self.private is not None:
                self.private.__exit__(None, None, None)
            else:
                drop_database(self.database)
        finally:
            redis.Redis.from_url(f"{REDIS_BASE_URL}/{self.redis_db}").flushdb()


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


async def session_cookie(base_url: str, username: str, password: str) -> str:
    """Log in through /login/ as a browser does; returns the `sessionid` cookie."""
    async with httpx.AsyncClient(base_url=base_url, follow_redirects=False, timeout=30) as client:
        page = await client.get("/login/")
        csrf = client.cookies["csrftoken"]
        answer = await client.post("/login/", data={"username": username, "password": password,
                                                    "csrfmiddlewaretoken": csrf, "next": "/"},
                                   headers={"Referer": f"{base_url}/login/"})
        if answer.status_code != 302 or "sessionid" not in client.cookies:
            raise RuntimeError(f"login failed: {answer.status_code} {page.status_code}")
        return client.cookies["sessionid"]


class Profiler:
    """`--profile DIR`: py-spy (not a product dependency: installed apart, found on PATH
    or in $PY_SPY) samples the given processes while a benchmark measures; collapsed
    stacks are written to DIR/<label>.txt (flame-graph input, one line per stack)."""

    def __init__(self, outdir: str | None):
        self.outdir, self.procs = outdir, []

    def start(self, label: str, pid: int, *, threads: bool = True) -> None:
        import os
        import shutil
        import subprocess
        from pathlib import Path

        if not self.outdir:
            return
        exe = os.environ.get("PY_SPY") or shutil.which("py-spy")
        if not exe:
            raise RuntimeError("--profile needs py-spy (set PY_SPY=/path/to/py-spy)")
        Path(self.outdir).mkdir(parents=True, exist_ok=True)
        argv = [exe, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--nonblocking",
                "-o", str(Path(self.outdir) / f"{label}.txt")] + (["--threads"] if threads else []) \
            + (["--idle"] if os.environ.get("BENCH_PROFILE_IDLE") else [])  # wall clock: waits too
        self.procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> None:
        import signal

        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(30)
            except Exception:
                proc.kill()
        self.procs = []


def tree_cpu_seconds(root_pid: int) -> float:
    """CPU time (user + system) of a process and its live descendants, including what
    they spent in children already reaped (a PostgreSQL postmaster's closed backends)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = sum(int(x) for x in fields[11:15]) / ticks  # utime stime cutime cstime
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(cpu.get(pid, 0.0) for pid in tree)


def self_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system
