"""Server-rendered pages: history from the database; the websocket appends live."""
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render

from core.errors import NotFound
from jobs import selectors

# the job page shows the last rounds and events in full, and the whole history as one
# compact series per metric (the chart), so its size does not grow with rounds × nodes
LAST_ROUNDS, LAST_EVENTS = 100, 100
CHART_METRICS = ("loss", "accuracy", "train_loss", "val_loss", "val_accuracy")


@login_required
def job_list(request):
    return render(request, "jobs/job_list.html", {"jobs": selectors.job_list_for_user(request.user)[:200]})


@login_required
def job_detail(request, job_id: int):
    try:
        job = selectors.job_get_for_user(request.user, job_id)
    except NotFound as exc:
        raise Http404(str(exc)) from exc
    page = selectors.job_page(job, last_rounds=LAST_ROUNDS, last_events=LAST_EVENTS, metric_names=CHART_METRICS)
    return render(request, "jobs/job_detail.html", {"job": job, "page": page, "chart_metrics": CHART_METRICS})

