"""The trainer: one process per job run, the node side of the FL API (PROTOCOL.md §1).

    python -m agent.trainer --portal URL --job ID --data-dir DIR [--dataset NAME]

The node token comes from ``$FLPORTAL_NODE_TOKEN`` or ``--token-file``, never argv.
Loop: long-poll the job's task; ``train`` / ``evaluate`` the task's model (inside the
task when it is small, else downloaded) on the local data and post the result (a
``train`` task with ``evaluate_first`` evaluates the received model first and sends that
evaluation with the update); ``cross_validate`` evaluates every listed model (global and
each site's last local one); ``wait`` polls again; ``end`` exits 0.

Failure policy: connection errors, 5xx and checksum mismatches are retried with capped
exponential backoff for up to ``--max-offline`` seconds of continuous failure. A 4xx is
never retried: 409 on a round's download, update or evaluation drops that round (it has
moved on) and asks for the next task; any other 4xx stops the trainer.

Exit status: 0 ``end``; 2 refused by the portal (4xx) or unusable locally (missing
dataset, bad config, no token); 3 portal unreachable for too long; 4 the parent agent
died (an orphaned trainer must not keep training); -15 stopped by SIGTERM.
"""

import argparse
import base64
import hashlib
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

from agent.credentials import NODE_TOKEN_ENV, MissingSecret, read_secret
from agent.portal import Backoff, ChecksumMismatch, PortalClient, PortalOffline, PortalRefusal
from agent.sitedata import SiteError

log = logging.getLogger("flportal.trainer")

EXIT_END, EXIT_REFUSED, EXIT_OFFLINE, EXIT_ORPHANED = 0, 2, 3, 4
MAX_WAIT_S = 25.0


class Trainer:
    """Pulls and runs the tasks of one job until the portal says ``end``.

    ``site`` does the local work (agent.local.LocalSite); ``client`` talks to the
    portal. ``run()`` returns the exit status for ``end`` and raises PortalRefusal,
    PortalOffline or SiteError for the other exits.
    """

    def __init__(self, *, client: PortalClient, site, job_id: int, wait_s: float,
                 backoff: Backoff, sleep=time.sleep):
        self.client, self.site, self.job_id = client, site, job_id
        self.wait_s = min(max(wait_s, 0.0), MAX_WAIT_S)
        self.backoff, self._sleep = backoff, sleep
        self._next: dict | None = None  # the next task, when the portal sent it with a result's answer

    def run(self) -> int:
        while True:
            started = time.monotonic()
            task = self._take_next() or self.backoff.call(self._fetch_task, "task poll")
            action = task.get("action")
            if action == "end":
                log.info("job %s ended: %s", self.job_id, task.get("reason", ""))
                return EXIT_END
            if action in ("train", "evaluate", "cross_validate"):
                self._run_round_task(task)
                continue
            if action != "wait":
                log.warning("unknown task action %r; polling again", action)
            # Sleep only what the long poll did not already wait: nothing after a full
            # long poll, retry_after when the portal answered at once.
            pause = _retry_after(task) - (time.monotonic() - started)
            if pause > 0:
                self._sleep(pause)

    def _take_next(self) -> dict | None:
        """The task that came with the last result's answer (PROTOCOL.md: `?wait=` on an
        upload), unless it is `wait`: then polling again at once is right."""
        task, self._next = self._next, None
        return task if isinstance(task, dict) and task.get("action") not in (None, "wait") else None

    def _keep_next(self, answer) -> None:
        body = answer.json()
        self._next = body.get("next") if isinstance(body, dict) else None

    def _fetch_task(self) -> dict:
        wait = f"{self.wait_s:g}"
        path = f"/api/v1/fl/jobs/{self.job_id}/task?wait={wait}"
        task = self.client.get(path, timeout=self.wait_s + 15.0).json()
        if not isinstance(task, dict):
            raise PortalRefusal(0, "bad_task", f"task is not an object: {task!r}")
        return task

    def _run_round_task(self, task: dict) -> None:
        """Do one train/evaluate/cross-validate task; a 409 (round closed meanwhile) drops it."""
        action, round_no = task["action"], task.get("round")
        missing = [key for key in ("round_id", "sha256", "config") if key not in task]
        if missing or ("model_url" not in task and "model_version" not in task):
            raise PortalRefusal(0, "bad_task", f"{action} task lacks {missing or ['model_url']}: {task!r}")
        log.info("round %s: %s with model version %s", round_no, action, task.get("model_version"))
        try:
            if action == "cross_validate":
                self._cross_validate(task)
                return
            weights = self._inline_weights(task) or self.backoff.call(lambda: self._download(task), "model download")
            if action == "train":
                self._train(task, weights)
            else:
                self._evaluate(task, weights)
        except PortalRefusal as exc:
            if exc.status != 409:
                raise
            log.info("round %s: dropped, the round moved on (%s)", round_no, exc)

    def _inline_weights(self, task: dict) -> bytes | None:
        """The model carried in the task (`weights`, base64), checked against its
        sha256; None when the task carries none (or a damaged copy: then download)."""
        if not isinstance(task.get("weights"), str):
            return None
        try:
            body = base64.b64decode(task["weights"], validate=True)
        except ValueError:
            return None
        return body if hashlib.sha256(body).hexdigest() == str(task["sha256"]).lower() else None

    def _download(self, task: dict) -> bytes:
        """The model version's bytes, checked against the task's sha256 (and header)."""
        url = task.get("model_url") or f"/api/v1/fl/jobs/{self.job_id}/models/{task['model_version']}"
        expected = str(task["sha256"]).lower()
        answer = self.client.get(url, timeout=120.0)
        digest = hashlib.sha256(answer.body).hexdigest()
        header = (answer.headers.get("X-Checksum-Sha256") or digest).lower()
        if digest != expected or header != expected:
            raise ChecksumMismatch(f"model {url}: sha256 {digest}, expected {expected}")
        return answer.body

    def _train(self, task: dict, weights: bytes) -> None:
        """Train and upload the new weights; when the task says `evaluate_first`, the
        received model is evaluated first and its metrics go with the update."""
        headers = {"Content-Type": "application/octet-stream"}
        if task.get("evaluate_first"):
            num_examples, metrics = self.site.evaluate(task, weights)
            log.info("round %s: evaluated on %d examples: %s", task.get("round"), num_examples, _fmt(metrics))
            headers.update({"X-Eval-Examples": str(num_examples), "X-Eval-Metrics": _json(metrics)})
        result = self.site.train(task, weights)
        log.info("round %s: trained on %d examples on %s: %s", task.get("round"),
                 result.num_examples, self.site.device, _fmt(result.metrics))
        headers.update({"X-Num-Examples": str(result.num_examples), "X-Metrics": _json(result.metrics)})
        path = f"/api/v1/fl/rounds/{task['round_id']}/update?wait={self.wait_s:g}"  # the next task comes back
        answer = self.backoff.call(
            lambda: self.client.request("POST", path, body=result.weights, headers=headers,
                                        timeout=120.0 + self.wait_s), "update upload")
        log.info("round %s: update accepted (%s)", task.get("round"), answer.status)
        self._keep_next(answer)

    def _evaluate(self, task: dict, weights: bytes) -> None:
        num_examples, metrics = self.site.evaluate(task, weights)
        log.info("round %s: evaluated on %d examples: %s", task.get("round"), num_examples, _fmt(metrics))
        path = f"/api/v1/fl/rounds/{task['round_id']}/evaluation?wait={self.wait_s:g}"
        payload = {"num_examples": num_examples, "metrics": metrics}
        answer = self.backoff.call(lambda: self.client.post_json(path, payload, timeout=30.0 + self.wait_s),
                                   "evaluation upload")
        log.info("round %s: evaluation accepted (%s)", task.get("round"), answer.status)
        self._keep_next(answer)

    def _cross_validate(self, task: dict) -> None:
        """Evaluate every listed model (the global one, each site's last local one) on
        the local validation split; post them together."""
        results = []
        for model in task.get("models", []):
            source = {"model_url": model["url"], "sha256": model["sha256"]}
            weights = self.backoff.call(lambda src=source: self._download(src), f"model of {model['source']}")
            num_examples, metrics = self.site.evaluate(task, weights)
            metrics.pop("eval_s", None)  # the matrix compares models, not timings
            results.append({"source": model["source"], "num_examples": num_examples, "metrics": metrics})
            log.info("cross-site: model of %s on local data: %s", model["source"], _fmt(metrics))
        path = f"/api/v1/fl/rounds/{task['round_id']}/cross-site"
        answer = self.backoff.call(lambda: self.client.post_json(path, {"results": results}), "cross-site upload")
        log.info("cross-site results accepted (%s)", answer.status)


def _retry_after(task: dict) -> float:
    """The task's retry_after in seconds, kept within [0.1, 60] (1 when absent or bad)."""
    try:
        value = float(task.get("retry_after", 1.0))
    except (TypeError, ValueError):
        value = 1.0
    return min(max(value, 0.1), 60.0) if value == value else 1.0


def _json(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{name}={value:.4g}" for name, value in metrics.items())


class SiteLoader:
    """Stands for the LocalSite while a thread imports PyTorch and builds it, so the
    first long poll runs during the import (seconds on a busy machine) instead of after
    it. The first use waits for the thread and re-raises what it raised (SiteError)."""

    def __init__(self, data_dir: Path, dataset: str | None):
        self._site, self._error = None, None
        self._thread = threading.Thread(target=self._load, args=(data_dir, dataset), name="site-load", daemon=True)
        self._thread.start()

    def _load(self, data_dir: Path, dataset: str | None) -> None:
        try:
            from agent.local import LocalSite  # imports torch

            self._site = LocalSite(data_dir, dataset)
            log.info("site ready: data %s, device %s", data_dir, self._site.device)
        except BaseException as exc:  # handed to the main thread on first use
            self._error = exc

    def __getattr__(self, name: str):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return getattr(self._site, name)


def watch_parent(parent_pid: int, *, interval: float = 0.5) -> threading.Thread | None:
    """Exit the process (status 4) as soon as ``parent_pid`` is no longer our parent.

    A daemon thread polls ``os.getppid()``, so the check also runs while the main thread
    is blocked in a long poll or in training. ``parent_pid`` 0 disables the watch.
    """
    if not parent_pid:
        return None

    def _watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        log.error("parent process %d is gone; exiting so no orphan keeps training", parent_pid)
        logging.shutdown()
        os._exit(EXIT_ORPHANED)

    thread = threading.Thread(target=_watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agent.trainer",
                                     description="flportal trainer for one job (one site).")
    parser.add_argument("--portal", required=True, help="portal base URL, e.g. http://portal:8000")
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--job", type=int, help="job id")
    role.add_argument("--spare", action="store_true",
                      help="warm trainer: import PyTorch, then take the job from one JSON line on "
                           "stdin (agent/warmstart.py)")
    parser.add_argument("--ready-fd", type=int, help="with --spare: file descriptor to write 'ready' to")
    parser.add_argument("--data-dir", required=True, type=Path, help="directory of local datasets")
    parser.add_argument("--dataset", help="local dataset name (default: the job config's; a spare's "
                                          "comes with its assignment)")
    parser.add_argument("--token-file", help=f"file holding the node token (default: ${NODE_TOKEN_ENV})")
    parser.add_argument("--wait", type=float, default=20.0, help="long-poll seconds per task request (max 25)")
    parser.add_argument("--max-offline", type=float, default=300.0,
                        help="give up after this many seconds of continuous portal failure")
    parser.add_argument("--backoff-initial", type=float, default=0.2, help="first retry delay, seconds")
    parser.add_argument("--backoff-cap", type=float, default=5.0, help="longest retry delay, seconds")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="exit when this process stops being our parent (default: the parent at "
                             "start; 0 disables)")
    opts = parser.parse_args(argv)
    if opts.spare and opts.dataset is not None:
        parser.error("a spare's dataset comes with its assignment, not --dataset")
    if opts.ready_fd is not None and not opts.spare:
        parser.error("--ready-fd is for --spare only")
    return opts


def main(argv: list[str] | None = None) -> int:
    """Run the trainer; return its exit status (see the module docstring)."""
    opts = parse_args(argv)

    def log_as(tag: str, force: bool = False) -> None:  # a spare's lines say "spare" until it has a job
        logging.basicConfig(stream=sys.stdout, level=logging.INFO, force=force,
                            format=f"%(asctime)s %(levelname)s trainer[{tag}]: %(message)s")

    log_as("spare" if opts.spare else f"job {opts.job}")
    watch_parent(os.getppid() if opts.parent_pid is None else opts.parent_pid)
    try:
        token = read_secret(env_var=NODE_TOKEN_ENV, file_path=opts.token_file,
                            option="--token-file", what="node token")
    except MissingSecret as exc:
        log.error("%s", exc)
        return EXIT_REFUSED
    if opts.spare:  # a warm trainer (agent/warmstart.py): warm up, then take a job
        from agent.warmstart import AssignmentError, wait_for_assignment

        try:
            assignment = wait_for_assignment(opts.ready_fd, sys.stdin.buffer)
        except AssignmentError as exc:
            log.error("%s", exc)
            return EXIT_REFUSED
        if assignment is None:
            log.error("stdin closed before any assignment: the agent is gone; exiting")
            return EXIT_ORPHANED
        opts.job, opts.dataset = assignment.job_id, assignment.dataset
        log_as(f"job {opts.job}", force=True)
        log.info("job %d: assigned to this warm trainer (dataset %s)", opts.job, opts.dataset)
    try:
        site = SiteLoader(opts.data_dir, opts.dataset)  # torch loads while the first task is polled
        log.info("job %d: portal %s", opts.job, opts.portal)
        backoff = Backoff(max_offline=opts.max_offline, initial=opts.backoff_initial, cap=opts.backoff_cap)
        trainer = Trainer(client=PortalClient(opts.portal, token), site=site, job_id=opts.job,
                          wait_s=opts.wait, backoff=backoff)
        return trainer.run()
    except SiteError as exc:
        log.error("%s", exc)
        return EXIT_REFUSED
    except PortalRefusal as exc:
        log.error("portal refused: %s", exc)
        return EXIT_REFUSED
    except PortalOffline as exc:
        log.error("%s", exc)
        return EXIT_OFFLINE


if __name__ == "__main__":
    sys.exit(main())
