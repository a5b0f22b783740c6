"""Local datasets, the demo datasets, and their partitioning into sites.

A local dataset is a ``.npz`` file with arrays ``X`` (n, f) and ``y`` (n,), or a ``.csv``
file with a header row and a label column. Features come back as float32, labels as
int64 class indices ``0..num_classes-1``.
"""

from __future__ import annotations

import csv
import os
import zipfile
from pathlib import Path

import numpy as np

from .params import ParamError

DATASET_SUFFIXES = {".npz": "npz", ".csv": "csv"}
SKLEARN_DATASETS = ("breast_cancer", "digits")


def load_dataset(path: str | Path, *, label_column: str = "label") -> tuple[np.ndarray, np.ndarray]:
    """Load ``(X, y)`` from a .npz or .csv file: X float32 (n, f), y int64 (n,).

    Raises ValueError, with the file and the problem named, for a missing file, an
    unsupported suffix, missing arrays or label column, non-numeric or non-finite
    values, labels that are not non-negative integers, or an empty dataset.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"dataset file not found: {path}")
    kind = DATASET_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path.name}: unsupported format {path.suffix!r} (expected .npz or .csv)")
    try:
        X, y = _load_npz(path) if kind == "npz" else _load_csv(path, label_column)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path.name}: not UTF-8 text ({exc.reason})") from exc
    return _check_arrays(path.name, X, y)


def describe_dataset(path: str | Path) -> dict:
    """``{"name", "format", "n_examples", "n_features", "num_classes"}`` of one file.

    ``num_classes`` is the largest label + 1. Raises ValueError like ``load_dataset``.
    """
    path = Path(path)
    X, y = load_dataset(path)
    return {
        "name": path.stem,
        "format": DATASET_SUFFIXES[path.suffix.lower()],
        "n_examples": int(X.shape[0]),
        "n_features": int(X.shape[1]),
        "num_classes": int(y.max()) + 1,
    }


def list_datasets(data_dir: str | Path) -> list[dict]:
    """Describe every .npz/.csv file directly in ``data_dir``, sorted by file name.

    A file that cannot be read is listed as ``{"name", "format", "error"}`` instead of
    being dropped, so an operator sees why. Raises ValueError if ``data_dir`` is not a
    directory.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"data directory not found: {data_dir}")
    found = []
    for path in sorted(data_dir.iterdir()):
        if path.suffix.lower() not in DATASET_SUFFIXES or not path.is_file():
            continue
        try:
            found.append(describe_dataset(path))
        except (ValueError, OSError) as exc:
            kind = DATASET_SUFFIXES[path.suffix.lower()]
            found.append({"name": path.stem, "format": kind, "error": str(exc)})
    return found


def train_val_split(
    X: np.ndarray, y: np.ndarray, *, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split into ``(X_train, y_train, X_val, y_val)`` by a permutation drawn from ``seed``.

    The validation part has ``round(n * val_fraction)`` examples, at least one when
    ``val_fraction > 0``. Raises ValueError unless ``0 <= val_fraction < 1`` and at least
    one training example is left.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    n = len(X)
    if len(y) != n:
        raise ValueError(f"X has {n} rows but y has {len(y)}")
    n_val = round(n * val_fraction)
    if val_fraction > 0:
        n_val = max(n_val, 1)
    if n - n_val < 1:
        raise ValueError(f"{n} examples leave nothing to train on with val_fraction={val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    val, train = order[:n_val], order[n_val:]
    return X[train], y[train], X[val], y[val]


def sklearn_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A demo dataset from scikit-learn's bundled copies (no download): ``(X, y)``.

    ``breast_cancer``: 569 x 30, 2 classes; every feature standardized to zero mean and
    unit variance over the whole set (the demo's agreed preprocessing: one fixed
    transform shared by all sites, instead of per-site statistics).
    ``digits``: 1797 x 64, 10 classes; pixel values divided by 16 into [0, 1].
    Raises ParamError(field="dataset") for another name.
    """
    from sklearn import datasets  # imported here: scikit-learn is slow to import

    if name == "breast_cancer":
        X, y = datasets.load_breast_cancer(return_X_y=True)
        std = X.std(axis=0)
        X = (X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)
    elif name == "digits":
        X, y = datasets.load_digits(return_X_y=True)
        X = X / 16.0
    else:
        known = ", ".join(SKLEARN_DATASETS)
        raise ParamError("dataset", f"unknown demo dataset {name!r} (known: {known})")
    return X.astype(np.float32), y.astype(np.int64)


def partition_indices(
    y: np.ndarray,
    n_parts: int,
    *,
    scheme: str,
    alpha: float = 0.5,
    seed: int,
    min_examples: int = 10,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Split example indices into ``n_parts`` disjoint, sorted parts covering all of ``y``.

    ``iid``: a shuffled split into equal parts (sizes differ by at most one).
    ``dirichlet``: label skew after Hsu et al. (2019): each class is split among the
    parts by proportions drawn from Dirichlet(alpha); smaller alpha, more skew. Draws
    are repeated (up to ``max_tries``) until every part has ``min_examples``.
    Raises ValueError for bad arguments or when no draw gives every part enough.
    """
    y = np.asarray(y)
    if n_parts < 1:
        raise ValueError(f"n_parts must be >= 1, got {n_parts}")
    if len(y) < n_parts * min_examples:
        raise ValueError(
            f"{len(y)} examples cannot give {n_parts} parts {min_examples} examples each"
        )
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return [np.sort(part) for part in np.array_split(rng.permutation(len(y)), n_parts)]
    if scheme != "dirichlet":
        raise ValueError(f"unknown partition scheme {scheme!r} (expected 'iid' or 'dirichlet')")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    for _ in range(max_tries):
        parts = _dirichlet_draw(y, n_parts, alpha, rng)
        if min(len(part) for part in parts) >= min_examples:
            return parts
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) split of {len(y)} examples into {n_parts} parts gave "
        f"each part {min_examples} examples in {max_tries} tries; raise alpha or use fewer parts"
    )


def write_partitions(
    name: str,
    n_parts: int,
    out_dir: str | Path,
    *,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int,
    min_examples: int = 10,
) -> list[Path]:
    """Partition demo dataset ``name`` and write ``out_dir/site-{k}/{name}.npz`` (k from 1).

    Each file holds arrays ``X`` and ``y`` and is written atomically. Returns the paths
    in site order. Raises like ``sklearn_dataset`` and ``partition_indices``.
    """
    X, y = sklearn_dataset(name)
    parts = partition_indices(
        y, n_parts, scheme=scheme, alpha=alpha, seed=seed, min_examples=min_examples
    )
    paths = []
    for k, indices in enumerate(parts, start=1):
        path = Path(out_dir) / f"site-{k}" / f"{name}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, X=X[indices], y=y[indices])
        os.replace(tmp, path)
        paths.append(path)
    return paths


def _dirichlet_draw(y: np.ndarray, n_parts: int, alpha: float, rng) -> list[np.ndarray]:
    """One label-skewed draw. As in the common reference implementation (Li et al.,
    NIID-Bench), a part already holding its fair share n/n_parts gets no more of the next
    classes, which keeps part sizes from running away."""
    parts: list[list[int]] = [[] for _ in range(n_parts)]
    fair_share = len(y) / n_parts
    for label in np.unique(y):
        indices = rng.permutation(np.flatnonzero(y == label))
        shares = rng.dirichlet(np.full(n_parts, alpha))
        shares = shares * np.array([len(part) < fair_share for part in parts])
        shares = shares / shares.sum() if shares.sum() > 0 else np.full(n_parts, 1 / n_parts)
        cuts = (np.cumsum(shares)[:-1] * len(indices)).astype(int)
        for part, chunk in zip(parts, np.split(indices, cuts)):
            part.extend(chunk.tolist())
    return [np.sort(np.array(part, dtype=np.int64)) for part in parts]


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path.name}: not a readable .npz file: {exc}") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path.name}: not an .npz archive (expected arrays X and y)")
    with archive:
        missing = [key for key in ("X", "y") if key not in archive.files]
        if missing:
            found = ", ".join(archive.files) or "none"
            raise ValueError(f"{path.name}: missing array(s) {', '.join(missing)} (found: {found})")
        try:
            return archive["X"], archive["y"]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path.name}: unreadable arrays: {exc}") from exc


def _load_csv(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path.name}: empty file (expected a header row)")
        header = [name.strip() for name in header]
        if label_column not in header:
            raise ValueError(
                f"{path.name}: no label column {label_column!r} (columns: {', '.join(header)})"
            )
        rows = [_parse_csv_row(path.name, header, line, row)
                for line, row in enumerate(reader, start=2) if row]
    table = np.array(rows, dtype=np.float64).reshape(len(rows), len(header))
    label_index = header.index(label_column)
    return np.delete(table, label_index, axis=1), table[:, label_index]


def _parse_csv_row(file_name: str, header: list[str], line: int, row: list[str]) -> list[float]:
    if len(row) != len(header):
        raise ValueError(f"{file_name}, line {line}: {len(row)} fields, header has {len(header)}")
    try:
        return [float(value) for value in row]
    except ValueError:
        column, value = next((c, v) for c, v in zip(header, row) if not _is_number(v))
        raise ValueError(
            f"{file_name}, line {line}, column {column!r}: {value!r} is not a number"
        ) from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_arrays(file_name: str, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not (_is_real_number_dtype(X.dtype) and _is_real_number_dtype(y.dtype)):
        raise ValueError(f"{file_name}: X and y must be numeric, got {X.dtype} and {y.dtype}")
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(
            f"{file_name}: expected X of shape (n, features) and y of shape (n,), "
            f"got {X.shape} and {y.shape}"
        )
    if len(y) == 0:
        raise ValueError(f"{file_name}: no examples")
    if not np.isfinite(X).all():
        raise ValueError(f"{file_name}: X holds NaN or infinite values")
    if not (np.isfinite(y).all() and (y >= 0).all() and (y == np.round(y)).all()):
        raise ValueError(f"{file_name}: labels must be non-negative integers")
    return X.astype(np.float32), y.astype(np.int64)


def _is_real_number_dtype(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
