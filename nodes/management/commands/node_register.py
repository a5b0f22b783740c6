"""Register a node (or re-issue its credentials) and print them once."""
import json

from django.core.management.base import BaseCommand, CommandError

from core.errors import ValidationFailed
from nodes.services import node_grant, node_register


class Command(BaseCommand):
    help = "Register a site's node; prints its token and agent key once (they are not stored)."
    requires_system_checks = []  # fast: the demo and tests call these often

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--agent-url", required=True, help="where the portal calls this node's agent")
        parser.add_argument("--json", action="store_true", help="print the credentials as JSON")
        parser.add_argument("--group", action="append", default=[],
                            help="a group whose members may use the node (repeatable; staff may use every node)")

    def handle(self, *args, name, agent_url, group, **options):
        try:
            creds = node_register(name=name, agent_url=agent_url)
        except ValidationFailed as exc:
            raise CommandError(exc.message) from exc
        node_grant(node=creds.node, groups=group)
        if options["json"]:
            self.stdout.write(_json_dump({"node": creds.node.name, "token": creds.token, "agent_key": creds.agent_key}))
            return
        self.stdout.write(f"Node {creds.node.name} registered; its agent is called at {creds.node.agent_url}.\n"
                          f"Start the agent at the site with (shown once, keep them secret):\n"
                          f"  FLPORTAL_NODE_TOKEN={creds.token} \\\n  FLPORTAL_AGENT_KEY={creds.agent_key} \\\n"
                          f"  flportal-agent --portal <portal URL> --name {creds.node.name} --data-dir <dir>")


def _json_dump(data) -> str:
    return json.dumps(data)
