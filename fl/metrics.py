"""Evaluation metrics computed exactly from scores and labels (NumPy only)."""

from __future__ import annotations

import numpy as np


def binary_auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve, exactly, by the Mann–Whitney U statistic.

    ``scores``: higher means "more likely class 1"; ``labels``: 0/1 (anything non-zero
    counts as 1). ``AUROC = U / (n1 * n0)`` with ``U`` the number of (positive,
    negative) pairs where the positive scores higher, a tie counting one half; this is
    the rank formula with tied scores given their average rank, and equals
    ``sklearn.metrics.roc_auc_score``. ``U`` is kept as the integer ``2U``, so the only
    rounding is the final division.

    Returns None when the labels hold a single class (AUROC is undefined) or a score is
    not finite. Raises ValueError for mismatched or non-1-D inputs.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(labels) != 0
    if scores.ndim != 1 or scores.shape != positive.shape:
        raise ValueError(f"need 1-D scores and labels of one length, got "
                         f"{scores.shape} and {positive.shape}")
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0 or not np.isfinite(scores).all():
        return None
    _, group, counts = np.unique(scores, return_inverse=True, return_counts=True)
    pos_per_value = np.bincount(group[positive], minlength=len(counts)).astype(np.int64)
    neg_per_value = counts - pos_per_value
    neg_below = np.cumsum(neg_per_value) - neg_per_value
    twice_u = int((pos_per_value * (2 * neg_below + neg_per_value)).sum())
    return twice_u / (2 * n_pos * n_neg)
