"""A scripted double of the portal's node-facing FL API (PROTOCOL.md section 1).

Standard library only (no Django): it serves on 127.0.0.1 in a thread and records what
nodes send, so the real trainer and agent processes can be tested against it.

Scripting:
- ``tasks``: the task objects served in order by ``/jobs/<id>/task``; once used up,
  ``{"action": "end"}``. A task's ``_hold`` key (seconds) delays its answer, as a long
  poll would. With ``block_tasks`` the task endpoint instead holds each long
  poll for its whole ``wait`` (or until ``close()``) and answers ``wait``.
- ``models``: version -> safetensors bytes served at ``/jobs/<id>/models/<version>``.
- ``inject``: key -> list of statuses answered (in order) before the real behaviour;
  keys are ``"task"``, ``"heartbeat"``, ``"model:<version>"``, ``"update:<round_id>"``,
  ``"evaluation:<round_id>"``.
- ``corrupt``: version -> how many downloads serve damaged bytes (same checksum header).
- ``piggyback``: an upload or evaluation posted with ``?wait=`` is answered with the
  next scripted task as ``next``, as the portal does.
- ``enrollment_codes``: code -> status ``POST /enroll`` answers it (201: the node's
  credentials, once; then 409 as a used code), 400/409/410/403 the portal's refusals;
  an unknown code is 400. No ``Authorization`` is required there; ``enrollments``
  records each request's body and ``Authorization`` header.
"""

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fl.serialization import load_state_dict


@dataclass
class Upload:
    round_id: int
    status: int
    num_examples: str | None
    metrics: str | None
    body: bytes
    eval_examples: str | None = None
    eval_metrics: str | None = None


@dataclass
class FakePortal:
    token: str = "node-token-123"
    heartbeat_interval_s: float | None = None
    tasks: list[dict] = field(default_factory=list)
    models: dict[int, bytes] = field(default_factory=dict)
    inject: dict[str, list[int]] = field(default_factory=dict)
    corrupt: dict[int, int] = field(default_factory=dict)
    block_tasks: bool = False
    piggyback: bool = False  # answer an upload made with ?wait= with the next task ("next")
    agent_key: str = "agent-key-456"
    enrollment_codes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self.heartbeats: list[dict] = []
        self.task_polls: list[tuple[float, int]] = []  # (time, status)
        self.downloads: list[tuple[int, bool]] = []  # (version, corrupted)
        self.uploads: list[Upload] = []
        self.evaluations: list[tuple[int, int, dict]] = []  # (round_id, status, body)
        self.enrollments: list[tuple[dict, str | None]] = []  # (body, Authorization header)
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    def start(self, port: int = 0) -> "FakePortal":
        handler = type("Handler", (_Handler,), {"portal": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self.closing.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def injected(self, key: str) -> int | None:
        with self.lock:
            queue = self.inject.get(key)
            return queue.pop(0) if queue else None

    def next_task(self) -> dict:
        with self.lock:
            return self.tasks.pop(0) if self.tasks else {"action": "end", "reason": "script done"}


ROUTES = [
    ("POST", re.compile(r"/api/v1/fl/enroll"), "enroll"),
    ("POST", re.compile(r"/api/v1/fl/heartbeat"), "heartbeat"),
    ("GET", re.compile(r"/api/v1/fl/jobs/(\d+)/task"), "task"),
    ("GET", re.compile(r"/api/v1/fl/jobs/(\d+)/models/(\d+)"), "model"),
    ("POST", re.compile(r"/api/v1/fl/rounds/(\d+)/update"), "update"),
    ("POST", re.compile(r"/api/v1/fl/rounds/(\d+)/evaluation"), "evaluation"),
]


class _Handler(BaseHTTPRequestHandler):
    portal: FakePortal

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method):
        path, _, query = self.path.partition("?")
        for route_method, pattern, name in ROUTES:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if name == "enroll":  # no Authorization: the code is the credential
                    return self.enroll(body=body)
                if self.headers.get("Authorization") != f"Node {self.portal.token}":
                    return self._json(401, {"error": "unauthenticated", "message": "bad token"})
                return getattr(self, name)(*match.groups(), body=body, query=query)
        self._json(404, {"error": "not_found", "message": self.path})

    def _json(self, status, payload, headers=None):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _refusal(self, status):
        codes = {400: "invalid_update", 403: "not_selected", 404: "not_found", 409: "stale_round"}
        self._json(status, {"error": codes.get(status, "server_error"), "message": f"injected {status}"})

    def enroll(self, *, body):
        payload = json.loads(body or b"{}")
        refusals = {400: ("enrollment_invalid", "This enrollment code is not valid."),
                    409: ("enrollment_used", "This enrollment code has already been used."),
                    410: ("enrollment_expired", "This enrollment code has expired."),
                    403: ("node_disabled", "This node is disabled.")}
        with self.portal.lock:
            self.portal.enrollments.append((payload, self.headers.get("Authorization")))
            status = self.portal.enrollment_codes.get(payload.get("code"), 400)
            if status == 201:
                self.portal.enrollment_codes[payload["code"]] = 409
        if status != 201:
            error, message = refusals.get(status, ("server_error", f"injected {status}"))
            return self._json(status, {"error": error, "message": message})
        self._json(201, {"node": "site-1", "token": self.portal.token, "agent_key": self.portal.agent_key,
                         "agent_url": "http://127.0.0.1:8123", "heartbeat_interval_s": 5.0},
                   {"Cache-Control": "no-store"})

    def heartbeat(self, *, body, query):
        status = self.portal.injected("heartbeat")
        if status:
            return self._refusal(status)
        with self.portal.lock:
            self.portal.heartbeats.append(json.loads(body))
        answer = {"status": "ok", "node": "site-1"}
        if self.portal.heartbeat_interval_s is not None:
            answer["heartbeat_interval_s"] = self.portal.heartbeat_interval_s
        self._json(200, answer)

    def task(self, job_id, *, body, query):
        status = self.portal.injected("task") or 200
        with self.portal.lock:
            self.portal.task_polls.append((time.monotonic(), status))
        if status != 200:
            return self._refusal(status)
        if self.portal.block_tasks:
            wait = float(dict(p.split("=") for p in query.split("&") if "=" in p).get("wait", 0))
            self.portal.closing.wait(min(wait, 25))
            return self._json(200, {"action": "wait", "retry_after": 1.0})
        task = dict(self.portal.next_task())
        hold = task.pop("_hold", 0)  # a scripted long poll: answer only after this long
        if hold:
            self.portal.closing.wait(hold)
        self._json(200, task)

    def model(self, job_id, version, *, body, query):
        version = int(version)
        status = self.portal.injected(f"model:{version}")
        if status:
            return self._refusal(status)
        data = self.portal.models[version]
        digest = hashlib.sha256(data).hexdigest()
        with self.portal.lock:
            damaged = self.portal.corrupt.get(version, 0) > 0
            self.portal.corrupt[version] = max(0, self.portal.corrupt.get(version, 0) - 1)
            self.portal.downloads.append((version, damaged))
        if damaged:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Checksum-Sha256", digest)
        self.end_headers()
        self.wfile.write(data)

    def update(self, round_id, *, body, query):
        status = self.portal.injected(f"update:{round_id}") or 201
        if status == 201:
            load_state_dict(body)  # an unreadable upload fails the test loudly
        with self.portal.lock:
            self.portal.uploads.append(Upload(int(round_id), status, self.headers.get("X-Num-Examples"),
                                              self.headers.get("X-Metrics"), body, self.headers.get("X-Eval-Examples"),
                                              self.headers.get("X-Eval-Metrics")))
            update_id = len(self.portal.uploads)
        if status != 201:
            return self._refusal(status)
        self._json(201, self._accepted({"status": "accepted", "update_id": update_id}, query))

    def evaluation(self, round_id, *, body, query):
        status = self.portal.injected(f"evaluation:{round_id}") or 201
        with self.portal.lock:
            self.portal.evaluations.append((int(round_id), status, json.loads(body)))
        if status != 201:
            return self._refusal(status)
        self._json(201, self._accepted({"status": "accepted"}, query))

    def _accepted(self, answer: dict, query: str) -> dict:
        if self.portal.piggyback and "wait=" in query:
            answer["next"] = dict(self.portal.next_task())
        return answer
