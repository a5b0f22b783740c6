"""Serve the portal under uvicorn (ASGI). In the embedded default (no REDIS_URL) the
Celery worker and beat run as threads of this process; in production any number of
portal processes can serve (`--processes`), since nothing they share lives in memory."""
import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Serve the portal (HTTP + websockets); embedded worker when REDIS_URL is unset."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=4, help="embedded Celery worker threads")
        parser.add_argument("--processes", type=int, default=1,
                            help="portal processes (production only; one per core lets the node API's "
                                 "requests use every core, where one process runs Python on one)")

    def handle(self, *args, host, port, workers, processes, **options):
        if processes < 1:
            raise CommandError("--processes must be at least 1")
        if settings.EMBEDDED and processes > 1:
            raise CommandError("the embedded default runs in one process (its worker, broker and channel layer "
                               "live in memory); set DATABASE_URL and REDIS_URL to serve with --processes")
        if settings.EMBEDDED:
            from flportal.embedded import start_embedded_worker

            start_embedded_worker(concurrency=workers)
        uvicorn.run("flportal.asgi:application", host=host, port=port, lifespan="off", workers=processes,
                    log_level="warning", ws_ping_interval=20, timeout_graceful_shutdown=3)
