"""Reading the two site secrets: the node token and the agent key.

Secrets come from an environment variable or a file given on the command line, never
from argv itself (argv is visible to every user of the machine through ``ps``).
"""

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("flportal.agent")

NODE_TOKEN_ENV = "FLPORTAL_NODE_TOKEN"
AGENT_KEY_ENV = "FLPORTAL_AGENT_KEY"


class MissingSecret(Exception):
    """A required secret is absent, empty or unreadable; the message says how to fix it."""


def read_secret(*, env_var: str, file_path: str | None, option: str, what: str) -> str:
    """Return the secret from ``file_path`` when given, else from ``env_var``.

    Surrounding whitespace is stripped (files usually end with a newline). Raises
    MissingSecret when neither source yields a non-empty value. Warns when the file is
    readable by group or others.
    """
    if file_path:
        path = Path(file_path)
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise MissingSecret(f"cannot read the {what} from {option} {path}: {exc}") from None
        _warn_if_exposed(path, what)
        source = f"{option} {path}"
    else:
        value = os.environ.get(env_var, "").strip()
        source = f"${env_var}"
    if not value:
        raise MissingSecret(
            f"no {what}: set {env_var} or pass {option} FILE "
            f"(printed once by 'python manage.py node_register'); {source} is empty"
        )
    return value


def _warn_if_exposed(path: Path, what: str) -> None:
    """Log a warning when a secret file is readable by anyone but its owner."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the %s file %s is readable by others; chmod 600 it", what, path)
