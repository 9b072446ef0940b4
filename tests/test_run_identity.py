"""Two run folders are combined only when they are comparable (issue 25, items 3 and 7).

* ``evaluate --retrain`` refuses, before any metric, a Retrain of another data set of the same
  size (so the same random split), of another architecture (``small_cnn`` with other widths) or
  of another split, naming what differs; ``--allow-other-architecture`` (``evaluate_run(...,
  allow_other_architecture=True)``) compares two architectures on purpose, and the table and the
  JSON say so.
* ``unlearn --split`` refuses a split of another data set of the same size before any work.
* The model cache: an Original or Retrain trained by several ranks has its own key (the
  single-process keys stay what they were), an entry records its number of ranks and one of
  another number is refused, and a cached Retrain that is not comparable with its Original is
  refused.

Runs are tiny (``small_cnn`` on synthetic 8x8 images, CPU); the CLI runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from coun_fast import checkpoint
from coun_fast.data.convert import save_arrays
from coun_fast.data.embedded import synthetic
from coun_fast.experiment import cache as model_cache
from coun_fast.identity import fingerprint
from coun_fast.train import TrainConfig
from coun_fast.workflow import DataSource, evaluate_run, load_run, make_forget_split, run_unlearning, train_original

API = dict(batch_size=32, device="cpu", progress=False, augment_backend="cpu", checkpoint_every=0)
ORIGINAL = TrainConfig(epochs=1, lr=0.05, **API)
UNLEARN = TrainConfig(epochs=1, lr=0.01, schedule="cosine", min_lr=1e-4, **API)
NARROW = {"widths": [8, 16, 32]}


def cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    """``coun-fast ARGS`` in a subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COUN_FAST_CACHE": str(cwd / "data_cache"),
           "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "coun_fast", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def refused(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2 with one error line holding every fragment, nothing on stdout; returns the line."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stdout == "", result.stdout  # refused before any metric was printed
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two data sets of the same size (``a``, ``b``: other images and labels), and

    * ``orig_a``, ``orig_b``: Originals of ``small_cnn`` on each; ``orig_narrow``: on ``a`` with
      other widths;
    * ``ft_a``: FT of ``orig_a`` (random 10%, seed 0); ``retrain_a``, ``retrain_narrow``: Retrains
      of that split from ``orig_a`` and ``orig_narrow``; ``retrain_b``: Retrain of ``orig_b``'s
      random 10% split of seed 0, the same indices on the other data set;
      ``ft_a_other``: FT of ``orig_a`` on another split (seed 1).
    """
    root = tmp_path_factory.mktemp("identity")
    first = synthetic(num_classes=4, train_per_class=20, test_per_class=4, image_size=8, seed=0)
    second = synthetic(num_classes=4, train_per_class=20, test_per_class=4, image_size=8, seed=1)
    order = np.random.default_rng(0).permutation(len(second.train))  # labels in another order
    second = type(second)(second.train.subset(order), second.test)
    for name, splits in (("a", first), ("b", second)):
        (root / name).mkdir()
        save_arrays(root / name / "data.npz", splits)
    source = {name: DataSource("npz", str(root / name / "data.npz")) for name in ("a", "b")}
    orig_a = train_original(source["a"], "small_cnn", ORIGINAL, root / "orig_a")
    orig_b = train_original(source["b"], "small_cnn", ORIGINAL, root / "orig_b")
    narrow = train_original(source["a"], "small_cnn", ORIGINAL, root / "orig_narrow", model_kwargs=NARROW)
    split = make_forget_split(orig_a, "random", ratio=0.1, seed=0)
    split_b = make_forget_split(orig_b, "random", ratio=0.1, seed=0)
    assert np.array_equal(split.forget, split_b.forget)  # the same indices: only the data set differs
    run_unlearning("ft", orig_a, split, UNLEARN, root / "ft_a")
    run_unlearning("retrain", orig_a, split, ORIGINAL, root / "retrain_a")
    run_unlearning("retrain", narrow, split, ORIGINAL, root / "retrain_narrow")
    run_unlearning("retrain", orig_b, split_b, ORIGINAL, root / "retrain_b")
    run_unlearning("ft", orig_a, make_forget_split(orig_a, "random", ratio=0.1, seed=1), UNLEARN,
                   root / "ft_a_other")
    return root


# -- evaluate --retrain ----------------------------------------------------------------------------
def test_evaluate_with_a_comparable_retrain(runs, tmp_path):
    result = cli("evaluate", "ft_a", "--retrain", "retrain_a", "--json", tmp_path / "m.json", cwd=runs)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "another architecture" not in result.stdout
    rows = json.loads((tmp_path / "m.json").read_text())
    assert rows["ft_a"]["Avg.Gap"] >= 0 and "retrain_architecture" not in rows["ft_a"]


def test_evaluate_refuses_a_retrain_of_another_data_set_of_the_same_size(runs, tmp_path):
    result = cli("evaluate", "ft_a", "--retrain", "retrain_b", "--json", tmp_path / "m.json", cwd=runs)
    refused(result, "'ft_a' was made on another data set than the Retrain 'retrain_b'", "dataset.train_labels")
    assert not (tmp_path / "m.json").exists()
    # with --split too (each run is then evaluated on that split)
    refused(cli("evaluate", "ft_a", "--split", "ft_a/split.npz", "--retrain", "retrain_b", cwd=runs),
            "another data set")


def test_evaluate_refuses_a_retrain_of_another_architecture_unless_allowed(runs, tmp_path):
    line = refused(cli("evaluate", "ft_a", "--retrain", "retrain_narrow", cwd=runs),
                   "'ft_a' is of another architecture than the Retrain 'retrain_narrow'", "model.widths",
                   "--allow-other-architecture")
    assert "data set" not in line
    allowed = cli("evaluate", "ft_a", "--retrain", "retrain_narrow", "--allow-other-architecture",
                  "--json", tmp_path / "m.json", cwd=runs)
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "Retrain 'retrain_narrow' is of another architecture than 'ft_a'" in allowed.stdout
    assert "model.widths: [32, 64, 128] -> [8, 16, 32]" in allowed.stdout
    rows = json.loads((tmp_path / "m.json").read_text())
    assert rows["ft_a"]["retrain_architecture"] == "other: model.widths: [32, 64, 128] -> [8, 16, 32]"
    assert rows["ft_a"]["Avg.Gap"] >= 0
    # the option does not let another data set through
    refused(cli("evaluate", "ft_a", "--retrain", "retrain_b", "--allow-other-architecture", cwd=runs),
            "another data set")


def test_evaluate_refuses_a_retrain_of_another_split(runs):
    refused(cli("evaluate", "ft_a_other", "--retrain", "retrain_a", cwd=runs),
            "'ft_a_other' unlearned another split than the Retrain 'retrain_a'", "split.forget")


def test_evaluate_run_takes_the_retrain_run_and_checks_it(runs):
    with pytest.raises(ValueError, match="made on another data set than the Retrain"):
        evaluate_run(runs / "ft_a", retrain=runs / "retrain_b")
    with pytest.raises(ValueError, match="another architecture .*allow_other_architecture=True"):
        evaluate_run(runs / "ft_a", retrain=runs / "retrain_narrow")
    metrics = evaluate_run(runs / "ft_a", retrain=runs / "retrain_narrow", allow_other_architecture=True)
    assert metrics["retrain_architecture"] == "other: model.widths: [32, 64, 128] -> [8, 16, 32]"
    reference = evaluate_run(runs / "retrain_narrow")
    same = evaluate_run(runs / "ft_a", retrain=reference)  # metrics: taken as they are
    assert metrics["Avg.Gap"] == pytest.approx(same["Avg.Gap"])
    plain = evaluate_run(runs / "ft_a", retrain=load_run(runs / "retrain_a"))
    assert "retrain_architecture" not in plain and plain["Avg.Gap"] >= 0


# -- unlearn --split -------------------------------------------------------------------------------
def test_unlearn_refuses_a_split_of_another_data_set_before_any_work(runs, tmp_path):
    result = cli("unlearn", "--method", "ft", "--original", runs / "orig_a", "--split", runs / "retrain_b/split.npz",
                 "--epochs", "1", "--device", "cpu", "--no-progress", "--augment-backend", "cpu",
                 "--out", tmp_path / "out", cwd=runs)
    refused(result, "the split was made on another data set", "train_labels")
    assert not (tmp_path / "out").exists()


# -- the model cache -------------------------------------------------------------------------------
def test_cache_keys_of_several_ranks_differ_and_single_process_keys_are_unchanged():
    source, config = DataSource("digits", image_size=8), TrainConfig(epochs=2, lr=0.05, **API)
    one = model_cache.original_description(source, "small_cnn", {}, config, ranks=1)
    # the key an entry made before ranks entered the description has (CACHE_VERSION 2)
    assert fingerprint(one) == fingerprint({
        "version": 2, "step": "original", "data": {"dataset": "digits", "path": None, "image_size": 8},
        "model": {"name": "small_cnn", "kwargs": {}}, "config": model_cache.recipe(config)})
    two = model_cache.original_description(source, "small_cnn", {}, config, ranks=2)
    synced = model_cache.original_description(source, "small_cnn", {}, config.replace(sync_batchnorm=True), ranks=2)
    assert len({fingerprint(one), fingerprint(two), fingerprint(synced)}) == 3
    assert two["ranks"] == 2 and "ranks" not in one
    split = make_split_for_keys()
    retrains = [fingerprint(model_cache.retrain_description("k", split, config, ranks=k)) for k in (1, 2)]
    assert retrains[0] != retrains[1]
    assert retrains[0] == fingerprint({"version": 2, "step": "retrain", "original": "k",
                                       "split": model_cache.split_fingerprint(split),
                                       "config": model_cache.recipe(config)})


def make_split_for_keys():
    from coun_fast.data import make_split

    return make_split("random", num_train=20, ratio=0.2, seed=0)


@pytest.fixture
def cached(tmp_path):
    """A cache with an Original and a Retrain of a tiny synthetic set, trained in this process."""
    source = DataSource("synthetic", image_size=8)
    original = model_cache.cached_original(source, "small_cnn", {}, ORIGINAL, tmp_path / "cache")
    split = make_forget_split(original.run, "random", ratio=0.1, seed=0)
    retrain = model_cache.cached_retrain(original, split, ORIGINAL, tmp_path / "cache")
    assert not original.hit and not retrain.hit
    return source, original, split, retrain


def _rewrite_record(folder: Path, **changes) -> None:
    state = checkpoint.load(folder / "model.pt")
    record = {k: v for k, v in state["record"].items() if k not in changes or changes[k] is not None}
    record.update({k: v for k, v in changes.items() if v is not None})
    checkpoint.save(folder / "model.pt", {**state, "record": record})


def test_a_cache_entry_records_its_ranks_and_one_of_other_ranks_is_refused(cached, tmp_path):
    source, original, split, retrain = cached
    assert original.run.record["ranks"] == 1 and retrain.run.record["ranks"] == 1
    again = model_cache.cached_original(source, "small_cnn", {}, ORIGINAL, tmp_path / "cache")
    assert again.hit and again.key == original.key
    _rewrite_record(original.run.folder, ranks=2)  # as if 2 ranks had trained it under this key
    with pytest.raises(ValueError, match=r"cache entry .* was trained by 2 ranks, but this run has 1"):
        model_cache.cached_original(source, "small_cnn", {}, ORIGINAL, tmp_path / "cache")
    # an entry of an older coun_fast records no ranks: its checkpoint's world size tells
    _rewrite_record(original.run.folder, ranks=None)
    state = checkpoint.load(original.run.folder / "checkpoint.pt")
    checkpoint.save(original.run.folder / "checkpoint.pt", {**state, "world_size": 2})
    with pytest.raises(ValueError, match="was trained by 2 ranks, but this run has 1"):
        model_cache.cached_original(source, "small_cnn", {}, ORIGINAL, tmp_path / "cache")


def test_a_cached_retrain_not_comparable_with_its_original_or_split_is_refused(cached, runs, tmp_path):
    source, original, split, retrain = cached
    hit = model_cache.cached_retrain(original, split, ORIGINAL, tmp_path / "cache")
    assert hit.hit and hit.key == retrain.key
    shutil.copyfile(runs / "retrain_narrow" / "model.pt", retrain.run.folder / "model.pt")  # another run, same key
    with pytest.raises(ValueError, match=r"the cached Retrain .* was made on another data set .*than its Original"):
        model_cache.cached_retrain(original, split, ORIGINAL, tmp_path / "cache")
    # a Retrain of the same Original, but of another split, under this key
    other = make_forget_split(original.run, "random", ratio=0.1, seed=1)
    run_unlearning("retrain", original.run, other, ORIGINAL, tmp_path / "other")
    shutil.copyfile(tmp_path / "other" / "model.pt", retrain.run.folder / "model.pt")
    with pytest.raises(ValueError, match=r"the cached Retrain .* unlearned another split than the one asked "
                                         r"\(forget: "):
        model_cache.cached_retrain(original, split, ORIGINAL, tmp_path / "cache")
