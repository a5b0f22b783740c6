"""``flportal-agent enroll``: exchange a one-time enrollment code for the node's secrets.

    flportal-agent enroll --portal https://fl.example.org --code <code> [--data-dir /data/fl]

``POST /api/v1/fl/enroll`` (docs/PROTOCOL.md section 1, no ``Authorization``: the code is
the credential) answers 201 with the node's name, token and agent key; they are written
into the config directory (agent/config.py) and the agent then starts with
``flportal-agent run``. The secrets are never printed.

Exit status: 0 enrolled; 2 refused by the portal (its message is printed; nothing is
written), or an enrollment already in the config directory (without ``--force``), or a
config directory that cannot be written; 3 portal unreachable (or 5xx, or a malformed
answer).
"""

import argparse
import sys
from pathlib import Path

from agent.config import (
    ConfigError,
    NodeConfig,
    check_writable,
    default_config_dir,
    existing_enrollment,
    write_enrollment,
)
from agent.portal import PortalClient, PortalRefusal, PortalUnavailable

ENROLL_PATH = "/api/v1/fl/enroll"
EXIT_REFUSED = 2
EXIT_UNREACHABLE = 3


def enroll(opts: argparse.Namespace, *, out=None, err=None) -> int:
    """Run the enroll command; returns the exit status."""
    out, err = out or sys.stdout, err or sys.stderr
    config_dir: Path = (opts.config_dir or default_config_dir()).expanduser()
    portal = opts.portal.rstrip("/")

    def fail(status: int, message: str) -> int:
        print(f"flportal-agent enroll: {message}", file=err)
        return status

    present = existing_enrollment(config_dir)
    if present and not opts.force:
        return fail(EXIT_REFUSED, f"{config_dir} already holds an enrollment ({', '.join(present)}); "
                                  "pass --force to replace it (or --config-dir for another node)")
    try:
        check_writable(config_dir)  # before the one-time code is spent
    except ConfigError as exc:
        return fail(EXIT_REFUSED, str(exc))

    client = PortalClient(portal, None, timeout=opts.timeout)
    try:
        answer = client.post_json(ENROLL_PATH, {"code": opts.code}).json()
    except PortalRefusal as exc:
        message = exc.message.removeprefix(f"POST {ENROLL_PATH}: ")
        return fail(EXIT_REFUSED, f"the portal refused the enrollment ({exc.status} {exc.code}): {message}")
    except PortalUnavailable as exc:
        return fail(EXIT_UNREACHABLE, f"cannot reach the portal at {portal}: {exc}")
    finally:
        client.close()

    if not isinstance(answer, dict) or not all(isinstance(answer.get(k), str) and answer[k]
                                               for k in ("node", "token", "agent_key")):
        return fail(EXIT_UNREACHABLE, f"the portal at {portal} answered the enrollment without "
                                      "\"node\", \"token\" and \"agent_key\"; nothing was written")
    data_dir = str(opts.data_dir.expanduser().resolve()) if opts.data_dir else None
    node = NodeConfig(portal=portal, name=answer["node"], agent_url=str(answer.get("agent_url") or ""),
                      data_dir=data_dir)
    try:
        write_enrollment(config_dir, node, token=answer["token"], agent_key=answer["agent_key"])
    except ConfigError as exc:
        return fail(EXIT_REFUSED, f"{exc}. The enrollment code is now used: ask the portal's admin for a new one.")

    print(f"Enrolled node {node.name!r} with the portal {portal}.", file=out)
    print(f"  agent URL (where the portal calls this agent): {node.agent_url or '(none registered)'}", file=out)
    if data_dir:
        print(f"  data directory: {data_dir}", file=out)
    print(f"  config directory: {config_dir} (node.json, token, agent-key; mode 0600)", file=out)
    print("Start the agent with: flportal-agent run"
          + ("" if data_dir else " --data-dir DIR")
          + (f" --config-dir {config_dir}" if opts.config_dir else "")
          + " --host ADDRESS --port PORT", file=out)
    return 0
