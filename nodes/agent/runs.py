"""Trainer runs of the agent: spawn, watch, stop and tail one subprocess per job run.

Each run is a process-group leader (``start_new_session=True``) so that a stop reaches
everything the trainer started. Its stdout and stderr go to ``<runs_dir>/<run_id>.log``.
A daemon thread per run reaps the process as soon as it exits and records the time.
"""

import logging
import os
import secrets
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

log = logging.getLogger("flportal.agent")

MAX_TAIL_LINES = 1000
KEEP_EXITED_RUNS = 200

# (run_id, job_id, dataset) -> argv of the trainer
CommandFactory = Callable[[str, int, str], list[str]]


@dataclass
class Run:
    run_id: str
    job_id: int
    dataset: str
    process: subprocess.Popen
    log_path: Path
    started_at: float
    ended_at: float | None = None
    returncode: int | None = None
    exited: threading.Event = field(default_factory=threading.Event)

    @property
    def running(self) -> bool:
        return not self.exited.is_set()

    def as_dict(self) -> dict:
        """The ``run`` object of PROTOCOL.md section 2."""
        return {"run_id": self.run_id, "job_id": self.job_id, "pid": self.process.pid,
                "state": "running" if self.running else "exited",
                "returncode": self.returncode, "started_at": self.started_at,
                "ended_at": self.ended_at}


class AgentClosing(Exception):
    """The agent is shutting down and starts no more runs."""


class RunManager:
    """The agent's runs, safe to use from the HTTP server's threads.

    ``command`` builds the trainer argv; ``env`` is the trainer's whole environment
    (secrets travel there, not in argv); ``stop_grace`` is the SIGTERM → SIGKILL delay.
    """

    def __init__(self, *, runs_dir: Path, command: CommandFactory, env: dict[str, str],
                 stop_grace: float = 10.0):
        self.runs_dir = Path(runs_dir)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self._command, self._env, self.stop_grace = command, env, stop_grace
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()
        self._closing = False

    def start(self, job_id: int, dataset: str) -> tuple[Run, bool]:
        """Start a trainer for ``job_id``; return (run, created).

        A run of the same job that is still running is returned as is (created False),
        so the portal may repeat a start safely. Raises OSError if the spawn fails and
        AgentClosing once ``stop_all`` has begun.
        """
        with self._lock:
            if self._closing:
                raise AgentClosing("the agent is shutting down")
            for run in self._runs.values():
                if run.job_id == job_id and run.running:
                    return run, False
            run = self._spawn(job_id, dataset)
            self._runs[run.run_id] = run
            self._forget_old_runs()
        log.info("run %s: started trainer pid %d for job %d on dataset %s",
                 run.run_id, run.process.pid, job_id, dataset)
        return run, True

    def _spawn(self, job_id: int, dataset: str) -> Run:
        run_id = f"{job_id}-{secrets.token_hex(6)}"
        log_path = self.runs_dir / f"{run_id}.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                self._command(run_id, job_id, dataset), stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT, env=self._env,
                start_new_session=True, close_fds=True)
        run = Run(run_id, job_id, dataset, process, log_path, started_at=time.time())
        threading.Thread(target=self._reap, args=(run,), name=f"reap-{run_id}", daemon=True).start()
        return run

    def _reap(self, run: Run) -> None:
        returncode = run.process.wait()
        run.returncode, run.ended_at = returncode, time.time()
        run.exited.set()
        log.info("run %s: trainer pid %d exited with %s", run.run_id, run.process.pid, returncode)

    def _forget_old_runs(self) -> None:
        """Keep the registry bounded: drop the oldest exited runs beyond KEEP_EXITED_RUNS."""
        exited = [run for run in self._runs.values() if not run.running]
        for run in sorted(exited, key=lambda r: r.started_at)[:-KEEP_EXITED_RUNS or None]:
            del self._runs[run.run_id]

    def get(self, run_id: str) -> Run | None:
        with self._lock:
            return self._runs.get(run_id)

    def all(self) -> list[Run]:
        with self._lock:
            return sorted(self._runs.values(), key=lambda r: r.started_at)

    def stop(self, run: Run) -> Run:
        """SIGTERM the run's process group, SIGKILL it after the grace period; reap."""
        self.stop_many([run])
        return run

    def stop_all(self) -> None:
        """Refuse new runs, then stop every running run in parallel (one grace period)."""
        with self._lock:
            self._closing = True
        self.stop_many([run for run in self.all() if run.running])

    def stop_many(self, runs: list[Run]) -> None:
        """Stop the given runs; runs that already exited are left alone (their process
        group id may belong to someone else by now)."""
        runs = [run for run in runs if run.running]
        for run in runs:
            log.info("run %s: stopping (SIGTERM to process group %d)", run.run_id, run.process.pid)
            _signal_group(run, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        for run in runs:
            if not run.exited.wait(max(0.0, deadline - time.monotonic())):
                log.warning("run %s: still alive after %.1fs; SIGKILL", run.run_id, self.stop_grace)
            # Also reaches children left behind by a leader that exited on SIGTERM.
            _signal_group(run, signal.SIGKILL)
        for run in runs:
            run.exited.wait()

    def tail(self, run: Run, lines: int) -> list[str]:
        """The last ``lines`` lines (at most MAX_TAIL_LINES) of the run's log."""
        return tail_file(run.log_path, min(max(lines, 0), MAX_TAIL_LINES))


def _signal_group(run: Run, sig: signal.Signals) -> None:
    """Send ``sig`` to the run's process group; a group that is already gone is fine."""
    try:
        os.killpg(run.process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def tail_file(path: Path, lines: int, *, block: int = 8192) -> list[str]:
    """The last ``lines`` lines of a text file, read backwards block by block."""
    if lines <= 0:
        return []
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            position, data = fh.tell(), b""
            while position > 0 and data.count(b"\n") <= lines:
                step = min(block, position)
                position -= step
                fh.seek(position)
                data = fh.read(step) + data
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", errors="replace").splitlines()
    return list(deque(text, maxlen=lines))
