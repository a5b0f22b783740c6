"""Names and files of the site's local datasets (standard library only, so the agent can
validate a run request without importing the FL core)."""

import re
from pathlib import Path
from typing import Any


class SiteError(Exception):
    """A local problem that retrying cannot fix: missing dataset, unusable job config."""

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DATASET_SUFFIXES = (".npz", ".csv")


def is_safe_name(name: Any) -> bool:
    """True for a dataset name that cannot leave the data directory: letters, digits,
    ``.``, ``_``, ``-``, not starting with a dot, at most 128 characters."""
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None


def find_dataset(data_dir: Path, name: str) -> Path | None:
    """``data_dir/<name>.npz`` or ``.csv``, whichever is a file (npz first); None if
    neither is, or if ``name`` is not safe."""
    if not is_safe_name(name):
        return None
    for suffix in DATASET_SUFFIXES:
        path = Path(data_dir) / f"{name}{suffix}"
        if path.is_file():
            return path
    return None
