"""Upload and download of a ~100 MB model update through the real portal on loopback,
against bare servers measured in the same run.

The portal is the embedded stack (`manage.py serve` under uvicorn, its Celery worker in
the same process) started by flportal.localstack. A job whose model is an ``mlp`` with
hidden widths 5000 and 5000 (25.4 M float32 parameters, 101.5 MB of safetensors) runs on
registered nodes; this script plays the sites through the public paths only: it answers
the portal's agent calls (docs/PROTOCOL.md section 2: start a run, stop it), sends the
nodes' heartbeats, pulls the task, then, with the node agent's own client
(``agent.portal.PortalClient``, what a trainer uses):

- download: ``GET /api/v1/fl/jobs/<id>/models/0`` with the node token;
- upload: ``POST /api/v1/fl/rounds/<id>/update`` with the node token, one update per node
  (a duplicate is answered without reading its body, so every timed upload is a first).

Baselines, same client, same bytes, same URL paths: ``python -m http.server`` serving the
model file (download) and a bare ASGI app under the same uvicorn that reads the request
body and answers its size (upload).

The portal process's RSS is read from /proc/<pid>/status (VmRSS) by a sampling thread
every 2 ms during each transfer; its VmHWM is also reset (/proc/<pid>/clear_refs) before
each transfer and read after, so a peak between two samples is not missed.

    .venv/bin/python bench/transfer.py [--repeats 5]
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

from agent.portal import PortalClient
from flportal.localstack import LocalStack, free_port

HIDDEN = [5000, 5000]
IN_FEATURES, NUM_CLASSES = 64, 10
DATASET = {"name": "bench", "format": "npz", "n_examples": 1000, "n_features": IN_FEATURES,
           "num_classes": NUM_CLASSES}
TARGET_THROUGHPUT, TARGET_RSS_MB = 0.5, 50.0

ECHO_APP = '''
import json


async def app(scope, receive, send):
    """Reads the whole request body, keeps none of it, answers its size."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = json.dumps({"bytes": size}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''


# --------------------------------------------------------------------------- the site's side

class FakeAgent(ThreadingHTTPServer):
    """A node agent that accepts the portal's calls (start a run, stop it, status) and runs
    nothing: this script is the trainer. Checks the agent key like the real one."""

    daemon_threads = True

    def __init__(self, port: int, agent_key: str):
        self.agent_key, self.runs = agent_key, {}
        super().__init__(("127.0.0.1", port), _AgentHandler)


class _AgentHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        self._answer()

    def do_POST(self):
        self._answer()

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}") if length else {}
        if self.headers.get("Authorization") != f"Bearer {self.server.agent_key}":
            return self._send(401, {"error": "unauthenticated", "message": "bad agent key"})
        if self.command == "POST" and self.path == "/runs":
            run = {"run_id": f"bench-{body.get('job_id')}", "job_id": body.get("job_id"), "status": "running"}
            self.server.runs[run["run_id"]] = run
            return self._send(201, run)
        match = re.fullmatch(r"/runs/([\w-]+)(/stop)?", self.path)
        if match and match.group(1) in self.server.runs:
            run = self.server.runs[match.group(1)]
            if match.group(2):
                run["status"] = "stopped"
            return self._send(200, run)
        if self.path == "/health":
            return self._send(200, {"status": "ok"})
        return self._send(404, {"error": "not_found", "message": self.path})

    def _send(self, status: int, payload: dict):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class Heartbeats(threading.Thread):
    """Every node's heartbeat, as its agent would send it, every `interval` seconds."""

    def __init__(self, clients: list[PortalClient], interval: float = 2.0):
        super().__init__(daemon=True)
        self.clients, self.interval, self.stopped = clients, interval, threading.Event()

    def beat(self):
        for client in self.clients:
            client.post_json("/api/v1/fl/heartbeat", {"version": "bench", "datasets": [DATASET], "resources": {}})

    def run(self):
        while not self.stopped.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # the portal may be stopping; the bench notices elsewhere
                print(f"heartbeat: {exc}", file=sys.stderr)


# --------------------------------------------------------------------------- memory of a process

def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by process ``pid``, threads that already ended
    included (/proc/<pid>/stat; clock ticks, usually 10 ms)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssMonitor:
    """Samples /proc/<pid>/status VmRSS in a thread while active; also resets the process's
    VmHWM at start and reads it at stop (exact peak), and counts the process's CPU time."""

    def __init__(self, pid: int, period: float = 0.002):
        self.pid, self.period = pid, period

    def _read(self, field: str) -> int:
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(field)

    def __enter__(self):
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.before = self._read("VmRSS")
        self.cpu_before = cpu_seconds(self.pid)
        self.peak, self.stop = self.before, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self._read("VmRSS"))
            time.sleep(self.period)

    def __exit__(self, *exc):
        self.cpu = cpu_seconds(self.pid) - self.cpu_before
        self.stop.set()
        self.thread.join()
        self.after = self._read("VmRSS")
        self.peak = max(self.peak, self.after)
        self.hwm = self._read("VmHWM") if self.hwm_reset else None

    def growth_mb(self) -> dict:
        return {"server_cpu_s": self.cpu, "rss_before_mb": self.before / 1e6, "rss_growth_sampled_mb": (self.peak - self.before) / 1e6,
                "rss_growth_hwm_mb": (self.hwm - self.before) / 1e6 if self.hwm is not None else None}


# --------------------------------------------------------------------------- the run

def start_server(argv: list[str], port: int, workdir: Path, name: str) -> subprocess.Popen:
    log = open(workdir / f"{name}.log", "ab")
    process = subprocess.Popen(argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    LocalStack.wait_for(lambda: _port_open(port), 30, f"{name} on port {port}")
    return process


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def run(repeats: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="flportal-bench-transfer-"))
    uploads = repeats
    node_count = uploads + 2  # one warm-up upload, `uploads` timed, one node never uploads: the round stays open
    stack = LocalStack(workdir=workdir / "stack", env={
        "FLPORTAL_DATA_DIR": str(workdir / "portal"), "DATABASE_URL": "", "REDIS_URL": "",
        "FLPORTAL_HEARTBEAT_INTERVAL_S": "2"})
    agents, extra = [], []
    heartbeats = None
    try:
        stack.setup(username="bench")
        for agent in stack.register_nodes(node_count):
            server = FakeAgent(agent.port, agent.agent_key)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            agents.append(server)
        stack.start_portal()
        clients = [PortalClient(stack.url, a.token, timeout=120) for a in stack.agents]
        heartbeats = Heartbeats(clients)
        heartbeats.beat()
        heartbeats.start()
        stack.wait_nodes_online([a.name for a in stack.agents])

        spec = {"model": "mlp", "model_params": {"in_features": IN_FEATURES, "num_classes": NUM_CLASSES,
                                                 "hidden": HIDDEN},
                "dataset": DATASET["name"], "strategy": "fedavg", "rounds": 1, "min_clients": node_count,
                "clients_required": 1, "round_timeout_s": 3600, "seed": 0}
        with stack.api() as api:
            answer = api.post("/api/v1/jobs/", json={"name": "transfer bench", "start": True, "spec": spec,
                                                     "nodes": [a.name for a in stack.agents]})
            answer.raise_for_status()
            job_id = answer.json()["id"]
        tasks = [_train_task(client, job_id) for client in clients]
        model_path = tasks[0]["model_url"]

        # The model's bytes, as a node gets them; checked, then served by the baselines.
        first = clients[0].get(model_path, timeout=120)
        body = first.body
        assert hashlib.sha256(body).hexdigest() == tasks[0]["sha256"] == first.headers["X-Checksum-Sha256"]
        size = len(body)
        print(f"job {job_id}: model of {size / 1e6:.1f} MB", flush=True)

        static = workdir / "static"
        target = static / model_path.lstrip("/")
        target.parent.mkdir(parents=True)
        target.write_bytes(body)
        http_port, echo_port = free_port(), free_port()
        extra.append(start_server([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                                   str(static), str(http_port)], http_port, workdir, "http_server"))
        (workdir / "echo_app.py").write_text(ECHO_APP)
        extra.append(start_server([sys.executable, "-m", "uvicorn", "--app-dir", str(workdir), "echo_app:app",
                                   "--host", "127.0.0.1", "--port", str(echo_port), "--log-level", "warning",
                                   "--lifespan", "off"], echo_port, workdir, "echo"))
        http_client = PortalClient(f"http://127.0.0.1:{http_port}", "none", timeout=120)
        echo_client = PortalClient(f"http://127.0.0.1:{echo_port}", "none", timeout=120)
        portal_pid = stack.portal.pid
        monitors = {"portal": portal_pid, "http.server": extra[0].pid, "uvicorn echo": extra[1].pid}

        def download(client, who):
            with RssMonitor(monitors[who]) as rss:
                seconds, answer = timed(lambda: client.get(model_path, timeout=120))
            assert len(answer.body) == size
            return {"direction": "download", "server": who, "seconds": seconds, "mb_per_s": size / seconds / 1e6,
                    **rss.growth_mb()}

        def upload(client, who, round_id):
            headers = {"Content-Type": "application/octet-stream", "X-Num-Examples": "100",
                       "X-Metrics": json.dumps({"loss": 1.0})}
            path = f"/api/v1/fl/rounds/{round_id}/update"
            with RssMonitor(monitors[who]) as rss:
                seconds, answer = timed(lambda: client.request("POST", path, body=body, headers=headers,
                                                               timeout=120))
            if who == "portal":
                assert answer.status == 201, answer
            else:
                assert answer.json()["bytes"] == size, answer.json()
            return {"direction": "upload", "server": who, "seconds": seconds, "mb_per_s": size / seconds / 1e6,
                    **rss.growth_mb()}

        samples = []
        download(clients[0], "portal"), download(http_client, "http.server")  # warm-up
        for k in range(repeats):  # interleaved, so both see the same machine
            samples.append(download(clients[0], "portal"))
            samples.append(download(http_client, "http.server"))
            print(f"download {k}: portal {samples[-2]['mb_per_s']:.0f} MB/s "
                  f"(RSS +{samples[-2]['rss_growth_hwm_mb'] or samples[-2]['rss_growth_sampled_mb']:.0f} MB), "
                  f"http.server {samples[-1]['mb_per_s']:.0f} MB/s", flush=True)
        round_id = tasks[0]["round_id"]
        warm = upload(clients[0], "portal", round_id), upload(echo_client, "uvicorn echo", round_id)
        for k in range(uploads):
            samples.append(upload(clients[k + 1], "portal", round_id))
            samples.append(upload(echo_client, "uvicorn echo", round_id))
            print(f"upload {k}: portal {samples[-2]['mb_per_s']:.0f} MB/s "
                  f"(RSS +{samples[-2]['rss_growth_hwm_mb'] or samples[-2]['rss_growth_sampled_mb']:.0f} MB), "
                  f"echo {samples[-1]['mb_per_s']:.0f} MB/s", flush=True)
        with stack.api() as api:
            api.post(f"/api/v1/jobs/{job_id}/cancel/", json={"reason": "benchmark done"})
        log = (stack.workdir / "portal.log").read_text(errors="replace")
        consumed = log.count("must consume synchronous iterators")
        return {"bytes": size, "samples": samples, "warm_up": list(warm), "repeats": repeats,
                "portal_log_sync_iterator_warnings": consumed}
    finally:
        if heartbeats is not None:
            heartbeats.stopped.set()
        for process in extra:
            stop_process(process)
        stack.stop()
        for server in agents:
            server.shutdown()
            server.server_close()
        shutil.rmtree(workdir, ignore_errors=True)


def _train_task(client: PortalClient, job_id: int, timeout: float = 120) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        task = client.get(f"/api/v1/fl/jobs/{job_id}/task?wait=5", timeout=30).json()
        if task["action"] == "train":
            return task
        if task["action"] == "end":
            raise RuntimeError(f"job {job_id} ended before its first round: {task}")
    raise TimeoutError(f"no train task for job {job_id} within {timeout} s")


# --------------------------------------------------------------------------- report

def rows_of(result: dict) -> list[dict]:
    rows = []
    for direction, baseline in (("download", "http.server"), ("upload", "uvicorn echo")):
        ours = [s for s in result["samples"] if s["direction"] == direction and s["server"] == "portal"]
        base = [s for s in result["samples"] if s["direction"] == direction and s["server"] == baseline]
        pairs = [o["mb_per_s"] / b["mb_per_s"] for o, b in zip(ours, base)]

        def growth(sample):
            return sample["rss_growth_hwm_mb"] if sample["rss_growth_hwm_mb"] is not None \
                else sample["rss_growth_sampled_mb"]

        rows.append({
            "direction": direction, "baseline": baseline,
            "portal_MB_s_median": statistics.median(s["mb_per_s"] for s in ours),
            "portal_MB_s_best": max(s["mb_per_s"] for s in ours),
            "baseline_MB_s_median": statistics.median(s["mb_per_s"] for s in base),
            "baseline_MB_s_best": max(s["mb_per_s"] for s in base),
            "ratio_median_of_pairs": statistics.median(pairs),
            "ratio_best": max(s["mb_per_s"] for s in ours) / max(s["mb_per_s"] for s in base),
            "portal_cpu_ms_median": 1000 * statistics.median(s["server_cpu_s"] for s in ours),
            "baseline_cpu_ms_median": 1000 * statistics.median(s["server_cpu_s"] for s in base),
            "portal_rss_growth_MB_max": max(growth(s) for s in ours),
            "portal_rss_growth_MB_sampled_max": max(s["rss_growth_sampled_mb"] for s in ours),
            "baseline_rss_growth_MB_max": max(growth(s) for s in base),
        })
    return rows


def summary_md(result: dict, rows: list[dict]) -> str:
    def ok(flag):
        return "met" if flag else "MISSED"

    lines = [
        f"{result['bytes'] / 1e6:.1f} MB model (mlp {HIDDEN}) through the embedded portal on 127.0.0.1, with the "
        f"node agent's client; {result['repeats']} interleaved transfers each way, after one warm-up. Baselines: "
        "`python -m http.server` (download), a bare ASGI app under uvicorn that reads the body (upload). "
        "Throughput: bytes / wall time of the request as the client sees it. Server CPU: the server "
        "process's CPU time (all threads; 10 ms ticks) during the transfer. RSS growth: the server process's peak "
        "(VmHWM, reset before each transfer; the VmRSS sampled every 2 ms is also given) above its RSS "
        "before the transfer.", "",
        common.table(rows, ["direction", "baseline", "portal_MB_s_median", "baseline_MB_s_median",
                            "ratio_median_of_pairs", "portal_MB_s_best", "baseline_MB_s_best", "ratio_best",
                            "portal_cpu_ms_median", "baseline_cpu_ms_median", "portal_rss_growth_MB_max", "portal_rss_growth_MB_sampled_max",
                            "baseline_rss_growth_MB_max"]), ""]
    lines.append(f"- Portal log: {result['portal_log_sync_iterator_warnings']} warning(s) \"StreamingHttpResponse "
                 "must consume synchronous iterators\" (Django reading a download into memory before sending).")
    for row in rows:
        lines.append(f"- {row['direction']}: portal/baseline throughput {row['ratio_median_of_pairs']:.2f}× "
                     f"(median of interleaved pairs; target ≥ {TARGET_THROUGHPUT}×: "
                     f"{ok(row['ratio_median_of_pairs'] >= TARGET_THROUGHPUT)}); portal RSS grew at most "
                     f"{row['portal_rss_growth_MB_max']:.0f} MB"
                     + (f" (target ≤ {TARGET_RSS_MB:g} MB: {ok(row['portal_rss_growth_MB_max'] <= TARGET_RSS_MB)})"
                        if row["direction"] == "upload" else
                        f" (≤ {TARGET_RSS_MB:g} MB: {ok(row['portal_rss_growth_MB_max'] <= TARGET_RSS_MB)})") + ".")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    opts = parser.parse_args()
    started = time.monotonic()
    result = run(opts.repeats)
    rows = rows_of(result)
    result["rows"] = rows
    result["summary_md"] = summary_md(result, rows)
    return common.finish("transfer", result, started)


if __name__ == "__main__":
    sys.exit(main())
