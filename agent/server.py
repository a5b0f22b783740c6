"""The agent API (docs/PROTOCOL.md section 2), served with the standard library.

Every request, ``/health`` included, must carry ``Authorization: Bearer <agent key>``
(compared in constant time); otherwise ``401``. Errors are JSON
``{"error": code, "message": sentence}``. Request bodies are limited to
MAX_BODY_BYTES (``413`` beyond).
"""

import hmac
import json
import logging
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from agent import __version__
from agent.runs import MAX_TAIL_LINES, AgentClosing, RunManager
from agent.sitedata import find_dataset, is_safe_name

log = logging.getLogger("flportal.agent")

MAX_BODY_BYTES = 64 * 1024
DEFAULT_TAIL_LINES = 100
RUN_ID = r"(?P<run_id>[A-Za-z0-9_-]{1,64})"


class ApiError(Exception):
    """An error answer: ``status`` with ``{"error": code, "message": message}``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class AgentServer(ThreadingHTTPServer):
    """The agent's HTTP server: one thread per request, state shared through ``runs``."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], *, agent_key: str, node_name: str,
                 runs: RunManager, data_dir: Path):
        self.agent_key = agent_key.encode()
        self.node_name, self.runs, self.data_dir = node_name, runs, Path(data_dir)
        super().__init__(address, AgentHandler)


class AgentHandler(BaseHTTPRequestHandler):
    server: AgentServer
    server_version = f"flportal-agent/{__version__}"
    timeout = 30  # a client that stalls mid-request does not hold a thread forever

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        """Authenticate, route, call the endpoint and write its JSON answer."""
        try:
            self._authenticate()
            endpoint, args = self._route(method)
            status, payload = endpoint(self, **args)
        except ApiError as exc:
            status, payload = exc.status, {"error": exc.code, "message": exc.message}
        except Exception:
            log.exception("error handling %s %s", method, self.path)
            status, payload = 500, {"error": "internal_error", "message": "the agent failed; see its log"}
        self._send_json(status, payload)

    def _authenticate(self) -> None:
        scheme, _, key = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.server.agent_key):
            raise ApiError(401, "unauthenticated", "missing or wrong agent key (Authorization: Bearer <key>)")

    def _route(self, method: str):
        path = urlsplit(self.path).path
        allowed = []
        for route_method, pattern, endpoint in ROUTES:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                return endpoint, match.groupdict()
            if match:
                allowed.append(route_method)
        if allowed:
            raise ApiError(405, "method_not_allowed", f"{method} {path}: use {', '.join(allowed)}")
        raise ApiError(404, "not_found", f"no such endpoint: {path}")

    def _read_json(self) -> dict:
        """The request body as a JSON object; ApiError 411/413/400 otherwise."""
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "length_required", "send a Content-Length, not a chunked body")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ApiError(400, "invalid_request", "bad Content-Length") from None
        if length > MAX_BODY_BYTES or length < 0:
            raise ApiError(413, "too_large", f"request body over {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            raise ApiError(400, "invalid_request", "body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_request", "body must be a JSON object")
        return body

    def _query_int(self, name: str, default: int) -> int:
        values = parse_qs(urlsplit(self.path).query).get(name)
        if not values:
            return default
        try:
            return int(values[-1])
        except ValueError:
            raise ApiError(400, "invalid_request", f"{name} must be an integer") from None

    def _send_json(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="flportal-agent"')
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        log.info("%s %s", self.address_string(), format % args)

    # endpoints: (handler, **path args) -> (status, payload)

    def health(self) -> tuple[int, dict]:
        runs = [run.as_dict() for run in self.server.runs.all()]
        return 200, {"status": "ok", "node": self.server.node_name, "version": __version__, "runs": runs,
                     "spare": self.server.runs.spare_status()}

    def start_run(self) -> tuple[int, dict]:
        body = self._read_json()
        job_id, dataset = body.get("job_id"), body.get("dataset")
        if not isinstance(job_id, int) or isinstance(job_id, bool) or job_id <= 0:
            raise ApiError(400, "invalid_request", "job_id must be a positive integer")
        if not is_safe_name(dataset):
            raise ApiError(400, "invalid_request",
                           "dataset must be a name of letters, digits, '.', '_' or '-' (no path)")
        if find_dataset(self.server.data_dir, dataset) is None:
            raise ApiError(400, "unknown_dataset", f"no dataset {dataset!r} (.npz or .csv) at this site")
        try:
            run, created = self.server.runs.start(job_id, dataset)
        except AgentClosing:
            raise ApiError(503, "shutting_down", "the agent is shutting down") from None
        except OSError as exc:
            raise ApiError(500, "spawn_failed", f"cannot start the trainer: {exc}") from exc
        return (201 if created else 200), run.as_dict()

    def get_run(self, run_id: str) -> tuple[int, dict]:
        return 200, self._run(run_id).as_dict()

    def stop_run(self, run_id: str) -> tuple[int, dict]:
        return 200, self.server.runs.stop(self._run(run_id)).as_dict()

    def run_log(self, run_id: str) -> tuple[int, dict]:
        run = self._run(run_id)
        lines = self._query_int("lines", DEFAULT_TAIL_LINES)
        if not 0 <= lines <= MAX_TAIL_LINES:
            raise ApiError(400, "invalid_request", f"lines must be between 0 and {MAX_TAIL_LINES}")
        return 200, {"run_id": run.run_id, "lines": self.server.runs.tail(run, lines)}

    def _run(self, run_id: str):
        run = self.server.runs.get(run_id)
        if run is None:
            raise ApiError(404, "not_found", f"no run {run_id!r}")
        return run


ROUTES = [
    ("GET", re.compile(r"/health"), AgentHandler.health),
    ("POST", re.compile(r"/runs"), AgentHandler.start_run),
    ("GET", re.compile(rf"/runs/{RUN_ID}"), AgentHandler.get_run),
    ("POST", re.compile(rf"/runs/{RUN_ID}/stop"), AgentHandler.stop_run),
    ("GET", re.compile(rf"/runs/{RUN_ID}/log"), AgentHandler.run_log),
]
