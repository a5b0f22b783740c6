"""The trainer side of a warm trainer (a *spare*): warm up, say ready, wait for a job.

    python -m agent.trainer --spare --ready-fd N --portal URL --data-dir DIR ...

The agent (agent.spare) keeps one such process per site so that a job start does
not wait for PyTorch to import. Contract of a spare:

- A daemon thread imports PyTorch and the FL core (``agent.local``, ``fl``)
  and exercises them once on a throw-away model and synthetic tensors (CPU), because the
  first optimizer step and evaluation import hundreds more modules (torch._dynamo,
  sympy: about 1 s here). It never reads the site's data and never calls the portal:
  it has no job to call it about. Then it writes ``ready\\n`` to ``ready_fd`` and closes it.
- Meanwhile the main thread waits for the assignment: one JSON line on stdin,
  ``{"job_id": int, "dataset": str}`` (``encode_assignment``). It may arrive before the
  warm-up is done: the trainer then polls its first task while the imports finish,
  as a cold trainer does, so a spare is never slower than a cold spawn.
- stdin at end of file without a line means the agent is gone (its end of the pipe
  closed): ``read_assignment`` returns None and the trainer exits 4, like an orphan.
- If the imports fail before any assignment, the spare exits 2 so the agent sees a dead
  spare (and backs off) rather than one that is starting forever.
"""

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO

from agent.sitedata import is_safe_name

log = logging.getLogger("flportal.trainer")

MAX_ASSIGNMENT_BYTES = 4096
EXIT_WARM_UP_FAILED = 2  # the trainer's "unusable locally" status
READY_LINE = b"ready\n"


class AssignmentError(ValueError):
    """The line on a spare's stdin is not a valid assignment."""


@dataclass(frozen=True)
class Assignment:
    job_id: int
    dataset: str


def encode_assignment(job_id: int, dataset: str) -> bytes:
    """The line the agent writes to a spare's stdin."""
    return json.dumps({"job_id": job_id, "dataset": dataset}).encode() + b"\n"


def read_assignment(stream: BinaryIO) -> Assignment | None:
    """The assignment read from ``stream`` (one line), or None at end of file.

    Raises AssignmentError for a line that is not a JSON object with a positive
    integer ``job_id`` and a safe ``dataset`` name (the agent checked both already;
    the spare does not trust its stdin more than the agent trusts the portal).
    """
    line = stream.readline(MAX_ASSIGNMENT_BYTES + 1)
    if not line:
        return None
    if len(line) > MAX_ASSIGNMENT_BYTES:
        raise AssignmentError(f"assignment over {MAX_ASSIGNMENT_BYTES} bytes")
    try:
        body = json.loads(line)
    except ValueError:
        raise AssignmentError(f"assignment is not JSON: {line[:200]!r}") from None
    job_id = body.get("job_id") if isinstance(body, dict) else None
    dataset = body.get("dataset") if isinstance(body, dict) else None
    if not isinstance(job_id, int) or isinstance(job_id, bool) or job_id <= 0:
        raise AssignmentError(f"assignment needs a positive integer job_id: {line[:200]!r}")
    if not is_safe_name(dataset):
        raise AssignmentError(f"assignment needs a safe dataset name: {line[:200]!r}")
    return Assignment(job_id, dataset)


def exercise_fl_core() -> None:
    """One local round of the FL core on a throw-away logistic regression and 8
    synthetic examples (CPU): build, weights to bytes and back, train, evaluate. What
    it loads stays loaded for the real round; what it computes is discarded."""
    import numpy as np

    from fl import networks, serialization, training

    training.pick_device()  # what LocalSite asks first (CUDA driver probe, no context)
    model = networks.build_model("logreg", {"in_features": 4, "num_classes": 2}, seed=0)
    model.load_state_dict(serialization.load_state_dict(
        serialization.state_dict_to_bytes(model.state_dict())))
    X = np.linspace(0.0, 1.0, 32, dtype=np.float32).reshape(8, 4)
    y = np.array([0, 1] * 4, dtype=np.int64)
    training.train_local(model, X, y, epochs=1, batch_size=4, optimizer="sgd",
                         optimizer_params={"lr": 0.1}, seed=0, device="cpu")
    training.evaluate(model, X, y, device="cpu")


class WarmUp:
    """Imports and exercises the FL core in a daemon thread, then signals ``ready_fd``.

    ``assigned`` is set by the main thread when the job arrived; a warm-up still
    running then skips the exercise (the real round will load what it needs).
    """

    def __init__(self, ready_fd: int | None):
        self.assigned = threading.Event()
        self._ready_fd = ready_fd
        self._thread = threading.Thread(target=self._run, name="warm-up", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        log.info("warming up: importing PyTorch and the FL core")
        try:
            from agent.local import LocalSite  # noqa: F401 - the import is the point
        except BaseException:
            log.exception("warm-up failed")
            if not self.assigned.is_set():
                logging.shutdown()
                os._exit(EXIT_WARM_UP_FAILED)
            return  # the run's SiteLoader meets the same error and reports it
        if not self.assigned.is_set():
            try:
                exercise_fl_core()
            except Exception:
                log.warning("warm-up exercise failed; the spare is ready anyway", exc_info=True)
        self._signal_ready()
        log.info("warm: PyTorch and the FL core loaded in %.2f s", time.monotonic() - started)

    def _signal_ready(self) -> None:
        if self._ready_fd is None:
            return
        try:
            os.write(self._ready_fd, READY_LINE)
            os.close(self._ready_fd)
        except OSError:  # the agent stopped listening: it is gone or handed us a job already
            pass


def wait_for_assignment(ready_fd: int | None, stream: BinaryIO) -> Assignment | None:
    """Start the warm-up, then block until the assignment arrives on ``stream``.

    Returns None when ``stream`` ends first (the agent is gone); raises AssignmentError.
    """
    warm_up = WarmUp(ready_fd)
    try:
        return read_assignment(stream)
    finally:
        warm_up.assigned.set()
