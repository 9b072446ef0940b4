"""Data set loaders on tiny files written in their real on-disk formats, the decoded-array cache,
the built-in data sets and the loaders' errors."""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coun_fast.data import cache as cache_module
from coun_fast.data.cache import cache_key, cached_splits, default_cache_dir
from coun_fast.data.cifar import load_cifar10, load_cifar100
from coun_fast.data.dataset import DatasetSplits
from coun_fast.data.embedded import load_digits, synthetic
from coun_fast.data.folder import load_image_folder, load_image_folder_split, load_tiny_imagenet
from coun_fast.data.jpeg import decode_all, encode_all
from coun_fast.data.packed import REQUIRED_KEYS, load_npz, save_npz
from coun_fast.data.registry import DATASETS, load_dataset


def _images(rng: np.random.Generator, n: int, h: int = 32, w: int = 32) -> np.ndarray:
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _smooth(rng: np.random.Generator, n: int, h: int = 32, w: int = 32) -> np.ndarray:
    """Smooth images (bilinear gradients between four random corner colours), which JPEG keeps
    close to the original."""
    coarse = rng.integers(0, 256, (n, 2, 2, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(c).resize((w, h), Image.Resampling.BILINEAR)) for c in coarse])


def _assert_jpeg_close(got: np.ndarray, want: np.ndarray, min_psnr: float = 30.0) -> None:
    """JPEG round trips are close, not exact: PSNR of at least ``min_psnr`` dB over all images."""
    assert got.shape == want.shape and got.dtype == np.uint8
    mse = np.mean((got.astype(np.float64) - want) ** 2)
    psnr = 10 * np.log10(255.0**2 / max(mse, 1e-12))
    assert psnr >= min_psnr, f"PSNR {psnr:.1f} dB < {min_psnr} dB"


# -- CIFAR pickles, written the way the Python 2 originals are --------------------------------
class _Py2Pickler(pickle._Pickler):
    """Writes every string as a Python 2 ``str`` (SHORT_BINSTRING / BINSTRING), as in the real
    files, which Python 3 reads back as bytes with ``encoding="bytes"``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes | str) -> None:
        if isinstance(obj, str):
            obj = obj.encode("latin-1")
        if len(obj) < 256:
            self.write(b"U" + bytes([len(obj)]) + obj)
        else:
            self.write(b"T" + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def _write_pickle(path: Path, content: dict) -> None:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(content)
    # The originals name NumPy 1's module; the loader must accept it.
    data = buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(data)


def _rows(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write_cifar10(root: Path, rng: np.random.Generator, per_batch: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y = _images(rng, 5 * per_batch), rng.integers(0, 10, 5 * per_batch)
    test_x, test_y = _images(rng, 4), rng.integers(0, 10, 4)
    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        _write_pickle(folder / f"data_batch_{b + 1}", {
            b"batch_label": b"training batch %d of 5" % (b + 1), b"labels": [int(v) for v in train_y[part]],
            b"data": _rows(train_x[part]), b"filenames": [b"x.png"] * per_batch,
        })
    _write_pickle(folder / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in test_y],
                                          b"data": _rows(test_x), b"filenames": [b"x.png"] * 4})
    _write_pickle(folder / "batches.meta", {b"num_cases_per_batch": per_batch, b"num_vis": 3072,
                                            b"label_names": [n.encode() for n in CIFAR10_NAMES]})
    return train_x, train_y, test_x, test_y


def test_cifar10_pickle_folder_round_trip(tmp_path):
    train_x, train_y, test_x, test_y = _write_cifar10(tmp_path, np.random.default_rng(0))
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        splits = load_cifar10(root)
        assert isinstance(splits, DatasetSplits)
        train, test = splits
        assert (train.name, train.split, test.split) == ("cifar10", "train", "test")
        assert train.images.dtype == np.uint8 and train.images.shape == (15, 32, 32, 3)
        assert train.images.flags.c_contiguous
        np.testing.assert_array_equal(train.images, train_x)
        np.testing.assert_array_equal(test.images, test_x)
        np.testing.assert_array_equal(train.labels, train_y)
        np.testing.assert_array_equal(test.labels, test_y)
        assert train.labels.dtype == np.int64
        assert train.classes == test.classes == tuple(CIFAR10_NAMES)


def test_cifar100_fine_and_coarse(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine_names = [f"fine{i}".encode() for i in range(100)]
    coarse_names = [f"coarse{i}".encode() for i in range(20)]
    data = {}
    for split, n in (("train", 6), ("test", 3)):
        x, fine, coarse = _images(rng, n), rng.integers(0, 100, n), rng.integers(0, 20, n)
        data[split] = (x, fine, coarse)
        _write_pickle(folder / split, {b"filenames": [b"a.png"] * n, b"batch_label": b"x", b"fine_labels": fine.tolist(),
                                       b"coarse_labels": coarse.tolist(), b"data": _rows(x)})
    _write_pickle(folder / "meta", {b"fine_label_names": fine_names, b"coarse_label_names": coarse_names})
    fine = load_cifar100(tmp_path)
    coarse = load_cifar100(folder, label_kind="coarse")
    assert fine.train.name == "cifar100" and fine.train.num_classes == 100 and coarse.train.num_classes == 20
    assert fine.train.classes[7] == "fine7" and coarse.test.classes[3] == "coarse3"
    for split in ("train", "test"):
        x, f, c = data[split]
        np.testing.assert_array_equal(getattr(fine, split).images, x)
        np.testing.assert_array_equal(getattr(fine, split).labels, f)
        np.testing.assert_array_equal(getattr(coarse, split).labels, c)
    with pytest.raises(ValueError, match="label_kind"):
        load_cifar100(tmp_path, label_kind="medium")


def test_cifar_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar10(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_cifar10(tmp_path)
    _write_cifar10(tmp_path, np.random.default_rng(2))
    folder = tmp_path / "cifar-10-batches-py"
    _write_pickle(folder / "data_batch_2", {b"labels": [0, 1], b"data": np.zeros((2, 100), np.uint8)})
    with pytest.raises(ValueError, match=r"data_batch_2.*\(N, 3072\).*\(2, 100\)"):
        load_cifar10(tmp_path)
    _write_pickle(folder / "data_batch_2", {b"labels": [0], b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(ValueError, match="2 integer labels"):
        load_cifar10(tmp_path)
    _write_pickle(folder / "data_batch_2", {b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(ValueError, match="lacks the key b'labels'"):
        load_cifar10(tmp_path)
    (folder / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="cannot read CIFAR pickle"):
        load_cifar10(tmp_path)
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": os.system}))  # a pickle that would call code
    with pytest.raises(ValueError, match="refusing to load"):
        load_cifar10(tmp_path)
    (folder / "data_batch_2").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_2"):
        load_cifar10(tmp_path)


# -- packed JPEG ------------------------------------------------------------------------------
def test_encode_decode_round_trip_and_conversions():
    rng = np.random.default_rng(3)
    x = _smooth(rng, 5, 24, 20)
    jpeg, offsets = encode_all(x, quality=95, threads=2)
    assert jpeg.dtype == np.uint8 and offsets.dtype == np.int64 and offsets.shape == (6,)
    assert jpeg[offsets[2]: offsets[2] + 2].tobytes() == b"\xff\xd8"  # each slice is a JPEG file
    for threads in (1, 2):
        y = decode_all(jpeg, offsets, threads=threads)
        _assert_jpeg_close(y, x)
    # grey and CMYK JPEG files decode to RGB
    files = []
    for mode in ("L", "CMYK"):
        buffer = io.BytesIO()
        Image.fromarray(x[0]).convert(mode).save(buffer, format="JPEG", quality=95)
        files.append(buffer.getvalue())
    offsets = np.cumsum([0] + [len(f) for f in files])
    y = decode_all(np.frombuffer(b"".join(files), np.uint8), offsets)
    assert y.shape == (2, 24, 20, 3)
    assert np.array_equal(y[0, ..., 0], y[0, ..., 1]) and np.array_equal(y[0, ..., 1], y[0, ..., 2])
    _assert_jpeg_close(y[1], x[0])


def test_decode_all_errors():
    rng = np.random.default_rng(4)
    jpeg, offsets = encode_all(_smooth(rng, 4, 16, 16))
    broken = jpeg.copy()
    broken[offsets[2] : offsets[3]] = 0  # image 2 is no longer a JPEG
    with pytest.raises(ValueError, match="cannot decode image 2"):
        decode_all(broken, offsets, threads=2)
    other, other_offsets = encode_all(_smooth(rng, 1, 8, 16))
    mixed = np.concatenate([jpeg, other])
    with pytest.raises(ValueError, match=r"image 0 is 16x16 .* image 4 is 8x16"):
        decode_all(mixed, np.concatenate([offsets, offsets[-1] + other_offsets[1:]]))
    with pytest.raises(ValueError, match="offsets must start at 0"):
        decode_all(jpeg, offsets[:-1])
    with pytest.raises(ValueError, match="quality"):
        encode_all(_smooth(rng, 1), quality=0)
    with pytest.raises(ValueError, match=r"images must be uint8 of shape \(N, H, W, 3\)"):
        encode_all(np.zeros((2, 8, 8), np.uint8))


def _synthetic_splits() -> DatasetSplits:
    return synthetic(num_classes=3, train_per_class=4, test_per_class=2, image_size=16)


def test_npz_save_load_round_trip(tmp_path):
    splits = _synthetic_splits()
    path = save_npz(tmp_path / "tiny_set.npz", splits, quality=95)
    assert path == tmp_path / "tiny_set.npz" and not list(tmp_path.glob(".*tmp*"))
    with np.load(path, allow_pickle=False) as archive:
        assert set(archive.files) == {*REQUIRED_KEYS, "digest"}  # the arrays, and their digest
    decoded = load_npz(path)
    encoded = load_npz(path, decode=False, name="other")
    assert decoded.train.name == "tiny_set" and encoded.train.name == "other"
    assert encoded.train.is_encoded and encoded.test.is_encoded and not decoded.train.is_encoded
    for original, got, enc in zip(splits, decoded, encoded):
        _assert_jpeg_close(got.images, original.images, min_psnr=20.0)  # noisy images lose more
        mean_colour = lambda images: images.reshape(len(images), -1, 3).mean(1)
        assert np.abs(mean_colour(got.images) - mean_colour(original.images)).max() < 6
        np.testing.assert_array_equal(got.labels, original.labels)
        np.testing.assert_array_equal(enc.decoded().images, got.images)
        assert got.classes == original.classes
    # encoded data sets are written back byte for byte
    again = save_npz(tmp_path / "again.npz", encoded)
    np.testing.assert_array_equal(load_npz(again, decode=False).train.jpeg, encoded.train.jpeg)


def test_npz_hand_built_arrays(tmp_path):
    rng = np.random.default_rng(5)
    arrays = {"classes": np.array(["zero", "one"])}
    expected = {}
    for split, n in (("train", 3), ("test", 2)):
        x = _smooth(rng, n, 8, 12)
        jpeg, offsets = encode_all(x, quality=100)
        expected[split] = x
        arrays.update({f"{split}_jpeg": jpeg, f"{split}_offsets": offsets, f"{split}_labels": np.arange(n) % 2})
    np.savez(tmp_path / "hand.npz", **arrays)
    splits = load_npz(tmp_path / "hand.npz", threads=1)
    assert splits.train.classes == ("zero", "one") and splits.test.image_size == (8, 12)
    np.testing.assert_array_equal(splits.train.labels, [0, 1, 0])
    _assert_jpeg_close(splits.train.images, expected["train"])
    _assert_jpeg_close(splits.test.images, expected["test"])


def test_npz_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "partial.npz", classes=np.array(["a"]), train_jpeg=np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match=r"lacks the keys \['train_offsets'.*keys present: \['classes', 'train_jpeg'\].*required"):
        load_npz(tmp_path / "partial.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="text.npz' is not a readable packed data set"):
        load_npz(tmp_path / "text.npz")
    splits = _synthetic_splits()
    save_npz(tmp_path / "ok.npz", splits)
    with np.load(tmp_path / "ok.npz") as archive:
        arrays = dict(archive)
    arrays["test_labels"] = arrays["test_labels"] + 5
    with pytest.raises(ValueError, match="bad_labels.npz' is damaged: its content does not match its recorded digest"):
        np.savez(tmp_path / "bad_labels.npz", **arrays)
        load_npz(tmp_path / "bad_labels.npz", decode=False)
    del arrays["digest"]  # a file made elsewhere: no digest, its arrays checked
    np.savez(tmp_path / "bad_labels.npz", **arrays)
    with pytest.raises(ValueError, match=r"bad_labels.npz \(test split\): labels must lie in \[0, 3\)"):
        load_npz(tmp_path / "bad_labels.npz", decode=False)


# -- image folders -----------------------------------------------------------------------------
def _save(path: Path, array: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def test_image_folder_layout(tmp_path):
    rng = np.random.default_rng(6)
    x = _images(rng, 6, 10, 12)
    smooth = _smooth(rng, 1, 10, 12)[0]
    root = tmp_path / "mini"
    _save(root / "train" / "dog" / "b.png", x[0])
    _save(root / "train" / "dog" / "a.PNG", x[1])  # extensions match in any case; files sort by name
    _save(root / "train" / "cat" / "z.bmp", x[2])
    _save(root / "train" / "cat" / "y.jpg", smooth, quality=95)
    _save(root / "train" / "cat" / "grey.png", x[3][..., 0])
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    _save(root / "val" / "dog" / "c.png", x[4])
    _save(root / "val" / "cat" / "d.png", np.dstack([x[5], np.full((10, 12), 7, np.uint8)]))  # RGBA: alpha dropped
    splits = load_image_folder(root, threads=2)
    train, test = splits
    assert train.name == "mini" and train.classes == test.classes == ("cat", "dog")
    assert train.images.shape == (5, 10, 12, 3) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(train.labels, [0, 0, 0, 1, 1])
    # cat: grey.png, y.jpg, z.bmp; dog: a.PNG, b.png
    np.testing.assert_array_equal(train.images[0], np.repeat(x[3][..., :1], 3, axis=2))
    _assert_jpeg_close(train.images[1], smooth)
    np.testing.assert_array_equal(train.images[2], x[2])
    np.testing.assert_array_equal(train.images[3], x[1])
    np.testing.assert_array_equal(train.images[4], x[0])
    np.testing.assert_array_equal(test.labels, [0, 1])
    np.testing.assert_array_equal(test.images, x[[5, 4]])
    # one folder of classes; resizing
    one = load_image_folder_split(root / "train", image_size=(5, 6), name="part", split="test")
    assert (one.name, one.split, one.images.shape) == ("part", "test", (5, 5, 6, 3))
    expected = np.asarray(Image.fromarray(x[2]).resize((6, 5), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(one.images[2], expected)
    # given classes fix the label order; a class without a folder has no samples
    three = load_image_folder_split(root / "val", ("dog", "cat", "bird"))
    assert three.classes == ("dog", "cat", "bird")
    np.testing.assert_array_equal(three.labels, [0, 1])  # samples follow the class order
    np.testing.assert_array_equal(three.images, x[[4, 5]])
    with pytest.raises(ValueError, match=r"not among the 1 classes given: \['dog'\]"):
        load_image_folder_split(root / "val", ("cat",))


def test_image_folder_errors(tmp_path):
    rng = np.random.default_rng(7)
    root = tmp_path / "set"
    _save(root / "train" / "a" / "1.png", _images(rng, 1, 8, 8)[0])
    _save(root / "train" / "a" / "2.png", _images(rng, 1, 8, 8)[0])
    _save(root / "train" / "b" / "3.png", _images(rng, 1, 9, 8)[0])
    _save(root / "val" / "a" / "4.png", _images(rng, 1, 8, 8)[0])
    with pytest.raises(ValueError, match=r"1\.png is 8x8 .*b/3\.png is 9x8; pass image_size"):
        load_image_folder(root)
    splits = load_image_folder(root, image_size=8)
    assert splits.train.images.shape == (3, 8, 8, 3) and splits.test.images.shape == (1, 8, 8, 3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"must contain train/ and val/ \(or test/\)"):
        load_image_folder(root / "train")
    (root / "train" / "a" / "2.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match=r"cannot decode .*2\.png"):
        load_image_folder(root, image_size=8)
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no image files"):
        load_image_folder_split(empty)


def _write_tiny(root: Path, rng: np.random.Generator) -> dict:
    tiny = root / "tiny-imagenet-200"
    x = {}
    for wnid, nested in (("n02", True), ("n01", False)):  # images in train/<wnid>/images/ or directly
        folder = tiny / "train" / wnid / ("images" if nested else "")
        for k in range(2):
            x[f"{wnid}_{k}"] = _images(rng, 1, 8, 8)[0]
            _save(folder / f"{wnid}_{k}.png", x[f"{wnid}_{k}"])
        (tiny / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines = []
    for k, wnid in enumerate(["n02", "n01", "n02"]):
        name = f"val_{2 - k}.png"  # annotation order differs from file name order
        x[name] = _images(rng, 1, 8, 8)[0]
        _save(tiny / "val" / "images" / name, x[name])
        lines.append(f"{name}\t{wnid}\t0\t0\t7\t7")
    (tiny / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (tiny / "wnids.txt").write_text("n02\nn01\n")
    return x


def test_tiny_imagenet_layout(tmp_path):
    x = _write_tiny(tmp_path, np.random.default_rng(8))
    for root in (tmp_path, tmp_path / "tiny-imagenet-200"):
        train, test = load_tiny_imagenet(root, threads=1)
        assert train.name == "tinyimagenet" and train.classes == test.classes == ("n01", "n02")
        np.testing.assert_array_equal(train.labels, [0, 0, 1, 1])
        np.testing.assert_array_equal(train.images, np.stack([x["n01_0"], x["n01_1"], x["n02_0"], x["n02_1"]]))
        # val sorted by file name: val_0 (n02), val_1 (n01), val_2 (n02)
        np.testing.assert_array_equal(test.labels, [1, 0, 1])
        np.testing.assert_array_equal(test.images, np.stack([x["val_0.png"], x["val_1.png"], x["val_2.png"]]))
    resized = load_tiny_imagenet(tmp_path, image_size=4)
    assert resized.train.images.shape == (4, 4, 4, 3) and resized.test.images.shape == (3, 4, 4, 3)


def test_tiny_imagenet_errors(tmp_path):
    _write_tiny(tmp_path, np.random.default_rng(9))
    annotations = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    good = annotations.read_text()
    annotations.write_text(good + "val_9.png\tn99\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match=r"line 4: class 'n99' of 'val_9.png' is not a train class"):
        load_tiny_imagenet(tmp_path)
    annotations.write_text(good + "val_9.png\tn01\t0\t0\t1\t1\n")
    with pytest.raises(FileNotFoundError, match=r"val_9\.png"):
        load_tiny_imagenet(tmp_path)
    with pytest.raises(FileNotFoundError, match="no TinyImageNet"):
        load_tiny_imagenet(tmp_path / "tiny-imagenet-200" / "val")


# -- cache -------------------------------------------------------------------------------------
class _Builder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> DatasetSplits:
        self.calls += 1
        return _synthetic_splits()


def test_cache_miss_hit_and_corrupt_entry(tmp_path):
    build = _Builder()
    first = cached_splits("demo-1", build, tmp_path)
    entry = tmp_path / "demo-1"
    assert build.calls == 1
    assert sorted(p.name for p in entry.iterdir()) == [
        "meta.json", "test_images.npy", "test_labels.npy", "train_images.npy", "train_labels.npy"]
    hit = cached_splits("demo-1", build, tmp_path)
    assert build.calls == 1
    for a, b in zip(first, hit):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert (a.name, a.split, a.classes) == (b.name, b.split, b.classes)
        assert b.images.dtype == np.uint8 and b.labels.dtype == np.int64
    hit.train.images[0, 0, 0] = 0  # copy-on-write: the cache file is unchanged
    np.testing.assert_array_equal(cached_splits("demo-1", build, tmp_path).train.images, first.train.images)
    # a truncated array, then a garbled meta.json, are rebuilt
    data = (entry / "train_images.npy").read_bytes()
    (entry / "train_images.npy").write_bytes(data[: len(data) // 2])
    rebuilt = cached_splits("demo-1", build, tmp_path)
    assert build.calls == 2
    np.testing.assert_array_equal(rebuilt.train.images, first.train.images)
    (entry / "meta.json").write_text("{not json")
    cached_splits("demo-1", build, tmp_path)
    assert build.calls == 3
    (entry / "test_labels.npy").unlink()
    cached_splits("demo-1", build, tmp_path)
    assert build.calls == 4
    cached_splits("demo-1", build, tmp_path)
    assert build.calls == 4
    with pytest.raises(ValueError, match="key must be"):
        cached_splits("../escape", build, tmp_path)


def test_cache_key_and_default_dir(tmp_path, monkeypatch):
    data = tmp_path / "data.npz"
    data.write_bytes(b"12345")
    key = cache_key("npz", data, image_size=(8, 8))
    assert key.startswith("npz-") and key == cache_key("npz", str(data), image_size=[8, 8])
    assert key != cache_key("npz", data, image_size=(9, 9))
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert key != cache_key("npz", data, image_size=(8, 8))
    folder = tmp_path / "folder"
    (folder / "train" / "a").mkdir(parents=True)
    before = cache_key("folder", folder)
    (folder / "train" / "a" / "new.png").write_bytes(b"x")
    stat = (folder / "train" / "a").stat()
    os.utime(folder / "train" / "a", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache_key("folder", folder) != before
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cache_key("npz", tmp_path / "nothing")
    monkeypatch.setenv("COUN_FAST_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("COUN_FAST_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "coun_fast"
    assert cache_module.FORMAT_VERSION == 1


# -- built-in data sets ------------------------------------------------------------------------
def test_digits():
    splits = load_digits()
    train, test = splits
    assert train.name == "digits" and train.classes == tuple("0123456789")
    assert len(train) + len(test) == 1797 and train.images.shape[1:] == (32, 32, 3)
    assert 0.18 < len(test) / 1797 < 0.22 and set(test.labels.tolist()) == set(range(10))
    for data in splits:
        assert data.images.dtype == np.uint8
        assert np.array_equal(data.images[..., 0], data.images[..., 1]) and np.array_equal(data.images[..., 1], data.images[..., 2])
    assert train.images.max() == 255 and train.images.min() == 0
    again = load_digits()
    np.testing.assert_array_equal(again.test.images, test.images)
    np.testing.assert_array_equal(again.test.labels, test.labels)
    half = load_digits(image_size=8, test_fraction=0.5)
    assert half.train.images.shape[1:] == (8, 8, 3) and abs(len(half.test) - 1797 / 2) <= 10
    small, reseeded = load_digits(image_size=8), load_digits(image_size=8, seed=1)
    np.testing.assert_array_equal(small.test.class_counts(), reseeded.test.class_counts())
    assert not np.array_equal(small.test.images, reseeded.test.images)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.0)


def test_synthetic_is_deterministic_and_learnable():
    a = synthetic(num_classes=4, train_per_class=20, test_per_class=5, image_size=(12, 16), seed=3, name="toy")
    b = synthetic(num_classes=4, train_per_class=20, test_per_class=5, image_size=(12, 16), seed=3, name="toy")
    c = synthetic(num_classes=4, train_per_class=20, test_per_class=5, image_size=(12, 16), seed=4)
    assert a.train.images.shape == (80, 12, 16, 3) and a.test.images.shape == (20, 12, 16, 3)
    assert a.train.images.dtype == np.uint8 and a.train.name == "toy" and c.train.name == "synthetic"
    assert a.train.classes == ("class_0", "class_1", "class_2", "class_3")
    np.testing.assert_array_equal(a.train.labels, np.repeat(np.arange(4), 20))
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.test.images, b.test.images)
    assert not np.array_equal(a.train.images, c.train.images)
    # nearest class mean of the average colour already separates the classes
    features = lambda d: d.images.reshape(len(d), -1, 3).mean(1)
    centroids = np.stack([features(a.train)[a.train.labels == k].mean(0) for k in range(4)])
    predicted = np.argmin(((features(a.test)[:, None] - centroids) ** 2).sum(-1), axis=1)
    assert (predicted == a.test.labels).mean() >= 0.9
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        synthetic(num_classes=0)


# -- registry ----------------------------------------------------------------------------------
def test_load_dataset_files_and_cache(tmp_path):
    train_x, _, test_x, _ = _write_cifar10(tmp_path / "raw", np.random.default_rng(10))
    cache_dir = tmp_path / "cache"
    first = load_dataset("CIFAR10", tmp_path / "raw", cache_dir=cache_dir)
    np.testing.assert_array_equal(first.train.images, train_x)
    assert len(list(cache_dir.iterdir())) == 1
    again = load_dataset("cifar10", tmp_path / "raw", cache_dir=cache_dir)
    assert isinstance(again.train.images, np.memmap)  # read from the cache
    np.testing.assert_array_equal(again.test.images, test_x)
    bigger = load_dataset("cifar10", tmp_path / "raw", image_size=40, cache=False)
    assert bigger.train.images.shape == (15, 40, 40, 3)
    assert len(list(cache_dir.iterdir())) == 1
    save_npz(tmp_path / "packed.npz", first)
    packed = load_dataset("cifar10", tmp_path / "packed.npz", cache_dir=cache_dir)
    assert packed.train.name == "cifar10" and packed.train.images.shape == (15, 32, 32, 3)
    encoded = load_dataset("npz", tmp_path / "packed.npz", decode=False, cache_dir=cache_dir)
    assert encoded.train.is_encoded and encoded.train.name == "packed"
    assert len(list(cache_dir.iterdir())) == 2
    _write_tiny(tmp_path / "tiny", np.random.default_rng(11))
    tiny = load_dataset("tinyimagenet", tmp_path / "tiny", image_size=4, cache_dir=cache_dir)
    assert tiny.test.images.shape == (3, 4, 4, 3)
    rng = np.random.default_rng(12)
    for split, cls in (("train", "b"), ("train", "a"), ("test", "a")):
        _save(tmp_path / "pics" / split / cls / "0.png", _images(rng, 1, 6, 6)[0])
    folder = load_dataset("folder", tmp_path / "pics", name="pictures", cache_dir=cache_dir)
    assert folder.train.name == "pictures" and folder.train.classes == ("a", "b") and len(folder.test) == 1
    assert len(list(cache_dir.iterdir())) == 4


def test_load_dataset_built_in_and_errors(tmp_path):
    toy = load_dataset("synthetic", num_classes=2, train_per_class=3, test_per_class=1, image_size=8)
    assert toy.train.images.shape == (6, 8, 8, 3)
    assert load_dataset("digits", image_size=8).train.images.shape[1:] == (8, 8, 3)
    assert set(DATASETS) == {"cifar10", "cifar100", "tinyimagenet", "folder", "npz", "python", "sharded", "digits",
                             "synthetic"}
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*cifar10, cifar100, tinyimagenet"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="dataset 'cifar10' needs a path: "):
        load_dataset("cifar10")
    with pytest.raises(FileNotFoundError, match="does not exist: .*nowhere"):
        load_dataset("cifar10", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="takes no path"):
        load_dataset("digits", tmp_path)
    with pytest.raises(ValueError, match=r"does not take the options \['colour'\]"):
        load_dataset("synthetic", colour="red")
    with pytest.raises(ValueError, match="decode=False"):
        load_dataset("folder", tmp_path, decode=False)
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("synthetic", image_size=0)
