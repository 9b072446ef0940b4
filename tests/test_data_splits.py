"""Forget / retain splits: sizes, content, determinism, sequential stages, persistence, the subset check."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from coun_fast.data.splits import (
    KINDS,
    ForgetSplit,
    check_indices,
    check_within_training,
    class_split,
    class_test_subsets,
    make_split,
    random_split,
    sequential_split,
)

NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cifar_like_labels(per_class: int = 100, num_classes: int = 10, seed: int = 0) -> np.ndarray:
    """Balanced labels in a shuffled order, like a CIFAR training split."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


def assert_partition(split: ForgetSplit) -> None:
    """The invariants every split must satisfy."""
    for array in (split.train_indices, split.forget, split.retain, *split.chunks):
        assert array.dtype == np.int64 and array.ndim == 1
        assert np.all(np.diff(array) > 0), "sorted and unique"
    assert np.intersect1d(split.forget, split.retain).size == 0
    np.testing.assert_array_equal(np.union1d(split.forget, split.retain), split.train_indices)
    np.testing.assert_array_equal(np.sort(np.concatenate(split.chunks)), split.forget)
    assert sum(c.size for c in split.chunks) == split.forget.size


# -- random --------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_train, ratio", [(1000, 0.1), (50000, 0.1), (999, 0.5), (7, 0.3), (10, 0.25), (10, 0.15)])
def test_random_sizes_and_partition(num_train, ratio):
    split = random_split(num_train, ratio, seed=3)
    assert split.kind == "random" and split.seed == 3 and split.forget_classes == ()
    assert split.forget.size == round(ratio * num_train)
    assert split.retain.size == num_train - round(ratio * num_train)
    np.testing.assert_array_equal(split.train_indices, np.arange(num_train))
    assert len(split.chunks) == 1 and split.num_stages == 1
    assert split.params == {"num_train": num_train, "ratio": ratio}
    assert_partition(split)


def test_random_deterministic_and_seed_dependent():
    a = random_split(5000, 0.1, seed=7)
    b = random_split(5000, 0.1, seed=7)
    assert a == b
    np.testing.assert_array_equal(a.forget, b.forget)
    others = [random_split(5000, 0.1, seed=s).forget for s in (0, 1, 8)]
    for other in others:
        assert not np.array_equal(a.forget, other)
        # independent draws of 500 of 5000 overlap in about 50 indices, far from all 500
        assert np.intersect1d(a.forget, other).size < 150


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_uniform_over_classes_and_positions(seed):
    labels = cifar_like_labels(per_class=5000)  # 50000 samples, 10 classes
    split = random_split(labels.size, 0.1, seed=seed)
    per_class = np.bincount(labels[split.forget], minlength=10) / 5000
    # hypergeometric: 500 expected per class, sd about 20; these bounds are 5 sd wide
    assert np.all(np.abs(per_class - 0.1) < 0.02), per_class
    # positions: the forget indices are spread over the whole range, not bunched
    deciles = np.bincount(split.forget // 5000, minlength=10)
    assert np.all(np.abs(deciles - 500) < 100), deciles
    assert abs(split.forget.mean() - 25000) < 1000


def test_random_inside_train_subset():
    train = np.arange(0, 2000, 2)[::-1]  # unsorted on purpose: the even indices
    split = random_split(2000, 0.2, seed=1, train_indices=train)
    np.testing.assert_array_equal(split.train_indices, np.sort(train))
    assert split.forget.size == round(0.2 * 1000)
    assert np.all(split.forget % 2 == 0) and np.all(split.retain % 2 == 0)
    assert split.retain.size == 800
    assert_partition(split)


@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5, math.nan, math.inf, 0.0, 1.0])
def test_ratio_out_of_range(ratio):
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\)"):
        random_split(100, ratio, seed=0)
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\)"):
        sequential_split(100, ratio, 2, seed=0)


@pytest.mark.parametrize("ratio", ["0.1", None, True, [0.1]])
def test_ratio_wrong_type(ratio):
    with pytest.raises(TypeError, match="ratio must be a float"):
        random_split(100, ratio, seed=0)


def test_ratio_rounding_to_empty_sets():
    with pytest.raises(ValueError, match="rounds to 0 forget samples"):
        random_split(100, 0.004, seed=0)
    with pytest.raises(ValueError, match="retain set must be non-empty"):
        random_split(100, 0.996, seed=0)


@pytest.mark.parametrize("seed", [None, -1, 1.5, True, "0"])
def test_bad_seed(seed):
    with pytest.raises(TypeError, match="seed must be a non-negative int"):
        random_split(100, 0.1, seed=seed)


@pytest.mark.parametrize("num_train", [0, -5])
def test_bad_num_train(num_train):
    with pytest.raises(ValueError, match="num_train must be an integer >= 1"):
        random_split(num_train, 0.1, seed=0)


# -- class-wise ----------------------------------------------------------------------------------
def test_class_split_content():
    labels = cifar_like_labels()
    split = class_split(labels, 3)
    np.testing.assert_array_equal(split.forget, np.flatnonzero(labels == 3))
    np.testing.assert_array_equal(split.retain, np.flatnonzero(labels != 3))
    assert split.kind == "class" and split.seed is None and split.forget_classes == (3,)
    assert split.params == {"num_train": labels.size, "classes": [3]}
    assert_partition(split)


def test_class_split_names_and_several_classes():
    labels = cifar_like_labels()
    by_name = class_split(labels, ["truck", "cat"], class_names=NAMES)
    assert by_name.forget_classes == (3, 9)
    np.testing.assert_array_equal(by_name.forget, np.flatnonzero((labels == 3) | (labels == 9)))
    assert by_name.params["class_names"] == ["cat", "truck"]
    mixed = class_split(labels, ("cat", 9), class_names=NAMES)
    np.testing.assert_array_equal(mixed.forget, by_name.forget)
    one = class_split(labels, "airplane", class_names=NAMES)
    np.testing.assert_array_equal(one.forget, np.flatnonzero(labels == 0))
    np.testing.assert_array_equal(class_split(labels, np.array([3, 9])).forget, by_name.forget)


def test_class_split_inside_train_subset():
    labels = cifar_like_labels()
    train = np.arange(0, 1000, 3)
    split = class_split(labels, 5, train_indices=train)
    np.testing.assert_array_equal(split.forget, train[labels[train] == 5])
    np.testing.assert_array_equal(split.train_indices, train)
    assert_partition(split)


def test_class_split_errors():
    labels = cifar_like_labels()
    with pytest.raises(ValueError, match=r"unknown class name 'kitten'; known names: airplane, automobile, .*truck"):
        class_split(labels, "kitten", class_names=NAMES)
    with pytest.raises(ValueError, match="needs class_names"):
        class_split(labels, "cat")
    with pytest.raises(ValueError, match=r"class 10 in classes is out of range: the classes are 0\.\.9"):
        class_split(labels, 10)
    with pytest.raises(ValueError, match="out of range"):
        class_split(labels, -1)
    with pytest.raises(ValueError, match="at least one class"):
        class_split(labels, [])
    with pytest.raises(ValueError, match="more than once"):
        class_split(labels, ["cat", 3], class_names=NAMES)
    with pytest.raises(ValueError, match="retain set must be non-empty"):
        class_split(labels, list(range(10)))
    with pytest.raises(ValueError, match=r"classes \[3\] have no samples"):
        class_split(labels, 3, train_indices=np.flatnonzero(labels != 3))
    with pytest.raises(TypeError, match="classes must be an int, a class name or a list"):
        class_split(labels, 3.0)
    with pytest.raises(ValueError, match="class_names names only 5 classes"):
        class_split(labels, 1, class_names=NAMES[:5])


def test_class_test_subsets():
    test_labels = cifar_like_labels(per_class=20, seed=5)
    retained, forgotten = class_test_subsets(test_labels, (3, 9))
    np.testing.assert_array_equal(forgotten, np.flatnonzero(np.isin(test_labels, [3, 9])))
    np.testing.assert_array_equal(retained, np.flatnonzero(~np.isin(test_labels, [3, 9])))
    assert forgotten.size == 40 and retained.size == 160
    assert retained.dtype == forgotten.dtype == np.int64
    np.testing.assert_array_equal(np.union1d(retained, forgotten), np.arange(test_labels.size))
    split = class_split(cifar_like_labels(), 4)
    r1, f1 = class_test_subsets(test_labels, split.forget_classes)
    r2, f2 = class_test_subsets(test_labels, 4)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(r1, r2)
    assert np.all(test_labels[f1] == 4) and np.all(test_labels[r1] != 4)
    with pytest.raises(ValueError, match="no samples of the forgotten classes"):
        class_test_subsets(test_labels, 10)
    with pytest.raises(ValueError, match="non-empty list of ints"):
        class_test_subsets(test_labels, [])


# -- sequential ----------------------------------------------------------------------------------
@pytest.mark.parametrize("num_train, ratio, num_chunks", [(1000, 0.1, 5), (1000, 0.1, 3), (997, 0.23, 4), (50, 0.1, 1)])
def test_sequential_chunks(num_train, ratio, num_chunks):
    split = sequential_split(num_train, ratio, num_chunks, seed=2)
    assert split.kind == "sequential" and split.num_stages == num_chunks
    assert split.forget.size == round(ratio * num_train)
    sizes = [c.size for c in split.chunks]
    assert len(sizes) == num_chunks and max(sizes) - min(sizes) <= 1 and sum(sizes) == split.forget.size
    for i, a in enumerate(split.chunks):
        for b in split.chunks[i + 1 :]:
            assert np.intersect1d(a, b).size == 0
    assert_partition(split)
    # the forget set is the random split's of the same seed
    np.testing.assert_array_equal(split.forget, random_split(num_train, ratio, seed=2).forget)


def test_sequential_chunks_are_random_not_ranges():
    split = sequential_split(10000, 0.1, 4, seed=0)
    for chunk in split.chunks:
        # a random quarter of the forget set spans the whole index range
        assert chunk.min() < 1000 and chunk.max() > 9000


def test_sequential_stages_nest():
    split = sequential_split(1000, 0.2, 4, seed=9)
    previous = np.zeros(0, dtype=np.int64)
    for k in range(split.num_stages):
        stage = split.stage(k)
        assert_partition(stage)
        np.testing.assert_array_equal(stage.forget, np.sort(np.concatenate(split.chunks[: k + 1])))
        np.testing.assert_array_equal(stage.retain, np.setdiff1d(split.train_indices, stage.forget))
        assert np.all(np.isin(previous, stage.forget)) and stage.forget.size > previous.size
        assert stage.params["stage"] == k and stage.num_stages == k + 1
        previous = stage.forget
    np.testing.assert_array_equal(split.stage(3).forget, split.forget)
    assert split.stage(3).stage(1) == split.stage(1)
    with pytest.raises(ValueError, match=r"k must be an integer in \[0, 4\)"):
        split.stage(4)
    with pytest.raises(ValueError, match="k must be an integer"):
        split.stage(-1)
    plain = random_split(100, 0.1, seed=0)
    assert plain.stage(0) is plain


def test_sequential_deterministic():
    assert sequential_split(1000, 0.1, 5, seed=4) == sequential_split(1000, 0.1, 5, seed=4)
    assert sequential_split(1000, 0.1, 5, seed=4) != sequential_split(1000, 0.1, 5, seed=5)


@pytest.mark.parametrize("num_chunks, error, match", [
    (0, ValueError, "num_chunks must be an integer >= 1"),
    (-2, ValueError, "num_chunks must be an integer >= 1"),
    (2.5, TypeError, "num_chunks must be an integer >= 1"),
    (2.0, TypeError, "num_chunks must be an integer >= 1"),
    (True, TypeError, "num_chunks must be an integer >= 1"),
    (None, TypeError, "num_chunks must be an integer >= 1"),
    (11, ValueError, "num_chunks=11 exceeds the forget set size 10"),
])
def test_bad_num_chunks(num_chunks, error, match):
    with pytest.raises(error, match=match):
        sequential_split(100, 0.1, num_chunks, seed=0)


# -- make_split ----------------------------------------------------------------------------------
def test_make_split_dispatch():
    labels = cifar_like_labels()
    assert make_split("random", num_train=1000, ratio=0.1, seed=3) == random_split(1000, 0.1, seed=3)
    assert make_split("sequential", num_train=1000, ratio=0.1, num_chunks=5, seed=3) == sequential_split(
        1000, 0.1, 5, seed=3
    )
    assert make_split("class", num_train=1000, labels=labels, classes="cat", class_names=NAMES) == class_split(
        labels, 3, class_names=NAMES
    )
    # data set facts are accepted for every kind
    assert make_split("random", num_train=1000, labels=labels, class_names=NAMES, ratio=0.1) == random_split(
        1000, 0.1, seed=0
    )


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="forget"), r"kind must be one of 'random', 'class', 'sequential'; got 'forget'"),
    (dict(kind="random"), "kind='random' needs ratio"),
    (dict(kind="sequential", ratio=0.1), "kind='sequential' needs num_chunks"),
    (dict(kind="class"), "kind='class' needs labels and classes"),
    (dict(kind="random", ratio=0.1, classes=3), "classes does not apply to kind='random'"),
    (dict(kind="random", ratio=0.1, num_chunks=3), "num_chunks does not apply to kind='random'"),
    (dict(kind="sequential", ratio=0.1, num_chunks=3, classes=1), "classes does not apply"),
    (dict(kind="class", labels=np.arange(1000) % 10, classes=1, ratio=0.1), "ratio does not apply to kind='class'"),
    (dict(kind="class", labels=np.arange(999) % 10, classes=1), "num_train=1000, got 999 labels"),
])
def test_make_split_errors(kwargs, match):
    kind = kwargs.pop("kind")
    with pytest.raises(ValueError, match=match):
        make_split(kind, num_train=1000, **kwargs)


# -- persistence ---------------------------------------------------------------------------------
def all_kinds() -> list[ForgetSplit]:
    labels = cifar_like_labels()
    return [
        random_split(1000, 0.1, seed=1),
        random_split(1000, 0.1, seed=1, train_indices=np.arange(0, 1000, 2)),
        class_split(labels, ["cat", "dog"], class_names=NAMES),
        sequential_split(1000, 0.13, 4, seed=2),
        sequential_split(1000, 0.13, 4, seed=2).stage(1),
    ]


@pytest.mark.parametrize("index", range(5))
def test_dict_round_trip(index):
    split = all_kinds()[index]
    data = split.to_dict()
    data = json.loads(json.dumps(data))  # JSON-safe
    assert isinstance(data["forget"], list) and all(type(i) is int for i in data["forget"])
    again = ForgetSplit.from_dict(data)
    assert again == split
    assert again.kind in KINDS


@pytest.mark.parametrize("index", range(5))
def test_save_load_round_trip(tmp_path, index):
    split = all_kinds()[index]
    path = split.save(tmp_path / "split.npz")
    assert path == tmp_path / "split.npz"
    again = ForgetSplit.load(path)
    assert again == split
    assert [c.size for c in again.chunks] == [c.size for c in split.chunks]
    assert [p.name for p in tmp_path.iterdir()] == ["split.npz"], "no temporary file left behind"


def test_save_overwrites_and_checks_folder(tmp_path):
    a, b = random_split(100, 0.1, seed=0), random_split(100, 0.1, seed=1)
    a.save(tmp_path / "s.npz")
    b.save(tmp_path / "s.npz")
    assert ForgetSplit.load(tmp_path / "s.npz") == b
    with pytest.raises(FileNotFoundError, match="does not exist"):
        a.save(tmp_path / "missing" / "s.npz")


def test_load_rejects_other_files(tmp_path):
    np.savez(tmp_path / "other.npz", forget=np.arange(3))
    with pytest.raises(ValueError, match="not a saved ForgetSplit"):
        ForgetSplit.load(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="lacks the keys"):
        ForgetSplit.from_dict({"forget": [1]})


def test_arrays_are_read_only():
    split = random_split(100, 0.1, seed=0)
    with pytest.raises(ValueError):
        split.forget[0] = 1
    with pytest.raises(AttributeError):
        split.kind = "class"


# -- the constructor's own checks ----------------------------------------------------------------
def test_constructor_rejects_inconsistent_splits():
    train = np.arange(10)
    ok = dict(kind="random", train_indices=train, forget=[1, 2], retain=[0, 3, 4, 5, 6, 7, 8, 9], chunks=([1, 2],))
    ForgetSplit(**ok)
    with pytest.raises(ValueError, match="disjoint"):
        ForgetSplit(**{**ok, "retain": [0, 2, 3, 4, 5, 6, 7, 8, 9]})
    with pytest.raises(ValueError, match="in neither"):
        ForgetSplit(**{**ok, "retain": [0, 3, 4, 5, 6, 7, 8]})
    with pytest.raises(ValueError, match="forget must be a subset of train_indices"):
        ForgetSplit(**{**ok, "forget": [1, 2, 10], "chunks": ([1, 2, 10],)})
    with pytest.raises(ValueError, match="sorted and free of duplicates"):
        ForgetSplit(**{**ok, "forget": [2, 1], "chunks": ([1, 2],)})
    with pytest.raises(ValueError, match="union of the chunks must be the forget set"):
        ForgetSplit(**{**ok, "chunks": ([1],)})
    with pytest.raises(ValueError, match="one chunk"):
        ForgetSplit(**{**ok, "chunks": ([1], [2])})
    with pytest.raises(ValueError, match="chunks must be disjoint"):
        ForgetSplit(**{**ok, "kind": "sequential", "chunks": ([1, 2], [2])})
    with pytest.raises(ValueError, match="forget_classes applies to 'class' splits only"):
        ForgetSplit(**{**ok, "forget_classes": (1,)})
    with pytest.raises(ValueError, match="kind must be one of"):
        ForgetSplit(**{**ok, "kind": "classwise"})
    with pytest.raises(ValueError, match="JSON-safe"):
        ForgetSplit(**{**ok, "params": {"ratio": np.arange(2)}})


# -- the subset check ----------------------------------------------------------------------------
def test_within_training_accepts_matching_split():
    original = np.arange(0, 1000, 2)
    split = random_split(1000, 0.1, seed=0, train_indices=original)
    check_within_training(split, original)
    check_within_training(split, original[::-1].tolist())
    check_within_training(random_split(1000, 0.1, seed=0), np.arange(1000))


def test_within_training_catches_unseen_forget_indices():
    # the old bug: the Original saw 900 samples, the split was drawn from all 1000
    original = np.arange(900)
    split = random_split(1000, 0.2, seed=0)
    unseen = split.forget[split.forget >= 900]
    assert unseen.size > 0
    with pytest.raises(ValueError) as info:
        check_within_training(split, original)
    message = str(info.value)
    assert f"{unseen.size} of the {split.forget.size} forget indices are not in the Original" in message
    assert str(int(unseen[0])) in message
    assert "train_indices=<the Original model's training indices>" in message


def test_within_training_catches_single_foreign_forget_index():
    train = np.arange(100)
    split = ForgetSplit(kind="random", train_indices=train, forget=[5, 99], retain=np.setdiff1d(train, [5, 99]),
                        chunks=([5, 99],))
    with pytest.raises(ValueError, match=r"1 of the 2 forget indices .*first few: \[99\]"):
        check_within_training(split, np.arange(99))


def test_within_training_catches_unseen_retain_indices():
    train = np.arange(100)
    split = ForgetSplit(kind="random", train_indices=train, forget=[5], retain=np.setdiff1d(train, [5]),
                        chunks=([5],))
    with pytest.raises(ValueError, match=r"1 of the 99 retain indices .*first few: \[50\]"):
        check_within_training(split, np.setdiff1d(train, [50]))


def test_within_training_catches_mismatched_train_set():
    # the split covers only part of what the Original saw: retain would miss data
    split = random_split(1000, 0.1, seed=0, train_indices=np.arange(800))
    with pytest.raises(ValueError) as info:
        check_within_training(split, np.arange(1000))
    message = str(info.value)
    assert "200 indices the Original was trained on are in neither forget nor retain" in message
    assert "[800, 801, 802, 803, 804, ...]" in message
    assert "rebuild the split with train_indices=" in message


def test_within_training_checks_its_arguments():
    split = random_split(100, 0.1, seed=0)
    with pytest.raises(TypeError, match="split must be a ForgetSplit"):
        check_within_training(split.to_dict(), np.arange(100))
    with pytest.raises(ValueError, match="original_train_indices must not repeat"):
        check_within_training(split, np.r_[np.arange(100), 3])


# -- check_indices -------------------------------------------------------------------------------
def test_check_indices():
    np.testing.assert_array_equal(check_indices([5, 1, 3], 10, "forget"), [1, 3, 5])
    assert check_indices([], 10, "forget").dtype == np.int64
    with pytest.raises(ValueError, match=r"forget must be >= 0; 2 are negative: \[-3, -1\]"):
        check_indices([-1, 2, -3], 10, "forget")
    with pytest.raises(ValueError, match=r"forget must lie in \[0, 10\).*2 do not: \[10, 12\]"):
        check_indices([12, 10, 3], 10, "forget")
    with pytest.raises(ValueError, match=r"forget must not repeat an index; 1 repeat: \[4\]"):
        check_indices([4, 1, 4, 4], 10, "forget")
    with pytest.raises(TypeError, match="boolean mask"):
        check_indices(np.ones(10, dtype=bool), 10, "forget")
    with pytest.raises(TypeError, match="integer indices"):
        check_indices([0.5, 1.0], 10, "forget")
    with pytest.raises(ValueError, match="must be 1-D"):
        check_indices(np.zeros((2, 2), dtype=np.int64), 10, "forget")


def test_summary():
    labels = cifar_like_labels()
    split = class_split(labels, "cat", class_names=NAMES)
    summary = split.summary(labels, NAMES)
    json.dumps(summary)
    assert summary["forget"] == 100 and summary["retain"] == 900 and summary["train"] == 1000
    assert summary["forget_per_class"] == [0, 0, 0, 100, 0, 0, 0, 0, 0, 0]
    assert summary["retain_per_class"] == [100, 100, 100, 0, 100, 100, 100, 100, 100, 100]
    assert summary["forget_class_names"] == ["cat"] and summary["classes"] == list(NAMES)
    plain = sequential_split(1000, 0.1, 3, seed=0).summary()
    assert plain["chunk_sizes"] == [34, 33, 33] and plain["forget_fraction"] == 0.1
    with pytest.raises(ValueError, match="pass the labels of the whole training split"):
        split.summary(labels[:500])
