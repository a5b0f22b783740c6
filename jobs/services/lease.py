"""Single-flight aggregation: a round is aggregated by the one worker that holds its
lease.

A close task can be delivered more than once: the last result and the deadline both
queue one, the watchdog re-drives rounds that look stuck, and a killed worker's
`acks_late` task comes back. Celery's `time_limit` is not enforced on `--pool threads`,
so nothing bounds how long a legitimate aggregation runs (a large model, FedMedian or
Krum over many sites). So the worker that takes a round's lease writes its owner and
an expiry into the round's row, and renews it from a thread while it aggregates; any
other close of that round returns at once while the lease is live, and the watchdog
re-drives a round only once its lease has expired (its worker died). The close commits
only while its lease is still the round's, so a worker that lost its lease (paused
past the expiry) cannot close a round another worker took over."""
import logging
import os
import secrets
import socket
import threading
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from jobs.models import Round

logger = logging.getLogger(__name__)


class AggregationLease:
    """The lease of one round for this worker: `acquire`, then use as a context manager
    (renewed every `lease_s / 4` until the block ends)."""

    def __init__(self, round_id: int, *, lease_s: float | None = None):
        self.round_id = round_id
        self.lease_s = lease_s if lease_s is not None else settings.FLPORTAL_AGGREGATION_LEASE_S
        self.owner = f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(6)}"
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self) -> bool:
        """Take the lease of an aggregating round whose lease is free or expired. False:
        the round is not aggregating, or another worker holds a live lease."""
        now = timezone.now()
        taken = (Round.objects.filter(pk=self.round_id, status=Round.Status.AGGREGATING)
                 .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
                 .update(lease_owner=self.owner, lease_expires_at=now + timedelta(seconds=self.lease_s)))
        return taken == 1

    def renew(self) -> bool:
        """Push the expiry on while the lease is still ours; False once it is not."""
        return Round.objects.filter(pk=self.round_id, lease_owner=self.owner).update(
            lease_expires_at=timezone.now() + timedelta(seconds=self.lease_s)) == 1

    def held_by_me(self, rnd: Round) -> bool:
        """Whether the (locked) round still names this lease's owner."""
        return rnd.lease_owner == self.owner

    def __enter__(self):
        self._renewer = threading.Thread(target=self._renew_until_stopped, daemon=True,
                                         name=f"lease-round-{self.round_id}")
        self._renewer.start()
        return self

    def __exit__(self, exc_type, *exc):
        self._stop.set()
        self._renewer.join()
        if exc_type is not None:  # the close failed (a database error): let a retry take the round at once
            try:
                self.release()
            except Exception:  # the database is away: the lease then expires by itself
                logger.warning("round %s: could not release the aggregation lease", self.round_id)

    def release(self) -> None:
        """Give the lease up, if still ours (another close may take the round now)."""
        Round.objects.filter(pk=self.round_id, lease_owner=self.owner).update(lease_expires_at=None)

    def _renew_until_stopped(self) -> None:
        try:
            while not self._stop.wait(self.lease_s / 4):
                try:
                    if not self.renew():
                        logger.warning("round %s: the aggregation lease was taken over", self.round_id)
                        return
                except Exception:  # a database hiccup: try again at the next tick, the lease has slack
                    logger.exception("round %s: renewing the aggregation lease", self.round_id)
        finally:
            connection.close()  # this thread's own connection
