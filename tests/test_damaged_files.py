"""Damaged files are refused in one line, never used (issue 25, items 2 and 4).

For each file format coun_fast writes or reads (model.pt, checkpoint.pt, split.npz, the data-set
.npz files, a packed data set's manifest and shards, data cache entries, metrics.json and
results.json, an experiment's YAML), a property test truncates the file at a random offset or
flips a random bit and reads it back: the reader must raise its documented ValueError in one line
naming the file, or return exactly what the undamaged file gives (a byte the format does not
use); never another exception, never different content. The undamaged files are built once per
module; each example damages a copy in a fresh folder.

Then the issue's examples through the command line, in a subprocess: a flipped bit in a tensor of
model.pt (``evaluate``), in a killed run's checkpoint.pt (``--resume``), and a split.npz whose
compressed data no longer inflates (``evaluate``) each end in one error line naming the file and
exit status 2.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coun_fast import checkpoint
from coun_fast.data.cache import cached_splits
from coun_fast.data.convert import load_arrays_npz, save_arrays
from coun_fast.data.embedded import synthetic
from coun_fast.data.pack import pack
from coun_fast.data.packed import load_npz, save_npz
from coun_fast.data.shards import FOOTER, HEADER, MAGIC, MANIFEST, index_bytes, open_sharded
from coun_fast.data.splits import ForgetSplit
from coun_fast.experiment.config import load_config
from coun_fast.experiment.results import read_json, write_json
from coun_fast.experiment.runner import _stored_row
from coun_fast.train import TrainConfig
from coun_fast.workflow import DataSource, make_forget_split, run_unlearning, train_original
from test_run_folders import API, TINY, checkpoint_of, cli, kill_after_first_checkpoint, refused, start

EXAMPLES = settings(max_examples=100, deadline=None)
RECIPES = Path(__file__).resolve().parents[1] / "coun_fast" / "recipes"


# -- damage ----------------------------------------------------------------------------------------
def damage(data: bytes, draw) -> bytes:
    """``data`` cut at a random offset, or with one random bit flipped."""
    if draw(st.booleans()):
        return data[: draw(st.integers(0, len(data) - 1))]
    position, bit = draw(st.integers(0, len(data) - 1)), draw(st.integers(0, 7))
    damaged = bytearray(data)
    damaged[position] ^= 1 << bit
    return bytes(damaged)


def refused_in_one_line(error: BaseException, path: Path) -> None:
    """A ValueError (or FileNotFoundError) in one line that names ``path``."""
    assert isinstance(error, (ValueError, FileNotFoundError)), repr(error)
    message = str(error)
    assert "\n" not in message and str(path) in message, message


def read_damaged(original: Path, data: bytes, read, *, name: str | None = None):
    """``read(path)`` of ``data`` written as a copy of ``original`` in a fresh folder: (result, None)
    or (None, the ValueError / FileNotFoundError it raised, checked to be one line naming the file)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / (name or original.name)
        path.write_bytes(data)
        try:
            return read(path), None
        except (ValueError, FileNotFoundError) as error:
            refused_in_one_line(error, path)
            return None, error


def same_payload(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_payload(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_payload(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and (a == b or (a != a and b != b))  # NaN equals NaN here


def same_splits(a, b) -> bool:
    """Two DatasetSplits with equal names, classes, labels and image data (decoded or encoded)."""
    for x, y in zip(a, b):
        if (x.name, x.split, tuple(x.classes)) != (y.name, y.split, tuple(y.classes)):
            return False
        if not np.array_equal(x.labels, y.labels):
            return False
        for part in ("images", "jpeg", "offsets"):
            u, v = getattr(x, part, None), getattr(y, part, None)
            if (u is None) != (v is None) or (u is not None and (u.dtype != v.dtype or not np.array_equal(u, v))):
                return False
    return True


# -- the undamaged files ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """``orig`` (an Original of digits at 8x8) and ``u`` (an FT run of it: model.pt, split.npz, checkpoint.pt)."""
    root = tmp_path_factory.mktemp("runs")
    original = train_original(DataSource("digits", image_size=8), "small_cnn",
                              TrainConfig(epochs=1, lr=0.05, **API), root / "orig")
    split = make_forget_split(original, "random", ratio=0.1, seed=0)
    run_unlearning("ft", original, split, TrainConfig(epochs=1, lr=0.01, **API), root / "u")
    return root


@pytest.fixture(scope="module")
def tiny_data():
    return synthetic(num_classes=3, train_per_class=6, test_per_class=2, image_size=8, seed=1)


@pytest.mark.parametrize("name", ["model.pt", "checkpoint.pt"])
def test_damaged_model_or_checkpoint_is_refused_or_unchanged(runs, name):
    path = runs / "u" / name
    data, expected = path.read_bytes(), checkpoint.load(path)

    @EXAMPLES
    @given(st.data())
    def check(draw):
        loaded, _ = read_damaged(path, damage(data, draw.draw), checkpoint.load)
        assert loaded is None or same_payload(loaded, expected)

    check()


def test_damaged_split_is_refused_or_unchanged(runs):
    path = runs / "u" / "split.npz"
    data, expected = path.read_bytes(), ForgetSplit.load(path)

    @EXAMPLES
    @given(st.data())
    def check(draw):
        loaded, _ = read_damaged(path, damage(data, draw.draw), ForgetSplit.load)
        assert loaded is None or (loaded == expected and loaded.to_dict() == expected.to_dict())

    check()


@pytest.mark.parametrize("kind", ["packed", "arrays"])
def test_damaged_data_set_npz_is_refused_or_unchanged(tmp_path_factory, tiny_data, kind):
    path = tmp_path_factory.mktemp("npz") / "tiny.npz"
    if kind == "packed":
        save_npz(path, tiny_data)
        read = lambda p: load_npz(p, name="tiny", decode=False)  # noqa: E731
    else:
        save_arrays(path, tiny_data)
        read = lambda p: load_arrays_npz(p, name="tiny")  # noqa: E731
    data, expected = path.read_bytes(), read(path)

    @EXAMPLES
    @given(st.data())
    def check(draw):
        loaded, _ = read_damaged(path, damage(data, draw.draw), read)
        assert loaded is None or same_splits(loaded, expected)

    check()


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_data) -> Path:
    base = tmp_path_factory.mktemp("shards")
    save_npz(base / "tiny.npz", tiny_data)
    return pack(base / "tiny.npz", base / "packed", shard_mib=0.002, progress=False)


def _read_sharded(root: Path):
    """Both splits of a packed data set as their labels, encoded images and normalization (as the
    loaders read them: no :meth:`~coun_fast.data.shards.ShardedDataset.verify`)."""
    splits = open_sharded(root)
    return [(s.labels.copy(), [bytes(a) for a in s.encoded_arrays(np.arange(len(s)))], s.normalization)
            for s in splits]


def test_damaged_shards_are_refused_or_unchanged(shards):
    files = sorted(p.name for p in shards.iterdir())
    assert "manifest.json" in files and len(files) > 3
    expected = _read_sharded(shards)

    @EXAMPLES
    @given(st.data())
    def check(draw):
        name = draw.draw(st.sampled_from(files))
        data = damage((shards / name).read_bytes(), draw.draw)
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder) / "packed"
            shutil.copytree(shards, root)
            (root / name).write_bytes(data)
            try:
                loaded = _read_sharded(root)
            except (ValueError, FileNotFoundError) as error:
                assert "\n" not in str(error) and str(root / name) in str(error), str(error)
                return
        assert all(np.array_equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2] for a, b in zip(loaded, expected))

    check()


def test_damaged_cache_entry_is_rebuilt(tmp_path_factory, tiny_data):
    """A damaged entry is a miss: the data set is built again, never read damaged."""
    cache = tmp_path_factory.mktemp("cache")
    decoded = type(tiny_data)(tiny_data.train.decoded(), tiny_data.test.decoded())
    cached_splits("tiny", lambda: decoded, cache)
    entry = cache / "tiny"
    files = sorted(p.name for p in entry.iterdir())
    assert len(files) == 5

    @EXAMPLES
    @given(st.data())
    def check(draw):
        name = draw.draw(st.sampled_from(files))
        data = damage((entry / name).read_bytes(), draw.draw)
        with tempfile.TemporaryDirectory() as folder:
            shutil.copytree(entry, Path(folder) / "tiny")
            (Path(folder) / "tiny" / name).write_bytes(data)
            built = []
            loaded = cached_splits("tiny", lambda: built.append(1) or decoded, folder)
            assert same_splits(loaded, decoded)
            again = []
            assert same_splits(cached_splits("tiny", lambda: again.append(1) or decoded, folder), decoded)
            assert not again  # the rebuilt (or undamaged) entry is a hit

    check()


def test_damaged_metrics_and_results_json_are_refused_or_unchanged(tmp_path_factory):
    folder = tmp_path_factory.mktemp("json")
    row = {"label": "ft", "method": "ft", "seed": 0, "stage": 0, "UA": 12.5, "RA": 99.25, "TA": 93.0,
           "MIA": 20.75, "Avg.Gap": 1.0625, "seconds": 3.5, "hparams": {"lr": 0.01}}
    write_json({"key": "abc123", "row": row}, folder / "metrics.json", digest=True)
    write_json({"format_version": 1, "runs": [row], "summary": [], "timings": None}, folder / "results.json",
               digest=True)
    assert _stored_row(folder, "abc123") == row
    metrics, results = (folder / "metrics.json").read_bytes(), (folder / "results.json").read_bytes()
    expected = read_json(folder / "results.json")

    @EXAMPLES
    @given(st.data())
    def check(draw):
        loaded, _ = read_damaged(folder / "metrics.json", damage(metrics, draw.draw),
                                 lambda p: _stored_row(p.parent, "abc123"))
        assert loaded is None or loaded == row
        loaded, _ = read_damaged(folder / "results.json", damage(results, draw.draw), read_json)
        assert loaded is None or loaded == expected

    check()


@pytest.mark.parametrize("recipe", ["cpu_smoke.yaml", "cpu_small.yaml", "cifar10_resnet18_sequential.yaml"])
def test_damaged_experiment_yaml_is_refused_or_parsed(recipe, tmp_path_factory):
    """A user's file carries no digest: damage gives a one-line error or a valid experiment."""
    path = RECIPES / recipe
    data = path.read_bytes()
    folder = tmp_path_factory.mktemp("cifar")  # stands for the data the CIFAR recipes need
    read = functools.partial(load_config, data=str(folder)) if recipe.startswith("cifar") else load_config
    read(path)

    @EXAMPLES
    @given(st.data())
    def check(draw):
        read_damaged(path, damage(data, draw.draw), read)  # raises anything but a one-line ValueError

    check()


# -- files of older coun_fast (no digest) ----------------------------------------------------------
def test_files_without_a_digest_are_read_with_a_warning(runs, tmp_path, caplog):
    """Checkpoints of formats 1-2 and splits of versions 1-2 are still read (with a warning that damage
    to them cannot be detected); a digest in a file that records an older format is damage."""
    payload = {k: v for k, v in checkpoint.load(runs / "u" / "model.pt").items() if k != "digest"}
    torch.save({**payload, "format_version": 2}, tmp_path / "old.pt")
    with caplog.at_level("WARNING"):
        assert same_payload(checkpoint.load(tmp_path / "old.pt"), {**payload, "format_version": 2})
    assert "records no digest" in caplog.text
    torch.save({**checkpoint.load(runs / "u" / "model.pt"), "format_version": 2}, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match="mixed.pt' is damaged: it holds a digest"):
        checkpoint.load(tmp_path / "mixed.pt")

    split = ForgetSplit.load(runs / "u" / "split.npz")
    meta = {**split._meta(), "version": 2}
    np.savez_compressed(tmp_path / "old.npz", train_indices=split.train_indices, forget=split.forget,
                        retain=split.retain, chunks=np.concatenate(split.chunks),
                        chunk_sizes=np.array([c.size for c in split.chunks]), meta=np.array(json.dumps(meta)))
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert ForgetSplit.load(tmp_path / "old.npz") == split
    assert "records no digest" in caplog.text


def test_shards_of_version_1_are_read(shards, tmp_path):
    """Shard files without CRC-32s (version 1) under a manifest without digests read as before."""
    root = tmp_path / "packed"
    shutil.copytree(shards, root)
    manifest = json.loads((root / MANIFEST).read_text())
    del manifest["digest"]
    for split in ("train", "test"):
        for entry in manifest["splits"][split]["shards"]:
            data = (root / entry["file"]).read_bytes()
            count, _, index_at, _ = FOOTER.unpack(data[-FOOTER.size:])
            index = data[index_at:index_at + index_bytes(count, 1)]  # without the CRC-32s
            old = HEADER.pack(MAGIC, 1, 0) + data[HEADER.size:index_at] + index + data[-FOOTER.size:]
            (root / entry["file"]).write_bytes(old)
            entry.update(bytes=len(old), sha256=hashlib.sha256(old).hexdigest())
            del entry["index_digest"]
    (root / MANIFEST).write_text(json.dumps(manifest))
    assert open_sharded(root).train.shards[0].crcs is None
    for a, b in zip(_read_sharded(root), _read_sharded(shards)):
        assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]


# -- the examples, through the command line -------------------------------------------------
def _member_data(path: Path, member_prefix: str) -> tuple[int, int]:
    """(offset, size) in the file of the stored bytes of the largest zip member whose name
    starts with ``member_prefix``."""
    with zipfile.ZipFile(path) as archive:
        members = [i for i in archive.infolist() if i.filename.startswith(member_prefix)]
    info = max(members, key=lambda i: i.compress_size)
    with open(path, "rb") as file:
        file.seek(info.header_offset)
        header = file.read(30)
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length, info.compress_size


def _flip(path: Path, position: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 1 << bit
    path.write_bytes(bytes(data))


def _flip_tensor_bit(path: Path) -> None:
    """Flip a high bit of a float in the middle of the largest tensor of a torch file."""
    with zipfile.ZipFile(path) as archive:
        prefix = archive.namelist()[0].split("/")[0] + "/data/"
    offset, size = _member_data(path, prefix)
    _flip(path, offset + (size // 2) // 4 * 4 + 3, 6)  # an exponent bit of a little-endian float32


def test_cli_evaluate_refuses_a_model_with_a_flipped_tensor_bit(runs, tmp_path):
    shutil.copytree(runs / "orig", tmp_path / "orig")
    shutil.copytree(runs / "u", tmp_path / "u")
    assert cli("evaluate", "u", cwd=tmp_path).returncode == 0
    _flip_tensor_bit(tmp_path / "u" / "model.pt")
    refused(cli("evaluate", "u", cwd=tmp_path), "model.pt' is damaged", "does not match its recorded digest")


def test_cli_evaluate_refuses_a_split_whose_compressed_data_does_not_inflate(runs, tmp_path):
    shutil.copytree(runs / "orig", tmp_path / "orig")
    shutil.copytree(runs / "u", tmp_path / "u")
    split = tmp_path / "u" / "split.npz"
    offset, size = _member_data(split, "retain")
    stream = split.read_bytes()[offset:offset + size]
    for position in range(size):  # the first flip that makes zlib fail (the traceback)
        damaged = bytearray(stream)
        damaged[position] ^= 0x80
        try:
            zlib.decompressobj(-15).decompress(bytes(damaged))
        except zlib.error:
            break
    else:
        pytest.fail("no single flip breaks the deflate stream")
    _flip(split, offset + position, 7)
    refused(cli("evaluate", "u", cwd=tmp_path), "split.npz' is not a readable split file")


def test_cli_resume_refuses_a_checkpoint_with_a_flipped_bit(tmp_path):
    arguments = ["train", "--dataset", "synthetic", *TINY, "--epochs", "30", "--lr", "0.05", "--out", "killed"]
    kill_after_first_checkpoint(start(*arguments, cwd=tmp_path), tmp_path / "killed")
    state = checkpoint_of(tmp_path / "killed")
    _flip_tensor_bit(state)
    refused(cli(*arguments, "--resume", cwd=tmp_path), "checkpoint.pt' is damaged",
            "does not match its recorded digest")
    assert not (tmp_path / "killed" / "model.pt").exists()
