"""Client of the node-facing FL API (docs/PROTOCOL.md section 1), standard library only.

Error contract of every call:

- a connection problem or a 5xx answer raises ``PortalUnavailable`` (transient: the
  caller retries through ``Backoff``);
- a 4xx answer raises ``PortalRefusal`` carrying the status and the portal's JSON
  ``error`` code and ``message``; it is never retried blindly;
- redirects are not followed (answered as ``PortalRefusal``) so that the node token, sent
  in ``Authorization``, never follows a redirect to another host.
"""

import http.client
import json
import logging
import random
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, TypeVar

from agent import __version__

log = logging.getLogger("flportal.agent")

T = TypeVar("T")
ERROR_BODY_LIMIT = 64 * 1024


class TransientError(Exception):
    """A failure that may go away if the same call is made again a little later."""


class PortalUnavailable(TransientError):
    """The portal could not be reached, or answered 5xx."""


class ChecksumMismatch(TransientError):
    """Downloaded bytes do not hash to the announced sha256 (corrupted in transit)."""


class PortalOffline(Exception):
    """Transient failures lasted longer than the allowed offline time."""


class PortalRefusal(Exception):
    """The portal answered 4xx (or an unexpected redirect): the request itself is wrong."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: Message = field(default_factory=Message)

    def json(self) -> Any:
        """The body parsed as JSON; raises PortalUnavailable if it is not JSON."""
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            raise PortalUnavailable(f"answer {self.status} is not JSON: {self.body[:200]!r}") from None


class PortalClient:
    """Authenticated HTTP calls to one portal as one node (``Authorization: Node <token>``).

    One persistent (keep-alive) connection, used by one call at a time: a new TCP
    connection per call cost the portal more than many a call itself. When the portal
    has closed an idle connection, the call is made once more on a new one; that is
    safe because every call a node makes is idempotent (a repeated upload is answered
    as the first one). Redirects are never followed.

    ``token=None`` makes calls without ``Authorization`` (``POST /enroll``: the node has
    no token yet; its enrollment code is in the body).
    """

    def __init__(self, base_url: str, token: str | None, *, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        parts = urllib.parse.urlsplit(self.base_url)
        self._origin = parts[:2]
        self._https = parts.scheme == "https"
        self._address = (parts.hostname or "", parts.port)
        self._connection: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def url_for(self, path: str) -> str:
        """Absolute URL for an API path, or for a URL the portal itself handed out.

        A URL the portal sent (e.g. a task's ``model_url``) is resolved against the
        portal; one pointing at another origin is refused so the token is not leaked.
        """
        if path.startswith("/api/"):
            return self.base_url + path
        url = urllib.parse.urljoin(self.base_url + "/", path)
        if urllib.parse.urlsplit(url)[:2] != self._origin:
            raise PortalRefusal(0, "foreign_url", f"refusing to send the node token to {url}")
        return url

    def request(self, method: str, path: str, *, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float | None = None) -> Response:
        """Make one call; return the 2xx Response or raise per the module contract."""
        url = urllib.parse.urlsplit(self.url_for(path))
        target = url.path + (f"?{url.query}" if url.query else "")
        headers = {"Accept": "application/json", "User-Agent": f"flportal-agent/{__version__}",
                   **({"Authorization": f"Node {self._token}"} if self._token is not None else {}),
                   **(headers or {})}
        with self._lock:
            status, reason, data, answer_headers = self._exchange(method, target, body, headers,
                                                                  timeout or self.timeout)
        if 200 <= status < 300:
            return Response(status, data, answer_headers)
        raise _error_from(status, reason, data, f"{method} {path}")

    def _exchange(self, method: str, target: str, body: bytes | None, headers: dict, timeout: float):
        """(status, reason, body, headers) over the kept connection, or a new one."""
        for attempt in (1, 2):
            reused = self._connection is not None
            connection = self._connect(timeout)
            try:
                connection.request(method, target, body=body, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self.close()
                if reused and attempt == 1:
                    continue  # the portal closed the idle connection: once more on a new one
                raise PortalUnavailable(f"{method} {target}: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise PortalUnavailable(f"{method} {target}: {exc}") from None
            if answer.will_close:
                self.close()
            return answer.status, answer.reason, data, answer.headers
        raise AssertionError("unreachable")

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._connection is None:
            host, port = self._address
            self._connection = (http.client.HTTPSConnection(host, port, timeout=timeout,
                                                            context=ssl.create_default_context())
                                if self._https else http.client.HTTPConnection(host, port, timeout=timeout))
        else:
            self._connection.timeout = timeout
            if self._connection.sock is not None:
                self._connection.sock.settimeout(timeout)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def get(self, path: str, *, timeout: float | None = None) -> Response:
        return self.request("GET", path, timeout=timeout)

    def post_json(self, path: str, payload: Any, *, timeout: float | None = None) -> Response:
        body = json.dumps(payload).encode()
        return self.request("POST", path, body=body, timeout=timeout,
                            headers={"Content-Type": "application/json"})


def _error_from(status: int, reason: str, raw: bytes, what: str) -> Exception:
    """Map an error answer to PortalUnavailable (5xx) or PortalRefusal (anything else,
    3xx included: redirects are not followed)."""
    try:
        detail = json.loads(raw[:ERROR_BODY_LIMIT]) if raw else {}
    except ValueError:
        detail = {}
    if not isinstance(detail, dict):
        detail = {}
    code = str(detail.get("error") or f"http_{status}")
    message = str(detail.get("message") or reason or "")
    if status >= 500:
        return PortalUnavailable(f"{what}: {status} {code}: {message}")
    return PortalRefusal(status, code, f"{what}: {message}")


class Backoff:
    """Retry transient failures with capped exponential backoff and jitter.

    ``call(fn)`` runs ``fn`` until it returns, sleeping ``initial * 2**n`` seconds (capped
    at ``cap``, times a random factor in [0.5, 1.5)) after the n-th consecutive failure.
    Failures are counted across calls until one succeeds; once they have lasted
    ``max_offline`` seconds, ``PortalOffline`` is raised. Non-transient exceptions pass
    through untouched.
    """

    def __init__(self, *, max_offline: float, initial: float = 0.2, cap: float = 5.0,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random):
        self.max_offline, self.initial, self.cap = max_offline, initial, cap
        self._sleep, self._clock, self._rng = sleep, clock, rng
        self.failures = 0
        self._since: float | None = None

    def call(self, fn: Callable[[], T], what: str) -> T:
        while True:
            try:
                result = fn()
            except TransientError as exc:
                self._failed(what, exc)
                continue
            if self.failures:
                log.info("%s: succeeded after %d failed attempts", what, self.failures)
            self.failures, self._since = 0, None
            return result

    def _failed(self, what: str, exc: Exception) -> None:
        now = self._clock()
        if self._since is None:
            self._since = now
        offline = now - self._since
        if offline >= self.max_offline:
            raise PortalOffline(f"{what}: failing for {offline:.1f}s, giving up (last error: {exc})")
        delay = min(self.cap, self.initial * 2 ** min(self.failures, 30))
        delay = min(delay * (0.5 + self._rng()), self.cap, self.max_offline - offline)
        self.failures += 1
        log.warning("%s failed (%s); retry %d in %.2fs", what, exc, self.failures, delay)
        self._sleep(max(delay, 0.0))
