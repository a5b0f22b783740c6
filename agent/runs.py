"""Trainer runs of the agent: spawn, watch, stop and tail one subprocess per job run.

Each run is a process-group leader (``start_new_session=True``) so that a stop reaches
everything the trainer started. Its stdout and stderr go to ``<runs_dir>/<run_id>.log``.
A daemon thread per run reaps the process as soon as it exits and records the time.

With warm trainers on (``spare_command``), a run is preferably the agent's spare
trainer (agent/spare.py), which has PyTorch loaded already; a cold spawn is
used when there is no live spare. When a spare may start is decided here: see
``replenish``.
"""

import logging
import os
import secrets
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.spare import Spare, SpareCommandFactory, SpareKeeper, signal_group

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
    warm: bool = False  # this run is a former spare trainer

    @property
    def running(self) -> bool:
        return not self.exited.is_set()

    @property
    def label(self) -> str:
        return f"run {self.run_id}"

    def finish(self, returncode: int, ended_at: float) -> None:
        self.returncode, self.ended_at = returncode, ended_at
        self.exited.set()

    def as_dict(self) -> dict:
        """The ``run`` object of PROTOCOL.md section 2."""
        return {"run_id": self.run_id, "job_id": self.job_id, "pid": self.process.pid,
                "state": "running" if self.running else "exited",
                "returncode": self.returncode, "started_at": self.started_at,
                "ended_at": self.ended_at, "warm": self.warm}


class AgentClosing(Exception):
    """The agent is shutting down and starts no more runs."""


class RunManager:
    """The agent's runs, safe to use from the HTTP server's threads.

    ``command`` builds the trainer argv; ``env`` is the trainer's whole environment
    (secrets travel there, not in argv); ``stop_grace`` is the SIGTERM → SIGKILL delay.
    ``spare_command`` (None: warm trainers off) builds a spare trainer's argv;
    ``spare_retry`` is the (initial, cap) backoff in seconds after a spare died.
    """

    def __init__(self, *, runs_dir: Path, command: CommandFactory, env: dict[str, str],
                 stop_grace: float = 10.0, spare_command: SpareCommandFactory | None = None,
                 spare_retry: tuple[float, float] = (5.0, 600.0)):
        self.runs_dir = Path(runs_dir)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self._command, self._env, self.stop_grace = command, env, stop_grace
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._spares = None if spare_command is None else SpareKeeper(
            runs_dir=self.runs_dir, command=spare_command, env=env, on_retry=self.replenish,
            retry_initial=spare_retry[0], retry_cap=spare_retry[1])

    def spare_status(self) -> dict:
        """``{"state": "off"|"none"|"starting"|"ready", "pid": int|None}`` (for /health)."""
        return {"state": "off", "pid": None} if self._spares is None else self._spares.status()

    def replenish(self) -> Spare | None:
        """Start a spare trainer if warm trainers are on and no run is running.

        Why only when idle: a spare's start is a PyTorch import, seconds of full CPU.
        Started next to a running trainer it would slow that job down on a small site
        (this machine has 2 cores), and lowering its priority instead does not work: a
        niced spare would stay niced once it becomes a run, since an unprivileged
        process cannot raise its priority back. So the spare is rebuilt when the site
        is idle: at agent start and when the last run exits (and after the backoff of a
        dead spare). The cost: a second job started on a site while another one runs
        gets a cold trainer. Called by the agent at start, and internally.
        """
        if self._spares is None:
            return None
        with self._lock:
            if self._closing or any(run.running for run in self._runs.values()):
                return None
            return self._spares.start_if_none()

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
            run = self._adopt_spare(job_id, dataset) or self._spawn(job_id, dataset)
            self._runs[run.run_id] = run
            self._forget_old_runs()
        log.info("run %s: started trainer pid %d for job %d on dataset %s (%s)", run.run_id,
                 run.process.pid, job_id, dataset, "warm spare" if run.warm else "cold start")
        return run, True

    def _adopt_spare(self, job_id: int, dataset: str) -> Run | None:
        """The spare trainer, handed this job and become a run; None if there is none."""
        spare = self._spares.take() if self._spares is not None else None
        if spare is None:
            return None
        run_id = _new_run_id(job_id)
        run = Run(run_id, job_id, dataset, spare.process, spare.log_path, started_at=time.time(), warm=True)
        log_path = self._spares.hand_over(spare, run_id=run_id, job_id=job_id, dataset=dataset,
                                          on_exit=lambda code, at: self._exited(run, code, at))
        if log_path is None:
            return None
        run.log_path = log_path
        return run

    def _spawn(self, job_id: int, dataset: str) -> Run:
        run_id = _new_run_id(job_id)
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
        self._exited(run, run.process.wait(), time.time())

    def _exited(self, run: Run, returncode: int, ended_at: float) -> None:
        run.finish(returncode, ended_at)
        log.info("run %s: trainer pid %d exited with %s", run.run_id, run.process.pid, returncode)
        self.replenish()

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
        """Refuse new runs and spares, then stop every running run and the spare in
        parallel (one grace period). The stopped spare's log (its warm-up) is removed."""
        with self._lock:
            self._closing = True
        spare = self._spares.close() if self._spares is not None else None
        self.stop_many([run for run in self.all() if run.running] + ([spare] if spare else []))
        if spare is not None:
            spare.log_path.unlink(missing_ok=True)

    def stop_many(self, runs: list[Run | Spare]) -> None:
        """Stop the given runs (or spares); those that already exited are left alone
        (their process group id may belong to someone else by now)."""
        runs = [run for run in runs if run.running]
        for run in runs:
            log.info("%s: stopping (SIGTERM to process group %d)", run.label, run.process.pid)
            signal_group(run.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        for run in runs:
            if not run.exited.wait(max(0.0, deadline - time.monotonic())):
                log.warning("%s: still alive after %.1fs; SIGKILL", run.label, self.stop_grace)
            # Also reaches children left behind by a leader that exited on SIGTERM.
            signal_group(run.process.pid, signal.SIGKILL)
        for run in runs:
            run.exited.wait()

    def tail(self, run: Run, lines: int) -> list[str]:
        """The last ``lines`` lines (at most MAX_TAIL_LINES) of the run's log."""
        return tail_file(run.log_path, min(max(lines, 0), MAX_TAIL_LINES))


def _new_run_id(job_id: int) -> str:
    return f"{job_id}-{secrets.token_hex(6)}"


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
