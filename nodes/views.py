"""Server-rendered node pages: history from the database; the websocket appends live."""
from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from nodes.selectors import nodes_usable_by


@login_required
def node_list(request):
    return render(request, "nodes/node_list.html", {"nodes": nodes_usable_by(request.user)})
