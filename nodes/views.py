"""Server-rendered node pages: history from the database; the websocket appends live."""
from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from nodes.selectors import node_list as nodes_all


@login_required
def node_list(request):
    return render(request, "nodes/node_list.html", {"nodes": nodes_all()})
