"""Forget / retain splits of a training set, for machine unlearning.

An Original model is trained on ``train_indices`` (indices into the training split of a data set,
usually all of ``0..N-1``). Unlearning removes a **forget** set, a subset of those indices; the
rest of them is the **retain** set. Three kinds of split:

* ``"random"`` (:func:`random_split`): ``round(ratio * len(train_indices))`` training indices
  drawn uniformly without replacement;
* ``"class"`` (:func:`class_split`): every training index whose label is one of the forgotten
  classes (:func:`class_test_subsets` gives the matching test subsets);
* ``"sequential"`` (:func:`sequential_split`): the random forget set of the same ``ratio`` and
  ``seed``, cut into ``num_chunks`` chunks (sizes differing by at most 1) that are removed one
  after the other; :meth:`ForgetSplit.stage` gives the split after step ``k``.

Random splits are deterministic from their seed (``np.random.default_rng(seed)``); class splits
involve no randomness. A :class:`ForgetSplit` checks its own consistency when built and can be
saved and loaded (``.npz``) or turned into JSON-safe Python values. A split made for a loaded data
set records that data set's identity (``dataset``, see :mod:`coun_fast.data.identity`), so a
split file cannot be used with another data set of the same size. Before unlearning, call
:func:`check_within_training` with the indices the Original model was actually trained on: a
forget set drawn from data the Original never saw makes every unlearning metric meaningless.

Every index array here is 1-D int64, sorted and without duplicates, unless stated otherwise.
"""

from __future__ import annotations

import dataclasses
import io
import json
import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from coun_fast.data.npzfile import arrays_digest, read_npz
from coun_fast.digest import check_versioned, json_digest, undecodable
from coun_fast.files import write_atomic

__all__ = [
    "KINDS",
    "ForgetSplit",
    "random_split",
    "class_split",
    "class_test_subsets",
    "sequential_split",
    "make_split",
    "check_within_training",
    "check_indices",
]

KINDS = ("random", "class", "sequential")
"""The kinds of forget split."""

_FORMAT_VERSION = 3
_READABLE_VERSIONS = (1, 2, 3)  # version 1: no data set identity; 3: a digest in meta
_ARRAYS = ("train_indices", "forget", "retain", "chunks", "chunk_sizes")  # the arrays of a split file
_SHOW = 5  # offending indices shown in error messages


# -- small argument checks -----------------------------------------------------------------------
def _first_few(values: np.ndarray, count: int = _SHOW) -> str:
    shown = ", ".join(str(int(v)) for v in values[:count])
    return f"[{shown}{', ...' if len(values) > count else ''}]"


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    if not _is_int(value):
        raise TypeError(f"{name} must be an integer >= {minimum}; got {value!r} ({type(value).__name__})")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value}")
    return value


def _ratio(value: object) -> float:
    """A real number strictly inside (0, 1)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"ratio must be a float in (0, 1), the fraction of the training set to forget; "
            f"got {value!r} ({type(value).__name__})"
        )
    ratio = float(value)
    if not (0.0 < ratio < 1.0):  # also rejects NaN
        raise ValueError(f"ratio must be in (0, 1), the fraction of the training set to forget; got {value!r}")
    return ratio


def _seed(value: object) -> int:
    if not _is_int(value) or int(value) < 0:
        raise TypeError(
            f"seed must be a non-negative int (random splits are deterministic from their seed); got {value!r}"
        )
    return int(value)


def _int_array(values: object, name: str) -> np.ndarray:
    """``values`` as a fresh 1-D int64 array (an empty sequence gives an empty array)."""
    array = np.asarray(values)
    if array.size == 0 and array.ndim <= 1:
        return np.zeros(0, dtype=np.int64)
    if array.dtype == np.bool_:
        raise TypeError(f"{name} must hold integer indices, not a boolean mask; pass np.flatnonzero(mask)")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integer indices; got dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {array.shape}")
    return array.astype(np.int64, copy=True)


def _sorted_unique(values: object, name: str) -> np.ndarray:
    """A read-only int64 copy of ``values``, which must already be sorted, unique and >= 0."""
    array = _int_array(values, name)
    if array.size and array[0] < 0:
        raise ValueError(f"{name} must hold non-negative indices; got {int(array[0])}")
    if array.size > 1 and not np.all(array[1:] > array[:-1]):
        raise ValueError(f"{name} must be sorted and free of duplicates (strictly increasing)")
    array.setflags(write=False)
    return array


def check_indices(indices: object, num_train: int | None, name: str = "indices") -> np.ndarray:
    """Check indices into a training set of ``num_train`` samples; return them sorted.

    ``indices`` is any 1-D integer array-like (any order). Raises TypeError for non-integer or
    boolean input and ValueError for negative indices, indices ``>= num_train`` or duplicates,
    stating how many are wrong and the first few. ``num_train=None`` skips the upper bound.

    Returns:
        a new sorted int64 array of the same indices.
    """
    array = _int_array(indices, name)
    if num_train is not None:
        num_train = _positive_int(num_train, "num_train")
    negative = array[array < 0]
    if negative.size:
        raise ValueError(f"{name} must be >= 0; {negative.size} are negative: {_first_few(np.sort(negative))}")
    if num_train is not None:
        high = array[array >= num_train]
        if high.size:
            raise ValueError(
                f"{name} must lie in [0, {num_train}) for a training set of {num_train} samples; "
                f"{high.size} do not: {_first_few(np.sort(high))}"
            )
    array.sort()
    if array.size > 1:
        repeated = np.unique(array[1:][array[1:] == array[:-1]])
        if repeated.size:
            raise ValueError(f"{name} must not repeat an index; {repeated.size} repeat: {_first_few(repeated)}")
    return array


def _train_indices(num_train: object, train_indices: object) -> tuple[int, np.ndarray]:
    num_train = _positive_int(num_train, "num_train")
    if train_indices is None:
        return num_train, np.arange(num_train, dtype=np.int64)
    train = check_indices(train_indices, num_train, "train_indices")
    if train.size == 0:
        raise ValueError("train_indices must not be empty")
    return num_train, train


def _labels(labels: object, name: str = "labels") -> np.ndarray:
    array = _int_array(labels, name)
    if array.size == 0:
        raise ValueError(f"{name} must not be empty")
    if array.min() < 0:
        raise ValueError(f"{name} must be >= 0 (class indices); got {int(array.min())}")
    return array


def _json_safe(params: dict, name: str = "params") -> dict:
    if not isinstance(params, dict):
        raise TypeError(f"{name} must be a dict; got {type(params).__name__}")
    try:
        return json.loads(json.dumps(params))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must hold JSON-safe values (str keys, numbers, str, lists, dicts): {error}") from None


# -- the split -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class ForgetSplit:
    """A forget / retain split of the training indices of an Original model.

    Attributes:
        kind: ``"random"``, ``"class"`` or ``"sequential"``.
        train_indices: the indices, into the training split of the data set, that the Original
            model was trained on (usually all of ``0..N-1``).
        forget: the indices to unlearn, a non-empty subset of ``train_indices``.
        retain: ``train_indices`` minus ``forget``, non-empty.
        chunks: the forget set as the chunks removed in order (sequential forgetting), disjoint,
            each non-empty, their union ``forget``; one chunk, equal to ``forget``, for the other
            kinds.
        forget_classes: the forgotten class indices, sorted (class splits); empty otherwise.
        seed: the seed the split was drawn with; None when it involves no randomness.
        params: JSON-safe parameters the split was made with (``num_train``, ``ratio``,
            ``classes``, ``num_chunks``; ``stage`` for a stage of a sequential split).
        dataset: the identity of the data set the split was made for (a JSON-safe dict, see
            :func:`coun_fast.data.identity.dataset_identity`); None for a split made from
            indices alone.

    All index arrays are sorted, duplicate-free, read-only int64; ``__post_init__`` converts
    array-likes and raises ValueError (TypeError for wrong types) on any inconsistency. Two
    splits compare equal when all fields are equal.
    """

    kind: str
    train_indices: np.ndarray
    forget: np.ndarray
    retain: np.ndarray
    chunks: tuple[np.ndarray, ...]
    forget_classes: tuple[int, ...] = ()
    seed: int | None = None
    params: dict = dataclasses.field(default_factory=dict)
    dataset: dict | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}; got {self.kind!r}")
        train = _sorted_unique(self.train_indices, "train_indices")
        forget = _sorted_unique(self.forget, "forget")
        retain = _sorted_unique(self.retain, "retain")
        if train.size == 0:
            raise ValueError("train_indices must not be empty")
        if forget.size == 0:
            raise ValueError("forget must not be empty")
        if retain.size == 0:
            raise ValueError("retain must not be empty: forgetting the whole training set leaves nothing to retain")
        for name, part in (("forget", forget), ("retain", retain)):
            outside = part[~np.isin(part, train, assume_unique=True)]
            if outside.size:
                raise ValueError(
                    f"{name} must be a subset of train_indices; {outside.size} of its {part.size} indices "
                    f"are not training indices: {_first_few(outside)}"
                )
        both = np.intersect1d(forget, retain, assume_unique=True)
        if both.size:
            raise ValueError(f"forget and retain must be disjoint; {both.size} indices are in both: {_first_few(both)}")
        if forget.size + retain.size != train.size:
            missing = np.setdiff1d(train, np.union1d(forget, retain), assume_unique=True)
            raise ValueError(
                f"forget and retain together must be train_indices; {missing.size} training indices are in "
                f"neither: {_first_few(missing)}"
            )

        if isinstance(self.chunks, np.ndarray) or not isinstance(self.chunks, (tuple, list)):
            raise TypeError(f"chunks must be a tuple of index arrays; got {type(self.chunks).__name__}")
        chunks = tuple(_sorted_unique(c, f"chunks[{i}]") for i, c in enumerate(self.chunks))
        if not chunks:
            raise ValueError("chunks must hold at least one chunk")
        empty = [i for i, c in enumerate(chunks) if c.size == 0]
        if empty:
            raise ValueError(f"every chunk must be non-empty; chunks {empty} are empty")
        if self.kind != "sequential" and len(chunks) != 1:
            raise ValueError(f"a {self.kind!r} split has one chunk (the forget set); got {len(chunks)}")
        joined = np.sort(np.concatenate(chunks))
        if joined.size > 1 and np.any(joined[1:] == joined[:-1]):
            overlap = np.unique(joined[1:][joined[1:] == joined[:-1]])
            raise ValueError(f"chunks must be disjoint; {overlap.size} indices are in several: {_first_few(overlap)}")
        if joined.size != forget.size or not np.array_equal(joined, forget):
            raise ValueError(
                f"the union of the chunks must be the forget set; it has {joined.size} indices, forget has "
                f"{forget.size} ({np.setxor1d(joined, forget).size} differ)"
            )

        classes = self.forget_classes
        if not isinstance(classes, (tuple, list)) or not all(_is_int(c) and int(c) >= 0 for c in classes):
            raise TypeError(f"forget_classes must be a tuple of non-negative ints; got {classes!r}")
        classes = tuple(int(c) for c in classes)
        if list(classes) != sorted(set(classes)):
            raise ValueError(f"forget_classes must be sorted and free of duplicates; got {classes}")
        if self.kind == "class" and not classes:
            raise ValueError("a 'class' split needs forget_classes (the forgotten class indices)")
        if self.kind != "class" and classes:
            raise ValueError(f"forget_classes applies to 'class' splits only; got {classes} for kind {self.kind!r}")
        if self.seed is not None and (not _is_int(self.seed) or int(self.seed) < 0):
            raise TypeError(f"seed must be a non-negative int or None; got {self.seed!r}")

        object.__setattr__(self, "train_indices", train)
        object.__setattr__(self, "forget", forget)
        object.__setattr__(self, "retain", retain)
        object.__setattr__(self, "chunks", chunks)
        object.__setattr__(self, "forget_classes", classes)
        object.__setattr__(self, "seed", None if self.seed is None else int(self.seed))
        object.__setattr__(self, "params", _json_safe(self.params))
        if self.dataset is not None:
            object.__setattr__(self, "dataset", _json_safe(self.dataset, "dataset"))

    # -- comparison and display ----------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ForgetSplit):
            return NotImplemented
        return (
            self.kind == other.kind
            and self.seed == other.seed
            and self.forget_classes == other.forget_classes
            and self.params == other.params
            and self.dataset == other.dataset
            and np.array_equal(self.train_indices, other.train_indices)
            and np.array_equal(self.forget, other.forget)
            and np.array_equal(self.retain, other.retain)
            and len(self.chunks) == len(other.chunks)
            and all(np.array_equal(a, b) for a, b in zip(self.chunks, other.chunks))
        )

    __hash__ = None  # type: ignore[assignment]  # equal splits need not be the same object

    def __repr__(self) -> str:
        classes = f", forget_classes={self.forget_classes}" if self.forget_classes else ""
        chunks = f", chunks={[len(c) for c in self.chunks]}" if self.kind == "sequential" else ""
        return (
            f"ForgetSplit(kind={self.kind!r}, train={self.train_indices.size}, forget={self.forget.size}, "
            f"retain={self.retain.size}{chunks}{classes}, seed={self.seed}, params={self.params})"
        )

    # -- sequential stages ---------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        """Number of forgetting steps: ``len(chunks)`` (1 for random and class splits)."""
        return len(self.chunks)

    def stage(self, k: int) -> "ForgetSplit":
        """The split after sequential step ``k`` (0-based), ``0 <= k < num_stages``.

        Its forget set is the union of ``chunks[: k + 1]`` (stages nest: each one's forget set
        contains the previous one's), its retain set the rest of ``train_indices``, its chunks
        ``chunks[: k + 1]``; ``params`` gains ``"stage": k``. For a random or class split,
        ``stage(0)`` is the split itself.
        """
        if not _is_int(k) or not 0 <= int(k) < self.num_stages:
            raise ValueError(f"k must be an integer in [0, {self.num_stages}) (num_stages); got {k!r}")
        k = int(k)
        if self.kind != "sequential":
            return self
        chunks = self.chunks[: k + 1]
        forget = np.sort(np.concatenate(chunks))
        return ForgetSplit(
            kind=self.kind,
            train_indices=self.train_indices,
            forget=forget,
            retain=np.setdiff1d(self.train_indices, forget, assume_unique=True),
            chunks=chunks,
            forget_classes=self.forget_classes,
            seed=self.seed,
            params={**self.params, "stage": k},
            dataset=self.dataset,
        )

    # -- serialisation -------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {
            "format": "coun_fast.ForgetSplit",
            "version": _FORMAT_VERSION,
            "kind": self.kind,
            "forget_classes": list(self.forget_classes),
            "seed": self.seed,
            "params": self.params,
            "dataset": self.dataset,
        }

    def to_dict(self) -> dict:
        """The split as JSON-safe Python values (index arrays as lists of ints)."""
        return {
            **self._meta(),
            "train_indices": self.train_indices.tolist(),
            "forget": self.forget.tolist(),
            "retain": self.retain.tolist(),
            "chunks": [c.tolist() for c in self.chunks],
        }

    @classmethod
    def _from_meta(cls, meta: dict, arrays: dict, source: str) -> "ForgetSplit":
        if not isinstance(meta, dict) or meta.get("format") != "coun_fast.ForgetSplit":
            raise ValueError(f"{source} does not describe a ForgetSplit (no format 'coun_fast.ForgetSplit')")
        if meta.get("version") not in _READABLE_VERSIONS:
            raise ValueError(
                f"{source} has ForgetSplit format version {meta.get('version')!r}; this code reads "
                f"{', '.join(map(str, _READABLE_VERSIONS))}"
            )
        missing = [k for k in ("kind", "forget_classes", "seed", "params") if k not in meta]
        if missing:
            raise ValueError(f"{source} lacks the keys {missing}")
        return cls(
            kind=meta["kind"],
            train_indices=arrays["train_indices"],
            forget=arrays["forget"],
            retain=arrays["retain"],
            chunks=tuple(arrays["chunks"]),
            forget_classes=tuple(meta["forget_classes"]),
            seed=meta["seed"],
            params=meta["params"],
            dataset=meta.get("dataset"),
        )

    @classmethod
    def from_dict(cls, data: dict) -> "ForgetSplit":
        """Rebuild a split from :meth:`to_dict`'s output (checked as in the constructor)."""
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict from ForgetSplit.to_dict(); got {type(data).__name__}")
        missing = [k for k in ("train_indices", "forget", "retain", "chunks") if k not in data]
        if missing:
            raise ValueError(f"data lacks the keys {missing} of ForgetSplit.to_dict()")
        if not isinstance(data["chunks"], (list, tuple)):
            raise TypeError(f"data['chunks'] must be a list of index lists; got {type(data['chunks']).__name__}")
        arrays = {k: data[k] for k in ("train_indices", "forget", "retain")}
        arrays["chunks"] = [np.asarray(c, dtype=np.int64) for c in data["chunks"]]
        return cls._from_meta(data, arrays, "data")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the split to ``path`` exactly (no suffix is added; ``.npz`` is customary).

        The file is a compressed ``.npz`` holding ``train_indices``, ``forget``, ``retain``,
        ``chunks`` (concatenated in chunk order), ``chunk_sizes`` and ``meta`` (a JSON string of
        kind, forget_classes, seed, params, the format version and ``digest``, a SHA-256 over the
        arrays and the rest of meta, see :func:`_file_digest`). It is written to a temporary file
        in the same folder and moved into place with ``os.replace``, so a reader never sees a
        partial file; the file gets the permissions the umask gives. The folder must exist.
        Returns the path.
        """
        path = Path(path)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"cannot save the split to {path}: folder {path.parent} does not exist")
        arrays = {
            "train_indices": self.train_indices,
            "forget": self.forget,
            "retain": self.retain,
            "chunks": np.concatenate(self.chunks),
            "chunk_sizes": np.array([c.size for c in self.chunks], dtype=np.int64),
        }
        meta = self._meta()
        meta["digest"] = _file_digest(arrays, meta)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays, meta=np.array(json.dumps(meta)))
        write_atomic(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ForgetSplit":
        """Read a split written by :meth:`save` (checked as in the constructor).

        Raises FileNotFoundError for a missing file and ValueError, in one line naming the file,
        for anything that is not a readable split file (another kind of file, a damaged archive,
        other arrays) or whose content does not match its digest. Files of versions 1 and 2 carry
        no digest: they are read with a warning.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"split file {str(path)!r} does not exist")
        with open(path, "rb") as file:
            if file.read(4) != b"PK\x03\x04":
                raise ValueError(f"{str(path)!r} is not a split file: it is not an .npz archive "
                                 "(write one with ForgetSplit.save, or use the split.npz of an unlearning run)")
        arrays = read_npz(path, "split file")
        missing = [k for k in (*_ARRAYS, "meta") if k not in arrays]
        if missing:
            raise ValueError(f"{str(path)!r} is not a saved ForgetSplit: it lacks the arrays {missing}")
        try:
            meta = json.loads(str(arrays.pop("meta")))
        except (ValueError, RecursionError) as error:  # not JSON (a damaged file)
            raise undecodable(path, "split file", error) from None
        if isinstance(meta, dict):
            check_versioned(path, meta, kind="split format version", version=meta.get("version"),
                            current=_FORMAT_VERSION, readable=_READABLE_VERSIONS,
                            compute=lambda: _file_digest(arrays, meta))
        sizes = arrays.pop("chunk_sizes").astype(np.int64)
        flat = arrays["chunks"]
        if sizes.ndim != 1 or np.any(sizes < 0) or sizes.sum() != flat.size:
            raise ValueError(f"{path} is corrupt: chunk_sizes do not add up to the {flat.size} chunk indices")
        arrays["chunks"] = np.split(flat, np.cumsum(sizes)[:-1])
        return cls._from_meta(meta, arrays, str(path))

    # -- description ---------------------------------------------------------------------------
    def summary(self, labels: object = None, class_names: Sequence[str] | None = None) -> dict:
        """Sizes and parameters as plain Python values; per-class counts when ``labels`` is given.

        Args:
            labels: optional labels of the whole training split (indexed by training index).
                Adds ``forget_per_class`` and ``retain_per_class``, lists of counts per class.
            class_names: optional class names in label order; adds ``classes`` and sets the
                number of classes (else ``max(labels) + 1``).
        """
        out: dict[str, Any] = {
            "kind": self.kind,
            "seed": self.seed,
            "params": self.params,
            "train": int(self.train_indices.size),
            "forget": int(self.forget.size),
            "retain": int(self.retain.size),
            "forget_fraction": self.forget.size / self.train_indices.size,
            "chunk_sizes": [int(c.size) for c in self.chunks],
        }
        if self.forget_classes:
            out["forget_classes"] = list(self.forget_classes)
            if class_names is not None:
                out["forget_class_names"] = [str(class_names[c]) for c in self.forget_classes]
        if labels is not None:
            labels = _labels(labels)
            if self.train_indices[-1] >= labels.size:
                raise ValueError(
                    f"labels has {labels.size} entries but the split uses training index "
                    f"{int(self.train_indices[-1])}; "
                    "pass the labels of the whole training split"
                )
            num_classes = len(class_names) if class_names is not None else int(labels.max()) + 1
            if labels.max() >= num_classes:
                raise ValueError(
                    f"labels go up to {int(labels.max())} but class_names names only {num_classes} classes"
                )
            out["forget_per_class"] = np.bincount(labels[self.forget], minlength=num_classes).tolist()
            out["retain_per_class"] = np.bincount(labels[self.retain], minlength=num_classes).tolist()
            if class_names is not None:
                out["classes"] = [str(c) for c in class_names]
        return out


def _file_digest(arrays: dict, meta: dict) -> str:
    """The digest of a split file: of its arrays (:data:`_ARRAYS`, see
    :func:`~coun_fast.data.npzfile.arrays_digest`) and its meta without ``digest``."""
    content = arrays_digest({name: arrays[name] for name in _ARRAYS})
    return json_digest({"arrays": content, "meta": {k: v for k, v in meta.items() if k != "digest"}})


# -- constructors --------------------------------------------------------------------------------
def _random_forget_order(train: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """``round(ratio * len(train))`` training indices in a uniformly random order (not sorted)."""
    count = int(round(ratio * train.size))
    if count == 0:
        raise ValueError(
            f"ratio={ratio} of {train.size} training samples rounds to 0 forget samples; the forget set must be "
            "non-empty (raise ratio or use more training samples)"
        )
    if count == train.size:
        raise ValueError(
            f"ratio={ratio} of {train.size} training samples rounds to all {count} of them; the retain set must be "
            "non-empty (lower ratio or use more training samples)"
        )
    rng = np.random.default_rng(seed)
    return train[rng.permutation(train.size)[:count]]


def random_split(
    num_train: int, ratio: float, *, seed: int, train_indices: object = None
) -> ForgetSplit:
    """Forget ``round(ratio * len(train_indices))`` training indices drawn uniformly at random.

    ``round`` is Python's (halves go to the even integer: 2.5 -> 2, 1.5 -> 2).

    Args:
        num_train: number of samples in the training split of the data set.
        ratio: fraction of the training indices to forget, strictly in (0, 1).
        seed: non-negative int; the draw is ``np.random.default_rng(seed).permutation``, so a seed
            always gives the same split (for a given NumPy).
        train_indices: the indices the Original model was trained on (any order, no duplicates,
            in ``[0, num_train)``); default all of ``0..num_train-1``.

    Raises ValueError when the forget or retain set would be empty.
    """
    ratio = _ratio(ratio)
    seed = _seed(seed)
    num_train, train = _train_indices(num_train, train_indices)
    forget = np.sort(_random_forget_order(train, ratio, seed))
    return ForgetSplit(
        kind="random",
        train_indices=train,
        forget=forget,
        retain=np.setdiff1d(train, forget, assume_unique=True),
        chunks=(forget,),
        seed=seed,
        params={"num_train": num_train, "ratio": ratio},
    )


def sequential_split(
    num_train: int, ratio: float, num_chunks: int, *, seed: int, train_indices: object = None
) -> ForgetSplit:
    """A random forget set cut into ``num_chunks`` chunks that are forgotten one after another.

    The forget set is the one :func:`random_split` draws for the same ``num_train``, ``ratio``,
    ``seed`` and ``train_indices``. Its indices, in the random order of the draw, are cut into
    ``num_chunks`` consecutive pieces whose sizes differ by at most 1 (the larger ones first), so
    each chunk is a uniform random subset. ``num_chunks`` is an int in ``[1, forget size]``. Use
    :meth:`ForgetSplit.stage` for the split after each step.
    """
    ratio = _ratio(ratio)
    num_chunks = _positive_int(num_chunks, "num_chunks")
    seed = _seed(seed)
    num_train, train = _train_indices(num_train, train_indices)
    order = _random_forget_order(train, ratio, seed)
    if num_chunks > order.size:
        raise ValueError(
            f"num_chunks={num_chunks} exceeds the forget set size {order.size} (ratio={ratio} of {train.size}); "
            "every chunk must hold at least one index"
        )
    chunks = tuple(np.sort(c) for c in np.array_split(order, num_chunks))
    forget = np.sort(order)
    return ForgetSplit(
        kind="sequential",
        train_indices=train,
        forget=forget,
        retain=np.setdiff1d(train, forget, assume_unique=True),
        chunks=chunks,
        seed=seed,
        params={"num_train": num_train, "ratio": ratio, "num_chunks": num_chunks},
    )


def _resolve_classes(classes: object, num_classes: int, class_names: Sequence[str] | None) -> tuple[int, ...]:
    """Class indices from an int, a class name or a list of them; sorted, checked, no repeats."""
    if isinstance(classes, (str, numbers.Integral)) and not isinstance(classes, (bool, np.bool_)):
        items: list = [classes]
    elif isinstance(classes, np.ndarray) and classes.ndim == 1:
        items = classes.tolist()
    elif isinstance(classes, (list, tuple)):
        items = list(classes)
    else:
        raise TypeError(f"classes must be an int, a class name or a list of them; got {type(classes).__name__}")
    if not items:
        raise ValueError("classes must name at least one class to forget")
    names = None if class_names is None else [str(n) for n in class_names]
    resolved: list[int] = []
    for item in items:
        if isinstance(item, str):
            if names is None:
                raise ValueError(f"class name {item!r} needs class_names (the data set's class names in label order)")
            if item not in names:
                raise ValueError(f"unknown class name {item!r}; known names: {', '.join(names)}")
            resolved.append(names.index(item))
        elif _is_int(item):
            if not 0 <= int(item) < num_classes:
                raise ValueError(f"class {int(item)} in classes is out of range: the classes are 0..{num_classes - 1}")
            resolved.append(int(item))
        else:
            raise TypeError(f"classes entries must be ints or class names; got {item!r} ({type(item).__name__})")
    repeated = sorted({c for c in resolved if resolved.count(c) > 1})
    if repeated:
        raise ValueError(f"classes names the classes {repeated} more than once")
    return tuple(sorted(resolved))


def class_split(
    labels: object,
    classes: int | str | Iterable[int | str],
    *,
    class_names: Sequence[str] | None = None,
    train_indices: object = None,
) -> ForgetSplit:
    """Forget every training index whose label is one of ``classes`` (class-wise forgetting).

    Args:
        labels: labels of the whole training split, (num_train,) integers >= 0.
        classes: the classes to forget: an int, a class name (resolved with ``class_names``) or a
            list of them. Ints must lie in ``[0, num_classes)``, where ``num_classes`` is
            ``len(class_names)`` when given, else ``max(labels) + 1``.
        class_names: the data set's class names in label order.
        train_indices: the indices the Original model was trained on; default all.

    The split has ``seed=None``. Raises ValueError for an unknown name (listing the known ones), an
    out-of-range class, a forgotten class with no training samples, or an empty retain set.
    """
    labels = _labels(labels)
    if class_names is not None:
        if isinstance(class_names, str):
            raise TypeError("class_names must be a sequence of class names, not one string")
        num_classes = len(class_names)
        if labels.max() >= num_classes:
            raise ValueError(f"labels go up to {int(labels.max())} but class_names names only {num_classes} classes")
    else:
        num_classes = int(labels.max()) + 1
    forget_classes = _resolve_classes(classes, num_classes, class_names)
    num_train, train = _train_indices(labels.size, train_indices)
    train_labels = labels[train]
    absent = [c for c in forget_classes if not np.any(train_labels == c)]
    if absent:
        raise ValueError(f"classes {absent} have no samples among the {train.size} training indices; nothing to forget")
    in_forget = np.isin(train_labels, forget_classes)
    if in_forget.all():
        raise ValueError(
            f"classes {list(forget_classes)} cover every training sample; the retain set must be non-empty"
        )
    forget = train[in_forget]
    params: dict[str, Any] = {"num_train": num_train, "classes": list(forget_classes)}
    if class_names is not None:
        params["class_names"] = [str(class_names[c]) for c in forget_classes]
    return ForgetSplit(
        kind="class",
        train_indices=train,
        forget=forget,
        retain=train[~in_forget],
        chunks=(forget,),
        forget_classes=forget_classes,
        seed=None,
        params=params,
    )


def class_test_subsets(test_labels: object, forget_classes: int | Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """Test indices of the retained classes and of the forgotten classes.

    For class-wise forgetting the test accuracy (TA) is measured on the retained classes and the
    forgetting on the forgotten ones. ``forget_classes`` is an int or an iterable of ints (e.g.
    ``split.forget_classes``).

    Returns:
        ``(retained, forgotten)``: sorted int64 indices into ``test_labels``; together they are
        all of them. Raises ValueError when either would be empty.
    """
    labels = _labels(test_labels, "test_labels")
    if _is_int(forget_classes):
        classes = [int(forget_classes)]
    else:
        try:
            classes = list(forget_classes)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(f"forget_classes must be an int or ints; got {type(forget_classes).__name__}") from None
        if not classes or not all(_is_int(c) for c in classes):
            raise ValueError(f"forget_classes must be a non-empty list of ints; got {forget_classes!r}")
        classes = [int(c) for c in classes]
    forgotten = np.isin(labels, classes)
    if not forgotten.any():
        raise ValueError(f"test_labels has no samples of the forgotten classes {classes}")
    if forgotten.all():
        raise ValueError(
            f"test_labels has only samples of the forgotten classes {classes}; no retained classes to test"
        )
    return np.flatnonzero(~forgotten).astype(np.int64), np.flatnonzero(forgotten).astype(np.int64)


_NEEDS = {"random": ("ratio",), "sequential": ("ratio", "num_chunks"), "class": ("labels", "classes")}


def make_split(
    kind: str,
    *,
    num_train: int,
    labels: object = None,
    class_names: Sequence[str] | None = None,
    ratio: float | None = None,
    classes: int | str | Iterable[int | str] | None = None,
    num_chunks: int | None = None,
    seed: int = 0,
    train_indices: object = None,
) -> ForgetSplit:
    """Build a split of ``kind`` from the arguments that apply to it.

    * ``"random"``: needs ``ratio``; :func:`random_split`.
    * ``"sequential"``: needs ``ratio`` and ``num_chunks``; :func:`sequential_split`.
    * ``"class"``: needs ``labels`` (``len(labels) == num_train``) and ``classes``;
      :func:`class_split`. ``seed`` is ignored (class splits are not random).

    ``labels`` and ``class_names`` describe the data set and are accepted (unused) for every
    kind; a split parameter that does not apply to ``kind`` (``ratio`` for class splits,
    ``classes`` for random ones, ``num_chunks`` for non-sequential ones) raises ValueError, as
    does a missing one or an unknown kind.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}; got {kind!r}")
    given = {"ratio": ratio, "num_chunks": num_chunks, "classes": classes, "labels": labels}
    missing = [name for name in _NEEDS[kind] if given[name] is None]
    if missing:
        raise ValueError(f"kind={kind!r} needs {' and '.join(missing)}")
    for name in ("ratio", "num_chunks", "classes"):
        if given[name] is not None and name not in _NEEDS[kind]:
            users = " / ".join(repr(k) for k in KINDS if name in _NEEDS[k])
            raise ValueError(f"{name} does not apply to kind={kind!r} (only to kind {users}); leave it None")
    if kind == "random":
        return random_split(num_train, ratio, seed=seed, train_indices=train_indices)  # type: ignore[arg-type]
    if kind == "sequential":
        return sequential_split(
            num_train, ratio, num_chunks, seed=seed, train_indices=train_indices  # type: ignore[arg-type]
        )
    num_train = _positive_int(num_train, "num_train")
    label_count = np.asarray(labels).shape[0] if np.ndim(labels) >= 1 else -1
    if label_count != num_train:
        raise ValueError(
            f"labels must have one entry per training sample: num_train={num_train}, got {label_count} labels"
        )
    return class_split(labels, classes, class_names=class_names, train_indices=train_indices)  # type: ignore[arg-type]


# -- the subset check ----------------------------------------------------------------------------
def check_within_training(split: ForgetSplit, original_train_indices: object) -> None:
    """Check that ``split`` splits exactly the data the Original model was trained on.

    ``original_train_indices`` are the training-split indices the Original model saw (any order,
    no duplicates). Raises ValueError, stating how many indices are wrong and the first few, when

    * a forget index is not among them (the model would "unlearn" data it never learnt), or
    * a retain index is not among them (retain would hold unseen data), or
    * the Original saw indices that are in neither forget nor retain (``split.train_indices``
      differs from the Original's, so retain misses data).

    The fix is the same for all three: rebuild the split with
    ``train_indices=original_train_indices``.
    """
    if not isinstance(split, ForgetSplit):
        raise TypeError(f"split must be a ForgetSplit; got {type(split).__name__}")
    original = check_indices(original_train_indices, None, "original_train_indices")
    fix = "rebuild the split with train_indices=<the Original model's training indices>"
    for name, part in (("forget", split.forget), ("retain", split.retain)):
        unseen = part[~np.isin(part, original, assume_unique=True)]
        if unseen.size:
            raise ValueError(
                f"{unseen.size} of the {part.size} {name} indices are not in the Original model's "
                f"{original.size} training indices (first few: {_first_few(unseen)}); the Original never saw "
                f"them, so {'unlearning them is meaningless' if name == 'forget' else 'retain would add unseen data'}; "
                f"{fix}"
            )
    left_out = np.setdiff1d(original, split.train_indices, assume_unique=True)
    if left_out.size:
        raise ValueError(
            f"split.train_indices ({split.train_indices.size}) differ from the Original model's training indices "
            f"({original.size}): {left_out.size} indices the Original was trained on are in neither forget nor "
            f"retain (first few: {_first_few(left_out)}), so retain misses data; {fix}"
        )
