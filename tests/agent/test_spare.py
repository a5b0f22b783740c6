"""Warm trainers: RunManager's spare with stand-in spares (small scripts that speak the
spare's protocol), and the real spare trainer (``agent.trainer --spare``)."""

import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from agent import trainer
from agent.runs import RunManager
from agent.warmstart import AssignmentError, encode_assignment, read_assignment
from fl.networks import build_model
from fl.serialization import state_dict_to_bytes
from tests.agent.conftest import NODE_TOKEN, group_alive, pid_alive, subprocess_env, wait_for
from tests.agent.fakeportal import FakePortal

# A stand-in spare: says ready on its fd, prints what it is handed, then sleeps.
# crash: dies before it is ready; deaf: ready but its stdin is closed (cannot take a
# job); stubborn: ignores SIGTERM.
STANDIN = """
import os, signal, sys, time
mode, ready_fd = sys.argv[1], int(sys.argv[2])
if mode == "crash":
    sys.exit(1)
if mode == "deaf":
    os.close(0)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("spare", os.getpid(), flush=True)
os.write(ready_fd, b"ready\\n")
os.close(ready_fd)
line = sys.stdin.readline() if mode != "deaf" else "none"
if not line:
    sys.exit(4)
print("assigned", line.strip(), flush=True)
time.sleep(60)
"""
COLD = "import time; print('cold', flush=True); time.sleep(60)"
CONFIG = {"model": "logreg", "model_params": {"in_features": 30, "num_classes": 2}, "optimizer": "sgd",
          "optimizer_params": {"lr": 0.1}, "local_epochs": 1, "batch_size": 32, "dataset": "breast_cancer",
          "val_fraction": 0.2, "seed": 0}


def manager(tmp_path, mode="wait", retry=(5.0, 600.0), grace=1.0) -> RunManager:
    return RunManager(runs_dir=tmp_path / "runs", env={}, stop_grace=grace, spare_retry=retry,
                      command=lambda run_id, job_id, dataset: [sys.executable, "-c", COLD],
                      spare_command=lambda fd: [sys.executable, "-c", STANDIN, mode, str(fd)])


def ready_spare(runs: RunManager) -> int:
    """Start a spare (the agent does at start) and wait until it is ready; its pid."""
    runs.replenish()
    status = wait_for(lambda: (s := runs.spare_status())["state"] == "ready" and s, timeout=30,
                      what="the spare to be ready")
    return status["pid"]


def spare_logs(runs: RunManager) -> list:
    return sorted(runs.runs_dir.glob("spare-*.log"))


def test_a_start_hands_the_job_to_the_ready_spare_which_becomes_the_run(tmp_path):
    runs = manager(tmp_path)
    pid = ready_spare(runs)
    run, created = runs.start(5, "data")
    assert created and run.warm and run.process.pid == pid
    assert run.log_path == runs.runs_dir / f"{run.run_id}.log" and spare_logs(runs) == []
    wait_for(lambda: any("assigned" in line for line in runs.tail(run, 5)), what="the assignment")
    assert runs.tail(run, 2) == [f"spare {pid}", f"assigned {json.dumps({'job_id': 5, 'dataset': 'data'})}"]
    assert os.getpgid(pid) == pid, "the run leads its own process group"
    assert runs.start(5, "data") == (run, False)
    assert runs.replenish() is None and runs.spare_status() == {"state": "none", "pid": None}, \
        "no spare is started while a run runs"

    runs.stop(run)
    assert (run.returncode, run.as_dict()["state"], run.as_dict()["warm"]) == (-signal.SIGTERM, "exited", True)
    assert not group_alive(pid)
    nxt = wait_for(lambda: runs.spare_status()["pid"], timeout=30, what="a new spare once the run ended")
    assert nxt != pid

    runs.stop_all()
    assert not pid_alive(nxt) and runs.spare_status()["state"] == "none"
    assert spare_logs(runs) == [], "a spare stopped by the agent leaves no log"
    assert runs.replenish() is None, "a closing agent starts no spare"


def test_a_dead_spare_is_not_handed_a_job_and_is_replaced_after_its_backoff(tmp_path):
    runs = manager(tmp_path, retry=(0.3, 0.3))
    pid = ready_spare(runs)
    os.kill(pid, signal.SIGKILL)  # what the OOM killer does
    wait_for(lambda: runs.spare_status()["pid"] != pid, timeout=10, what="the dead spare to be noticed")
    run, _ = runs.start(6, "data")
    assert not run.warm and run.process.pid != pid
    wait_for(lambda: runs.tail(run, 1) == ["cold"], what="the cold trainer")
    assert [p.read_text() for p in spare_logs(runs)] == [f"spare {pid}\n"], "a dead spare's log is kept"
    time.sleep(0.6)  # the backoff has passed, but a run runs: still no spare
    assert runs.spare_status()["state"] == "none"
    runs.stop(run)
    wait_for(lambda: runs.spare_status()["state"] == "ready", timeout=30, what="a new spare")
    runs.stop_all()


def test_a_spare_that_cannot_take_the_job_is_killed_and_the_run_starts_cold(tmp_path):
    runs = manager(tmp_path, mode="deaf")
    pid = ready_spare(runs)
    run, created = runs.start(7, "data")
    assert created and not run.warm and run.process.pid != pid
    wait_for(lambda: not pid_alive(pid), timeout=5, what="the deaf spare to be killed")
    assert runs.all() == [run]
    runs.stop_all()


def test_spares_that_keep_dying_back_off(tmp_path):
    runs = manager(tmp_path, mode="crash", retry=(0.2, 0.4))
    runs.replenish()
    time.sleep(2.5)  # retries after 0.2, 0.4, 0.4, ... s: at most 1 + 2.5 / 0.4 spares
    started = len(spare_logs(runs))
    runs.stop_all()
    assert 2 <= started <= 8, f"{started} spares in 2.5 s"
    assert runs.spare_status()["state"] == "none"


def test_no_spare_starts_while_a_run_runs(tmp_path):
    runs = manager(tmp_path)
    run, _ = runs.start(8, "data")  # before any spare: cold
    assert not run.warm
    assert runs.replenish() is None and spare_logs(runs) == []
    runs.stop(run)
    wait_for(lambda: runs.spare_status()["state"] == "ready", timeout=30, what="a spare once idle")
    runs.stop_all()


def test_stop_all_kills_a_spare_that_ignores_sigterm(tmp_path):
    runs = manager(tmp_path, mode="stubborn", grace=0.5)
    pid = ready_spare(runs)
    started = time.monotonic()
    runs.stop_all()
    assert time.monotonic() - started < 3
    wait_for(lambda: not group_alive(pid), timeout=2, what="the spare's group to be gone")


def test_warm_trainers_off_means_cold_starts_only(tmp_path):
    runs = RunManager(runs_dir=tmp_path, env={}, command=lambda *a: [sys.executable, "-c", COLD])
    assert runs.replenish() is None and runs.spare_status() == {"state": "off", "pid": None}
    run, _ = runs.start(9, "data")
    assert not run.warm
    runs.stop_all()


# --- the assignment line ---

@pytest.mark.parametrize("line,error", [
    (b"not json\n", "not JSON"), (b"[1]\n", "job_id"), (b'{"dataset": "d"}\n', "job_id"),
    (b'{"job_id": 0, "dataset": "d"}\n', "job_id"), (b'{"job_id": true, "dataset": "d"}\n', "job_id"),
    (b'{"job_id": "3", "dataset": "d"}\n', "job_id"), (b'{"job_id": 3, "dataset": "../d"}\n', "dataset"),
    (b'{"job_id": 3}\n', "dataset"), (b'{"job_id": 3, "dataset": "' + b"d" * 5000 + b'"}\n', "over"),
])
def test_read_assignment_refuses_bad_lines(line, error):
    import io

    with pytest.raises(AssignmentError, match=error):
        read_assignment(io.BytesIO(line))


def test_read_assignment_round_trip_and_end_of_file():
    import io

    got = read_assignment(io.BytesIO(encode_assignment(12, "digits") + b"ignored\n"))
    assert (got.job_id, got.dataset) == (12, "digits")
    assert read_assignment(io.BytesIO(b"")) is None


@pytest.mark.parametrize("argv", [
    [], ["--job", "3", "--spare"], ["--job", "3", "--ready-fd", "5"], ["--spare", "--dataset", "d"],
])
def test_trainer_arguments_refuse_a_job_and_a_spare_at_once(argv):
    with pytest.raises(SystemExit) as exc:
        trainer.parse_args(["--portal", "http://127.0.0.1:9", "--data-dir", "/tmp", *argv])
    assert exc.value.code == 2


# --- the real spare trainer ---

def start_spare(python, portal_url, site_data, *extra, out=subprocess.PIPE):
    """A real spare trainer; returns (process, read end of its ready pipe)."""
    ready_read, ready_write = os.pipe()
    argv = [python, "-m", "agent.trainer", "--spare", "--ready-fd", str(ready_write),
            "--portal", portal_url, "--data-dir", str(site_data), "--wait", "1", *extra]
    proc = subprocess.Popen(argv, env=subprocess_env(FLPORTAL_NODE_TOKEN=NODE_TOKEN), stdin=subprocess.PIPE,
                            stdout=out, stderr=subprocess.STDOUT, pass_fds=(ready_write,))
    os.close(ready_write)
    return proc, ready_read


def wait_ready(ready_read: int, timeout: float = 120.0) -> None:
    readable, _, _ = select.select([ready_read], [], [], timeout)
    assert readable and os.read(ready_read, 64) == b"ready\n", "the spare never said ready"
    os.close(ready_read)


def test_a_spare_trainer_loads_pytorch_but_calls_no_portal_until_it_has_a_job(python, site_data, tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))  # the "portal": counts connections
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    with open(tmp_path / "out", "wb") as out:
        proc, ready_read = start_spare(python, url, site_data, out=out)
    try:
        wait_ready(ready_read)
        maps = open(f"/proc/{proc.pid}/maps").read()
        assert "libtorch" in maps, "a ready spare has PyTorch loaded"
        time.sleep(0.5)
        assert select.select([listener], [], [], 0)[0] == [], "a spare without a job calls no portal"
        proc.stdin.write(encode_assignment(31, "breast_cancer"))
        proc.stdin.close()
        assert select.select([listener], [], [], 30)[0], "the assigned spare polls its task"
        conn, _ = listener.accept()
        assert b"GET /api/v1/fl/jobs/31/task" in conn.recv(4096)
        conn.close()
    finally:
        proc.kill()
        proc.wait()
        listener.close()
    output = (tmp_path / "out").read_text()
    assert "trainer[spare]: warm: PyTorch and the FL core loaded" in output
    assert "trainer[job 31]: job 31: assigned to this warm trainer (dataset breast_cancer)" in output


@pytest.mark.parametrize("when", ["ready", "starting"])
def test_an_assigned_spare_trains_uploads_and_ends(python, site_data, when):
    """Handed its job once ready, or at once while its imports still run."""
    v0 = state_dict_to_bytes(build_model("logreg", CONFIG["model_params"], seed=0).state_dict())
    task = {"action": "train", "job_id": 7, "round_id": 11, "round": 1, "model_version": 0,
            "model_url": "/api/v1/fl/jobs/7/models/0", "sha256": hashlib.sha256(v0).hexdigest(), "config": CONFIG}
    portal = FakePortal(token=NODE_TOKEN, models={0: v0}, tasks=[task]).start()
    proc, ready_read = start_spare(python, portal.url, site_data)
    try:
        if when == "ready":
            wait_ready(ready_read)
        else:
            os.close(ready_read)
        output, _ = proc.communicate(encode_assignment(7, "breast_cancer"), timeout=120)
    finally:
        proc.kill()
        portal.close()
    assert proc.returncode == 0, output
    assert [(u.round_id, u.status) for u in portal.uploads] == [(11, 201)]
    assert b"trainer[job 7]: round 1: trained on" in output


@pytest.mark.parametrize("stdin,returncode,message", [
    (b"", trainer.EXIT_ORPHANED, b"stdin closed before any assignment"),
    (b"garbage\n", trainer.EXIT_REFUSED, b"assignment is not JSON"),
])
def test_a_spare_without_a_valid_job_exits_without_training(python, site_data, stdin, returncode, message):
    portal = FakePortal(token=NODE_TOKEN).start()
    proc, ready_read = start_spare(python, portal.url, site_data)
    os.close(ready_read)  # not waiting for ready: the answer does not depend on it
    try:
        output, _ = proc.communicate(stdin, timeout=60)
    finally:
        proc.kill()
        portal.close()
    assert proc.returncode == returncode and message in output, output
    assert portal.task_polls == []
