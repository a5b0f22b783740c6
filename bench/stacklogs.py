"""Reading what a LocalStack's processes wrote, for the benchmarks: trainer and agent log
lines with their timestamps, portal timestamps, and the cleanup of stray processes.

Trainer logs (``<workdir>/runs/<site>/<run_id>.log``) and agent logs (``<workdir>/<site>.log``)
use Python logging's default ``asctime`` (local time, millisecond resolution); the
portal's API gives ISO 8601 times. Both come from this machine's clock, so they compare.
"""
import os
import re
import signal
from datetime import datetime
from pathlib import Path

LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ (?:trainer\[job (\d+)\]|agent): (.*)$")


def log_time(stamp: str) -> float:
    """Epoch seconds of a logging ``asctime`` (local time)."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def iso_time(value: str | None) -> float | None:
    """Epoch seconds of an ISO 8601 time from the portal's API."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def read_lines(path: Path) -> list[tuple[float, str]]:
    """(epoch seconds, message) of every log line of a trainer or agent log."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        match = LINE.match(line)
        if match:
            out.append((log_time(match.group(1)), match.group(3)))
    return out


def trainer_logs(workdir: Path, job_id: int) -> dict[str, list[tuple[float, str]]]:
    """{site: lines} of the trainers that ran ``job_id`` (one run per site)."""
    logs = {}
    for site_dir in sorted((workdir / "runs").glob("*")):
        for path in sorted(site_dir.glob(f"{job_id}-*.log")):
            logs.setdefault(site_dir.name, []).extend(read_lines(path))
    return logs


def first(lines: list[tuple[float, str]], pattern: str) -> float | None:
    """Time of the first line whose message matches ``pattern`` (a regex)."""
    regex = re.compile(pattern)
    return next((t for t, message in lines if regex.search(message)), None)


def sweep(marker_name: str, marker_value: str) -> list[int]:
    """SIGKILL the processes whose environment has ``marker_name=marker_value`` (only
    processes this benchmark started carry that value); returns their pids."""
    needle = f"{marker_name}={marker_value}".encode()
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except OSError:
                pass
    return killed


def free_redis_db(candidates: list[int], base_url: str = "redis://127.0.0.1:6379") -> int:
    """The first of ``candidates`` that no Redis client has selected and that holds no
    key: benchmarks of other people may run at the same time on this Redis, and two
    stacks on one db consume each other's Celery tasks (production_env also empties
    the db it is given). RuntimeError when every candidate is busy."""
    import redis

    client = redis.Redis.from_url(f"{base_url}/0", socket_connect_timeout=5)
    busy = {int(c["db"]) for c in client.client_list() if "db" in c}
    for db in candidates:
        if db not in busy and not redis.Redis.from_url(f"{base_url}/{db}", socket_connect_timeout=5).dbsize():
            return db
    raise RuntimeError(f"every Redis db of {candidates} is in use by another process")
