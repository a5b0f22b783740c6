"""The agent's config directory: what ``flportal-agent enroll`` wrote, read back by ``run``.

    <config dir>/node.json   {"portal", "name", "agent_url"[, "data_dir"]}
    <config dir>/token       the node token      (mode 0600)
    <config dir>/agent-key   the agent key       (mode 0600)

The directory is ``--config-dir``, else ``$FLPORTAL_AGENT_CONFIG_DIR``, else
``~/.config/flportal-agent``; it is kept at mode 0700. Every file is written to a
temporary file in the directory and renamed into place, so a failed write leaves no
half-written file (node.json is renamed last: it marks a complete enrollment).
"""

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

CONFIG_DIR_ENV = "FLPORTAL_AGENT_CONFIG_DIR"
NODE_FILE = "node.json"
TOKEN_FILE = "token"
AGENT_KEY_FILE = "agent-key"
ENROLLMENT_FILES = (NODE_FILE, TOKEN_FILE, AGENT_KEY_FILE)


class ConfigError(Exception):
    """The config directory cannot be read or written; the message says why."""


@dataclass(frozen=True)
class NodeConfig:
    portal: str
    name: str
    agent_url: str = ""
    data_dir: str | None = None


def default_config_dir() -> Path:
    """``$FLPORTAL_AGENT_CONFIG_DIR``, else ``~/.config/flportal-agent``."""
    configured = os.environ.get(CONFIG_DIR_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".config" / "flportal-agent"


def existing_enrollment(config_dir: Path) -> list[str]:
    """The enrollment files already present in ``config_dir`` (empty: none)."""
    return [name for name in ENROLLMENT_FILES if (config_dir / name).exists()]


def load_node_config(config_dir: Path) -> NodeConfig | None:
    """node.json of ``config_dir``, or None when there is none; ConfigError if unusable."""
    path = config_dir / NODE_FILE
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) and data[k] for k in ("portal", "name")):
        raise ConfigError(f"{path} lacks \"portal\" and \"name\"; enroll again (flportal-agent enroll --force)")
    data_dir = data.get("data_dir")
    return NodeConfig(portal=data["portal"], name=data["name"], agent_url=str(data.get("agent_url") or ""),
                      data_dir=str(data_dir) if data_dir else None)


def check_writable(config_dir: Path) -> None:
    """Raise ConfigError unless ``config_dir`` could be created or written (checked before
    an enrollment code is spent)."""
    target = config_dir
    while not target.exists():
        if target.parent == target:
            break
        target = target.parent
    if not target.is_dir() or not os.access(target, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write the config directory {config_dir} ({target} is not a writable directory)")


def write_enrollment(config_dir: Path, node: NodeConfig, *, token: str, agent_key: str) -> None:
    """Write node.json, token and agent-key into ``config_dir`` (0600 files, 0700 dir),
    each atomically; on failure nothing of this call is left behind. Raises ConfigError."""
    created = not config_dir.exists()
    payload = {"portal": node.portal, "name": node.name, "agent_url": node.agent_url}
    if node.data_dir:
        payload["data_dir"] = node.data_dir
    contents = {TOKEN_FILE: token + "\n", AGENT_KEY_FILE: agent_key + "\n",
                NODE_FILE: json.dumps(payload, indent=2) + "\n"}  # node.json last: it marks completion
    temps: dict[str, str] = {}
    renamed: list[str] = []
    try:
        config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(config_dir, 0o700)
        for name, text in contents.items():
            fd, temps[name] = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=config_dir)  # mode 0600
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(temps[name], 0o600)
        for name, temp in temps.items():
            os.replace(temp, config_dir / name)
            renamed.append(name)
        _fsync_dir(config_dir)
    except OSError as exc:
        for name, temp in temps.items():
            if name not in renamed:
                _unlink(Path(temp))
        if created:
            for name in renamed:
                _unlink(config_dir / name)
            try:
                config_dir.rmdir()
            except OSError:
                pass
        raise ConfigError(f"cannot write the enrollment into {config_dir}: {exc}") from None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
