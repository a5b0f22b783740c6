"""Warm trainers, the agent side: keep one spare trainer process that has PyTorch loaded.

A job start used to wait for each site's trainer to import PyTorch (seconds, and ten
sites importing at once on one small machine took 7.8 s). A spare
(``python -m agent.trainer --spare``, agent/warmstart.py) has done that
before the job exists; ``POST /runs`` then hands it the job as one JSON line on its
stdin and it *becomes* the run: same process, same process group (it was started
with its own session, like every run), its log renamed from ``spare-<hex>.log`` to
``<run_id>.log``, reaped by the same waiter thread. The caller (RunManager) decides
*when* a spare may start; this module owns one spare's life and its hand-over.

Life of a spare, and the guarantees:

- it is started with ``--parent-pid`` (it exits when the agent dies) and its stdin is
  a pipe only the agent holds: the agent's death closes it, and a spare at end of
  file exits 4 without a job, so it can never train unassigned;
- it reports ``ready`` on a second pipe (``--ready-fd``) once the imports are done;
- a waiter thread reaps it the moment it exits: a spare that died (crash, OOM kill)
  is dropped at once and never handed a job; the next one starts only after a
  backoff (``retry_initial`` doubling to ``retry_cap``), so a site whose spares keep
  dying does not spend its CPU re-importing PyTorch in a loop;
- a hand-over that fails anyway (it died in the instant between the check and the
  write: ``EPIPE``) SIGKILLs what is left of it and tells the caller to spawn cold.
"""

import logging
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.warmstart import READY_LINE, encode_assignment

log = logging.getLogger("flportal.agent")

# ready_fd -> argv of a spare trainer
SpareCommandFactory = Callable[[int], list[str]]
# (returncode, ended_at) -> None: what the run the spare became does when it exits
ExitCallback = Callable[[int, float], None]


@dataclass(eq=False)
class Spare:
    process: subprocess.Popen
    log_path: Path
    started_at: float
    ready: threading.Event = field(default_factory=threading.Event)
    exited: threading.Event = field(default_factory=threading.Event)
    returncode: int | None = None
    ready_at: float | None = None
    taken: bool = False  # handed (or being handed) a job: no longer the keeper's
    on_exit: ExitCallback | None = None

    @property
    def label(self) -> str:
        return f"spare trainer pid {self.process.pid}"

    @property
    def running(self) -> bool:
        return not self.exited.is_set()

    @property
    def state(self) -> str:
        return "ready" if self.ready.is_set() else "starting"


class SpareKeeper:
    """At most one spare trainer, safe to use from several threads.

    ``on_retry`` is called (from a timer thread) when the backoff after a dead spare
    has passed, so the caller can start the next one if its policy allows.
    """

    def __init__(self, *, runs_dir: Path, command: SpareCommandFactory, env: dict[str, str],
                 on_retry: Callable[[], None], retry_initial: float = 5.0, retry_cap: float = 600.0):
        self.runs_dir = Path(runs_dir)
        self._command, self._env, self._on_retry = command, env, on_retry
        self.retry_initial, self.retry_cap = retry_initial, retry_cap
        self._spare: Spare | None = None
        self._failures, self._retry_at, self._closing = 0, 0.0, False
        self._lock = threading.Lock()

    def status(self) -> dict:
        """``{"state": "ready"|"starting"|"none", "pid": int|None}`` for /health."""
        with self._lock:
            spare = self._spare
        if spare is None or not spare.running:
            return {"state": "none", "pid": None}
        return {"state": spare.state, "pid": spare.process.pid}

    def start_if_none(self) -> Spare | None:
        """Start a spare unless one is alive, the keeper is closed or a backoff runs."""
        with self._lock:
            if self._closing or (self._spare is not None and self._spare.running):
                return None
            if time.monotonic() + 0.05 < self._retry_at:  # the retry timer may wake a hair early
                return None
            try:
                spare = self._spare = self._spawn()
            except OSError as exc:
                log.warning("cannot start a spare trainer: %s", exc)
                self._back_off()
                return None
        log.info("%s: started, warming up (log %s)", spare.label, spare.log_path.name)
        return spare

    def _spawn(self) -> Spare:
        log_path = self.runs_dir / f"spare-{secrets.token_hex(6)}.log"
        ready_read, ready_write = os.pipe()  # both ends non-inheritable: no other child gets them
        try:
            with open(log_path, "ab") as log_file:
                process = subprocess.Popen(
                    self._command(ready_write), stdin=subprocess.PIPE, stdout=log_file,
                    stderr=subprocess.STDOUT, env=self._env, start_new_session=True,
                    close_fds=True, pass_fds=(ready_write,))
        except BaseException:
            os.close(ready_read)
            raise
        finally:
            os.close(ready_write)
        spare = Spare(process, log_path, started_at=time.time())
        threading.Thread(target=self._watch_ready, args=(spare, ready_read), daemon=True,
                         name=f"spare-ready-{process.pid}").start()
        threading.Thread(target=self._reap, args=(spare,), daemon=True,
                         name=f"spare-reap-{process.pid}").start()
        return spare

    def _watch_ready(self, spare: Spare, ready_read: int) -> None:
        """Set ``spare.ready`` when it writes the ready line; end at EOF (it exited)."""
        data = b""
        try:
            while READY_LINE not in data:
                chunk = os.read(ready_read, 64)
                if not chunk:
                    return
                data += chunk
        finally:
            os.close(ready_read)
        spare.ready_at = time.time()
        spare.ready.set()
        with self._lock:
            self._failures = 0
        log.info("%s: ready after %.2f s", spare.label, spare.ready_at - spare.started_at)

    def _reap(self, spare: Spare) -> None:
        """Wait for the spare; finish the run it became, or count an unassigned death."""
        returncode = spare.process.wait()
        ended_at = time.time()
        with self._lock:
            spare.returncode = returncode
            spare.exited.set()
            on_exit, died_unassigned = spare.on_exit, not spare.taken and not self._closing
            if self._spare is spare:
                self._spare = None
            delay = self._back_off() if died_unassigned else None
        if on_exit is not None:
            on_exit(returncode, ended_at)
        elif delay is not None:
            log.warning("%s died with status %s before any assignment (log %s); next spare in %.1f s",
                        spare.label, returncode, spare.log_path, delay)
            timer = threading.Timer(delay, self._on_retry)
            timer.daemon = True
            timer.start()

    def _back_off(self) -> float:
        """Record a failure (lock held); return the delay before the next spare."""
        self._failures += 1
        delay = min(self.retry_cap, self.retry_initial * 2 ** (self._failures - 1))
        self._retry_at = time.monotonic() + delay
        return delay

    def take(self) -> Spare | None:
        """The live spare, now the caller's to hand over (ready or still starting: a
        starting one polls its first task while its imports finish, which is never
        slower than a cold spawn); None when there is none."""
        with self._lock:
            spare, self._spare = self._spare, None
            if spare is None or not spare.running:
                return None
            spare.taken = True
            return spare

    def hand_over(self, spare: Spare, *, run_id: str, job_id: int, dataset: str,
                  on_exit: ExitCallback) -> Path | None:
        """Give a taken spare its job; return the run's log path, or None if the spare
        could not take it (it is then killed: spawn cold). ``on_exit`` is registered
        before the write, so the waiter calls it exactly once whenever the run exits."""
        with self._lock:
            if not spare.running:
                return None
            spare.on_exit = on_exit
        try:
            spare.process.stdin.write(encode_assignment(job_id, dataset))
            spare.process.stdin.close()  # one line, then end of file
        except OSError as exc:  # BrokenPipeError: it died after all
            log.warning("%s could not take job %d (%s); starting a cold trainer", spare.label, job_id, exc)
            with self._lock:
                spare.on_exit = None  # no run to finish: the caller drops it
            signal_group(spare.process.pid, signal.SIGKILL)
            return None
        log_path = self.runs_dir / f"{run_id}.log"
        try:
            os.replace(spare.log_path, log_path)  # the open file follows: later lines land there too
        except OSError as exc:
            log.warning("run %s: log stays at %s (%s)", run_id, spare.log_path, exc)
            return spare.log_path
        return log_path

    def close(self) -> Spare | None:
        """Start no more spares; return the untaken live spare, for the caller to stop."""
        with self._lock:
            self._closing = True
            spare, self._spare = self._spare, None
        return spare if spare is not None and spare.running else None


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to process group ``pgid``; a group that is already gone is fine."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
