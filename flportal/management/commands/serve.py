"""Serve the portal under uvicorn (ASGI). In the embedded default (no REDIS_URL) the
Celery worker and beat run as threads of this process."""
import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Serve the portal (HTTP + websockets); embedded worker when REDIS_URL is unset."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=4, help="embedded Celery worker threads")

    def handle(self, *args, host, port, workers, **options):
        if settings.EMBEDDED:
            from flportal.embedded import start_embedded_worker

            start_embedded_worker(concurrency=workers)
        uvicorn.run("flportal.asgi:application", host=host, port=port, lifespan="off",
                    log_level="warning", ws_ping_interval=20, timeout_graceful_shutdown=3)
