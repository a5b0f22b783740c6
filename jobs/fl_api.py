"""The node-facing FL API (docs/PROTOCOL.md, section 1). Thin: authenticate the node,
parse, call one service, answer JSON. Domain errors become JSON errors here."""
import asyncio
import functools
import json
import math
import os
import time

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import FileResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from flportal.errors import DomainError, NotFound, error_response
from jobs.exceptions import InvalidUpdateError, UpdateTooLarge
from jobs.fl.serialization import InvalidUpdate, validate_update_file
from jobs.models import ModelVersion
from jobs.services import artifacts
from jobs.services.updates import (check_num_examples, clean_cross_site_results, clean_metrics, cross_site_model,
                                   cross_site_submit, logs_append, submission_round, task_for_node, update_submit)
from nodes.auth import async_node_required, node_required
from nodes.services import node_heartbeat

CHUNK = 1 << 20


def domain_errors(view):
    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except DomainError as exc:
            return error_response(exc)

    return wrapper


def _json_body(request, limit: int = 1 << 20) -> dict:
    if int(request.headers.get("Content-Length") or 0) > limit:
        raise UpdateTooLarge(f"body larger than {limit} bytes")
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidUpdateError(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidUpdateError("body must be a JSON object")
    return body


@csrf_exempt
@require_POST
@node_required
@domain_errors
def heartbeat(request):
    body = _json_body(request)
    datasets, resources = body.get("datasets", []), body.get("resources", {})
    if not isinstance(datasets, list) or not isinstance(resources, dict) or len(json.dumps(body)) > 65536:
        raise InvalidUpdateError("datasets must be a list and resources an object (64 KiB at most)")
    node = node_heartbeat(node=request.node, version=str(body.get("version", "")), datasets=datasets,
                          resources=resources)
    return JsonResponse({"status": "ok", "node": node.name,
                         "heartbeat_interval_s": settings.FLPORTAL_HEARTBEAT_INTERVAL_S})


def _task_releasing_connection(job_id: int, node) -> dict:
    """task_for_node, then give the database connection back: a long poll must not hold
    one of PostgreSQL's connections while it waits (measured: 60 waiting nodes exhausted
    max_connections)."""
    try:
        return task_for_node(job_id=job_id, node=node)
    finally:
        if not connection.in_atomic_block:
            connection.close()


@require_GET
@async_node_required
async def task(request, job_id: int):
    """Long poll: answers at once unless the task is `wait`; then waits (woken through
    the channel layer when a round opens or the job ends, re-checking at least every
    second) up to `wait` seconds."""
    try:
        wait = float(request.GET.get("wait", 0))
    except ValueError:
        wait = math.nan
    if not math.isfinite(wait):
        return error_response(InvalidUpdateError("wait: must be a finite number of seconds"))
    wait = min(max(wait, 0.0), settings.FLPORTAL_TASK_LONG_POLL_MAX_S)
    deadline = time.monotonic() + wait
    layer, channel, group = get_channel_layer(), None, f"fl-job-{job_id}"
    try:
        while True:
            try:
                answer = await sync_to_async(_task_releasing_connection)(job_id, request.node)
            except DomainError as exc:
                return error_response(exc)
            remaining = deadline - time.monotonic()
            if answer["action"] != "wait" or remaining <= 0:
                return JsonResponse(answer)
            if channel is None:  # subscribe, then check once more so no wake-up is missed
                channel = await layer.new_channel()
                await layer.group_add(group, channel)
                continue
            try:
                await asyncio.wait_for(layer.receive(channel), timeout=min(1.0, remaining))
            except asyncio.TimeoutError:
                pass
    finally:
        if channel is not None:
            await layer.group_discard(group, channel)


@require_GET
@node_required
@domain_errors
def model_download(request, job_id: int, version: int):
    row = ModelVersion.objects.filter(job_id=job_id, round=version, job__job_nodes__node=request.node).first()
    if row is None:
        raise NotFound(f"no model version {version} of job {job_id} for node {request.node.name}")
    return _file_response(row.path, row.sha256, row.bytes)


def _file_response(path: str, sha256: str, size: int) -> FileResponse:
    response = artifacts.file_response(path)  # streamed under ASGI, not read into memory first
    response["X-Checksum-Sha256"] = sha256
    response["Content-Length"] = str(size)
    return response


@csrf_exempt
@require_POST
@node_required
@domain_errors
def update_upload(request, round_id: int):
    """Weights of a train round. Checked before the body is read: round, selection,
    duplicate, size; then the body is streamed to a file and its tensors validated
    against the round's model before anything is recorded."""
    rnd, existing = submission_round(round_id=round_id, node=request.node, kind="train")
    if existing is not None:
        return _accepted(existing, created=False)
    num_examples, metrics = _update_headers(request)
    _check_length(request)
    tmp = _receive_body(request, rnd.job_id)
    try:
        try:
            validate_update_file(tmp, artifacts.tensor_spec_of(rnd.model_version))
        except InvalidUpdate as exc:
            raise InvalidUpdateError(str(exc)) from exc
        update, created = update_submit(round_id=round_id, node=request.node, upload=tmp,
                                        num_examples=num_examples, metrics=metrics)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return _accepted(update, created=created)


def _update_headers(request) -> tuple[int, dict]:
    try:
        num_examples = int(request.headers.get("X-Num-Examples", ""))
        metrics = json.loads(request.headers.get("X-Metrics") or "{}")
    except ValueError as exc:
        raise InvalidUpdateError("X-Num-Examples must be an integer and X-Metrics a JSON object") from exc
    check_num_examples(num_examples, "X-Num-Examples")
    return num_examples, clean_metrics(metrics)


def _check_length(request) -> None:
    try:
        length = int(request.headers.get("Content-Length") or 0)
    except ValueError as exc:
        raise InvalidUpdateError("Content-Length is not a number") from exc
    if length > settings.FLPORTAL_MAX_UPDATE_BYTES:
        raise UpdateTooLarge(f"update of {length} bytes exceeds the limit of {settings.FLPORTAL_MAX_UPDATE_BYTES}")


def _receive_body(request, job_id: int) -> str:
    """Stream the body to a temporary file, refusing it once past the limit."""
    limit, size = settings.FLPORTAL_MAX_UPDATE_BYTES, 0
    with artifacts.upload_tempfile(job_id) as out:
        try:
            while chunk := request.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise UpdateTooLarge(f"update exceeds the limit of {limit} bytes")
                out.write(chunk)
        except BaseException:
            out.close()
            os.unlink(out.name)
            raise
    return out.name


def _accepted(update, *, created: bool) -> JsonResponse:
    return JsonResponse({"status": "accepted", "update_id": update.pk}, status=201 if created else 200)


@csrf_exempt
@require_POST
@node_required
@domain_errors
def evaluation(request, round_id: int):
    rnd, existing = submission_round(round_id=round_id, node=request.node, kind="evaluate")
    if existing is not None:
        return _accepted(existing, created=False)
    body = _json_body(request)
    num_examples = body.get("num_examples")
    check_num_examples(num_examples, "num_examples")
    update, created = update_submit(round_id=round_id, node=request.node, upload=None, num_examples=num_examples,
                                    metrics=clean_metrics(body.get("metrics")))
    return _accepted(update, created=created)


@require_GET
@node_required
@domain_errors
def cross_site_model_download(request, round_id: int, source: str):
    """Another site's last local model, during the cross-site round only."""
    update = cross_site_model(round_id=round_id, node=request.node, source=source)
    return _file_response(update.path, update.sha256, update.bytes)


@csrf_exempt
@require_POST
@node_required
@domain_errors
def cross_site(request, round_id: int):
    rnd, existing = submission_round(round_id=round_id, node=request.node, kind="cross_site")
    if existing is not None:
        return _accepted(existing, created=False)
    results = clean_cross_site_results(_json_body(request).get("results"))
    update, created = cross_site_submit(round_id=round_id, node=request.node, results=results)
    return _accepted(update, created=created)


@csrf_exempt
@require_POST
@node_required
@domain_errors
def logs(request, job_id: int):
    logs_append(job_id=job_id, node=request.node, lines=_json_body(request).get("lines"))
    return JsonResponse({"status": "ok"}, status=201)
