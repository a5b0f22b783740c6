"""The coordinator: the one module that knows both lifecycles, the job's
(jobs/services/jobs.py) and the round's (jobs/services/rounds.py), which never import
each other. A job that starts opens round 1; a round that closes opens the next one or
ends the job; a round that fails (its deadline with too few results, or its
aggregation) fails the job. The FL server's tasks and the watchdog call these."""
import logging

from django.db import transaction

from jobs.models import Job, Round
from jobs.services.jobs import job_agents_start, job_begin, job_fail, job_succeed
from jobs.services.lease import AggregationLease
from jobs.services.metrics import round_keep_evaluation
from jobs.services.rounds import (
    RoundCannotOpen,
    round_aggregate,
    round_at_deadline,
    round_finish,
    round_lock_aggregating,
    round_lock_past_deadline,
    round_open,
)
from jobs.services.transitions import round_transition

logger = logging.getLogger(__name__)


def job_start(*, job_id: int) -> Job | None:
    """queued → running: check enough nodes are online, store the round-0 model, open
    round 1 and ask every node's agent to start a trainer. Idempotent: a job that is not
    queued any more is left alone. A job that cannot start is failed with the reason."""
    with transaction.atomic():
        begun = job_begin(job_id=job_id)
        if begun is None:
            return None
        job, version = begun
        if version is None:  # it could not start, and was failed with the reason
            return job
        try:
            round_open(job=job, number=1, kind=Round.Kind.TRAIN, model_version=version)
        except RoundCannotOpen as exc:
            return job_fail(job=job, reason=str(exc))
        job_agents_start(job=job)
    return job


def round_deadline(*, round_id: int) -> bool:
    """At the deadline an open round closes if it has `clients_required` updates;
    otherwise it fails, and the job with it, naming the nodes that did not report.
    True if the round moved to aggregating (the caller then runs `round_close`)."""
    with transaction.atomic():
        rnd = round_lock_past_deadline(round_id)
        if rnd is None:
            return False
        reason = round_at_deadline(rnd)
        if reason is None:
            return True
        round_and_job_fail(rnd=rnd, reason=reason)
    return False


def round_close(*, round_id: int) -> Round | None:
    """Aggregate an aggregating round under its lease (single-flight: jobs/services/lease.py),
    close it and open the next round or end the job. Idempotent: a round that is not
    aggregating any more, or that another worker is aggregating, is left alone. An
    aggregation that raises fails the round and the job, with the error."""
    lease = AggregationLease(round_id)
    if not lease.acquire():
        return None
    with lease:
        try:
            written = round_aggregate(round_id=round_id)
        except Exception as exc:  # a round that cannot be aggregated must not leave the job running
            logger.exception("aggregating round %s", round_id)
            with transaction.atomic():
                rnd = round_lock_aggregating(round_id, lease)
                if rnd is not None:
                    round_and_job_fail(rnd=rnd, reason=f"aggregation of round {rnd.number} failed: {exc}")
            return None
        with transaction.atomic():
            rnd = round_finish(round_id=round_id, written=written, lease=lease)
            if rnd is not None and rnd.job.status == Job.Status.RUNNING:
                _advance(rnd.job, rnd)
    return rnd


def round_and_job_fail(*, rnd: Round, reason: str) -> None:
    """Fail a locked round in flight and, unless it has ended already, its job, both
    with `reason`. The evaluation the round got of the model it started from is kept
    (that model is then the job's last good one)."""
    round_keep_evaluation(rnd)
    round_transition(rnd, Round.Status.FAILED, reason=reason)
    job = Job.objects.select_for_update(no_key=True).get(pk=rnd.job_id)
    if not job.is_terminal:
        job_fail(job=job, reason=reason)


def _advance(job: Job, rnd: Round) -> None:
    """After a closed round: train the next round (its nodes evaluate the new model
    first when the evaluation policy asks for it), evaluate the last model in a round
    of its own, run the cross-site validation (opt-in), or finish."""
    n, version = rnd.number, rnd.result_version or rnd.model_version
    try:
        if rnd.kind == Round.Kind.TRAIN and n < job.rounds:
            round_open(job=job, number=n + 1, kind=Round.Kind.TRAIN, model_version=version,
                       evaluate_first=n % job.evaluate_every == 0)
        elif rnd.kind == Round.Kind.TRAIN:
            round_open(job=job, number=n, kind=Round.Kind.EVALUATE, model_version=version)
        elif rnd.kind == Round.Kind.EVALUATE and job.cross_site_validation:
            round_open(job=job, number=n, kind=Round.Kind.CROSS_SITE, model_version=version)
        else:
            job_succeed(job=job, final_model=version)
    except RoundCannotOpen as exc:
        job_fail(job=job, reason=str(exc))
