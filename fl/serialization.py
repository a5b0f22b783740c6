"""State dicts in and out of safetensors, and validation of uploaded updates.

Only safetensors is ever used: no pickle, no ``torch.load``, so a file from a site can
carry tensors and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as _load_bytes
from safetensors.torch import save as _save_bytes

TensorSpec = dict[str, tuple[tuple[int, ...], str]]

# safetensors header dtype codes -> torch dtype names, for checks that read no data.
_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
_FLOAT_DTYPES = {"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"}

#: Bytes of tensor data checked for NaN/Inf at a time: memory stays near this, whatever
#: the size of the largest tensor.
CHECK_BLOCK = 8 << 20


class InvalidUpdate(ValueError):
    """An uploaded update was refused; the message says why, for a human."""


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def tensor_spec(state_dict: dict[str, torch.Tensor]) -> TensorSpec:
    """Name -> (shape, dtype name) of every tensor, e.g. ``{"weight": ((2, 3), "float32")}``."""
    return {name: (tuple(t.shape), dtype_name(t.dtype)) for name, t in state_dict.items()}


def state_dict_to_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    """Serialize ``state_dict`` to safetensors bytes (tensors moved to CPU, made contiguous)."""
    return _save_bytes(_prepare(state_dict), metadata={"format": "pt"})


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write ``state_dict`` as a safetensors file, atomically: to a temporary file of
    this writer's own in the same directory, then renamed. Two writers of the same path
    never share a temporary file; a reader sees one whole file or the other."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(state_dict_to_bytes(state_dict))
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would differ from every other artifact's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state_dict(source: str | os.PathLike | bytes) -> dict[str, torch.Tensor]:
    """Load a safetensors file (a path) or its content (bytes) into CPU tensors.

    The tensors are contiguous, detached and own their memory (not a mapping of the
    file). Raises ValueError ("unreadable safetensors: ...") for a corrupt source and
    FileNotFoundError for a missing file.
    """
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            tensors = _load_bytes(bytes(source))
        else:
            with safe_open(str(source), framework="pt", backend="pread") as handle:
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not a dict
    except SafetensorError as exc:
        raise ValueError(f"unreadable safetensors: {exc}") from exc
    return {name: t.detach().contiguous() for name, t in tensors.items()}


def file_tensor_spec(path: str | os.PathLike) -> TensorSpec:
    """Name -> (shape, dtype name) of every tensor of a safetensors file, from its
    header alone (no tensor data is read). Raises ValueError for a corrupt file."""
    try:
        with safe_open(str(path), framework="pt", backend="pread") as handle:
            slices = {name: handle.get_slice(name) for name in handle.keys()}  # noqa: SIM118 - not a dict
            return {name: (tuple(piece.get_shape()), _SAFETENSORS_DTYPES.get(piece.get_dtype(), piece.get_dtype()))
                    for name, piece in slices.items()}
    except SafetensorError as exc:
        raise ValueError(f"unreadable safetensors: {exc}") from exc


def load_state_dict_header(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a safetensors file as empty tensors on the meta device: names,
    shapes and dtypes, no data. What a strategy that never reads the global values
    (FedAvg) needs of the global model: reading it whole was a fixed cost per round
    (40 MB at 10M parameters, bench/aggregation.py)."""
    return {name: torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
            for name, (shape, dtype) in file_tensor_spec(path).items()}


def validate_update_file(path: str | os.PathLike, spec: TensorSpec) -> None:
    """Check that the safetensors file at ``path`` matches ``spec`` exactly.

    The header is checked first (names, shapes, dtypes, by safetensors itself); then the
    data of each floating tensor is read ``CHECK_BLOCK`` bytes at a time, so memory stays
    around one block, not one tensor. Shapes in ``spec`` may be lists (as after a JSON
    round trip). Raises InvalidUpdate when the file is unreadable, names are missing or
    unexpected, a shape or dtype differs, or a floating tensor holds NaN or Inf.
    """
    _check_header_size(path, len(spec))
    try:
        handle = safe_open(str(path), framework="pt", backend="pread")
    except (SafetensorError, OSError) as exc:
        raise InvalidUpdate(f"unreadable safetensors: {exc}") from exc
    with handle:
        _check_names(set(handle.keys()), set(spec))
        for name, (shape, dtype) in spec.items():
            _check_header(handle, name, tuple(shape), dtype)
    floating = [name for name, (_, dtype) in spec.items() if dtype in _FLOAT_DTYPES]
    if floating:
        _check_finite_blocks(path, floating)


#: An update's header: its tensors' entries (about 100 bytes each) and a small
#: ``__metadata__`` (ours is ``{"format": "pt"}``); anything larger is refused unread.
HEADER_BYTES_PER_TENSOR = 512
MAX_METADATA_BYTES = 4096


def _check_header_size(path: str | os.PathLike, n_tensors: int) -> None:
    """Raise InvalidUpdate for a header larger than its tensors need, or a
    ``__metadata__`` over MAX_METADATA_BYTES (it would be stored with the update)."""
    limit = MAX_METADATA_BYTES + HEADER_BYTES_PER_TENSOR * max(n_tensors, 1)
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise InvalidUpdate("unreadable safetensors: shorter than its 8-byte header length")
        size = struct.unpack("<Q", prefix)[0]
        if size > limit:
            raise InvalidUpdate(f"unreadable safetensors: a header of {size} bytes exceeds the {limit} bytes "
                                f"{n_tensors} tensors need")
        try:
            header = json.loads(fh.read(size))
        except (ValueError, RecursionError) as exc:
            raise InvalidUpdate(f"unreadable safetensors header: {exc}") from exc
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if metadata is not None and len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        raise InvalidUpdate(f"safetensors __metadata__ exceeds {MAX_METADATA_BYTES} bytes")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of the file at ``path``, read ``chunk`` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _prepare(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached contiguous CPU tensors; tensors sharing storage get their own copy,
    because safetensors refuses shared storage (e.g. tied weights)."""
    prepared, seen = {}, set()
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name!r} is a {type(tensor).__name__}, not a tensor")
        t = tensor.detach().cpu().contiguous()
        pointer = t.untyped_storage().data_ptr()
        if pointer in seen and t.numel():
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        prepared[name] = t
    return prepared


def _check_names(got: set[str], expected: set[str]) -> None:
    problems = []
    if missing := sorted(expected - got):
        problems.append("missing tensors: " + ", ".join(map(repr, missing)))
    if extra := sorted(got - expected):
        problems.append("unexpected tensors: " + ", ".join(map(repr, extra)))
    if problems:
        raise InvalidUpdate("; ".join(problems))


def _check_header(handle, name: str, shape: tuple[int, ...], dtype: str) -> None:
    """Shape and dtype from the header alone, before any data is read."""
    try:
        piece = handle.get_slice(name)
        got_shape, code = tuple(piece.get_shape()), piece.get_dtype()
    except SafetensorError as exc:
        raise InvalidUpdate(f"unreadable safetensors: tensor {name!r}: {exc}") from exc
    if got_shape != shape:
        raise InvalidUpdate(f"tensor {name!r}: expected shape {shape}, got {got_shape}")
    got_dtype = _SAFETENSORS_DTYPES.get(code, code)
    if got_dtype != dtype:
        raise InvalidUpdate(f"tensor {name!r}: expected dtype {dtype}, got {got_dtype}")


def _check_finite_blocks(path: str | os.PathLike, names: list[str]) -> None:
    """NaN/Inf check of tensors ``names`` of a file whose header safetensors accepted:
    their bytes (``data_offsets`` in the header) are read block by block into one reused
    buffer and viewed as the tensor's dtype (safetensors is little-endian, as are the
    CPUs torch runs on here)."""
    with open(path, "rb") as fh:
        (header_size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(header_size))
        start_of_data = 8 + header_size
        buffer = bytearray(CHECK_BLOCK)
        for name in names:
            entry = header[name]
            dtype = getattr(torch, _SAFETENSORS_DTYPES[entry["dtype"]])
            begin, end = entry["data_offsets"]
            fh.seek(start_of_data + begin)
            remaining = end - begin
            while remaining:
                view = memoryview(buffer)[:min(remaining, CHECK_BLOCK)]
                got = fh.readinto(view)
                if got != len(view):
                    raise InvalidUpdate(f"unreadable safetensors: tensor {name!r} is truncated")
                _check_finite(name, torch.frombuffer(view, dtype=dtype))
                remaining -= got


def _check_finite(name: str, tensor: torch.Tensor) -> None:
    """InvalidUpdate if ``tensor`` holds a NaN or an infinity. The common case takes one
    pass and no temporary: ``aminmax`` propagates NaN, and an infinity is an extreme."""
    if tensor.element_size() == 1:  # float8 has no isnan/aminmax kernels on CPU
        tensor = tensor.float()
    if not tensor.numel() or all(math.isfinite(v) for v in torch.aminmax(tensor)):
        return
    if torch.isnan(tensor).any():
        raise InvalidUpdate(f"tensor {name!r} contains NaN values")
    raise InvalidUpdate(f"tensor {name!r} contains infinite values")
