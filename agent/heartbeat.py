"""The agent's heartbeat: tell the portal, periodically, that this site is alive and what
it offers (``POST /api/v1/fl/heartbeat``, PROTOCOL.md section 1).

A failed heartbeat is logged and tried again at the next tick; it never stops the agent.
"""

import logging
import math
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from agent import __version__
from agent.portal import PortalClient, PortalOffline, PortalRefusal, TransientError
from agent.sitedata import DATASET_SUFFIXES

log = logging.getLogger("flportal.agent")

HEARTBEAT_PATH = "/api/v1/fl/heartbeat"
MIN_INTERVAL_S, MAX_INTERVAL_S = 0.1, 3600.0


def ram_bytes() -> int:
    """Total physical memory: /proc/meminfo's MemTotal, else sysconf, else 0."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, AttributeError):
        return 0


_gpu_count: int | None = None
_COUNT_GPUS = "import torch; print(torch.cuda.device_count())"


def gpu_count() -> int:
    """CUDA devices PyTorch sees (honouring CUDA_VISIBLE_DEVICES), counted once.

    Counted in a short-lived subprocess so that the agent itself never keeps torch
    (hundreds of MB) resident; 0 when torch or CUDA is unusable.
    """
    global _gpu_count
    if _gpu_count is None:
        try:
            answer = subprocess.run([sys.executable, "-c", _COUNT_GPUS], capture_output=True,
                                    text=True, timeout=120, check=True)
            _gpu_count = int(answer.stdout.split()[-1])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
            log.warning("cannot count GPUs, reporting 0: %s", exc)
            _gpu_count = 0
    return _gpu_count


def resources(data_dir: Path) -> dict:
    """``{"cpus", "ram_bytes", "gpus", "disk_free_bytes"}`` for the heartbeat."""
    try:
        disk_free = shutil.disk_usage(data_dir).free
    except OSError:
        disk_free = 0
    return {"cpus": os.cpu_count() or 0, "ram_bytes": ram_bytes(), "gpus": gpu_count(),
            "disk_free_bytes": disk_free}


def datasets(data_dir: Path) -> list[dict]:
    """The datasets in ``data_dir`` as fl.data.list_datasets describes them; [] on error."""
    try:
        from fl.data import list_datasets

        return list_datasets(data_dir)
    except Exception as exc:
        log.warning("cannot list datasets in %s: %s", data_dir, exc)
        return []


def directory_signature(data_dir: Path) -> tuple:
    """Name, size and mtime of every dataset file: describing the datasets reads them
    whole, so heartbeats redo it only when this changes."""
    try:
        entries = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(data_dir).iterdir()
                   if p.suffix.lower() in DATASET_SUFFIXES and p.is_file()]
    except OSError:
        return ()
    return tuple(sorted(entries))


class Heartbeat:
    """A daemon thread posting heartbeats every ``interval`` seconds until ``stop()``.

    The portal's answer may carry ``heartbeat_interval_s``; it then replaces ``interval``
    (clamped to [0.1 s, 1 h]).
    """

    def __init__(self, *, client: PortalClient, data_dir: Path, interval: float,
                 describe: Callable[[Path], list[dict]] = datasets,
                 running_jobs: Callable[[], list[int]] | None = None):
        self.client, self.data_dir, self.interval = client, Path(data_dir), interval
        self._describe = describe
        # the jobs it runs a trainer for, sent with every beat: the portal asks again for
        # a trainer of a running job that is not among them (an agent that restarted)
        self._running_jobs = running_jobs
        self._described: tuple[tuple, list[dict]] | None = None
        self._stopped = threading.Event()
        self._healthy: bool | None = None
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self.beat()
            self._stopped.wait(self.interval)

    def beat(self) -> bool:
        """Post one heartbeat; return whether the portal accepted it. Never raises."""
        payload = {"version": __version__, "datasets": self._datasets(),
                   "resources": resources(self.data_dir)}
        if self._running_jobs is not None:
            payload["runs"] = self._running_jobs()
        try:
            answer = self.client.post_json(HEARTBEAT_PATH, payload, timeout=10.0).json()
        except (TransientError, PortalRefusal, PortalOffline) as exc:
            self._report(False, f"heartbeat failed: {exc}")
            return False
        answer = answer if isinstance(answer, dict) else {}
        interval = answer.get("heartbeat_interval_s")
        if isinstance(interval, (int, float)) and not isinstance(interval, bool) and math.isfinite(interval):
            self.interval = min(max(float(interval), MIN_INTERVAL_S), MAX_INTERVAL_S)
        self._report(True, f"heartbeat ok (node {answer.get('node', '?')}, "
                           f"{len(payload['datasets'])} datasets, every {self.interval:g}s)")
        return True

    def _datasets(self) -> list[dict]:
        signature = directory_signature(self.data_dir)
        if self._described is None or self._described[0] != signature:
            self._described = (signature, self._describe(self.data_dir))
        return self._described[1]

    def _report(self, healthy: bool, message: str) -> None:
        """Log every failure, but a success only when it follows a failure (or is first)."""
        if not healthy:
            log.warning("%s", message)
        elif self._healthy is not True:
            log.info("%s", message)
        self._healthy = healthy
