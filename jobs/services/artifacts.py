"""Where model versions and updates are stored: files under ARTIFACT_ROOT, written to a
temporary name and renamed, so a reader never sees half a file."""
import base64
import functools
import os
import secrets
import tempfile
from pathlib import Path

from django.conf import settings

from fl.serialization import file_sha256, file_tensor_spec, save_state_dict


def absolute(relative: str) -> Path:
    return settings.ARTIFACT_ROOT / relative


def job_dir(job_id: int) -> Path:
    path = settings.ARTIFACT_ROOT / "jobs" / str(job_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def upload_tempfile(job_id: int):
    """An open temporary file beside the job's artifacts (same filesystem, so the final
    move is a rename). The caller removes it if the upload is refused."""
    return tempfile.NamedTemporaryFile(dir=job_dir(job_id), prefix=".upload-", delete=False)


def open_artifact(relative: str):
    """The artifact's file, open for reading (the API streams it)."""
    return open(absolute(relative), "rb")


def write_model(job_id: int, round_number: int, state: dict) -> tuple[str, str, int]:
    """Write a model version; returns (relative path, sha256, bytes)."""
    final = job_dir(job_id) / f"model-r{round_number:05d}.safetensors"
    save_state_dict(state, final)  # written to a temporary name, then renamed
    return _relative(final), file_sha256(final), final.stat().st_size


def write_server_state(job_id: int, round_number: int, state: dict) -> str:
    """Write a strategy's server state (tensors only); returns the relative path."""
    final = job_dir(job_id) / f"server-state-r{round_number:05d}.safetensors"
    save_state_dict(state, final)
    return _relative(final)


def keep_update(job_id: int, round_number: int, kind: str, node_name: str, tmp_path: Path,
                sha256: str | None = None) -> tuple[str, str, int]:
    """Move a validated upload into place; returns (relative path, sha256, bytes).
    `sha256`: the upload's digest if the caller computed it while receiving it. The name
    is unique to this upload: a concurrent duplicate that loses the race must not replace
    the file of the one that won (and is gone again with its rolled-back row)."""
    final = job_dir(job_id) / f"update-r{round_number:05d}-{kind}-{node_name}-{secrets.token_hex(4)}.safetensors"
    digest = sha256 or file_sha256(tmp_path)
    os.replace(tmp_path, final)
    return _relative(final), digest, final.stat().st_size


@functools.lru_cache(maxsize=16)
def inline_base64(relative: str, sha256: str) -> str:
    """A small artifact's bytes as base64 text, cached (versions never change; the
    digest is part of the key)."""
    return base64.b64encode(absolute(relative).read_bytes()).decode("ascii")


def discard(relative: str) -> None:
    """Remove an artifact a rolled-back write had put in place ("" or missing: nothing)."""
    if relative:
        absolute(relative).unlink(missing_ok=True)


def tensor_spec_of(relative: str, sha256: str) -> dict:
    """{name: (shape, dtype)} of a stored model version (its path and digest), read from
    its file's header only, and cached (versions never change)."""
    return _tensor_spec(str(absolute(relative)), sha256)


@functools.lru_cache(maxsize=64)
def _tensor_spec(path: str, sha256: str) -> dict:
    return file_tensor_spec(path)


def _relative(path: Path) -> str:
    return str(path.relative_to(settings.ARTIFACT_ROOT))
