"""The round lifecycle: open, collect, aggregate, close, and the sweeps' reads. It
knows nothing of the job's lifecycle: what follows a round (the next round, the job's
end, or its failure) is jobs/services/flow.py's. See docs/PROTOCOL.md and
docs/STATES.md."""
import logging
import random
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from core.sql import rows_insert
from fl.serialization import load_state_dict, load_state_dict_header
from fl.strategies import get_strategy
from jobs import events
from jobs.models import Job, JobEvent, JobNode, ModelVersion, Round
from jobs.services import artifacts, dispatch
from jobs.services.job_events import job_event_record
from jobs.services.lease import AggregationLease
from jobs.services.metrics import round_metrics_aggregate
from jobs.services.node_tasks import round_task
from jobs.services.transitions import round_transition
from nodes.models import Node

logger = logging.getLogger(__name__)


class RoundCannotOpen(Exception):
    """Too few nodes are available to run a round under the job's policy."""


def round_open(*, job: Job, number: int, kind: str, model_version: ModelVersion,
               evaluate_first: bool = False) -> Round:
    """Open a round on the job's available nodes (online, enabled, not failed), sampled
    to `clients_per_round` with the job's seed; `evaluate_first` (train rounds): the
    nodes evaluate the model they receive before training. Hands the round's task to
    the waiting trainers and schedules the deadline check, on commit.
    Raises RoundCannotOpen when fewer than `clients_required` nodes are available."""
    selected = _select_nodes(job, number)
    required = job.clients_required
    if len(selected) < required:
        raise RoundCannotOpen(f"round {number} ({kind}) cannot open: {len(selected)} nodes available, "
                              f"clients_required is {required}")
    target = len(selected) if job.buffer_size == -1 or kind != Round.Kind.TRAIN else min(job.buffer_size, len(selected))
    rnd = Round.objects.create(job=job, number=number, kind=kind, model_version=model_version,
                               target_updates=target, evaluate_first=evaluate_first and kind == Round.Kind.TRAIN,
                               deadline=timezone.now() + timedelta(seconds=job.round_timeout_s))
    rows_insert(Round.selected.through, ("round_id", "node_id"), [(rnd.pk, node.pk) for node in selected])
    if job.current_round != number:
        job.current_round = number
        job.save(update_fields=["current_round"])
    job_event_record(job=job, kind="round_open", message=f"round {number} ({kind}) open on "
                     f"{', '.join(sorted(n.name for n in selected))}", data={"round": number, "kind": kind})
    events.round_task_ready(job.pk, round_task(job, rnd), [n.pk for n in selected])
    dispatch.queue_round_deadline(rnd.pk, countdown=job.round_timeout_s)
    return rnd


def _select_nodes(job: Job, number: int) -> list[Node]:
    available = [jn.node for jn in job.job_nodes.select_related("node").exclude(status=JobNode.Status.FAILED)
                 if jn.node.enabled and jn.node.status == Node.Status.ONLINE]
    if job.clients_per_round and len(available) > job.clients_per_round:
        available = random.Random(f"{job.seed}:{number}").sample(available, job.clients_per_round)
    return available


def round_lock(round_id: int) -> Round:
    """The round, its row locked (FOR NO KEY UPDATE, as every lock of a round or job row
    takes: it excludes the other locks but not the key-share locks of foreign-key checks,
    so a result's commit never waits for, nor deadlocks with, a lock on its round)."""
    return Round.objects.select_for_update(no_key=True).get(pk=round_id)


def round_close_when_complete(rnd: Round) -> bool:
    """Called under the round's lock after a result was accepted: once `target_updates`
    results are in, open → aggregating, and the round's close is queued on commit (in
    the same transaction as the last result, so no extra task runs per update).
    True if it moved. (The count is a statement of its own, after the lock: in READ
    COMMITTED a statement that waited for a lock still reads from its snapshot of
    before the wait.)"""
    if rnd.status != Round.Status.OPEN or rnd.updates.count() < rnd.target_updates:
        return False
    _start_aggregating(rnd)
    dispatch.queue_round_close(rnd.pk)
    return True


def round_lock_past_deadline(round_id: int) -> Round | None:
    """The open round past its deadline, locked with its job (round first, then job: the
    order every writer locks them in), or None."""
    rnd = (Round.objects.select_for_update(no_key=True).select_related("job")
           .filter(pk=round_id, status=Round.Status.OPEN).first())
    return rnd if rnd is not None and rnd.deadline <= timezone.now() else None


def round_at_deadline(rnd: Round) -> str | None:
    """At the deadline a (locked) open round with `clients_required` updates moves to
    aggregating (None: the caller then closes it); otherwise the reason it fails,
    naming the nodes that did not report (the caller fails it, and the job)."""
    received = rnd.updates.count()
    required = min(rnd.job.clients_required, rnd.selected.count())
    if received >= max(1, required):
        _start_aggregating(rnd)
        return None
    missing = ", ".join(sorted(n.name for n in _missing_nodes(rnd)))
    reason = (f"round {rnd.number} ({rnd.kind}) failed: {received} of {required} required updates "
              f"by the deadline ({rnd.job.round_timeout_s:g} s); missing: {missing}")
    stored = (JobEvent.objects.filter(job_id=rnd.job_id, kind="storage_failed", data__round=rnd.number,
                                      data__kind=rnd.kind).order_by("-id").values_list("data", flat=True).first())
    if stored:  # the nodes sent them: the portal could not keep them
        reason = f"the portal's artifact storage failed ({stored['error']}), so {reason}"
    return reason


def _missing_nodes(rnd: Round) -> list[Node]:
    return list(rnd.selected.exclude(pk__in=rnd.updates.values("node_id")))


def _start_aggregating(rnd: Round) -> None:
    dropped = _missing_nodes(rnd)
    if dropped:  # a round goes aggregating once: nobody was recorded dropped before
        rnd.dropped.add(*dropped)
    reason = f"dropped: {', '.join(sorted(n.name for n in dropped))}" if dropped else ""
    round_transition(rnd, Round.Status.AGGREGATING, reason=reason)


def round_aggregate(*, round_id: int) -> dict | None:
    """Run the strategy of an aggregating train round over its updates (one update in
    memory at a time for streaming strategies) and write the new model version; returns
    its ModelVersion fields for `round_finish`, or None for a round with no weights to
    aggregate (evaluate, cross-site). Run while holding the round's lease, outside any
    transaction: it may take long. Raises whatever the aggregation raises."""
    rnd = Round.objects.select_related("job", "model_version").get(pk=round_id)
    return _aggregate_and_write(rnd) if rnd.kind == Round.Kind.TRAIN else None


def round_finish(*, round_id: int, written: dict | None, lease: AggregationLease) -> Round | None:
    """In the caller's transaction: lock the aggregating round (and its job), store the
    new model version (`written`) and the aggregated metrics, and close it. None when
    the round is not aggregating any more or its lease is no longer `lease` (another
    worker took it over: that one closes it)."""
    rnd = round_lock_aggregating(round_id, lease)
    if rnd is None:
        return None
    if written is not None:  # created with the close, in one transaction: never there before
        rnd.result_version = ModelVersion.objects.create(job=rnd.job, round=rnd.number, **written)
        rnd.save(update_fields=["result_version"])
    if rnd.kind != Round.Kind.CROSS_SITE:
        round_metrics_aggregate(rnd)
    return round_transition(rnd, Round.Status.CLOSED)


def round_lock_aggregating(round_id: int, lease: AggregationLease) -> Round | None:
    """The aggregating round whose lease is `lease`, locked with its job (round, then
    job: the order every writer locks them in), or None."""
    rnd = next(iter(Round.objects.select_for_update(no_key=True).select_related("job")  # locks the job's row too
                    .filter(pk=round_id, status=Round.Status.AGGREGATING).order_by()[:1]), None)
    return rnd if rnd is not None and lease.held_by_me(rnd) else None


def _aggregate_and_write(rnd: Round) -> dict:
    """Run the job's strategy over the round's updates, from the server state the
    previous version left; write the new version (and state). Returns ModelVersion fields."""
    version, cls = rnd.model_version, get_strategy(rnd.job.strategy)
    load_global = load_state_dict if cls.uses_global_values else load_state_dict_header
    global_state = load_global(artifacts.absolute(version.path))
    server_state = load_state_dict(artifacts.absolute(version.server_state_path)) if version.server_state_path else None
    strategy = cls(global_state, rnd.job.strategy_params, server_state=server_state)
    for update in rnd.updates.order_by("node__name"):
        strategy.add(load_state_dict(artifacts.absolute(update.path)), update.num_examples)
    path, sha256, size = artifacts.write_model(rnd.job_id, rnd.number, strategy.result())
    next_state = strategy.next_server_state()
    state_path = artifacts.write_server_state(rnd.job_id, rnd.number, next_state) if next_state else ""
    return {"path": path, "sha256": sha256, "bytes": size, "server_state_path": state_path}


def rounds_overdue(*, grace_s: float = 2.0) -> list[int]:
    """Ids of open rounds past their deadline (the watchdog re-drives them)."""
    cutoff = timezone.now() - timedelta(seconds=grace_s)
    return list(Round.objects.filter(status=Round.Status.OPEN, deadline__lt=cutoff).values_list("pk", flat=True))


def rounds_stuck_aggregating(*, grace_s: float) -> list[int]:
    """Ids of aggregating rounds nobody is aggregating: their lease expired (the worker
    died), or no worker took it within `grace_s` of the move (its close task was lost).
    A round whose worker renews its lease is never among them, however long it runs."""
    now = timezone.now()
    return list(Round.objects.filter(status=Round.Status.AGGREGATING)
                .filter(Q(lease_expires_at__lt=now)
                        | Q(lease_expires_at__isnull=True, aggregating_at__lt=now - timedelta(seconds=grace_s)))
                .values_list("pk", flat=True))

