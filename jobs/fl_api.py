"""The node-facing FL API (docs/PROTOCOL.md, section 1). Thin: authenticate the node,
parse, call one service, answer JSON. Domain errors become JSON errors here."""
import asyncio
import functools
import hashlib
import math
import os
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import JsonResponse, UnreadablePostError
from django.views.decorators.csrf import csrf_exempt

from core.errors import DomainError, NotFound, error_response
from core.node_api import domain_errors, json_body, require_methods
from core.parsing import parse_int, parse_json
from core.responses import ArtifactResponse
from fl.serialization import InvalidUpdate, validate_update_file
from jobs import long_poll
from jobs.exceptions import InvalidUpdateError, UpdateTooLarge
from jobs.models import ModelVersion
from jobs.services import artifacts
from jobs.services.node_tasks import WAIT, node_task
from jobs.services.updates import (
    check_evaluation,
    check_num_examples,
    clean_cross_site_results,
    clean_metrics,
    cross_site_model,
    cross_site_submit,
    logs_append,
    storage_failed,
    submission_round,
    update_submit,
)
from nodes.auth import async_node_required, node_required

CHUNK = 1 << 20


def _releasing_connection(function):
    """`function`, then give a pooled database connection back: a long poll must not
    hold one of PostgreSQL's connections while it waits (measured: 60 waiting nodes
    exhausted max_connections). SQLite's (no pool) stays: opening one runs its PRAGMAs,
    and under several writers that cost a busy wait of up to 150 ms now and then
    (bench/live_latency.py, embedded)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        finally:
            if getattr(connection, "pool", None) is not None and not connection.in_atomic_block:
                connection.close()

    return sync_to_async(wrapper)


_read_task = _releasing_connection(lambda job_id, node: node_task(job_id=job_id, node=node))


#: A waiting poll reads its task again this often even if no wake-up came (live events
#: are at-most-once); every change of a node's task sends one (jobs/events.py).
RECHECK_S = 5.0


def _wait_seconds(request) -> float:
    """The `wait` query parameter: finite, capped at FLPORTAL_TASK_LONG_POLL_MAX_S."""
    try:
        wait = float(request.GET.get("wait", 0))
    except ValueError:
        wait = math.nan
    if not math.isfinite(wait):
        raise InvalidUpdateError("wait: must be a finite number of seconds")
    return min(max(wait, 0.0), settings.FLPORTAL_TASK_LONG_POLL_MAX_S)


@require_methods("GET")
@async_node_required(disabled_ok=True)  # a disabled node's trainer is told `end`
async def task(request, job_id: int):
    """Long poll: answers at once unless the task is `wait`; then waits up to `wait`
    seconds for a wake-up of the job (jobs/long_poll.py, `_wait_for_task`)."""
    try:
        deadline = time.monotonic() + _wait_seconds(request)
        async with long_poll.listener().inbox(job_id) as inbox:  # first, so no wake-up after the read is missed
            answer, floor = await _read_task(job_id, request.node)
            if answer["action"] == "wait":
                answer = await _wait_for_task(job_id, request.node, inbox, deadline, floor)
    except DomainError as exc:
        return error_response(exc)
    return JsonResponse(answer)


async def _wait_for_task(job_id: int, node, inbox, deadline: float, floor: int) -> dict:
    """The node's next task from the job's wake-ups, until `deadline` (else `wait`). The
    wake-up of a round that opened carries its task, taken without a query by the nodes
    selected for it whose last round it is later than (`floor`, a round id: a wake-up
    can come after the node learnt of that round by a read, and answered it); others go
    on waiting. Any other wake-up, or RECHECK_S without one, reads the task again."""
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            event = await asyncio.wait_for(inbox.get(), timeout=min(RECHECK_S, remaining))
        except TimeoutError:
            event = {}
        if "task" in event:
            if node.pk in event.get("nodes", ()) and event["task"].get("round_id", 0) > floor:
                return event["task"]
            continue
        answer, floor = await _read_task(job_id, node)
        if answer["action"] != "wait":
            return answer
    return dict(WAIT)


async def _submit_and_wait(request, round_id: int, kind: str, store) -> JsonResponse:
    """The result uploads: check the round before the body is validated, store the result
    (`store(request, facts)`: body, validation, the service), answer it. With `?wait=<s>`
    the answer also carries the node's next task as `next`, waited for as the task long
    poll does, which saves the node a request per round. The listener is subscribed
    before a new result commits, and while that round was open no next task could exist,
    so after a new result the next task can only come as a wake-up: no read needed."""
    try:
        wait = _wait_seconds(request)
        facts, existing = await _releasing_connection(submission_round)(round_id=round_id, node=request.node, kind=kind)
        if not wait:
            update, created = (existing, False) if existing else await _releasing_connection(store)(request, facts)
            return _accepted(update, created=created)
        deadline = time.monotonic() + wait
        async with long_poll.listener().inbox(facts.job_id) as inbox:
            update, created = (existing, False) if existing else await _releasing_connection(store)(request, facts)
            answer, floor = (dict(WAIT), facts.round_id) if created else await _read_task(facts.job_id, request.node)
            if answer["action"] == "wait":
                answer = await _wait_for_task(facts.job_id, request.node, inbox, deadline, max(floor, facts.round_id))
    except DomainError as exc:
        return error_response(exc)
    return _accepted(update, created=created, next_task=answer)


@require_methods("GET")
@node_required
@domain_errors
def model_download(request, job_id: int, version: int):
    row = ModelVersion.objects.filter(job_id=job_id, round=version, job__job_nodes__node=request.node).first()
    if row is None:
        raise NotFound(f"no model version {version} of job {job_id} for node {request.node.name}")
    return _file_response(row.path, row.sha256, row.bytes)


def _file_response(path: str, sha256: str, size: int) -> ArtifactResponse:
    response = ArtifactResponse(artifacts.open_artifact(path))  # streamed under ASGI, not read into memory first
    response["X-Checksum-Sha256"] = sha256
    response["Content-Length"] = str(size)
    return response


@csrf_exempt
@require_methods("POST")
@async_node_required
async def update_upload(request, round_id: int):
    """Weights of a train round (with the evaluation of the model it started from, when
    the round evaluates first); `?wait=` also answers the next task."""
    return await _submit_and_wait(request, round_id, "train", _store_update)


def _store_update(request, facts) -> tuple:
    """Checked first: headers, size; then the body is copied to a file (hashed on the
    way) and its tensors validated against the round's model before anything is
    recorded."""
    num_examples, metrics = _update_headers(request)
    evaluation = _evaluation_headers(request)
    check_evaluation(facts, evaluation)
    _check_length(request)
    tmp = None
    try:
        tmp, sha256 = _receive_body(request, facts.job_id)
        try:
            validate_update_file(tmp, artifacts.tensor_spec_of(facts.model_path, facts.model_sha256))
        except InvalidUpdate as exc:
            raise InvalidUpdateError(str(exc)) from exc
        return update_submit(round_id=facts.round_id, node=request.node, upload=tmp, upload_sha256=sha256,
                             num_examples=num_examples, metrics=metrics, evaluation=evaluation, checked=facts)
    except OSError as exc:
        if isinstance(exc, UnreadablePostError):  # the node went away mid-upload: not the storage
            raise
        raise storage_failed(facts=facts, node=request.node, error=exc) from exc
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


def _update_headers(request) -> tuple[int, dict]:
    num_examples = _header_int(request, "X-Num-Examples")
    return num_examples, clean_metrics(_header_json(request, "X-Metrics", "{}"), "X-Metrics")


def _evaluation_headers(request) -> tuple[int, dict] | None:
    """(num_examples, metrics) from X-Eval-Examples / X-Eval-Metrics, or None if absent."""
    sent = [name for name in ("X-Eval-Examples", "X-Eval-Metrics") if name in request.headers]
    if not sent:
        return None
    if len(sent) == 1:
        raise InvalidUpdateError("an evaluation needs X-Eval-Examples (an integer) and X-Eval-Metrics "
                                 f"(a JSON object); got {sent[0]} only", field=sent[0])
    num_examples = _header_int(request, "X-Eval-Examples")
    return num_examples, clean_metrics(_header_json(request, "X-Eval-Metrics"), "X-Eval-Metrics")


def _header_int(request, name: str) -> int:
    """A header's positive integer (plain decimal digits); raises InvalidUpdateError."""
    try:
        value = parse_int(request.headers.get(name))
    except ValueError as exc:
        raise InvalidUpdateError(f"{name}: must be an integer (decimal digits only)", field=name) from exc
    return check_num_examples(value, name)


def _header_json(request, name: str, default: str | None = None):
    try:
        return parse_json(request.headers.get(name) or default or "")
    except ValueError as exc:
        raise InvalidUpdateError(f"{name}: must be a JSON object ({exc})", field=name) from exc


def _check_length(request) -> None:
    try:
        length = int(request.headers.get("Content-Length") or 0)
    except ValueError as exc:
        raise InvalidUpdateError("Content-Length is not a number") from exc
    if length > settings.FLPORTAL_MAX_UPDATE_BYTES:
        raise UpdateTooLarge(f"update of {length} bytes exceeds the limit of {settings.FLPORTAL_MAX_UPDATE_BYTES}")


def _receive_body(request, job_id: int) -> tuple[str, str]:
    """Stream the body to a temporary file, refusing it once past the limit; returns
    the file's path and the body's sha256 (hashed on the way, not read again)."""
    limit, size, digest = settings.FLPORTAL_MAX_UPDATE_BYTES, 0, hashlib.sha256()
    with artifacts.upload_tempfile(job_id) as out:
        try:
            while chunk := request.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise UpdateTooLarge(f"update exceeds the limit of {limit} bytes")
                out.write(chunk)
                digest.update(chunk)
        except BaseException:
            out.close()
            os.unlink(out.name)
            raise
    return out.name, digest.hexdigest()


def _accepted(update, *, created: bool, next_task: dict | None = None) -> JsonResponse:
    answer = {"status": "accepted", "update_id": update.pk}
    if next_task is not None:
        answer["next"] = next_task
    return JsonResponse(answer, status=201 if created else 200)


@csrf_exempt
@require_methods("POST")
@async_node_required
async def evaluation(request, round_id: int):
    """Metrics of an evaluate round; `?wait=` also answers the next task."""
    return await _submit_and_wait(request, round_id, "evaluate", _store_evaluation)


def _store_evaluation(request, facts) -> tuple:
    body = json_body(request)
    num_examples = body.get("num_examples")
    check_num_examples(num_examples, "num_examples")
    return update_submit(round_id=facts.round_id, node=request.node, upload=None, num_examples=num_examples,
                         metrics=clean_metrics(body.get("metrics")), checked=facts)


@require_methods("GET")
@node_required
@domain_errors
def cross_site_model_download(request, round_id: int, source: str):
    """Another site's last local model, during the cross-site round only."""
    update = cross_site_model(round_id=round_id, node=request.node, source=source)
    return _file_response(update.path, update.sha256, update.bytes)


@csrf_exempt
@require_methods("POST")
@node_required
@domain_errors
def cross_site(request, round_id: int):
    _, existing = submission_round(round_id=round_id, node=request.node, kind="cross_site")
    if existing is not None:
        return _accepted(existing, created=False)
    results = clean_cross_site_results(json_body(request).get("results"))
    update, created = cross_site_submit(round_id=round_id, node=request.node, results=results)
    return _accepted(update, created=created)


@csrf_exempt
@require_methods("POST")
@node_required
@domain_errors
def logs(request, job_id: int):
    logs_append(job_id=job_id, node=request.node, lines=json_body(request).get("lines"))
    return JsonResponse({"status": "ok"}, status=201)
