"""The embedded default: a Celery worker and beat running as threads of the portal
process, on the in-memory broker. Used only when REDIS_URL is unset (never in
production, where `celery worker` and `celery beat` are separate processes)."""
import logging
import threading

from celery.beat import EmbeddedService
from django.conf import settings

from flportal.celery import app

logger = logging.getLogger(__name__)
_started = threading.Event()


def start_embedded_worker(*, concurrency: int = 4) -> None:
    """Start the worker (thread pool) and beat threads once per process."""
    if not settings.EMBEDDED:
        raise RuntimeError("the embedded worker runs only without REDIS_URL")
    if _started.is_set():
        return
    _started.set()
    worker = app.WorkController(
        pool="threads",
        concurrency=concurrency,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel="INFO",
    )
    threading.Thread(target=worker.start, name="celery-worker", daemon=True).start()
    beat = EmbeddedService(app, thread=True, schedule_filename=str(settings.DATA_DIR / "celerybeat-schedule"))
    beat.start()
    logger.info("embedded Celery worker (%d threads) and beat started", concurrency)
