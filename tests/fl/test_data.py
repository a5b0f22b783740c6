import numpy as np
import pytest

from fl.data import (
    describe_dataset,
    list_datasets,
    load_dataset,
    partition_indices,
    sklearn_dataset,
    train_val_split,
    write_partitions,
)
from fl.params import ParamError


@pytest.fixture(scope="module")
def digits():
    return sklearn_dataset("digits")


def test_npz_round_trip_and_dtypes(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.arange(6).reshape(3, 2), y=np.array([0.0, 1.0, 2.0]))
    X, y = load_dataset(tmp_path / "d.npz")
    assert X.dtype == np.float32 and y.dtype == np.int64
    assert X.shape == (3, 2) and y.tolist() == [0, 1, 2]


def test_csv_with_label_column_anywhere(tmp_path):
    (tmp_path / "d.csv").write_text("a,label,b\n1,0,2\n3.5,1,4\n\n")
    X, y = load_dataset(tmp_path / "d.csv")
    assert X.tolist() == [[1.0, 2.0], [3.5, 4.0]] and y.tolist() == [0, 1]
    (tmp_path / "e.csv").write_text("target,a\n2,1\n")
    X, y = load_dataset(tmp_path / "e.csv", label_column="target")
    assert X.tolist() == [[1.0]] and y.tolist() == [2]


@pytest.mark.parametrize("name, content, words", [
    ("nolabel.csv", "a,b\n1,2\n", "no label column 'label'"),
    ("text.csv", "a,label\n1,0\nx,1\n", "line 3, column 'a': 'x' is not a number"),
    ("ragged.csv", "a,label\n1,0\n1,2,3\n", "line 3: 3 fields"),
    ("empty.csv", "", "empty file"),
    ("header_only.csv", "a,label\n", "no examples"),
    ("badlabel.csv", "a,label\n1,0.5\n", "non-negative integers"),
    ("neglabel.csv", "a,label\n1,-1\n", "non-negative integers"),
    ("nan.csv", "a,label\n,0\n", "'' is not a number"),
    ("inf.csv", "a,label\ninf,0\n", "NaN or infinite"),
    ("data.txt", "a,label\n1,0\n", "unsupported format"),
])
def test_csv_and_format_refusals_are_clear(tmp_path, name, content, words):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=words.replace("(", r"\(")) as info:
        load_dataset(tmp_path / name)
    assert name in str(info.value)


def test_npz_refusals_are_clear(tmp_path):
    np.savez(tmp_path / "nokeys.npz", features=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"missing array.*X, y.*found: features"):
        load_dataset(tmp_path / "nokeys.npz")
    np.savez(tmp_path / "strings.npz", X=np.array([["a", "b"]]), y=np.array([0]))
    with pytest.raises(ValueError, match="must be numeric"):
        load_dataset(tmp_path / "strings.npz")
    np.savez(tmp_path / "flat.npz", X=np.zeros(4), y=np.zeros(4))
    with pytest.raises(ValueError, match=r"expected X of shape \(n, features\)"):
        load_dataset(tmp_path / "flat.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk" * 10)
    with pytest.raises(ValueError, match=r"not a readable \.npz"):
        load_dataset(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="not found"):
        load_dataset(tmp_path / "absent.npz")


def test_describe_and_list_datasets_report_errors_instead_of_dropping(tmp_path):
    np.savez(tmp_path / "good.npz", X=np.zeros((4, 3)), y=np.array([0, 2, 1, 0]))
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    (tmp_path / "notes.txt").write_text("ignored")
    listed = list_datasets(tmp_path)
    assert listed[1] == describe_dataset(tmp_path / "good.npz") == {
        "name": "good", "format": "npz", "n_examples": 4, "n_features": 3, "num_classes": 3}
    assert listed[0]["name"] == "bad" and "no label column" in listed[0]["error"]
    assert len(listed) == 2
    with pytest.raises(ValueError):
        list_datasets(tmp_path / "nowhere")


def test_train_val_split_is_deterministic_and_disjoint():
    X, y = np.arange(20, dtype=np.float32).reshape(10, 2), np.arange(10)
    first = train_val_split(X, y, val_fraction=0.3, seed=1)
    again = train_val_split(X, y, val_fraction=0.3, seed=1)
    other = train_val_split(X, y, val_fraction=0.3, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[3], other[3])
    X_tr, y_tr, _X_val, y_val = first
    assert len(y_val) == 3 and sorted(y_tr.tolist() + y_val.tolist()) == list(range(10))
    assert np.array_equal(X_tr[:, 0] / 2, y_tr)  # rows stay with their labels
    with pytest.raises(ValueError):
        train_val_split(X, y, val_fraction=1.0, seed=0)


def test_sklearn_datasets_preprocessing():
    X, y = sklearn_dataset("breast_cancer")
    assert X.shape == (569, 30) and X.dtype == np.float32 and y.dtype == np.int64
    assert np.allclose(X.mean(axis=0), 0, atol=1e-5) and np.allclose(X.std(axis=0), 1, atol=1e-4)
    X, y = sklearn_dataset("digits")
    assert X.shape == (1797, 64) and X.min() == 0 and X.max() == 1 and set(y) == set(range(10))
    with pytest.raises(ParamError):
        sklearn_dataset("mnist")


def assert_disjoint_cover(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == n and len(np.unique(joined)) == n


def test_iid_partition_equal_sizes_disjoint_cover(digits):
    _, y = digits
    parts = partition_indices(y, 7, scheme="iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert_disjoint_cover(parts, len(y))


def label_skew(parts, y):
    """Mean total-variation distance between each part's label mix and the global one."""
    overall = np.bincount(y, minlength=10) / len(y)
    return np.mean([0.5 * np.abs(np.bincount(y[p], minlength=10) / len(p) - overall).sum()
                    for p in parts])


def test_dirichlet_partition_is_skewed_and_respects_minimum(digits):
    _, y = digits
    parts = partition_indices(y, 5, scheme="dirichlet", alpha=0.1, seed=0, min_examples=30)
    assert_disjoint_cover(parts, len(y))
    assert min(len(p) for p in parts) >= 30
    iid = partition_indices(y, 5, scheme="iid", seed=0)
    assert label_skew(iid, y) < 0.1 < 0.4 < label_skew(parts, y)
    again = partition_indices(y, 5, scheme="dirichlet", alpha=0.1, seed=0, min_examples=30)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_partition_refusals():
    y = np.repeat(np.arange(2), 20)
    with pytest.raises(ValueError, match="cannot give"):
        partition_indices(y, 5, scheme="iid", seed=0)
    with pytest.raises(ValueError, match="scheme"):
        partition_indices(y, 2, scheme="zipf", seed=0)
    with pytest.raises(ValueError, match="tries"):
        partition_indices(y, 4, scheme="dirichlet", alpha=0.01, seed=0, max_tries=3)


def test_write_partitions_layout(tmp_path):
    paths = write_partitions("breast_cancer", 3, tmp_path, scheme="iid", alpha=0.5, seed=0)
    assert paths == [tmp_path / f"site-{k}" / "breast_cancer.npz" for k in (1, 2, 3)]
    total = 0
    for path in paths:
        info = describe_dataset(path)
        assert info["n_features"] == 30 and info["num_classes"] == 2
        total += info["n_examples"]
    assert total == 569
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["site-1", "site-2", "site-3"] + ["breast_cancer.npz"] * 3)
