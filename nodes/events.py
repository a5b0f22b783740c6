"""The only place that sends node events to browsers (group `nodes`), after commit."""
from core.broadcast import broadcast_on_commit


def node_status_changed(node) -> None:
    broadcast_on_commit(
        ["nodes"],
        {"kind": "node_status", "node": node.name, "status": node.status,
         "last_heartbeat_at": node.last_heartbeat_at.isoformat() if node.last_heartbeat_at else None},
    )
