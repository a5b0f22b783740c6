"""What nodes send: updates (weights, with the evaluation of the model they started
from), evaluations (metrics), cross-site results, log lines."""
import math
from pathlib import Path

from django.db import IntegrityError, transaction

from flportal.errors import NotFound
from flportal.sql import locked_value
from jobs.exceptions import InvalidUpdateError, NotSelected, StaleRound
from jobs.models import CrossSiteResult, Job, JobNode, MetricPoint, ModelVersion, Round, Update
from jobs.services import artifacts
from jobs.services.jobs import job_event_record
from jobs.services.metrics import metric_points_record
from jobs.services.node_tasks import cross_site_sources
from jobs.services.rounds import round_close_when_complete
from nodes.models import Node

MAX_METRICS = 64
MAX_LOG_LINES = 200


def submission_round(*, round_id: int, node: Node, kind: str) -> tuple[Round, Update | None]:
    """The round a node submits to, checked before the body is validated and stored (one query):
    returns the round and the node's existing update (a duplicate is answered as
    before). Raises NotFound (not the node's job), NotSelected (403) or StaleRound (409)."""
    rnd = _submission_facts(round_id, node)
    _check_kind(rnd, kind)
    if rnd.existing_update_id:
        return rnd, Update.objects.get(pk=rnd.existing_update_id)
    _check_open_and_selected(rnd, node)
    return rnd, None


#: The round a node submits to, with what the checks need (its model version's file, the
#: node's update if any, whether it is selected), in one statement written out: built by
#: the ORM (annotations, select_related) it was about a fifth of an upload's CPU
#: (cProfile of the upload view on PostgreSQL).
_SUBMISSION_SQL = f"""
SELECT r.id, r.job_id, r.number, r.kind, r.status, r.status_reason, r.evaluate_first, r.target_updates,
       r.model_version_id, r.aggregating_at, r.closed_at,
       mv.round AS mv_round, mv.path AS mv_path, mv.sha256 AS mv_sha256,
       (SELECT u.id FROM {Update._meta.db_table} u WHERE u.round_id = r.id AND u.node_id = %s) AS existing_update_id,
       EXISTS (SELECT 1 FROM {Round.selected.through._meta.db_table} s
               WHERE s.round_id = r.id AND s.node_id = %s) AS node_selected
FROM {Round._meta.db_table} r JOIN {ModelVersion._meta.db_table} mv ON mv.id = r.model_version_id
WHERE r.id = %s AND EXISTS (SELECT 1 FROM {JobNode._meta.db_table} jn WHERE jn.job_id = r.job_id AND jn.node_id = %s)
"""

def _submission_facts(round_id: int, node: Node) -> Round:
    """The round (of one of the node's jobs) with `existing_update_id`, `node_selected`,
    its job (the id only) and its model version (round, path, sha256) attached. Raises
    NotFound."""
    rnd = next(iter(Round.objects.raw(_SUBMISSION_SQL, [node.pk, node.pk, round_id, node.pk])), None)
    if rnd is None:
        raise NotFound(f"no round {round_id} in any job of node {node.name}")
    db = rnd._state.db
    rnd.job = Job.from_db(db, ["id"], [rnd.job_id])  # the others load if read: deferred, not wrong
    rnd.model_version = ModelVersion.from_db(db, ["id", "job_id", "round", "path", "sha256"],
                                             [rnd.model_version_id, rnd.job_id, rnd.mv_round, rnd.mv_path, rnd.mv_sha256])
    return rnd


def _check_kind(rnd: Round, kind: str) -> None:
    if rnd.kind != kind:
        raise InvalidUpdateError(f"round {rnd.number} is a {rnd.kind} round; this endpoint takes {kind} results")


def _check_open_and_selected(rnd: Round, node: Node) -> None:
    if not rnd.node_selected:
        raise NotSelected(f"node {node.name} is not selected for round {rnd.number} of job {rnd.job_id}")
    if rnd.status != Round.Status.OPEN:
        raise StaleRound(f"round {rnd.number} ({rnd.kind}) of job {rnd.job_id} is {rnd.status}, not open")


def check_evaluation(rnd: Round, evaluation) -> None:
    """A train round that evaluates first needs the evaluation of the model it started
    from (`evaluation`: (num_examples, metrics)); raises InvalidUpdateError."""
    if rnd.kind == Round.Kind.TRAIN and rnd.evaluate_first and evaluation is None:
        raise InvalidUpdateError(f"round {rnd.number} asks for the evaluation of model version {rnd.number - 1} "
                                 "with the update: send X-Eval-Examples and X-Eval-Metrics")


def clean_metrics(metrics, field: str = "metrics") -> dict[str, float]:
    """Metric names and finite numbers only; raises InvalidUpdateError otherwise."""
    if not isinstance(metrics, dict) or len(metrics) > MAX_METRICS:
        raise InvalidUpdateError(f"{field}: must be an object of at most {MAX_METRICS} name: number pairs")
    out = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise InvalidUpdateError(f"{field}: names must be strings of 1 to 64 characters")
        try:
            number = float(value) if not isinstance(value, bool) and isinstance(value, (int, float)) else math.nan
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise InvalidUpdateError(f"{field}.{name}: must be a finite number")
        out[name] = number
    return out


MAX_EXAMPLES = 2**31 - 1


def check_num_examples(value, field: str) -> int:
    """A positive integer that fits the database column; raises InvalidUpdateError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_EXAMPLES:
        raise InvalidUpdateError(f"{field}: must be an integer from 1 to {MAX_EXAMPLES}")
    return value


def update_submit(*, round_id: int, node: Node, upload: Path | None, num_examples: int,
                  metrics: dict[str, float], evaluation: tuple[int, dict[str, float]] | None = None,
                  upload_sha256: str | None = None, checked: Round | None = None) -> tuple[Update, bool]:
    """Accept a node's validated result for a round: weights (`upload`) for a train
    round, with the evaluation of the model it started from (`evaluation`) when the
    round evaluates first; metrics only for an evaluate round. Returns (update,
    created); a duplicate returns the first update unchanged. The round's last expected
    result moves it to aggregating and queues its close. Raises NotSelected,
    StaleRound or InvalidUpdateError (an evaluation missing). `checked`: the round as
    `submission_round` returned it for this node just before (it is not read again)."""
    kind = Round.Kind.TRAIN if upload else Round.Kind.EVALUATE

    def record(rnd: Round) -> Update:
        check_evaluation(rnd, evaluation)
        stored = (artifacts.keep_update(rnd.job_id, rnd.number, rnd.kind, node.name, upload, upload_sha256)
                  if upload else ("", "", 0))
        try:
            update = Update.objects.create(round=rnd, node=node, path=stored[0], sha256=stored[1], bytes=stored[2],
                                           num_examples=num_examples)
        except BaseException:  # a concurrent duplicate won (IntegrityError), or the database failed
            artifacts.discard(stored[0])
            raise
        phase = MetricPoint.Phase.FIT if rnd.kind == Round.Kind.TRAIN else MetricPoint.Phase.EVAL
        results = [(rnd.number, phase, metrics | {"num_examples": float(num_examples)})]
        if evaluation is not None and rnd.evaluate_first:
            results.append((rnd.number - 1, MetricPoint.Phase.EVAL, evaluation[1] | {"num_examples": float(evaluation[0])}))
        metric_points_record(job_id=rnd.job_id, node=node, results=results)
        return update

    return _accept(round_id, node, kind, record, checked)


def cross_site_submit(*, round_id: int, node: Node, results: list[dict]) -> tuple[Update, bool]:
    """Accept a node's cross-site validation results: [{"source", "num_examples",
    "metrics"}] for exactly the sources its task listed (cleaned by the caller)."""

    def record(rnd: Round) -> Update:
        expected = {source for source, _ in cross_site_sources(rnd)}
        if {r["source"] for r in results} != expected or len(results) != len(expected):
            raise InvalidUpdateError(f"results: expected one per model source: {', '.join(sorted(expected))}")
        CrossSiteResult.objects.bulk_create([
            CrossSiteResult(job_id=rnd.job_id, evaluator=node, source=r["source"], name=name, value=value,
                            num_examples=r["num_examples"]) for r in results for name, value in r["metrics"].items()])
        return Update.objects.create(round=rnd, node=node, num_examples=max(r["num_examples"] for r in results))

    return _accept(round_id, node, Round.Kind.CROSS_SITE, record)


def _accept(round_id: int, node: Node, kind: str, record, checked: Round | None = None) -> tuple[Update, bool]:
    """The idempotent duplicate answer and the kind/selected/open checks, then
    `record(round)` and an event, then, under the round's row lock, the open check again
    and the close check. The lock is taken last, so that it is held for two statements
    and the commit, not for every insert: the results of a round's nodes arrive
    together and would wait for each other (measured: the slowest upload of 10 waited
    for the other 9, bench/round_overhead.py). It still orders every result before the
    round's move to aggregating: a result is committed only while the round is open.
    (Its count is a statement of its own, after the lock: in READ COMMITTED a statement
    that waited for a lock still reads from its snapshot of before the wait.)"""
    try:
        with transaction.atomic():
            rnd = checked or _submission_facts(round_id, node)
            _check_kind(rnd, kind)
            if rnd.existing_update_id:
                return Update.objects.get(pk=rnd.existing_update_id), False
            _check_open_and_selected(rnd, node)
            update = record(rnd)
            try:
                job_event_record(job=rnd.job, kind="update_accepted", node=node,
                                 message=f"{rnd.kind} result from {node.name} for round {rnd.number}",
                                 data={"round": rnd.number, "kind": rnd.kind, "num_examples": update.num_examples})
                rnd.status = locked_value(Round, "status", round_id)
                _check_open_and_selected(rnd, node)  # it may have moved on while this result was recorded
                round_close_when_complete(rnd)
            except BaseException:  # the transaction rolls back: the file goes too
                artifacts.discard(update.path)
                raise
            return update, True
    except IntegrityError:  # a concurrent duplicate won the race
        return Update.objects.get(round_id=round_id, node=node), False


def cross_site_model(*, round_id: int, node: Node, source: str):
    """A node's last local model, for a node selected in an open cross-site round of
    the same job. Raises NotFound / NotSelected / StaleRound."""
    rnd, _ = submission_round(round_id=round_id, node=node, kind=Round.Kind.CROSS_SITE)
    if rnd.status != Round.Status.OPEN:
        raise StaleRound(f"cross-site round of job {rnd.job_id} is {rnd.status}")
    found = dict(cross_site_sources(rnd)).get(source)
    if found is None or source == "global":
        raise NotFound(f"no local model of {source!r} in job {rnd.job_id}")
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
    """Store a batch of a trainer's log lines as one event."""
    job = Job.objects.filter(pk=job_id, job_nodes__node=node).first()
    if job is None:
        raise NotFound(f"node {node.name} takes no part in job {job_id}")
    if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
        raise InvalidUpdateError("lines: must be a list of strings")
    text = "\n".join(line[:1000] for line in lines[:MAX_LOG_LINES])
    job_event_record(job=job, kind="log", message=text, node=node)
