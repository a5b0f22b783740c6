"""What nodes send: updates (weights, with the evaluation of the model they started
from), evaluations (metrics), cross-site results, log lines."""
import math
from dataclasses import dataclass
from pathlib import Path

from django.db import IntegrityError, connection, transaction

from core.errors import NotFound
from jobs.exceptions import InvalidUpdateError, LogQuotaExceeded, NotSelected, StaleRound, StorageUnavailable
from jobs.models import CrossSiteResult, Job, JobEvent, JobNode, MetricPoint, ModelVersion, Round, Update
from jobs.services import artifacts
from jobs.services.job_events import job_event_record
from jobs.services.metrics import metric_points_record
from jobs.services.node_tasks import local_models
from jobs.services.rounds import round_close_when_complete, round_lock
from nodes.models import Node

MAX_METRICS = 64
#: A trainer's log reaches the portal in batches: at most 200 lines of 1000 characters
#: each (about 200 KB), 500 batches per node and job.
MAX_LOG_LINES, MAX_LOG_LINE, MAX_LOG_BATCHES = 200, 1000, 500
#: The largest magnitude a metric may have. Bounded at the door so that a round's
#: weighted aggregate (at most 2**31 - 1 examples a node) cannot overflow to infinity,
#: which no JSON answer could carry.
MAX_METRIC_ABS = 1e15


@dataclass(frozen=True)
class Submission:
    """What the checks of a node's result need to know of the round it submits to, read
    in one statement before the body is received (`submission_round`), and handed on
    to the service that stores the result, which does not read it again."""

    round_id: int
    job_id: int
    number: int
    kind: str
    status: str
    evaluate_first: bool
    model_path: str  # the model version the round started from: its file and digest
    model_sha256: str
    existing_update_id: int | None  # the node's result for this round, if it sent one
    node_selected: bool

    @property
    def metric_phase(self) -> str | None:
        return Round.phase_of(self.kind)


def submission_round(*, round_id: int, node: Node, kind: str) -> tuple[Submission, Update | None]:
    """The round a node submits to, checked before the body is validated and stored (one query):
    returns its Submission facts and the node's existing update (a duplicate is answered as
    before). Raises NotFound (not the node's job), NotSelected (403) or StaleRound (409)."""
    facts = _submission_facts(round_id, node)
    _check_kind(facts, kind)
    if facts.existing_update_id:
        return facts, Update.objects.get(pk=facts.existing_update_id)
    _check_open_and_selected(facts, node)
    return facts, None


#: The round a node submits to, with what the checks need (its model version's file, the
#: node's update if any, whether it is selected), in one statement written out: built by
#: the ORM (annotations, select_related) it was about a fifth of an upload's CPU
#: (cProfile of the upload view on PostgreSQL, docs/PERFORMANCE.md).
_SUBMISSION_SQL = f"""
SELECT r.id, r.job_id, r.number, r.kind, r.status, r.evaluate_first, mv.path, mv.sha256,
       (SELECT u.id FROM {Update._meta.db_table} u WHERE u.round_id = r.id AND u.node_id = %s),
       EXISTS (SELECT 1 FROM {Round.selected.through._meta.db_table} s
               WHERE s.round_id = r.id AND s.node_id = %s)
FROM {Round._meta.db_table} r JOIN {ModelVersion._meta.db_table} mv ON mv.id = r.model_version_id
WHERE r.id = %s AND EXISTS (SELECT 1 FROM {JobNode._meta.db_table} jn WHERE jn.job_id = r.job_id AND jn.node_id = %s)
"""


def _submission_facts(round_id: int, node: Node) -> Submission:
    """The Submission facts of a round of one of the node's jobs; raises NotFound."""
    with connection.cursor() as cursor:
        cursor.execute(_SUBMISSION_SQL, [node.pk, node.pk, round_id, node.pk])
        row = cursor.fetchone()
    if row is None:
        raise NotFound(f"no round {round_id} in any job of node {node.name}")
    *head, evaluate_first, path, sha256, existing, selected = row
    return Submission(*head, evaluate_first=bool(evaluate_first), model_path=path, model_sha256=sha256,
                      existing_update_id=existing, node_selected=bool(selected))


def _check_kind(facts: Submission, kind: str) -> None:
    if facts.kind != kind:
        raise InvalidUpdateError(f"round {facts.number} is a {facts.kind} round; this endpoint takes {kind} results")


def _check_open_and_selected(facts: Submission, node: Node) -> None:
    if not facts.node_selected:
        raise NotSelected(f"node {node.name} is not selected for round {facts.number} of job {facts.job_id}")
    _check_open(facts.status, facts)


def _check_open(status: str, facts: Submission) -> None:
    if status != Round.Status.OPEN:
        raise StaleRound(f"round {facts.number} ({facts.kind}) of job {facts.job_id} is {status}, not open")


def check_evaluation(facts: Submission, evaluation) -> None:
    """A train round that evaluates first needs the evaluation of the model it started
    from (`evaluation`: (num_examples, metrics)); raises InvalidUpdateError."""
    if facts.kind == Round.Kind.TRAIN and facts.evaluate_first and evaluation is None:
        raise InvalidUpdateError(f"round {facts.number} asks for the evaluation of model version {facts.number - 1} "
                                 "with the update: send X-Eval-Examples and X-Eval-Metrics")


def clean_metrics(metrics, field: str = "metrics") -> dict[str, float]:
    """Metric names and finite numbers of at most MAX_METRIC_ABS only; raises
    InvalidUpdateError otherwise."""
    if not isinstance(metrics, dict) or len(metrics) > MAX_METRICS:
        raise InvalidUpdateError(f"{field}: must be an object of at most {MAX_METRICS} name: number pairs",
                                 field=field)
    out = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise InvalidUpdateError(f"{field}: names must be strings of 1 to 64 characters", field=field)
        try:
            number = float(value) if not isinstance(value, bool) and isinstance(value, (int, float)) else math.nan
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise InvalidUpdateError(f"{field}.{name}: must be a finite number", field=f"{field}.{name}")
        if abs(number) > MAX_METRIC_ABS:
            raise InvalidUpdateError(f"{field}.{name}: must be between -{MAX_METRIC_ABS:g} and {MAX_METRIC_ABS:g}",
                                     field=f"{field}.{name}")
        out[name] = number
    return out


MAX_EXAMPLES = 2**31 - 1


def check_num_examples(value, field: str) -> int:
    """A positive integer that fits the database column; raises InvalidUpdateError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_EXAMPLES:
        raise InvalidUpdateError(f"{field}: must be an integer from 1 to {MAX_EXAMPLES}", field=field)
    return value


def update_submit(*, round_id: int, node: Node, upload: Path | None, num_examples: int,
                  metrics: dict[str, float], evaluation: tuple[int, dict[str, float]] | None = None,
                  upload_sha256: str | None = None, checked: Submission | None = None) -> tuple[Update, bool]:
    """Accept a node's validated result for a round: weights (`upload`) for a train
    round, with the evaluation of the model it started from (`evaluation`) when the
    round evaluates first; metrics only for an evaluate round. Returns (update,
    created); a duplicate returns the first update unchanged. The round's last expected
    result moves it to aggregating and queues its close. Raises NotSelected,
    StaleRound or InvalidUpdateError (an evaluation missing). `checked`: the round as
    `submission_round` returned them for this node just before (not read again)."""
    kind = Round.Kind.TRAIN if upload else Round.Kind.EVALUATE

    def record(facts: Submission) -> Update:
        check_evaluation(facts, evaluation)
        results = [(facts.number, facts.metric_phase, metrics | {"num_examples": float(num_examples)})]
        if evaluation is not None and facts.evaluate_first:
            results.append((facts.number - 1, MetricPoint.Phase.EVAL,
                            evaluation[1] | {"num_examples": float(evaluation[0])}))
        metric_points_record(job_id=facts.job_id, node=node, results=results)
        # The file is moved last: from here on `_accept` or the except below discards it
        # when the transaction rolls back.
        stored = (artifacts.keep_update(facts.job_id, facts.number, facts.kind, node.name, upload, upload_sha256)
                  if upload else ("", "", 0))
        try:
            return Update.objects.create(round_id=facts.round_id, node=node, path=stored[0], sha256=stored[1],
                                         bytes=stored[2], num_examples=num_examples)
        except BaseException:  # a concurrent duplicate won (IntegrityError), or the database failed
            artifacts.discard(stored[0])
            raise

    return _accept(round_id, node, kind, record, checked)


def cross_site_submit(*, round_id: int, node: Node, results: list[dict]) -> tuple[Update, bool]:
    """Accept a node's cross-site validation results: [{"source", "num_examples",
    "metrics"}] for exactly the sources its task listed (cleaned by the caller)."""

    def record(facts: Submission) -> Update:
        expected = {"global"} | set(local_models(facts.job_id))
        if {r["source"] for r in results} != expected or len(results) != len(expected):
            raise InvalidUpdateError(f"results: expected one per model source: {', '.join(sorted(expected))}")
        CrossSiteResult.objects.bulk_create([
            CrossSiteResult(job_id=facts.job_id, evaluator=node, source=r["source"], name=name, value=value,
                            num_examples=r["num_examples"]) for r in results for name, value in r["metrics"].items()])
        return Update.objects.create(round_id=facts.round_id, node=node,
                                     num_examples=max(r["num_examples"] for r in results))

    return _accept(round_id, node, Round.Kind.CROSS_SITE, record)


def _accept(round_id: int, node: Node, kind: str, record, checked: Submission | None = None) -> tuple[Update, bool]:
    """The idempotent duplicate answer and the kind/selected/open checks
    (`submission_round`, unless the caller passed the facts it `checked`), then
    `record(facts)` and an event, then, under the round's row lock, the open check again
    and the close check. The lock is taken last, so that it is held for two statements
    and the commit, not for every insert: the results of a round's nodes arrive
    together and would wait for each other (measured: the slowest upload of 10 waited
    for the other 9, bench/round_overhead.py). It still orders every result before the
    round's move to aggregating: a result is committed only while the round is open."""
    try:
        with transaction.atomic():
            facts, existing = (checked, None) if checked else submission_round(round_id=round_id, node=node, kind=kind)
            if existing is not None:
                return existing, False
            update = record(facts)
            try:
                job_event_record(job_id=facts.job_id, kind="update_accepted", node=node,
                                 message=f"{facts.kind} result from {node.name} for round {facts.number}",
                                 data={"round": facts.number, "kind": facts.kind, "num_examples": update.num_examples})
                rnd = round_lock(round_id)
                _check_open(rnd.status, facts)  # it may have moved on while this result was recorded
                round_close_when_complete(rnd)
            except BaseException:  # the transaction rolls back: the file goes too
                artifacts.discard(update.path)
                raise
            return update, True
    except IntegrityError:  # a concurrent duplicate won the race
        return Update.objects.get(round_id=round_id, node=node), False


def storage_failed(*, facts: Submission, node: Node, error: OSError) -> StorageUnavailable:
    """Record that the portal's artifact storage failed to take a node's result for a
    round (an event, so the round's failure, if it comes to that, names the portal, not
    the node) and return the error to answer the node with (503: it retries)."""
    job_event_record(job_id=facts.job_id, kind="storage_failed", node=node,
                     message=f"the portal could not store {node.name}'s result for round {facts.number}: {error}",
                     data={"round": facts.number, "kind": facts.kind, "error": str(error)[:500]})
    return StorageUnavailable(f"the portal could not store the result ({error.strerror or error}); send it again")


def cross_site_model(*, round_id: int, node: Node, source: str):
    """A node's last local model, for a node selected in an open cross-site round of
    the same job. Raises NotFound / NotSelected / StaleRound."""
    facts, _ = submission_round(round_id=round_id, node=node, kind=Round.Kind.CROSS_SITE)
    if facts.status != Round.Status.OPEN:
        raise StaleRound(f"cross-site round of job {facts.job_id} is {facts.status}")
    found = local_models(facts.job_id).get(source)
    if found is None:
        raise NotFound(f"no local model of {source!r} in job {facts.job_id}")
    return found


def clean_cross_site_results(results) -> list[dict]:
    if not isinstance(results, list) or not 0 < len(results) <= 1000:
        raise InvalidUpdateError("results: must be a non-empty list of {source, num_examples, metrics}")
    cleaned = []
    for i, item in enumerate(results):
        if not isinstance(item, dict) or not isinstance(item.get("source"), str):
            raise InvalidUpdateError(f"results[{i}]: must be an object with a source")
        cleaned.append({"source": item["source"], "num_examples": check_num_examples(item.get("num_examples"),
                                                                                    f"results[{i}].num_examples"),
                        "metrics": clean_metrics(item.get("metrics"))})
    return cleaned


def logs_append(*, job_id: int, node: Node, lines: list[str]) -> None:
    """Store a batch of a trainer's log lines as one event, while the job has not
    ended: at most MAX_LOG_LINES lines of at most MAX_LOG_LINE characters (longer ones
    are cut), MAX_LOG_BATCHES batches per node and job. Raises NotFound, InvalidUpdateError,
    StaleRound (the job ended: 409) or LogQuotaExceeded (413)."""
    job = Job.objects.filter(pk=job_id, job_nodes__node=node).first()
    if job is None:
        raise NotFound(f"node {node.name} takes no part in job {job_id}")
    if job.is_terminal:
        raise StaleRound(f"job {job_id} is {job.status}: it takes no more logs")
    if (not isinstance(lines, list) or not 0 < len(lines) <= MAX_LOG_LINES
            or not all(isinstance(x, str) for x in lines)):
        raise InvalidUpdateError(f"lines: must be a list of 1 to {MAX_LOG_LINES} strings", field="lines")
    if JobEvent.objects.filter(job=job, node=node, kind="log").count() >= MAX_LOG_BATCHES:
        raise LogQuotaExceeded(f"node {node.name} has sent the {MAX_LOG_BATCHES} log batches a job takes")
    job_event_record(job=job, kind="log", message="\n".join(line[:MAX_LOG_LINE] for line in lines), node=node)
