"""RunManager with stand-in trainers (small Python scripts), log tails, secrets and names."""

import signal
import sys
import time

import pytest

from agent.credentials import MissingSecret, read_secret
from agent.runs import AgentClosing, RunManager, tail_file
from agent.sitedata import find_dataset, is_safe_name
from tests.agent.conftest import group_alive, pid_alive, wait_for

# The leader and a child it spawns; IGNORE_TERM says who ignores SIGTERM ("both" or "child").
STUBBORN = """
import signal, subprocess, sys, time
mode = sys.argv[1]
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the child
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
if mode == "child":
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
print("child", child.pid, flush=True)
time.sleep(60)
"""


def manager(tmp_path, mode="both", grace=0.5) -> RunManager:
    command = lambda run_id, job_id, dataset: [sys.executable, "-c", STUBBORN, mode]
    return RunManager(runs_dir=tmp_path / "runs", command=command, env={}, stop_grace=grace)


def child_pid(runs: RunManager, run) -> int:
    line = wait_for(lambda: runs.tail(run, 1), what="the child's pid")[0]
    return int(line.split()[1])


@pytest.mark.parametrize("mode,returncode", [("both", -signal.SIGKILL), ("child", -signal.SIGTERM)])
def test_stop_leaves_nothing_of_the_process_group(tmp_path, mode, returncode):
    runs = manager(tmp_path, mode)
    run, _created = runs.start(5, "data")
    child = child_pid(runs, run)
    started = time.monotonic()
    runs.stop(run)
    assert run.returncode == returncode and run.as_dict()["state"] == "exited"
    assert time.monotonic() - started < 3
    # SIGKILL cannot be resisted, but its delivery is asynchronous: allow a moment.
    wait_for(lambda: not pid_alive(child), timeout=2, what="the child that ignores SIGTERM to die")
    wait_for(lambda: not group_alive(run.process.pid), timeout=2, what="an empty process group")


def test_start_is_idempotent_while_running_and_stop_all_closes(tmp_path):
    runs = manager(tmp_path, "child")
    first, created = runs.start(5, "data")
    again, created_again = runs.start(5, "other")
    other, _ = runs.start(6, "data")
    assert created and not created_again and again is first and other is not first
    started = time.monotonic()
    runs.stop_all()
    assert time.monotonic() - started < 3
    assert not first.running and not other.running
    with pytest.raises(AgentClosing):
        runs.start(7, "data")


def test_a_run_that_exits_by_itself_is_reaped_with_its_status(tmp_path):
    runs = RunManager(runs_dir=tmp_path, env={}, command=lambda *a: [sys.executable, "-c",
                      "print('bye'); raise SystemExit(3)"])
    run, _ = runs.start(1, "d")
    assert run.exited.wait(10)
    assert (run.returncode, runs.tail(run, 10)) == (3, ["bye"])
    assert run.ended_at >= run.started_at
    runs.stop(run)  # stopping an exited run changes nothing
    assert run.returncode == 3


def test_tail_file(tmp_path):
    path = tmp_path / "log"
    path.write_text("".join(f"line {i}\n" for i in range(5000)))
    assert tail_file(path, 3) == ["line 4997", "line 4998", "line 4999"]
    assert len(tail_file(path, 1000)) == 1000 and tail_file(path, 1000)[0] == "line 4000"
    assert tail_file(path, 0) == []
    assert tail_file(tmp_path / "missing", 5) == []
    path.write_bytes(b"a\n\xff\xfeb")
    assert tail_file(path, 5) == ["a", "\ufffd\ufffdb"]


def test_read_secret_prefers_the_file_and_strips_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_X", " from-env ")
    assert read_secret(env_var="SECRET_X", file_path=None, option="--f", what="x") == "from-env"
    (tmp_path / "s").write_text("from-file\n")
    assert read_secret(env_var="SECRET_X", file_path=str(tmp_path / "s"), option="--f", what="x") == "from-file"
    (tmp_path / "empty").write_text("\n")
    for path in (str(tmp_path / "empty"), str(tmp_path / "missing")):
        with pytest.raises(MissingSecret, match="--f"):
            read_secret(env_var="SECRET_X", file_path=path, option="--f", what="x")
    monkeypatch.delenv("SECRET_X")
    with pytest.raises(MissingSecret, match="SECRET_X"):
        read_secret(env_var="SECRET_X", file_path=None, option="--f", what="x")


@pytest.mark.parametrize("name,safe", [("breast_cancer", True), ("site-1.v2", True), ("a" * 128, True),
                                       ("a" * 129, False), ("../x", False), ("a/b", False), ("a\\b", False),
                                       (".hidden", False), ("..", False), ("", False), (None, False),
                                       (3, False), ("a b", False), ("x\n", False)])
def test_dataset_names(name, safe):
    assert is_safe_name(name) is safe


def test_find_dataset(tmp_path):
    (tmp_path / "a.csv").write_text("label\n1\n")
    (tmp_path / "b.npz").write_bytes(b"")
    (tmp_path / "b.csv").write_text("")
    assert find_dataset(tmp_path, "a") == tmp_path / "a.csv"
    assert find_dataset(tmp_path, "b") == tmp_path / "b.npz"
    assert find_dataset(tmp_path, "c") is None and find_dataset(tmp_path, "../a") is None
