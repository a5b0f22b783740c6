"""The site side of flportal: the node agent and the trainer it spawns.

- ``python -m agent`` runs the agent (``server``, ``runs``, ``heartbeat``): it
  heartbeats to the portal and serves the agent API of docs/PROTOCOL.md section 2.
- ``python -m agent.trainer`` runs one trainer for one job: it speaks the node
  side of the FL API (docs/PROTOCOL.md section 1).

Nothing under this package imports Django (a site has no portal code base or settings);
tests/test_layers.py enforces it. HTTP is the standard library only.
"""

__version__ = "0.1.0"
