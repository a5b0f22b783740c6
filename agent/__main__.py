"""``python -m agent`` (``flportal-agent``): enroll a site, and run its node agent.

    flportal-agent enroll --portal https://fl.example.org --code <one-time code>
    flportal-agent run --data-dir /data/fl --host 0.0.0.0 --port 8101

``enroll`` (agent/enroll.py) writes the node's name, portal and secrets into the config
directory (agent/config.py); ``run`` reads what it is not given from there. Without a
subcommand (flags first) the agent starts as it always has, from flags and secrets only:

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
import urllib.parse
from pathlib import Path

from agent import __version__
from agent.config import (
    AGENT_KEY_FILE,
    CONFIG_DIR_ENV,
    NODE_FILE,
    TOKEN_FILE,
    ConfigError,
    default_config_dir,
    load_node_config,
)
from agent.credentials import AGENT_KEY_ENV, NODE_TOKEN_ENV, MissingSecret, read_secret
from agent.enroll import enroll
from agent.heartbeat import Heartbeat
from agent.portal import PortalClient
from agent.runs import RunManager
from agent.server import AgentServer

log = logging.getLogger("flportal.agent")

#: The directory that holds the `agent` and `fl` packages (a checkout, or site-packages):
#: the trainer runs `-m agent.trainer` from wherever the agent itself was imported.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
WARM_ENV = "FLPORTAL_WARM_TRAINERS"
DEFAULT_PORT = 8101


SUBCOMMANDS = ("enroll", "run")


def _prog() -> str:
    return "flportal-agent" if Path(sys.argv[0]).name == "flportal-agent" else "python -m agent"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """``enroll ...``, ``run ...``, or (no subcommand, flags first) the agent as ``run``
    has always been started: ``--portal``, ``--name`` and ``--data-dir`` required, secrets
    from the environment or the ``--*-file`` options only. ``opts.command`` says which."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "enroll":
        opts = _enroll_parser().parse_args(argv[1:])
    elif argv and argv[0] == "run":
        opts = _run_parser(from_config=True).parse_args(argv[1:])
    else:
        opts = _run_parser(from_config=False).parse_args(argv)
        opts.config_dir = None
    opts.command = argv[0] if argv and argv[0] in SUBCOMMANDS else "legacy"
    return opts


def _enroll_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{_prog()} enroll",
        description="Exchange a one-time enrollment code (from the portal's admin) for this node's "
                    "token and agent key, and write them into the config directory for "
                    "'run'. The secrets are never printed.",
        epilog="Exit status: 0 enrolled; 2 refused by the portal (nothing written) or an enrollment "
               "already there (see --force); 3 portal unreachable.")
    parser.add_argument("--portal", required=True, type=_portal_url, help="portal base URL, e.g. https://fl.example.org")
    parser.add_argument("--code", required=True, help="the one-time enrollment code")
    parser.add_argument("--config-dir", type=Path,
                        help=f"where to write node.json, token and agent-key (default ${CONFIG_DIR_ENV}, "
                             "else ~/.config/flportal-agent)")
    parser.add_argument("--data-dir", type=Path, help="directory of local datasets, remembered for 'run'")
    parser.add_argument("--force", action="store_true", help="replace an enrollment already in the config directory")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the portal (default 30)")
    return parser


def _run_parser(*, from_config: bool) -> argparse.ArgumentParser:
    """The agent's options; with ``from_config`` (``run``) the portal, name, data
    directory and secrets default to what ``enroll`` wrote into the config directory."""
    if from_config:
        parser = argparse.ArgumentParser(
            prog=f"{_prog()} run",
            description="Run this site's node agent. Options not given come from the config directory "
                        "that 'enroll' wrote (node.json, token, agent-key); flags and the "
                        f"${NODE_TOKEN_ENV} / ${AGENT_KEY_ENV} variables win over it.")
        source = " (default: from the config directory's node.json)"
    else:
        parser = argparse.ArgumentParser(
            prog=_prog(), description="flportal node agent.",
            epilog=f"Subcommands: '{_prog()} enroll --portal URL --code CODE' registers this site with a "
                   f"one-time enrollment code; '{_prog()} run' then starts the agent from what enroll "
                   "wrote (see 'enroll --help', 'run --help'). Without a subcommand, as here, --portal, "
                   "--name and --data-dir are required.")
        source = ""
    parser.add_argument("--portal", required=not from_config, type=_portal_url if from_config else str,
                        help=f"portal base URL, e.g. http://portal:8000{source}")
    parser.add_argument("--name", required=not from_config, help=f"this node's name (as registered){source}")
    parser.add_argument("--data-dir", required=not from_config, type=Path,
                        help=f"directory of local datasets{source}")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    if from_config:
        parser.add_argument("--port", type=int, default=None,
                            help="port to listen on (default: the port of the registered agent URL, else 8101; 0: any)")
    else:
        parser.add_argument("--port", type=int, default=8101, help="port to listen on (default 8101; 0: any)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run logs go (default ./runs)")
    secret_source = ", else the config directory's {}" if from_config else ""
    parser.add_argument("--token-file", help=f"file holding the node token (default: ${NODE_TOKEN_ENV}"
                                             f"{secret_source.format(TOKEN_FILE)})")
    parser.add_argument("--agent-key-file", help=f"file holding the agent key (default: ${AGENT_KEY_ENV}"
                                                 f"{secret_source.format(AGENT_KEY_FILE)})")
    if from_config:
        parser.add_argument("--config-dir", type=Path,
                            help=f"what 'enroll' wrote (default ${CONFIG_DIR_ENV}, else ~/.config/flportal-agent)")
    parser.add_argument("--heartbeat-interval", type=float, default=5.0,
                        help="seconds between heartbeats until the portal says otherwise (default 5)")
    parser.add_argument("--stop-grace", type=float, default=10.0,
                        help="seconds between SIGTERM and SIGKILL when stopping a run (default 10)")
    parser.add_argument("--trainer-max-offline", type=float, default=300.0,
                        help="a trainer gives up after this many seconds without the portal (default 300)")
    parser.add_argument("--warm-trainers", type=int, choices=(0, 1), default=_warm_default(),
                        help=f"1: keep one spare trainer with PyTorch loaded; 0: cold starts only "
                             f"(default {_warm_default()}, from ${WARM_ENV} or 1)")
    return parser


def _portal_url(value: str) -> str:
    parts = urllib.parse.urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {value!r}")
    return value.strip().rstrip("/")


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
    """(node token, agent key); raises MissingSecret naming what is missing.

    A ``--*-file`` option wins, then the environment variable; for ``run`` (with
    ``opts.config_dir``) the config directory's ``token`` / ``agent-key`` come last."""
    def source(option_file: str | None, env_var: str, config_file: str) -> str | None:
        if option_file or os.environ.get(env_var, "").strip() or opts.config_dir is None:
            return option_file
        path = opts.config_dir / config_file
        return str(path) if path.exists() else None

    token = read_secret(env_var=NODE_TOKEN_ENV, file_path=source(opts.token_file, NODE_TOKEN_ENV, TOKEN_FILE),
                        option="--token-file", what="node token")
    key = read_secret(env_var=AGENT_KEY_ENV, file_path=source(opts.agent_key_file, AGENT_KEY_ENV, AGENT_KEY_FILE),
                      option="--agent-key-file", what="agent key")
    return token, key


def prepare_run(opts: argparse.Namespace) -> tuple[str, str]:
    """Complete ``opts`` for the agent and return (node token, agent key).

    For ``run``, --portal, --name, --data-dir and --port not given are taken from the
    config directory's node.json (``opts.config_dir`` is resolved to the directory read).
    Raises ConfigError or MissingSecret, whose message says what to do."""
    if opts.command == "run":
        opts.config_dir = (opts.config_dir or default_config_dir()).expanduser()
        node = load_node_config(opts.config_dir)
        if node is None and not (opts.portal and opts.name):
            raise ConfigError(f"no enrollment in {opts.config_dir} (no {NODE_FILE}): run "
                              f"'flportal-agent enroll --portal URL --code CODE' first, or pass --portal and --name")
        if node is not None:
            opts.portal = opts.portal or node.portal
            opts.name = opts.name or node.name
            if opts.data_dir is None and node.data_dir:
                opts.data_dir = Path(node.data_dir)
            if opts.port is None:
                opts.port = urllib.parse.urlsplit(node.agent_url).port if node.agent_url else None
        if opts.data_dir is None:
            raise ConfigError(f"no data directory: pass --data-dir DIR "
                              f"(none recorded in {opts.config_dir / NODE_FILE})")
        if opts.port is None:
            opts.port = DEFAULT_PORT
    return read_secrets(opts)


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
    if opts.command == "enroll":
        return enroll(opts)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s agent: %(message)s")
    try:
        token, key = prepare_run(opts)
    except (MissingSecret, ConfigError) as exc:
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
                          interval=opts.heartbeat_interval,
                          running_jobs=lambda: sorted({run.job_id for run in runs.all() if run.running}))
    return serve(server, runs, heartbeat)


if __name__ == "__main__":
    sys.exit(main())
