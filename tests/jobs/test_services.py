"""The FL server's services, run synchronously: job creation and its refusals, launch,
start, the round protocol (FedAvg, metrics, evaluation, deadlines), the node's next
task, cancellation and the watchdog's sweep."""
import base64
import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from django.utils import timezone

from core.errors import NotFound, ValidationFailed
from fl.networks import build_model
from jobs import tasks
from jobs.exceptions import InvalidUpdateError, JobStateError, NotSelected, StaleRound
from jobs.models import Job, JobEvent, JobNode, MetricPoint, ModelVersion, Round, Update, WatchdogClock
from jobs.services import artifacts, dispatch
from jobs.services.flow import job_start, round_close, round_deadline
from jobs.services.jobs import job_cancel, job_create, job_launch, job_node_run_started
from jobs.services.node_tasks import task_for_node
from jobs.services.transitions import job_transition, round_transition
from jobs.services.watchdog import watchdog_sweep
from nodes.models import Node
from nodes.services import node_heartbeat, node_set_enabled
from tests.conftest import BASE_SPEC, BREAST_CANCER, create_job
from tests.jobs.helpers import (
    close,
    fedavg,
    model_state,
    open_round,
    perturbed,
    row_counts,
    submit_eval,
    submit_train,
    write_update,
)

pytestmark = pytest.mark.django_db


class Sent:
    """The tasks services queued through jobs/services/dispatch.py, recorded instead of
    sent to the broker: (name, args, options)."""

    def __init__(self):
        self.calls: list[tuple[str, tuple, dict]] = []

    def __call__(self, name, args, **options):
        self.calls.append((name, args, options))

    def args(self, name: str) -> list[tuple]:
        return [args for called, args, _ in self.calls if called == name]


@pytest.fixture
def sent(monkeypatch) -> Sent:
    recorder = Sent()
    monkeypatch.setattr(dispatch, "send", recorder)
    return recorder


def on_commit_tasks(callbacks, sent: Sent, name: str) -> list[tuple]:
    """Run captured on-commit callbacks (nothing was sent before: they are queued on
    commit), and the arguments of the `name` tasks they sent."""
    before = len(sent.calls)
    assert sent.args(name) == [], f"{name} was sent before commit"
    for callback in callbacks:
        callback()
    return [args for called, args, _ in sent.calls[before:] if called == name]


def aggregate(job, number, phase) -> dict[str, float]:
    return dict(MetricPoint.objects.filter(job=job, round=number, phase=phase, node__isnull=True)
                .values_list("name", "value"))


def time_travel_deadline(rnd, seconds_ago: float = 10.0):
    """Put a round's deadline in the past (the one raw update: moving the clock)."""
    Round.objects.filter(pk=rnd.pk).update(deadline=timezone.now() - timedelta(seconds=seconds_ago))


# --- job_create -------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "field"), [
    ({"model": "resnet-9000"}, "model"),
    ({"model": 7}, "model"),
    ({"strategy": "fedmagic"}, "strategy"),
    ({"optimizer": "lbfgs"}, "optimizer"),
    ({"optimizer_params": {"lr": 0}}, "optimizer_params.lr"),
    ({"optimizer_params": {"lr": -0.5}}, "optimizer_params.lr"),
    ({"optimizer_params": {"lr": 0.1, "warp": 9}}, "optimizer_params.warp"),
    ({"strategy_params": {"weighted": "yes"}}, "strategy_params.weighted"),
    ({"model_params": {"in_features": 0}}, "model_params.in_features"),
    ({"rounds": 0}, "rounds"),
    ({"rounds": 2.5}, "rounds"),
    ({"rounds": True}, "rounds"),
    ({"clients_required": 4}, "clients_required"),
    ({"clients_per_round": 4}, "clients_per_round"),
    ({"buffer_size": 0}, "buffer_size"),
    ({"buffer_size": 4}, "buffer_size"),
    ({"buffer_size": 1, "clients_required": 2}, "buffer_size"),
    ({"min_clients": 4}, "min_clients"),
    ({"val_fraction": 0.95}, "val_fraction"),
    ({"epochs": 3}, "epochs"),
    ({"dataset": None}, "dataset"),
    ({"dataset": "../etc"}, "dataset"),
    ({"dataset": "mnist"}, "dataset"),
])
def test_job_create_refuses_a_bad_spec_naming_the_field(user, nodes3, spec, field):
    full = {**BASE_SPEC, **spec}
    full = {k: v for k, v in full.items() if v is not None}
    with pytest.raises(ValidationFailed) as info:
        job_create(owner=user, name="x", node_names=[c.node.name for c in nodes3], spec=full)
    assert info.value.field == field
    assert info.value.message.startswith(field)
    assert info.value.status == 400
    assert Job.objects.count() == 0 and JobNode.objects.count() == 0


def test_job_create_names_the_nodes_lacking_the_dataset(user, nodes3):
    node_heartbeat(node=nodes3[1].node, version="1", datasets=[{**BREAST_CANCER, "name": "iris"}], resources={})
    with pytest.raises(ValidationFailed) as info:
        create_job(user, nodes3)
    assert info.value.field == "dataset" and "site-b" in info.value.message
    assert "site-a" not in info.value.message and Job.objects.count() == 0


@pytest.mark.parametrize(("names", "needle"), [
    ([], "at least one"),
    (["site-a", "site-a"], "twice"),
    (["site-a", "nowhere"], "nowhere"),
])
def test_job_create_refuses_bad_node_lists(user, nodes3, names, needle):
    with pytest.raises(ValidationFailed) as info:
        job_create(owner=user, name="x", node_names=names, spec=BASE_SPEC)
    assert info.value.field == "nodes" and needle in info.value.message
    assert Job.objects.count() == 0


def test_job_create_refuses_a_disabled_node(user, nodes3):
    node_set_enabled(node=nodes3[2].node, enabled=False)
    with pytest.raises(ValidationFailed) as info:
        create_job(user, nodes3)
    assert info.value.field == "nodes" and "site-c" in info.value.message
    assert Job.objects.count() == 0


def test_job_create_requires_a_name(user, nodes3):
    with pytest.raises(ValidationFailed) as info:
        job_create(owner=user, name="  ", node_names=["site-a"], spec=BASE_SPEC)
    assert info.value.field == "name" and Job.objects.count() == 0


def test_job_create_makes_a_draft_with_defaults_shapes_and_participants(user, nodes3):
    job = create_job(user, nodes3)

    assert job.status == Job.Status.DRAFT and job.owner == user
    assert job.model_params == {"in_features": 30, "num_classes": 2}  # from the nodes' heartbeats
    assert job.optimizer_params == {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False}
    assert (job.rounds, job.local_epochs, job.batch_size, job.buffer_size, job.strategy) == (2, 1, 32, -1, "fedavg")
    assert job.strategy_params == {"weighted": True, "sums": "float32"}
    assert sorted(job.job_nodes.values_list("node__name", "dataset", "status")) == [
        (name, "breast_cancer", "selected") for name in ("site-a", "site-b", "site-c")]
    event = JobEvent.objects.get(job=job)
    assert event.kind == "created" and event.actor == user


def test_job_create_infers_the_largest_class_count_and_keeps_explicit_params(user, nodes3):
    node_heartbeat(node=nodes3[0].node, version="1", datasets=[{**BREAST_CANCER, "num_classes": 5}], resources={})
    assert create_job(user, nodes3).model_params == {"in_features": 30, "num_classes": 5}
    explicit = create_job(user, nodes3, model_params={"num_classes": 7})
    assert explicit.model_params == {"in_features": 30, "num_classes": 7}


def test_job_create_refuses_different_feature_counts(user, nodes3):
    node_heartbeat(node=nodes3[0].node, version="1", datasets=[{**BREAST_CANCER, "n_features": 31}], resources={})
    with pytest.raises(ValidationFailed) as info:
        create_job(user, nodes3)
    assert info.value.field == "dataset" and "feature" in info.value.message


@pytest.mark.parametrize(("field", "value"), [("round_timeout_s", float("nan")), ("val_fraction", float("nan")),
                                              ("rounds", float("inf"))])
def test_job_create_refuses_non_finite_numbers(user, nodes3, field, value):
    with pytest.raises(ValidationFailed) as info:
        create_job(user, nodes3, **{field: value})
    assert info.value.field == field


# --- job_launch / job_start ------------------------------------------------------------------

def test_job_launch_queues_the_job_and_job_start_only_on_commit(job, user, django_capture_on_commit_callbacks, sent):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        launched = job_launch(job=job, actor=user)

    assert launched.status == Job.Status.QUEUED and launched.queued_at is not None
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED
    assert on_commit_tasks(callbacks, sent, "job_start_task") == [(job.pk,)]
    event = JobEvent.objects.filter(job=job, kind="status").get()
    assert event.data == {"from": "draft", "to": "queued", "reason": ""} and event.actor == user


def test_job_launch_of_a_queued_job_is_refused_and_queues_nothing(job, django_capture_on_commit_callbacks, sent):
    job_launch(job=job)
    with django_capture_on_commit_callbacks(execute=False) as callbacks, pytest.raises(JobStateError):
        job_launch(job=job)
    assert on_commit_tasks(callbacks, sent, "job_start_task") == []
    assert JobEvent.objects.filter(job=job, kind="status").count() == 1


def test_job_start_stores_round_zero_and_opens_round_one(job, django_capture_on_commit_callbacks, sent):
    job_launch(job=job)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        returned = job_start(job_id=job.pk)

    job.refresh_from_db()
    assert returned.pk == job.pk
    assert job.status == Job.Status.RUNNING and job.started_at is not None and job.current_round == 1
    v0 = ModelVersion.objects.get(job=job)
    path = artifacts.absolute(v0.path)
    data = path.read_bytes()
    assert v0.round == 0 and v0.sha256 == hashlib.sha256(data).hexdigest() and v0.bytes == len(data)
    assert path.is_relative_to(artifacts.absolute(""))
    expected = build_model("logreg", {"in_features": 30, "num_classes": 2}, seed=job.seed).state_dict()
    got = model_state(v0)
    assert set(got) == {"weight", "bias"} and all(torch.equal(got[k], expected[k]) for k in expected)

    rnd = Round.objects.get(job=job)
    assert (rnd.number, rnd.kind, rnd.status, rnd.model_version) == (1, "train", "open", v0)
    assert sorted(n.name for n in rnd.selected.all()) == ["site-a", "site-b", "site-c"]
    assert rnd.target_updates == 3 and rnd.deadline > timezone.now()
    # every node's agent is asked to start a trainer, after commit; the deadline check too
    assert sorted(on_commit_tasks(callbacks, sent, "agent_start_run_task")) == sorted(
        (pk,) for pk in job.job_nodes.values_list("pk", flat=True))
    assert ("round_deadline_task", (rnd.pk,), {"countdown": 300.0}) in sent.calls


def test_job_start_is_idempotent(started_job):
    counts = (ModelVersion.objects.count(), Round.objects.count(), JobEvent.objects.count())
    assert job_start(job_id=started_job.pk) is None
    assert (ModelVersion.objects.count(), Round.objects.count(), JobEvent.objects.count()) == counts


def test_job_start_with_too_few_online_nodes_fails_the_job(user, make_node):
    nodes = [make_node("site-a"), make_node("site-b", online=False), make_node("site-c", online=False)]
    job = create_job(user, nodes, min_clients=2)
    job_launch(job=job)

    job_start(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and job.finished_at is not None
    assert "only 1 of the job's nodes are online" in job.status_reason and "min_clients is 2" in job.status_reason
    assert not ModelVersion.objects.filter(job=job).exists() and not Round.objects.filter(job=job).exists()
    assert JobEvent.objects.filter(job=job, kind="status").latest("id").data["to"] == "failed"


def test_job_start_fails_the_job_when_round_one_cannot_open(user, nodes3):
    job = create_job(user, nodes3, clients_required=3)
    job_launch(job=job)
    node_set_enabled(node=nodes3[0].node, enabled=False)

    job_start(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "round 1 (train) cannot open: 2 nodes available, clients_required is 3" in job.status_reason
    assert not Round.objects.filter(job=job).exists()


def test_round_samples_clients_per_round_with_the_job_seed(make_started_job):
    job = make_started_job(clients_per_round=2)
    rnd = open_round(job)
    selected = sorted(n.name for n in rnd.selected.all())
    assert len(selected) == 2 and rnd.target_updates == 2
    again = make_started_job(clients_per_round=2)  # same seed, same round: same sample
    assert sorted(n.name for n in open_round(again).selected.all()) == selected


# --- the round protocol ----------------------------------------------------------------------

EVALUATIONS = [(10, 0.5, 0.9), (30, 0.7, 0.8), (60, 0.2, 0.5)]  # per node: examples, loss, accuracy


def test_a_whole_job_runs_train_then_train_evaluating_first_then_the_last_evaluation(started_job, nodes3, tmp_path):
    """2 rounds, evaluation every round: train 1; train 2, whose nodes evaluate version
    1 first (the evaluation of round 1 rides on round 2's updates); evaluate 2, a round
    of its own (nothing follows it); success."""
    job, (a, b, c) = started_job, [cr.node for cr in nodes3]
    weights = {a: 100, b: 200, c: 300}
    fit = {a: {"train_loss": 1.0, "compute_s": 2.0}, b: {"train_loss": 2.0, "compute_s": 5.0},
           c: {"train_loss": 3.0, "compute_s": 1.0}}

    for number in (1, 2):
        train = open_round(job, Round.Kind.TRAIN)
        assert train.number == number and train.evaluate_first == (number == 2)
        states = []
        for i, node in enumerate((a, b, c)):
            train.refresh_from_db()
            assert train.status == Round.Status.OPEN  # not all updates in yet
            n, loss, acc = EVALUATIONS[i]
            update, created, state = submit_train(train, node, tmp_path, seed=10 * number + i,
                                                  num_examples=weights[node], metrics=fit[node],
                                                  evaluation=(n, {"loss": loss, "accuracy": acc}))
            assert created and update.num_examples == weights[node]
            stored = artifacts.absolute(update.path)
            assert update.sha256 == hashlib.sha256(stored.read_bytes()).hexdigest()
            states.append(state)
        closed = close(train)

        assert closed.status == Round.Status.CLOSED and closed.closed_at is not None
        version = ModelVersion.objects.get(job=job, round=number)
        assert closed.result_version == version
        assert version.sha256 == hashlib.sha256(artifacts.absolute(version.path).read_bytes()).hexdigest()
        expected = fedavg(states, [100, 200, 300])
        got = model_state(version)
        for name in expected:
            assert got[name].dtype == torch.float32
            torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)
        # not the plain mean: the weighting matters
        assert not torch.allclose(got["weight"], fedavg(states, [1, 1, 1])["weight"], atol=1e-4)
        metrics = aggregate(job, number, "fit")
        assert metrics["train_loss"] == pytest.approx((100 * 1 + 200 * 2 + 300 * 3) / 600)
        assert metrics["compute_s"] == 5.0  # durations: the slowest node
        assert metrics["num_examples"] == 600 and metrics["num_nodes"] == 3
        if number == 1:  # round 1 started from the initial model: nothing to evaluate first
            assert aggregate(job, 0, "eval") == {} and aggregate(job, 1, "eval") == {}
        else:  # the evaluation of version 1, sent with round 2's updates
            assert_evaluation_of(job, 1)

        job.refresh_from_db()
        if number == 1:
            nxt = open_round(job)
            assert (nxt.number, nxt.kind, nxt.model_version, nxt.evaluate_first) == (2, "train", version, True)
            assert job.status == Job.Status.RUNNING and job.current_round == 2

    evaluate = open_round(job, Round.Kind.EVALUATE)  # the last model has no next round to ride on
    assert evaluate.number == 2 and evaluate.model_version == version and evaluate.target_updates == 3
    for node, (n, loss, acc) in zip((a, b, c), EVALUATIONS):
        _, created = submit_eval(evaluate, node, num_examples=n, metrics={"loss": loss, "accuracy": acc})
        assert created
    close(evaluate)
    assert_evaluation_of(job, 2)

    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job.finished_at is not None
    assert job.final_model == ModelVersion.objects.get(job=job, round=2)
    assert job.status_reason == "2 rounds done"
    assert set(job.job_nodes.values_list("status", flat=True)) == {JobNode.Status.FINISHED}
    assert not Round.objects.filter(job=job, status=Round.Status.OPEN).exists()
    assert Round.objects.filter(job=job, status=Round.Status.CLOSED).count() == 3
    assert task_for_node(job_id=job.pk, node=a)["action"] == "end"


def assert_evaluation_of(job, number):
    """The aggregate of EVALUATIONS, recorded for round `number`."""
    metrics = aggregate(job, number, "eval")
    assert metrics["loss"] == pytest.approx((10 * 0.5 + 30 * 0.7 + 60 * 0.2) / 100)
    assert metrics["accuracy"] == pytest.approx((10 * 0.9 + 30 * 0.8 + 60 * 0.5) / 100)
    assert metrics["num_examples"] == 100 and metrics["num_nodes"] == 3


def test_a_round_that_evaluates_first_refuses_an_update_without_the_evaluation(make_started_job, nodes3, tmp_path):
    job = make_started_job(rounds=3)
    train = open_round(job)
    for i, cr in enumerate(nodes3):
        submit_train(train, cr.node, tmp_path, seed=i, num_examples=10)
    close(train)
    second = open_round(job)
    before = row_counts()
    with pytest.raises(InvalidUpdateError, match="evaluation of model version 1"):
        submit_train(second, nodes3[0].node, tmp_path, seed=5, num_examples=10, evaluation=None)
    assert row_counts() == before  # nothing recorded


def test_evaluate_every_2_evaluates_every_second_model_first(make_started_job, nodes3, tmp_path):
    job = make_started_job(rounds=3, evaluate_every=2)
    for number, evaluates_first in ((1, False), (2, False), (3, True)):
        train = open_round(job)
        assert (train.number, train.kind, train.evaluate_first) == (number, "train", evaluates_first)
        assert train.model_version == ModelVersion.objects.get(job=job, round=number - 1)
        for i, cr in enumerate(nodes3):
            submit_train(train, cr.node, tmp_path, seed=i, num_examples=10)
        close(train)
    assert (open_round(job).number, open_round(job).kind) == (3, "evaluate")  # the last model, always


def test_only_the_last_expected_update_moves_the_round_and_queues_its_close(
        started_job, nodes3, tmp_path, django_capture_on_commit_callbacks, sent):
    train = open_round(started_job)
    queued, statuses = [], []
    for i, cr in enumerate(nodes3):
        with django_capture_on_commit_callbacks(execute=True):
            submit_train(train, cr.node, tmp_path, seed=i, num_examples=10)
        queued.append(sent.args("round_close_task"))
        sent.calls.clear()
        train.refresh_from_db()
        statuses.append(train.status)
    assert queued == [[], [], [(train.pk,)]]  # one task per round, not one per update
    assert statuses == ["open", "open", "aggregating"]
    assert [n.name for n in train.dropped.all()] == []


def test_a_result_whose_round_moved_on_while_it_was_recorded_is_refused_and_leaves_nothing(
        started_job, nodes3, tmp_path, monkeypatch):
    """The round's lock is taken after the inserts; a round that left `open` meanwhile
    (here: moved by the patched event write, as a concurrent deadline would) makes the
    result stale: nothing stays, not even its file."""
    from jobs.services import updates

    train = open_round(started_job)
    record_event = updates.job_event_record

    def meanwhile_the_deadline_passes(**kwargs):
        Round.objects.filter(pk=train.pk).update(status=Round.Status.AGGREGATING)
        return record_event(**kwargs)

    monkeypatch.setattr(updates, "job_event_record", meanwhile_the_deadline_passes)
    before = row_counts()
    with pytest.raises(StaleRound):
        submit_train(train, nodes3[0].node, tmp_path, seed=1, num_examples=10)
    assert row_counts() == before
    assert not list(artifacts.job_dir(started_job.pk).glob("update-*"))


def test_a_duplicate_that_loses_the_race_returns_the_winner_and_leaves_only_its_file(started_job, nodes3, tmp_path):
    """Two uploads of one node checked before either committed: the second insert hits
    the unique constraint; the first update is the answer, and its file stays as it was."""
    from jobs.services.updates import _submission_facts, update_submit

    train, node = open_round(started_job), nodes3[0].node
    seen_before = _submission_facts(train.pk, node)  # what the loser's check saw
    winner, created, _ = submit_train(train, node, tmp_path, seed=1, num_examples=10)
    loser = write_update(perturbed(train, seed=2), tmp_path / "late", "late")
    answer, created_again = update_submit(round_id=train.pk, node=node, upload=loser, num_examples=99, metrics={},
                                          checked=seen_before)
    assert created and not created_again and answer.pk == winner.pk and answer.num_examples == 10
    files = sorted(p.name for p in artifacts.job_dir(started_job.pk).glob("update-*"))
    assert files == [Path(winner.path).name]
    assert hashlib.sha256(artifacts.absolute(winner.path).read_bytes()).hexdigest() == winner.sha256


def test_round_close_is_idempotent(started_job, nodes3, tmp_path):
    train = open_round(started_job)
    for i, cr in enumerate(nodes3):
        submit_train(train, cr.node, tmp_path, seed=i, num_examples=5)
    close(train)
    counts = (ModelVersion.objects.count(), MetricPoint.objects.count(), Round.objects.count())
    assert round_close(round_id=train.pk) is None
    assert (ModelVersion.objects.count(), MetricPoint.objects.count(), Round.objects.count()) == counts


def test_update_submit_refuses_stale_and_unselected_and_repeats_duplicates(make_started_job, make_node, nodes3,
                                                                           tmp_path):
    job = make_started_job(clients_per_round=2)
    train = open_round(job)
    chosen = list(train.selected.all())
    outsider = next(cr.node for cr in nodes3 if cr.node not in chosen)

    first, created, _ = submit_train(train, chosen[0], tmp_path, seed=1, num_examples=7)
    again, created_again, _ = submit_train(train, chosen[0], tmp_path, seed=2, num_examples=99)
    assert created and not created_again and again.pk == first.pk and again.num_examples == 7
    with pytest.raises(NotSelected):
        submit_train(train, outsider, tmp_path, seed=3, num_examples=7)
    round_transition(train, Round.Status.FAILED, reason="test")
    with pytest.raises(StaleRound):
        submit_train(train, chosen[1], tmp_path, seed=4, num_examples=7)
    assert Update.objects.filter(round=train).count() == 1


def test_round_deadline_before_the_deadline_does_nothing(started_job):
    rnd = open_round(started_job)
    assert round_deadline(round_id=rnd.pk) is False
    rnd.refresh_from_db()
    assert rnd.status == Round.Status.OPEN


def test_round_deadline_with_enough_updates_closes_and_records_the_dropped(make_started_job, nodes3, tmp_path):
    job = make_started_job(clients_required=2)
    train = open_round(job)
    a, _b, c = (cr.node for cr in nodes3)
    states = [submit_train(train, node, tmp_path, seed=i, num_examples=n)[2] for i, (node, n) in
              enumerate([(a, 40), (c, 60)])]
    train.refresh_from_db()
    assert train.status == Round.Status.OPEN  # buffer -1: waits for all three
    time_travel_deadline(train)

    assert round_deadline(round_id=train.pk) is True

    train.refresh_from_db()
    assert train.status == Round.Status.AGGREGATING
    assert [n.name for n in train.dropped.all()] == ["site-b"]
    assert train.status_reason == "dropped: site-b"
    round_close(round_id=train.pk)
    got = model_state(ModelVersion.objects.get(job=job, round=1))
    torch.testing.assert_close(got["weight"], fedavg(states, [40, 60])["weight"], rtol=0, atol=1e-6)
    assert aggregate(job, 1, "fit")["num_nodes"] == 2


def test_round_deadline_with_too_few_updates_fails_the_round_and_the_job(make_started_job, nodes3, tmp_path):
    job = make_started_job(clients_required=2)
    train = open_round(job)
    submit_train(train, nodes3[1].node, tmp_path, seed=1, num_examples=40)
    time_travel_deadline(train)

    assert round_deadline(round_id=train.pk) is False

    train.refresh_from_db()
    job.refresh_from_db()
    assert train.status == Round.Status.FAILED and train.closed_at is not None
    assert "1 of 2 required updates" in train.status_reason
    assert "missing: site-a, site-c" in train.status_reason
    assert job.status == Job.Status.FAILED and job.status_reason == train.status_reason
    assert not ModelVersion.objects.filter(job=job, round=1).exists()
    assert round_deadline(round_id=train.pk) is False  # a second run changes nothing
    assert JobEvent.objects.filter(job=job, kind="round_failed").count() == 1


def test_round_deadline_of_the_last_evaluate_round_ends_the_job(make_started_job, nodes3, tmp_path):
    job = make_started_job(rounds=1)
    train = open_round(job)
    for i, cr in enumerate(nodes3):
        submit_train(train, cr.node, tmp_path, seed=i, num_examples=10)
    close(train)
    evaluate = open_round(job, Round.Kind.EVALUATE)
    submit_eval(evaluate, nodes3[0].node, num_examples=10, metrics={"loss": 0.3})
    time_travel_deadline(evaluate)

    assert round_deadline(round_id=evaluate.pk) is True
    round_close(round_id=evaluate.pk)

    assert aggregate(job, 1, "eval") == {"loss": 0.3, "num_examples": 10.0, "num_nodes": 1.0}
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED


# --- task_for_node -------------------------------------------------------------------------

TASK_KEYS = {"action", "job_id", "round_id", "round", "model_version", "model_url", "sha256", "deadline", "config"}
TRAIN_TASK_KEYS = TASK_KEYS | {"evaluate_first", "weights"}  # a small model travels inside the task
CONFIG_KEYS = {"model", "model_params", "optimizer", "optimizer_params", "local_epochs", "batch_size", "dataset",
               "val_fraction", "seed", "strategy", "proximal_mu"}


def test_task_for_node_train_wait_evaluate_end(started_job, nodes3, tmp_path, make_node):
    job, a = started_job, nodes3[0].node
    train = open_round(job)
    task = task_for_node(job_id=job.pk, node=a)
    assert set(task) == TRAIN_TASK_KEYS and set(task["config"]) == CONFIG_KEYS
    v0 = ModelVersion.objects.get(job=job, round=0)
    assert task["action"] == "train" and (task["job_id"], task["round_id"], task["round"]) == (job.pk, train.pk, 1)
    assert task["model_version"] == 0 and task["sha256"] == v0.sha256 and task["evaluate_first"] is False
    assert base64.b64decode(task["weights"]) == artifacts.absolute(v0.path).read_bytes()
    assert task["model_url"] == f"/api/v1/fl/jobs/{job.pk}/models/0"
    assert task["config"]["model_params"] == {"in_features": 30, "num_classes": 2}
    assert task["config"]["dataset"] == "breast_cancer" and task["config"]["proximal_mu"] == 0.0

    submit_train(train, a, tmp_path, seed=1, num_examples=10)
    assert task_for_node(job_id=job.pk, node=a) == {"action": "wait", "retry_after": 1.0}
    assert task_for_node(job_id=job.pk, node=nodes3[1].node)["action"] == "train"

    for i, cr in enumerate(nodes3[1:]):
        submit_train(train, cr.node, tmp_path, seed=2 + i, num_examples=10)
    close(train)
    task = task_for_node(job_id=job.pk, node=a)
    assert (task["action"], task["round"], task["model_version"], task["evaluate_first"]) == ("train", 2, 1, True)

    with pytest.raises(NotFound):
        task_for_node(job_id=job.pk, node=make_node("site-z").node)

    job_cancel(job=job, reason="enough")
    assert task_for_node(job_id=job.pk, node=a) == {"action": "end", "reason": "job cancelled: enough"}


def test_a_model_above_the_inline_limit_is_downloaded_not_sent_in_the_task(started_job, nodes3, settings):
    v0 = ModelVersion.objects.get(job=started_job, round=0)
    settings.FLPORTAL_INLINE_MODEL_BYTES = v0.bytes - 1
    task = task_for_node(job_id=started_job.pk, node=nodes3[0].node)
    assert set(task) == TRAIN_TASK_KEYS - {"weights"} and task["model_url"].endswith("/models/0")
    settings.FLPORTAL_INLINE_MODEL_BYTES = v0.bytes
    assert "weights" in task_for_node(job_id=started_job.pk, node=nodes3[0].node)


def test_task_for_node_tells_an_unselected_node_to_wait(make_started_job, nodes3):
    job = make_started_job(clients_per_round=2)
    selected = set(open_round(job).selected.all())
    (outsider,) = [cr.node for cr in nodes3 if cr.node not in selected]
    assert task_for_node(job_id=job.pk, node=outsider)["action"] == "wait"
    assert {task_for_node(job_id=job.pk, node=n)["action"] for n in selected} == {"train"}


# --- job_cancel ------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [[], [Job.Status.QUEUED]])
def test_job_cancel_from_draft_and_queued(job, user, path):
    for status in path:
        job_transition(job, status)
    cancelled = job_cancel(job=job, actor=user)
    job.refresh_from_db()
    assert cancelled.status == job.status == Job.Status.CANCELLED
    assert job.status_reason == f"cancelled by {user}" and job.finished_at is not None
    assert JobEvent.objects.filter(job=job, kind="status").latest("id").actor == user


def test_job_cancel_of_a_running_job_fails_its_round_and_stops_the_trainers(started_job, user,
                                                                            django_capture_on_commit_callbacks, sent):
    jn = started_job.job_nodes.get(node__name="site-b")
    job_node_run_started(job_node_id=jn.pk, run_id="run-1")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job_cancel(job=started_job, actor=user, reason="wrong data")

    started_job.refresh_from_db()
    assert started_job.status == Job.Status.CANCELLED and started_job.status_reason == "wrong data"
    rnd = Round.objects.get(job=started_job)
    assert rnd.status == Round.Status.FAILED and rnd.status_reason == "job cancelled"
    assert on_commit_tasks(callbacks, sent, "agent_stop_run_task") == [(jn.pk,)]  # only the node with a run


def test_job_cancel_of_an_ended_job_is_refused(started_job, user):
    job_cancel(job=started_job)
    with pytest.raises(JobStateError):
        job_cancel(job=started_job, actor=user)


def test_job_cancel_of_a_succeeded_job_is_refused(job, user):
    for status in (Job.Status.QUEUED, Job.Status.RUNNING, Job.Status.SUCCEEDED):
        job_transition(job, status)
    with pytest.raises(JobStateError):
        job_cancel(job=job, actor=user)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED


# --- the watchdog --------------------------------------------------------------------------

@pytest.fixture
def queued_tasks(sent):
    """The tasks the sweep queues, recorded. The sweep runs outside any transaction in
    a worker, so they go at once; here the test's transaction holds them until the
    sweep returns (`sweep`)."""
    return sent


def sweep(django_capture_on_commit_callbacks) -> dict:
    with django_capture_on_commit_callbacks(execute=True):
        return watchdog_sweep()


def test_watchdog_with_nothing_to_do(started_job, queued_tasks):
    done = watchdog_sweep()
    assert done == {"offline": [], "deadline": [], "aggregating": [], "queued": [], "trainers": [], "failed": []}
    started_job.refresh_from_db()
    assert started_job.status == Job.Status.RUNNING


def listening_for(seconds: float) -> None:
    """The watchdog has swept without a gap for `seconds` (its clock row)."""
    now = timezone.now()
    WatchdogClock.objects.update_or_create(pk=1, defaults={"last_sweep_at": now,
                                                           "listening_since": now - timedelta(seconds=seconds)})


def test_watchdog_marks_silent_nodes_offline(nodes3, settings, queued_tasks):
    settings.FLPORTAL_NODE_OFFLINE_AFTER_S = 15
    listening_for(3600)
    Node.objects.filter(name="site-b").update(last_heartbeat_at=timezone.now() - timedelta(seconds=16))
    done = watchdog_sweep()
    assert done["offline"] == ["site-b"]
    assert dict(Node.objects.values_list("name", "status")) == {"site-a": "online", "site-b": "offline",
                                                                "site-c": "online"}
    assert watchdog_sweep()["offline"] == []


def test_after_the_portal_was_down_nodes_get_a_full_timeout_to_be_heard_again(nodes3, settings, queued_tasks):
    """A portal-tier restart: no heartbeat could land while it was down; the first sweeps
    after it must not mark every node offline before their heartbeats come in."""
    settings.FLPORTAL_NODE_OFFLINE_AFTER_S, settings.WATCHDOG_INTERVAL_S = 15, 5
    now = timezone.now()
    WatchdogClock.objects.create(pk=1, last_sweep_at=now - timedelta(seconds=60),
                                 listening_since=now - timedelta(days=1))
    Node.objects.update(last_heartbeat_at=now - timedelta(seconds=40))  # silent: the portal was down 60 s
    assert watchdog_sweep()["offline"] == []  # a gap: it listens anew from now
    assert WatchdogClock.objects.get().listening_since >= now
    assert watchdog_sweep()["offline"] == []
    WatchdogClock.objects.update(listening_since=now - timedelta(seconds=16))  # a full timeout later
    assert sorted(watchdog_sweep()["offline"]) == ["site-a", "site-b", "site-c"]


def test_watchdog_redrives_an_overdue_round(started_job, queued_tasks, django_capture_on_commit_callbacks):
    rnd = open_round(started_job)
    time_travel_deadline(rnd, seconds_ago=5)  # past the 2 s grace

    done = sweep(django_capture_on_commit_callbacks)

    assert done["deadline"] == [rnd.pk] and queued_tasks.args("round_deadline_task") == [(rnd.pk,)]
    assert "past its deadline" in JobEvent.objects.get(job=started_job, kind="redrive").message
    tasks.round_deadline_task(rnd.pk)  # what the worker then runs: the task body, in-process
    rnd.refresh_from_db()
    started_job.refresh_from_db()
    assert rnd.status == Round.Status.FAILED and started_job.status == Job.Status.FAILED
    assert "missing: site-a, site-b, site-c" in started_job.status_reason


def test_watchdog_redrives_a_round_stuck_aggregating_and_a_job_stuck_queued(started_job, job, make_job, settings,
                                                                           queued_tasks,
                                                                           django_capture_on_commit_callbacks):
    settings.FLPORTAL_STUCK_AFTER_S = 60
    rnd = open_round(started_job)
    round_transition(rnd, Round.Status.AGGREGATING)
    Round.objects.filter(pk=rnd.pk).update(aggregating_at=timezone.now() - timedelta(seconds=61))
    queued = make_job()
    job_launch(job=queued)
    Job.objects.filter(pk=queued.pk).update(queued_at=timezone.now() - timedelta(seconds=61))

    done = sweep(django_capture_on_commit_callbacks)

    assert done["aggregating"] == [rnd.pk] and queued_tasks.args("round_close_task") == [(rnd.pk,)]
    redrive = JobEvent.objects.get(job=started_job, kind="redrive")
    assert redrive.data == {"round": 1, "kind": "train"} and "nobody is" in redrive.message
    assert done["queued"] == [queued.pk] and queued_tasks.args("job_start_task") == [(queued.pk,)]
    assert done["failed"] == []


def test_watchdog_fails_a_running_job_with_no_round_in_flight(started_job, queued_tasks):
    round_transition(open_round(started_job), Round.Status.FAILED, reason="lost")

    done = watchdog_sweep()

    assert done["failed"] == [started_job.pk]
    started_job.refresh_from_db()
    assert started_job.status == Job.Status.FAILED
    assert started_job.status_reason == "no round in flight and none can be opened (watchdog)"
    assert watchdog_sweep()["failed"] == []


def test_a_round_whose_aggregation_keeps_failing_ends_the_job(started_job, nodes3, tmp_path, settings,
                                                              monkeypatch, queued_tasks):
    train = open_round(started_job)
    for i, cr in enumerate(nodes3):
        submit_train(train, cr.node, tmp_path, seed=i, num_examples=10)
    train.refresh_from_db()
    assert train.status == Round.Status.AGGREGATING  # the last update moved it

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifacts, "write_model", disk_full)
    settings.FLPORTAL_STUCK_AFTER_S = 60
    for _ in range(4):  # the first attempt, then the watchdog's re-drives
        try:
            tasks.round_close_task(train.pk)
        except OSError:
            pass
        Round.objects.filter(pk=train.pk).update(aggregating_at=timezone.now() - timedelta(seconds=61))
        watchdog_sweep()

    started_job.refresh_from_db()
    assert started_job.status == Job.Status.FAILED
    assert "No space left" in started_job.status_reason or "aggregat" in started_job.status_reason


@pytest.mark.parametrize("ending", ["deadline", "cancel"])
def test_a_round_that_evaluated_first_and_fails_still_aggregates_the_evaluation_it_got(
        make_started_job, nodes3, tmp_path, ending):
    job = make_started_job(rounds=3, clients_required=3)
    train = open_round(job)
    for i, cr in enumerate(nodes3):
        submit_train(train, cr.node, tmp_path, seed=i, num_examples=10)
    close(train)
    second = open_round(job)
    for i, cr in enumerate(nodes3[:2]):  # site-c never answers
        submit_train(second, cr.node, tmp_path, seed=5 + i, num_examples=10,
                     evaluation=(20 * (i + 1), {"loss": 0.1 * (i + 1)}))
    if ending == "deadline":
        time_travel_deadline(second)
        assert round_deadline(round_id=second.pk) is False
    else:
        job_cancel(job=job, reason="stop")
    second.refresh_from_db()
    assert second.status == Round.Status.FAILED
    assert aggregate(job, 1, "eval") == {"loss": pytest.approx((20 * 0.1 + 40 * 0.2) / 60), "num_examples": 60.0,
                                         "num_nodes": 2.0}
    assert aggregate(job, 2, "fit") == {}  # a failed round's training is no model
