"""`manage.py demo` stops on a signal: SIGTERM, and SIGINT even where it was inherited
ignored (as `manage.py demo &` from a script gets it), stop every process the demo
started (portal, agents, their trainers and warm spare trainers) and the demo exits
128 + the signal's number. Checked by pid: the demo's whole process tree, taken while
its job runs, is gone within a bounded wait after the signal."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flportal.localstack import ROOT, LocalStack, StackStopping, child_pids

pytestmark = pytest.mark.e2e

LAUNCH_TIMEOUT_S = 180
GONE_WITHIN_S = 30


def start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), None once it is gone or
    a zombie: with the pid it names one process, even if the pid is reused later."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def process_tree(pid: int) -> dict[int, str]:
    """`pid` and all its descendants (by parent pid, whatever their process group or
    session), each with its start time."""
    tree, level = {}, [pid]
    while level:
        tree.update({p: t for p in level if (t := start_time(p)) is not None})
        level = [child for p in level for child in child_pids(p)]
    return tree


def alive(tree: dict[int, str]) -> list[int]:
    return [pid for pid, started in tree.items() if start_time(pid) == started]


class Demo:
    """`manage.py demo` in its own session, its output collected line by line."""

    def __init__(self, data_dir: Path, *, ignore_sigint: bool = False):
        env = {**os.environ, "FLPORTAL_DATA_DIR": str(data_dir), "DATABASE_URL": "", "REDIS_URL": "",
               "PYTHONUNBUFFERED": "1"}
        self.lines: list[str] = []
        self.launched = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "demo", "--port", "0"], cwd=ROOT, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if " launched on " in line:
                self.launched.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def running_tree(self) -> dict[int, str]:
        """The demo's process tree once its job is launched and trainers run under the
        agents (warm spares at least): demo -> portal, agents -> trainers."""
        end = time.monotonic() + LAUNCH_TIMEOUT_S
        while not self.launched.wait(0.2):
            assert self.process.poll() is None and time.monotonic() < end, f"the demo launched no job:\n{self.output}"
        end = time.monotonic() + 30
        while time.monotonic() < end:
            assert self.process.poll() is None, f"the demo exited with {self.process.returncode}:\n{self.output}"
            tree = process_tree(self.process.pid)
            agents = [pid for pid in child_pids(self.process.pid) if child_pids(pid)]
            if len(agents) >= 3 and len(tree) >= 1 + 1 + 3 + 3:  # demo, portal, 3 agents, 1+ trainer each
                return tree
            time.sleep(0.2)
        raise AssertionError(f"no trainers under the agents: tree {tree}\n{self.output}")


@pytest.fixture
def start_demo(tmp_path):
    demos = []

    def start(**kwargs) -> Demo:
        demos.append(Demo(tmp_path / "data", **kwargs))
        return demos[-1]

    yield start
    for demo in demos:  # a failed test leaks nothing
        leftover = process_tree(demo.process.pid) if demo.process.poll() is None else {}
        for pid in alive(leftover):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                os.kill(pid, signal.SIGKILL)
        demo.process.kill()
        demo.process.wait(10)


def stop_and_time(demo: Demo, sig: signal.Signals) -> tuple[dict[int, str], float]:
    tree = demo.running_tree()
    sent = time.monotonic()
    demo.process.send_signal(sig)
    while alive(tree) and time.monotonic() - sent < GONE_WITHIN_S:
        time.sleep(0.05)
        demo.process.poll()  # reap the demo itself: it is our child
    took = time.monotonic() - sent
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120] for pid in alive(tree)}
    assert not left, f"still alive {GONE_WITHIN_S} s after {sig.name}: {left}\n{demo.output}"
    print(f"{sig.name}: all {len(tree)} processes of the demo gone {took:.2f} s after the signal")
    return tree, took


def test_sigterm_stops_every_process_the_demo_started(start_demo):
    demo = start_demo()
    stop_and_time(demo, signal.SIGTERM)
    assert demo.process.wait(5) == 128 + signal.SIGTERM, demo.output
    assert "Stopped by SIGTERM." in demo.output


def test_sigint_stops_the_demo_even_when_inherited_ignored(start_demo):
    demo = start_demo(ignore_sigint=True)
    stop_and_time(demo, signal.SIGINT)
    assert demo.process.wait(5) == 128 + signal.SIGINT, demo.output
    assert "Stopped by SIGINT." in demo.output


STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the child: it ignores SIGTERM too
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(600)
"""


def test_stop_kills_a_process_deaf_to_sigterm_and_its_child_in_another_session(tmp_path):
    """LocalStack.stop's fallback: after the grace, SIGKILL reaches a process that
    ignores SIGTERM and its child in its own session (as an agent's trainers are),
    which a SIGKILL to the parent's group alone would leave running under init."""
    stack = LocalStack(workdir=tmp_path)
    parent = stack.spawn("stubborn", [sys.executable, "-c", STUBBORN])
    log = tmp_path / "stubborn.log"
    LocalStack.wait_for(lambda: log.read_text().strip(), 30, "the stubborn process's child")
    child = int(log.read_text().split()[0])
    tree = process_tree(parent.pid)
    assert child in tree
    started = time.monotonic()
    stack.stop(grace=1)
    took = time.monotonic() - started
    assert not alive(tree), tree
    assert 1 <= took < 5, took
    with pytest.raises(StackStopping):  # and it starts nothing more
        stack.spawn("late", [sys.executable, "-c", "pass"])
