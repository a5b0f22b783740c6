"""Single-flight aggregation (jobs/services/lease.py): a slow aggregation is neither
run twice nor abandoned, whatever re-drives its round meanwhile; a dead worker's round
is taken over once its lease expires; a worker that lost its lease cannot close the
round the other one took over.

The aggregations here run in threads with their own database connections, as a worker's
do, so the database is really committed (transactional)."""
import threading
import time

import pytest

from jobs.models import ModelVersion, Round
from jobs.services import dispatch, rounds
from jobs.services.flow import round_close
from jobs.services.lease import AggregationLease
from jobs.services.watchdog import watchdog_sweep
from tests.conftest import start_job
from tests.jobs.helpers import submit_train

pytestmark = pytest.mark.django_db(transaction=True)
LEASE_S = 0.4  # renewed every 0.1 s
SLOW_S = 1.6  # four leases long


@pytest.fixture
def aggregating(make_job, nodes3, tmp_path, settings, monkeypatch):
    """A round 1 whose three results are in (so it is aggregating), with a short lease and
    the tasks the services queue recorded instead of sent."""
    settings.FLPORTAL_AGGREGATION_LEASE_S = LEASE_S
    monkeypatch.setattr(dispatch, "send", lambda name, args, **options: None)
    job = start_job(make_job(rounds=2))
    train = Round.objects.get(job=job, number=1)
    for i, creds in enumerate(nodes3):
        submit_train(train, creds.node, tmp_path, seed=i, num_examples=10)
    train.refresh_from_db()
    assert train.status == Round.Status.AGGREGATING
    return train


@pytest.fixture
def slow_aggregation(monkeypatch):
    """The real aggregation, SLOW_S slower; counts its runs and says when one started."""
    real, runs, started = rounds._aggregate_and_write, [], threading.Event()

    def slow(rnd):
        runs.append(threading.get_ident())
        started.set()
        time.sleep(SLOW_S)
        return real(rnd)

    monkeypatch.setattr(rounds, "_aggregate_and_write", slow)
    return runs, started


def in_thread(function, *args) -> tuple[threading.Thread, list]:
    """Run `function(*args)` in a thread with its own connection, as a worker's thread;
    its result (or exception) lands in the list."""
    out = []

    def run():
        from django.db import connection
        try:
            out.append(function(*args))
        except BaseException as exc:
            out.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def close_in_thread(round_id: int):
    return in_thread(lambda: round_close(round_id=round_id))


def assert_closed_once(train: Round) -> None:
    train.refresh_from_db()
    assert train.status == Round.Status.CLOSED
    assert ModelVersion.objects.filter(job_id=train.job_id, round=1).count() == 1
    assert list(Round.objects.filter(job_id=train.job_id, number=2).values_list("kind", flat=True)) == ["train"]


def test_a_slow_aggregation_runs_once_while_everything_redrives_its_round(aggregating, slow_aggregation):
    runs, started = slow_aggregation
    worker, result = close_in_thread(aggregating.pk)
    assert started.wait(10)
    redrives, second_closes = [], []
    while worker.is_alive():  # four leases' time of sweeps and duplicate deliveries of the close
        redrives.append(watchdog_sweep()["aggregating"])
        second_closes.append(round_close(round_id=aggregating.pk))
        time.sleep(LEASE_S / 4)
    worker.join()

    assert len(runs) == 1, "the aggregation ran twice"
    assert len(redrives) >= 8 and redrives == [[]] * len(redrives), "the watchdog re-drove a live aggregation"
    assert second_closes == [None] * len(second_closes)
    assert isinstance(result[0], Round) and result[0].status == Round.Status.CLOSED  # not abandoned
    assert_closed_once(aggregating)


def test_a_dead_workers_round_is_taken_over_once_its_lease_expires(aggregating):
    """What a SIGKILLed worker leaves behind: its owner and expiry in the round's row,
    and nobody renewing them."""
    assert AggregationLease(aggregating.pk).acquire()  # the worker that then dies
    assert round_close(round_id=aggregating.pk) is None  # a live lease: not taken
    assert watchdog_sweep()["aggregating"] == []

    time.sleep(LEASE_S * 1.5)

    assert watchdog_sweep()["aggregating"] == [aggregating.pk]  # re-driven once expired
    closed = round_close(round_id=aggregating.pk)
    assert closed is not None and closed.status == Round.Status.CLOSED
    assert_closed_once(aggregating)
    assert watchdog_sweep()["aggregating"] == []


def test_a_worker_that_lost_its_lease_does_not_close_the_round(aggregating, slow_aggregation, monkeypatch):
    """The first worker stalls (its renewals do not land, as in a long pause); its lease
    expires and a second worker takes the round over and closes it. The first one's
    aggregation then finishes, and commits nothing."""
    runs, started = slow_aggregation
    monkeypatch.setattr(AggregationLease, "renew", lambda self: True)  # renewals that never reach the row
    first, first_result = close_in_thread(aggregating.pk)
    assert started.wait(10)
    time.sleep(LEASE_S * 1.5)
    second, second_result = close_in_thread(aggregating.pk)
    first.join()
    second.join()

    assert len(runs) == 2
    assert first_result == [None]
    assert isinstance(second_result[0], Round) and second_result[0].status == Round.Status.CLOSED
    assert_closed_once(aggregating)


def test_an_aggregating_round_nobody_took_is_redriven_after_the_grace(aggregating):
    """Its close task was lost (never delivered): no lease was ever taken."""
    assert watchdog_sweep()["aggregating"] == []
    Round.objects.filter(pk=aggregating.pk).update(aggregating_at=aggregating.aggregating_at.replace(year=2000))
    assert watchdog_sweep()["aggregating"] == [aggregating.pk]


def test_a_close_that_fails_on_the_database_is_retried_and_its_lease_given_up(aggregating, monkeypatch):
    """A database error in the close (a restart, a failover) escapes to the task, which
    retries it with backoff; the failed attempt gave its lease up, so the retry can
    take the round at once, and it closes it."""
    from django.db import OperationalError

    from jobs import tasks

    real, attempts = rounds.round_finish, []

    def flaky(**kwargs):
        attempts.append(1)
        if len(attempts) < 3:
            raise OperationalError("server closed the connection unexpectedly")
        return real(**kwargs)

    monkeypatch.setattr(rounds, "round_finish", flaky)
    monkeypatch.setattr("jobs.services.flow.round_finish", flaky)
    result = tasks.round_close_task.apply(args=(aggregating.pk,))
    assert result.successful(), result.traceback
    assert len(attempts) == 3
    assert_closed_once(aggregating)
