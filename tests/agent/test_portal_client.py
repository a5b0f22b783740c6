"""The trainer's HTTP client, its backoff and its task loop, in-process against the fake
portal with a stub site (no training, no subprocess)."""

import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.local import TrainResult
from agent.portal import Backoff, PortalClient, PortalOffline, PortalRefusal, PortalUnavailable, TransientError
from agent.trainer import EXIT_END, Trainer
from tests.agent.conftest import NODE_TOKEN

WEIGHTS = b"model-bytes"


class FakeClock:
    """time.monotonic and time.sleep for Backoff: sleeping advances the clock."""

    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def sleep(self, seconds):
        self.sleeps.append(round(seconds, 6))
        self.now += seconds

    def clock(self):
        return self.now


DOWN = PortalUnavailable("down")


def flaky(failures: int, result="ok", error=DOWN):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return result
    return fn, calls


def test_backoff_doubles_from_initial_up_to_the_cap_then_resets():
    clock = FakeClock()
    backoff = Backoff(max_offline=1000, sleep=clock.sleep, clock=clock.clock, rng=lambda: 0.5)
    fn, calls = flaky(7)
    assert backoff.call(fn, "x") == "ok" and len(calls) == 8
    assert clock.sleeps == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    clock.sleeps.clear()
    backoff.call(flaky(1)[0], "x")
    assert clock.sleeps == [0.2], "a success resets the delay"


def test_backoff_jitter_stays_within_half_to_one_and_a_half():
    for rng, expected in ((lambda: 0.0, 0.1), (lambda: 0.999, 0.3)):
        clock = FakeClock()
        Backoff(max_offline=10, sleep=clock.sleep, clock=clock.clock, rng=rng).call(flaky(1)[0], "x")
        assert clock.sleeps[0] == pytest.approx(expected, abs=1e-3)


def test_backoff_gives_up_after_max_offline_of_continuous_failure():
    clock = FakeClock()
    backoff = Backoff(max_offline=12, sleep=clock.sleep, clock=clock.clock, rng=lambda: 0.5)
    with pytest.raises(PortalOffline, match="giving up"):
        backoff.call(flaky(10_000)[0], "task poll")
    assert sum(clock.sleeps) == pytest.approx(12)


def test_backoff_does_not_retry_other_errors():
    fn, calls = flaky(1, error=PortalRefusal(403, "not_selected", "no"))
    with pytest.raises(PortalRefusal):
        Backoff(max_offline=10, sleep=lambda s: None).call(fn, "x")
    assert len(calls) == 1


def test_client_maps_answers_to_the_error_contract(portal):
    client = PortalClient(portal.url, NODE_TOKEN)
    portal.inject["task"] = [503, 404]
    with pytest.raises(PortalUnavailable, match="503"):
        client.get("/api/v1/fl/jobs/1/task")
    with pytest.raises(PortalRefusal) as refused:
        client.get("/api/v1/fl/jobs/1/task")
    assert (refused.value.status, refused.value.code) == (404, "not_found")
    with pytest.raises(PortalRefusal) as refused:
        PortalClient(portal.url, "wrong").get("/api/v1/fl/jobs/1/task")
    assert (refused.value.status, refused.value.code) == (401, "unauthenticated")


def test_client_treats_a_refused_connection_as_unavailable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(PortalUnavailable) as exc:
        PortalClient(f"http://127.0.0.1:{port}", NODE_TOKEN).get("/api/v1/fl/heartbeat")
    assert isinstance(exc.value, TransientError)


def test_client_never_sends_the_token_to_another_origin(portal):
    client = PortalClient(portal.url, NODE_TOKEN)
    with pytest.raises(PortalRefusal, match="refusing to send the node token"):
        client.get("http://evil.example/api/v1/fl/jobs/1/models/0")
    assert client.url_for("/api/v1/fl/jobs/1/models/0") == portal.url + "/api/v1/fl/jobs/1/models/0"


class KeepAliveServer:
    """An HTTP/1.1 server that counts the connections it accepted; `drop_after` closes
    a connection after that many answers (as a server closing idle connections does)."""

    def __init__(self, drop_after: int | None = None):
        outer = self
        self.connections, self.requests = 0, []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                outer.connections += 1
                self.answered = 0

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((self.path, body, self.headers["Authorization"]))
                self.answered += 1
                payload = json.dumps({"n": len(outer.requests)}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                if drop_after is not None and self.answered >= drop_after:
                    self.close_connection = True  # closed without telling the client

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_client_keeps_one_connection_for_many_calls():
    server = KeepAliveServer()
    try:
        client = PortalClient(server.url, NODE_TOKEN)
        answers = [client.post_json("/api/v1/fl/heartbeat", {"k": k}).json()["n"] for k in range(5)]
    finally:
        server.close()
    assert answers == [1, 2, 3, 4, 5] and server.connections == 1
    assert {auth for _, _, auth in server.requests} == {f"Node {NODE_TOKEN}"}


def test_client_calls_again_on_a_new_connection_when_the_portal_closed_the_idle_one():
    server = KeepAliveServer(drop_after=1)
    try:
        client = PortalClient(server.url, NODE_TOKEN)
        answers = []
        for k in range(3):
            answers.append(client.post_json("/api/v1/fl/heartbeat", {"k": k}).json()["n"])
            time.sleep(0.05)  # the server's close reaches the client's socket
    finally:
        server.close()
    assert answers == [1, 2, 3] and server.connections == 3
    assert [json.loads(body)["k"] for _, body, _ in server.requests] == [0, 1, 2]  # each sent once


class StubSite:
    device = "cpu"

    def __init__(self):
        self.trained, self.evaluated = [], []

    def train(self, task, weights):
        self.trained.append((task["round"], weights))
        return TrainResult(b"new-weights", 5, {"train_loss": 0.5})

    def evaluate(self, task, weights):
        self.evaluated.append((task["round"], weights))
        return 3, {"loss": 0.1, "accuracy": 1.0}


def task(action, round_id):
    return {"action": action, "round_id": round_id, "round": round_id, "model_version": 0,
            "model_url": "/api/v1/fl/jobs/7/models/0", "sha256": hashlib.sha256(WEIGHTS).hexdigest(),
            "config": {}}


def make_trainer(portal, sleeps):
    portal.models[0] = WEIGHTS
    backoff = Backoff(max_offline=30, initial=0.01, cap=0.02)
    return Trainer(client=PortalClient(portal.url, NODE_TOKEN), site=StubSite(), job_id=7,
                   wait_s=0.5, backoff=backoff, sleep=sleeps.append)


def test_wait_sleeps_retry_after_only_when_answered_at_once(portal):
    portal.tasks = [{"action": "wait", "retry_after": 0.8},
                    {"action": "wait", "retry_after": 0.2, "_hold": 0.4}]
    sleeps = []
    assert make_trainer(portal, sleeps).run() == EXIT_END
    assert len(sleeps) == 1 and 0.6 < sleeps[0] <= 0.8, sleeps


@pytest.mark.parametrize("status", [401, 403, 404])
def test_task_refusals_stop_the_trainer(portal, status):
    portal.inject["task"] = [status]
    with pytest.raises(PortalRefusal) as refused:
        make_trainer(portal, []).run()
    assert refused.value.status == status
    assert len(portal.task_polls) == 1


def test_409_drops_the_round_and_other_4xx_stop_without_retry(portal):
    portal.tasks = [task("evaluate", 1), task("train", 2), task("train", 3)]
    portal.inject.update({"evaluation:1": [409], "update:2": [503, 409], "update:3": [400]})
    trainer = make_trainer(portal, [])
    with pytest.raises(PortalRefusal) as refused:
        trainer.run()
    assert refused.value.status == 400
    assert [(u.round_id, u.status) for u in portal.uploads] == [(2, 503), (2, 409), (3, 400)]
    assert [e[:2] for e in portal.evaluations] == [(1, 409)]
    assert trainer.site.trained == [(2, WEIGHTS), (3, WEIGHTS)]
