"""The node-facing endpoints of the nodes app (docs/PROTOCOL.md, section 1): enrollment
and the heartbeat. Thin: authenticate the node, parse, call the service, answer JSON."""
import json

from django.conf import settings
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_variables

from core.errors import InvalidNodeRequest
from core.node_api import domain_errors, json_body, require_methods
from nodes.auth import node_required
from nodes.services import node_enroll, node_heartbeat


@csrf_exempt
@require_methods("POST")
@node_required
@domain_errors
def heartbeat(request):
    body = json_body(request)
    datasets, resources = body.get("datasets", []), body.get("resources", {})
    if not isinstance(datasets, list) or not isinstance(resources, dict) or len(json.dumps(body)) > 65536:
        raise InvalidNodeRequest("datasets must be a list and resources an object (64 KiB at most)")
    node = node_heartbeat(node=request.node, version=str(body.get("version", "")), datasets=datasets,
                          resources=resources, running_jobs=body.get("runs"))
    return JsonResponse({"status": "ok", "node": node.name,
                         "heartbeat_interval_s": settings.FLPORTAL_HEARTBEAT_INTERVAL_S})


@csrf_exempt
@require_methods("POST")
@domain_errors
@sensitive_variables("body", "creds")
def enroll(request):
    """`{"code": "<enrollment code>"}` → the node's credentials, once (no auth header:
    the code is the credential). Neither the code nor the credentials are logged."""
    body = json_body(request, limit=4096)
    creds = node_enroll(code=body.get("code"))
    response = JsonResponse({"node": creds.node.name, "token": creds.token, "agent_key": creds.agent_key,
                             "agent_url": creds.node.agent_url,
                             "heartbeat_interval_s": settings.FLPORTAL_HEARTBEAT_INTERVAL_S}, status=201)
    response["Cache-Control"] = "no-store"
    return response
