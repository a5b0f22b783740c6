from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fl.metrics import binary_auroc


def test_auroc_by_hand_with_ties():
    scores = [0.2, 0.5, 0.5, 0.9, 0.1, 0.5]
    labels = [0, 1, 0, 1, 0, 1]
    # positives 0.5, 0.9, 0.5 vs negatives 0.2, 0.5, 0.1:
    # 0.5 -> beats 0.2 and 0.1, ties 0.5: 2.5; 0.9 -> 3; 0.5 -> 2.5; U = 8 of 9
    assert binary_auroc(scores, labels) == 8 / 9
    # Rank form: ranks 1..6 of [0.1, 0.2, 0.5, 0.5, 0.5, 0.9]; the three 0.5s share 4;
    # positives' rank sum R = 4 + 4 + 6 = 14; U = R - 3*4/2 = 8
    assert binary_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize("scores, labels, expected", [
    ([1, 2, 3, 4], [0, 0, 1, 1], 1.0),
    ([1, 2, 3, 4], [1, 1, 0, 0], 0.0),
    ([7, 7, 7, 7], [0, 1, 0, 1], 0.5),
    ([0.3, 0.3], [1, 0], 0.5),
])
def test_auroc_extremes(scores, labels, expected):
    assert binary_auroc(np.array(scores, dtype=float), np.array(labels)) == expected


def test_auroc_matches_a_pair_count_and_sklearn_on_random_ties():
    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(2, 40))
        scores, labels = rng.integers(0, 5, n).astype(float), rng.integers(0, 2, n)
        result = binary_auroc(scores, labels)
        if labels.min() == labels.max():
            assert result is None
            continue
        pos, neg = scores[labels == 1], scores[labels == 0]
        pairs = sum(Fraction(int(p > q) + int(p == q), 1 + int(p == q)) for p in pos for q in neg)
        assert result == float(pairs / (len(pos) * len(neg)))
        assert result == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_undefined_auroc_is_none_and_bad_shapes_refused():
    assert binary_auroc([0.1, 0.2], [1, 1]) is None
    assert binary_auroc([0.1, float("nan")], [0, 1]) is None
    with pytest.raises(ValueError):
        binary_auroc([0.1, 0.2, 0.3], [0, 1])
