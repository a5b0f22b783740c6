"""``python -m agent``: run a site's node agent.

    FLPORTAL_NODE_TOKEN=... FLPORTAL_AGENT_KEY=... python -m agent \\
        --portal http://portal:8000 --name site-1 --data-dir /data/fl \\
        --host 127.0.0.1 --port 8101 --runs-dir /var/lib/flportal/runs

Secrets come from the environment or from ``--token-file`` / ``--agent-key-file``; the
agent refuses to start without both. It logs one line per event to stderr. SIGTERM or
SIGINT stops every run and the spare trainer (SIGTERM, then SIGKILL after
``--stop-grace``) and exits 0.

``--warm-trainers 1`` (the default; ``$FLPORTAL_WARM_TRAINERS`` sets the default) keeps
one spare trainer with PyTorch loaded, so a run starts without the import
(agent/spare.py). It costs the memory of one idle trainer: about 306 MiB RSS
(213 MiB private) here, see agent/README.md. ``0`` spawns every trainer cold.
"""

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from agent import __version__
from agent.credentials import AGENT_KEY_ENV, NODE_TOKEN_ENV, MissingSecret, read_secret
from agent.heartbeat import Heartbeat
from agent.portal import PortalClient
from agent.runs import RunManager
from agent.server import AgentServer

log = logging.getLogger("flportal.agent")

#: The directory that holds the `agent` and `fl` packages (a checkout, or site-packages):
#: the trainer runs `-m agent.trainer` from wherever the agent itself was imported.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
WARM_ENV = "FLPORTAL_WARM_TRAINERS"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agent", description="flportal node agent.")
    parser.add_argument("--portal", required=True, help="portal base URL, e.g. http://portal:8000")
    parser.add_argument("--name", required=True, help="this node's name (as registered)")
    parser.add_argument("--data-dir", required=True, type=Path, help="directory of local datasets")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8101, help="port to listen on (default 8101; 0: any)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run logs go (default ./runs)")
    parser.add_argument("--token-file", help=f"file holding the node token (default: ${NODE_TOKEN_ENV})")
    parser.add_argument("--agent-key-file", help=f"file holding the agent key (default: ${AGENT_KEY_ENV})")
    parser.add_argument("--heartbeat-interval", type=float, default=5.0,
                        help="seconds between heartbeats until the portal says otherwise (default 5)")
    parser.add_argument("--stop-grace", type=float, default=10.0,
                        help="seconds between SIGTERM and SIGKILL when stopping a run (default 10)")
    parser.add_argument("--trainer-max-offline", type=float, default=300.0,
                        help="a trainer gives up after this many seconds without the portal (default 300)")
    parser.add_argument("--warm-trainers", type=int, choices=(0, 1), default=_warm_default(),
                        help=f"1: keep one spare trainer with PyTorch loaded; 0: cold starts only "
                             f"(default {_warm_default()}, from ${WARM_ENV} or 1)")
    return parser.parse_args(argv)


def _warm_default() -> int:
    """``$FLPORTAL_WARM_TRAINERS`` when it is 0 or 1, else 1 (so a whole local stack can
    be switched, as the job start benchmark does for its cold baseline)."""
    return 0 if os.environ.get(WARM_ENV, "").strip() == "0" else 1


def trainer_command(opts: argparse.Namespace):
    """The CommandFactory for RunManager: the trainer argv, with no secret in it."""
    data_dir, agent_pid = str(opts.data_dir.resolve()), os.getpid()

    def command(run_id: str, job_id: int, dataset: str) -> list[str]:
        return [sys.executable, "-m", "agent.trainer", "--portal", opts.portal,
                "--job", str(job_id), "--data-dir", data_dir, "--dataset", dataset,
                "--parent-pid", str(agent_pid), "--max-offline", f"{opts.trainer_max_offline:g}"]

    return command


def spare_command(opts: argparse.Namespace):
    """The SpareCommandFactory: a warm trainer's argv (the job comes later, on stdin)."""
    data_dir, agent_pid = str(opts.data_dir.resolve()), os.getpid()

    def command(ready_fd: int) -> list[str]:
        return [sys.executable, "-m", "agent.trainer", "--spare", "--ready-fd", str(ready_fd),
                "--portal", opts.portal, "--data-dir", data_dir,
                "--parent-pid", str(agent_pid), "--max-offline", f"{opts.trainer_max_offline:g}"]

    return command


def trainer_env(token: str) -> dict[str, str]:
    """The trainer's environment: ours, plus the node token, minus the agent key."""
    env = {name: value for name, value in os.environ.items() if name != AGENT_KEY_ENV}
    path = [str(PROJECT_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update({NODE_TOKEN_ENV: token, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(path)})
    return env


def read_secrets(opts: argparse.Namespace) -> tuple[str, str]:
    """(node token, agent key); raises MissingSecret naming what is missing."""
    token = read_secret(env_var=NODE_TOKEN_ENV, file_path=opts.token_file,
                        option="--token-file", what="node token")
    key = read_secret(env_var=AGENT_KEY_ENV, file_path=opts.agent_key_file,
                      option="--agent-key-file", what="agent key")
    return token, key


def serve(server: AgentServer, runs: RunManager, heartbeat: Heartbeat) -> int:
    """Serve until SIGTERM/SIGINT, then stop the runs and the spare and exit 0."""
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopping.set())
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    heartbeat.start()
    runs.replenish()  # the first spare trainer, if warm trainers are on
    host, port = server.server_address[:2]
    log.info("agent %s (version %s) listening on http://%s:%d", server.node_name, __version__, host, port)
    while not stopping.wait(1.0):
        pass
    log.info("shutting down: stopping runs")
    runs.stop_all()
    server.shutdown()
    heartbeat.stop()
    server.server_close()
    log.info("agent stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s agent: %(message)s")
    try:
        token, key = read_secrets(opts)
    except MissingSecret as exc:
        log.error("refusing to start: %s", exc)
        return 2
    if not opts.data_dir.is_dir():
        log.warning("data directory %s does not exist; no datasets to offer", opts.data_dir)
    runs = RunManager(runs_dir=opts.runs_dir, command=trainer_command(opts),
                      env=trainer_env(token), stop_grace=opts.stop_grace,
                      spare_command=spare_command(opts) if opts.warm_trainers else None)
    try:
        server = AgentServer((opts.host, opts.port), agent_key=key, node_name=opts.name,
                             runs=runs, data_dir=opts.data_dir)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", opts.host, opts.port, exc)
        return 2
    heartbeat = Heartbeat(client=PortalClient(opts.portal, token), data_dir=opts.data_dir,
                          interval=opts.heartbeat_interval)
    return serve(server, runs, heartbeat)


if __name__ == "__main__":
    sys.exit(main())
