"""The real agent process (``python -m agent``) against the fake portal."""

import json
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import __version__
from tests.agent.conftest import AGENT_KEY, NODE_TOKEN, group_alive, pid_alive, subprocess_env, wait_for
from tests.agent.fakeportal import FakePortal

RUN_KEYS = {"run_id", "job_id", "pid", "state", "returncode", "started_at", "ended_at", "warm"}


@dataclass
class Agent:
    process: subprocess.Popen
    url: str
    portal: FakePortal
    runs_dir: Path
    stderr_path: Path

    def call(self, method: str, path: str, body=None, *, key: str | None = AGENT_KEY,
             raw: bytes | None = None, scheme: str = "Bearer") -> tuple[int, dict]:
        """(status, JSON answer) of one agent API call."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if key is not None:
            request.add_header("Authorization", f"{scheme} {key}")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stderr(self) -> str:
        return self.stderr_path.read_text()


def start_agent(python, site_data, tmp_path, portal, *extra, env=None) -> Agent:
    """Start an agent on a free port and wait until it listens."""
    runs_dir, stderr_path = tmp_path / "runs", tmp_path / "agent.stderr"
    argv = [python, "-m", "agent", "--portal", portal.url, "--name", "site-1",
            "--data-dir", str(site_data), "--host", "127.0.0.1", "--port", "0",
            "--runs-dir", str(runs_dir), "--stop-grace", "3", *extra]
    env = env or subprocess_env(FLPORTAL_NODE_TOKEN=NODE_TOKEN, FLPORTAL_AGENT_KEY=AGENT_KEY)
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    pattern = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
    match = wait_for(lambda: pattern.search(stderr_path.read_text()) or process.poll() is not None,
                     what="the agent to listen")
    assert process.poll() is None, stderr_path.read_text()
    return Agent(process, match.group(1), portal, runs_dir, stderr_path)


def start_blocked_run(agent: Agent, job_id: int) -> dict:
    """Start a run and wait until its trainer sits in a long poll of the task endpoint."""
    polls = len(agent.portal.task_polls)
    status, run = agent.call("POST", "/runs", {"job_id": job_id, "dataset": "breast_cancer"})
    assert status == 201, run
    wait_for(lambda: len(agent.portal.task_polls) > polls, timeout=30, what="the trainer's long poll")
    return run


def spare_status(agent: Agent) -> dict:
    return agent.call("GET", "/health")[1]["spare"]


def wait_spare_ready(agent: Agent, *, other_than: int | None = None) -> int:
    """Wait until the agent's spare trainer is ready (and is not ``other_than``); its pid."""
    def ready():
        spare = spare_status(agent)
        return spare["state"] == "ready" and spare["pid"] != other_than and spare["pid"]

    return wait_for(ready, timeout=120, what="the agent's spare trainer to be ready")


def stop_agent(agent: Agent) -> None:
    if agent.process.poll() is None:
        agent.process.send_signal(signal.SIGTERM)
        agent.process.wait(timeout=30)
    agent.portal.close()


@pytest.fixture(scope="module")
def agent(site_data, python, tmp_path_factory):
    """One agent for the module; its portal blocks every task poll (trainers stay put).
    The CLI interval is long, the portal asks for 0.2 s: heartbeats prove it is obeyed."""
    portal = FakePortal(token=NODE_TOKEN, heartbeat_interval_s=0.2, block_tasks=True).start()
    agent = start_agent(python, site_data, tmp_path_factory.mktemp("agent"), portal,
                        "--heartbeat-interval", "30", "--trainer-max-offline", "42")
    yield agent
    stop_agent(agent)


def test_heartbeats_carry_version_datasets_and_resources(agent):
    beats = wait_for(lambda: agent.portal.heartbeats[:3] if len(agent.portal.heartbeats) >= 3 else None,
                     timeout=30, what="three heartbeats at the portal's interval")
    beat = beats[-1]
    assert beat["version"] == __version__
    assert [(d["name"], d["format"], d["n_features"], d["num_classes"]) for d in beat["datasets"]] == [
        ("breast_cancer", "npz", 30, 2)]
    assert beat["datasets"][0]["n_examples"] > 0
    resources = beat["resources"]
    assert set(resources) == {"cpus", "ram_bytes", "gpus", "disk_free_bytes"}
    assert resources["cpus"] >= 1 and resources["ram_bytes"] > 0 and resources["disk_free_bytes"] > 0
    assert isinstance(resources["gpus"], int)


@pytest.mark.parametrize("method,path", [("GET", "/health"), ("POST", "/runs"), ("GET", "/runs/1-ab"),
                                         ("POST", "/runs/1-ab/stop"), ("GET", "/runs/1-ab/log"),
                                         ("GET", "/nowhere")])
@pytest.mark.parametrize("key,scheme", [(None, "Bearer"), ("wrong", "Bearer"), ("", "Bearer"),
                                        (AGENT_KEY, "Basic"), (AGENT_KEY + "x", "Bearer")])
def test_every_endpoint_refuses_a_missing_or_wrong_key(agent, method, path, key, scheme):
    status, answer = agent.call(method, path, {"job_id": 1, "dataset": "breast_cancer"}
                                if method == "POST" else None, key=key, scheme=scheme)
    assert (status, answer["error"]) == (401, "unauthenticated")


@pytest.mark.parametrize("path", ["/runs/../../etc/passwd/log", "/runs/..%2F..%2Fetc%2Fpasswd/log",
                                  "/runs/%2e%2e/log", "/runs/a%00b/log", "/runs/" + "a" * 65 + "/log"])
def test_a_run_log_request_cannot_leave_the_runs_directory(agent, path):
    status, answer = agent.call("GET", path)
    assert status in (400, 404) and answer["error"] in ("not_found", "invalid_request"), answer
    assert "root:" not in str(answer)


def test_health(agent):
    status, answer = agent.call("GET", "/health")
    assert status == 200
    assert (answer["status"], answer["node"], answer["version"]) == ("ok", "site-1", __version__)
    assert isinstance(answer["runs"], list)
    assert set(answer["spare"]) == {"state", "pid"} and answer["spare"]["state"] in ("none", "starting", "ready")


@pytest.mark.parametrize("body,error", [
    ({"job_id": "3", "dataset": "breast_cancer"}, "invalid_request"),
    ({"job_id": 0, "dataset": "breast_cancer"}, "invalid_request"),
    ({"job_id": -4, "dataset": "breast_cancer"}, "invalid_request"),
    ({"job_id": True, "dataset": "breast_cancer"}, "invalid_request"),
    ({"job_id": 2.5, "dataset": "breast_cancer"}, "invalid_request"),
    ({"dataset": "breast_cancer"}, "invalid_request"),
    ({"job_id": 3, "dataset": "../site-2/breast_cancer"}, "invalid_request"),
    ({"job_id": 3, "dataset": "a/b"}, "invalid_request"),
    ({"job_id": 3, "dataset": ".."}, "invalid_request"),
    ({"job_id": 3, "dataset": ""}, "invalid_request"),
    ({"job_id": 3, "dataset": None}, "invalid_request"),
    ({"job_id": 3, "dataset": "x" * 200}, "invalid_request"),
    ({"job_id": 3, "dataset": "digits"}, "unknown_dataset"),
    ([3, "breast_cancer"], "invalid_request"),
])
def test_start_run_refuses_bad_input_with_400(agent, body, error):
    status, answer = agent.call("POST", "/runs", body)
    assert (status, answer["error"]) == (400, error)
    assert answer["message"]


def test_bad_requests_get_json_errors(agent):
    assert agent.call("POST", "/runs", raw=b"{not json")[0] == 400
    status, answer = agent.call("POST", "/runs", raw=b"{" + b" " * 70_000 + b"}")
    assert (status, answer["error"]) == (413, "too_large")
    assert agent.call("GET", "/runs")[1]["error"] == "method_not_allowed"
    assert agent.call("GET", "/runs/no-such-run") == (404, {"error": "not_found", "message": "no run 'no-such-run'"})
    assert agent.call("GET", "/elsewhere")[0] == 404


def test_run_lifecycle_start_idempotent_log_stop(agent):
    run = start_blocked_run(agent, 41)
    assert set(run) == RUN_KEYS and run["state"] == "running" and run["returncode"] is None
    pid = run["pid"]
    assert os.getpgid(pid) == pid, "the trainer leads its own process group"
    again = agent.call("POST", "/runs", {"job_id": 41, "dataset": "breast_cancer"})
    assert again == (200, run)

    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"agent.trainer" in cmdline and not any(NODE_TOKEN.encode() in arg for arg in cmdline)
    assert cmdline[cmdline.index(b"--max-offline") + 1] == b"42"
    assert cmdline[cmdline.index(b"--parent-pid") + 1] == str(agent.process.pid).encode()
    assert f"FLPORTAL_NODE_TOKEN={NODE_TOKEN}".encode() in environ
    assert not any(AGENT_KEY.encode() in entry for entry in environ), "the trainer never sees the agent key"

    status, log = agent.call("GET", f"/runs/{run['run_id']}/log?lines=3")
    assert status == 200 and log["run_id"] == run["run_id"]
    assert 1 <= len(log["lines"]) <= 3 and any("job 41" in line for line in log["lines"])
    assert agent.call("GET", f"/runs/{run['run_id']}/log?lines=many")[0] == 400
    assert agent.call("GET", f"/runs/{run['run_id']}/log?lines=100000")[0] == 400
    assert (agent.runs_dir / f"{run['run_id']}.log").is_file()

    # its heartbeats say it runs a trainer for job 41 (the portal re-asks for lost ones)
    wait_for(lambda: 41 in agent.portal.heartbeats[-1].get("runs", []), timeout=30, what="job 41 in a heartbeat")

    status, stopped = agent.call("POST", f"/runs/{run['run_id']}/stop")
    assert status == 200
    assert (stopped["state"], stopped["returncode"]) == ("exited", -signal.SIGTERM)
    seen = len(agent.portal.heartbeats)
    wait_for(lambda: len(agent.portal.heartbeats) > seen and 41 not in agent.portal.heartbeats[-1]["runs"],
             timeout=30, what="a heartbeat without the stopped run")
    assert stopped["ended_at"] >= stopped["started_at"]
    assert not group_alive(pid), "nothing of the run's process group survives a stop"
    assert agent.call("GET", f"/runs/{run['run_id']}") == (200, stopped)
    assert stopped in agent.call("GET", "/health")[1]["runs"]


def test_a_new_start_after_the_run_exited_starts_a_new_run(agent):
    first = start_blocked_run(agent, 42)
    agent.call("POST", f"/runs/{first['run_id']}/stop")
    status, second = agent.call("POST", "/runs", {"job_id": 42, "dataset": "breast_cancer"})
    assert status == 201 and second["run_id"] != first["run_id"]
    assert agent.call("POST", f"/runs/{second['run_id']}/stop")[1]["state"] == "exited"


def test_a_start_takes_the_ready_spare_and_a_new_spare_follows_the_run(agent):
    pid = wait_spare_ready(agent)
    run = start_blocked_run(agent, 45)
    assert (run["pid"], run["warm"]) == (pid, True), "the run is the spare trainer"
    assert spare_status(agent) == {"state": "none", "pid": None}, "no new spare while a run runs"
    log = (agent.runs_dir / f"{run['run_id']}.log").read_text()
    assert "trainer[spare]: warm" in log and "trainer[job 45]: job 45: assigned to this warm trainer" in log
    assert not list(agent.runs_dir.glob("spare-*.log")), "the spare's log became the run's"
    agent.call("POST", f"/runs/{run['run_id']}/stop")
    assert not group_alive(pid)
    wait_spare_ready(agent, other_than=pid)


def test_a_dead_spare_is_not_handed_a_job(agent):
    pid = wait_spare_ready(agent)
    os.kill(pid, signal.SIGKILL)  # as the OOM killer would
    wait_for(lambda: spare_status(agent)["pid"] != pid, timeout=10, what="the agent to notice")
    run = start_blocked_run(agent, 46)
    assert run["pid"] != pid and not run["warm"]
    assert b"--job" in Path(f"/proc/{run['pid']}/cmdline").read_bytes(), "a cold trainer"
    assert "died with status -9 before any assignment" in agent.stderr()
    agent.call("POST", f"/runs/{run['run_id']}/stop")


def test_killing_the_agent_makes_its_spare_exit(site_data, python, tmp_path):
    portal = FakePortal(token=NODE_TOKEN, block_tasks=True).start()
    agent = start_agent(python, site_data, tmp_path, portal)
    try:
        pid = wait_spare_ready(agent)
        agent.process.send_signal(signal.SIGKILL)
        agent.process.wait(timeout=10)
        # it checks its parent about once a second; a loaded machine may take several
        wait_for(lambda: not pid_alive(pid), timeout=20, what="the orphaned spare to exit")
        assert portal.task_polls == [], "the orphaned spare never asked for a task"
    finally:
        if pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
        stop_agent(agent)


def test_killing_the_agent_makes_its_trainer_exit(site_data, python, tmp_path):
    """With warm trainers off: the cold path, health says so."""
    portal = FakePortal(token=NODE_TOKEN, block_tasks=True).start()
    agent = start_agent(python, site_data, tmp_path, portal, "--warm-trainers", "0")
    try:
        assert spare_status(agent) == {"state": "off", "pid": None}
        run = start_blocked_run(agent, 43)
        assert not run["warm"] and b"--job" in Path(f"/proc/{run['pid']}/cmdline").read_bytes()
        agent.process.send_signal(signal.SIGKILL)
        agent.process.wait(timeout=10)
        wait_for(lambda: not pid_alive(run["pid"]), timeout=5, what="the orphaned trainer to exit")
        assert "parent process" in (agent.runs_dir / f"{run['run_id']}.log").read_text()
    finally:
        if pid_alive(run["pid"]):
            os.killpg(run["pid"], signal.SIGKILL)
        stop_agent(agent)


def test_sigterm_stops_the_runs_and_exits_0(site_data, python, tmp_path):
    (tmp_path / "token").write_text(NODE_TOKEN + "\n")
    (tmp_path / "key").write_text(AGENT_KEY + "\n")
    portal = FakePortal(token=NODE_TOKEN, block_tasks=True).start()
    agent = start_agent(python, site_data, tmp_path, portal, "--token-file", str(tmp_path / "token"),
                        "--agent-key-file", str(tmp_path / "key"), env=subprocess_env())
    run = start_blocked_run(agent, 44)
    agent.process.send_signal(signal.SIGTERM)
    assert agent.process.wait(timeout=20) == 0
    assert not group_alive(run["pid"])
    assert "stopping" in agent.stderr() and "agent stopped" in agent.stderr()
    portal.close()


def test_sigterm_stops_the_spare_and_removes_its_log(site_data, python, tmp_path):
    portal = FakePortal(token=NODE_TOKEN, block_tasks=True).start()
    agent = start_agent(python, site_data, tmp_path, portal)
    pid = wait_spare_ready(agent)
    assert len(list(agent.runs_dir.glob("spare-*.log"))) == 1
    agent.process.send_signal(signal.SIGTERM)
    assert agent.process.wait(timeout=20) == 0
    assert not group_alive(pid)
    assert f"spare trainer pid {pid}: stopping" in agent.stderr()
    assert list(agent.runs_dir.glob("spare-*.log")) == []
    portal.close()


@pytest.mark.parametrize("env,missing", [
    ({}, "FLPORTAL_NODE_TOKEN"),
    ({"FLPORTAL_NODE_TOKEN": NODE_TOKEN}, "FLPORTAL_AGENT_KEY"),
    ({"FLPORTAL_NODE_TOKEN": NODE_TOKEN, "FLPORTAL_AGENT_KEY": "  "}, "FLPORTAL_AGENT_KEY"),
])
def test_agent_refuses_to_start_without_its_secrets(site_data, python, tmp_path, env, missing):
    argv = [python, "-m", "agent", "--portal", "http://127.0.0.1:9", "--name", "site-1",
            "--data-dir", str(site_data), "--port", "0", "--runs-dir", str(tmp_path)]
    proc = subprocess.run(argv, env=subprocess_env(**env), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "refusing to start" in proc.stderr and missing in proc.stderr
