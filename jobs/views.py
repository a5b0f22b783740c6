"""Server-rendered pages: history from the database; the websocket appends live."""
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render

from flportal.errors import NotFound
from jobs import selectors
from nodes.selectors import node_list as nodes_all


@login_required
def job_list(request):
    return render(request, "jobs/job_list.html", {"jobs": selectors.job_list_for_user(request.user)[:200]})


@login_required
def job_detail(request, job_id: int):
    try:
        job = selectors.job_get_for_user(request.user, job_id)
    except NotFound as exc:
        raise Http404(str(exc)) from exc
    context = {"job": job, "rounds": selectors.job_rounds(job),
               "events": list(selectors.job_events(job))[-100:], "nodes": job.job_nodes.select_related("node")}
    return render(request, "jobs/job_detail.html", context)


@login_required
def node_list(request):
    return render(request, "nodes/node_list.html", {"nodes": nodes_all()})
