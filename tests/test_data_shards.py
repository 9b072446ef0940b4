"""Sharded data sets (coun_fast.data.shards, .pack, .stream): pack/read round trips, streaming
loaders against the in-memory loaders and the CPU reference, splits across shards, resume,
damaged shards, atomic packing, bounded memory, training from shards, ImageNet-stem ResNets."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from coun_fast.data import AugmentedLoader, augment_cpu, load_dataset, random_split
from coun_fast.data.backends import dali_installed
from coun_fast.data.dataset import DatasetSplits, ImageDataset
from coun_fast.data.embedded import synthetic
from coun_fast.data.identity import check_same_dataset, dataset_identity
from coun_fast.data.pack import ShardWriter, Sample, pack
from coun_fast.data.packed import load_npz, save_npz
from coun_fast.data.recipes import resized_form, get_recipe
from coun_fast.data.shards import MANIFEST, FOOTER, ShardedDataset, open_sharded, write_manifest
from coun_fast.data.stream import torchvision_decoder

BACKENDS = ["cpu", "torch"] + (["dali"] if dali_installed() else [])
TOLERANCE = 1e-4  # normalized units (std ~0.25): float rounding of the resize and the normalization


def _jpeg(image: np.ndarray, quality: int = 90, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality, **options)
    return buffer.getvalue()


def _smooth(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    corners = rng.integers(0, 256, (2, 2, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(corners).resize((w, h), Image.Resampling.BILINEAR)).astype(np.int16)
    return np.clip(image + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)


def _image_folder(root: Path, seed: int = 0, per_class: int = 5) -> Path:
    """root/train/<a|b|c>/*.jpg (+ one PNG, one grey JPEG, one CMYK JPEG) and root/val/, mixed sizes."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", 2)):
        for c in ("a", "b", "c"):
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(count):
                image = _smooth(rng, *rng.integers(24, 60, 2))
                if split == "train" and c == "b" and i == 0:
                    Image.fromarray(image).save(folder / f"{i}.png")
                elif split == "train" and c == "b" and i == 1:
                    Image.fromarray(image[..., 0]).save(folder / f"{i}.jpg", quality=90)  # grey JPEG
                elif split == "train" and c == "c" and i == 0:
                    Image.fromarray(image).convert("CMYK").save(folder / f"{i}.jpg", quality=90)
                else:
                    (folder / f"{i}.jpg").write_bytes(_jpeg(image))
    return root


@pytest.fixture(scope="module")
def folder_pack(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("folder")
    src = _image_folder(base / "src")
    out = pack(src, base / "packed", shard_mib=0.004, progress=False)  # about 2 images per shard
    return src, out


@pytest.fixture(scope="module")
def same_size(tmp_path_factory) -> tuple[Path, Path]:
    """A packed-JPEG .npz of 32x32 synthetic images and its packed shards."""
    base = tmp_path_factory.mktemp("npz")
    save_npz(base / "syn.npz", synthetic(num_classes=3, train_per_class=14, test_per_class=3, seed=1))
    return base / "syn.npz", pack(base / "syn.npz", base / "packed", shard_mib=0.006, progress=False)


def _views(batch) -> tuple[torch.Tensor, ...]:
    return batch.inputs if isinstance(batch.inputs, tuple) else (batch.inputs,)


# -- the format ------------------------------------------------------------------------------------
def test_pack_image_folder_round_trip(folder_pack):
    src, out = folder_pack
    splits = load_dataset("sharded", out)
    train, test = splits
    assert isinstance(train, ShardedDataset) and isinstance(train, ImageDataset)
    assert train.classes == ("a", "b", "c") and (len(train), len(test)) == (15, 6)
    assert len(train.shards) > 3 and train.image_size is None and train.view_size == (224, 224) and train.resizes
    files = sorted(p for p in (src / "train").rglob("*") if p.is_file())
    np.testing.assert_array_equal(train.labels, [0] * 5 + [1] * 5 + [2] * 5)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["splits"]["train"]["reencoded"] == 2  # the PNG and the CMYK JPEG
    assert manifest["splits"]["train"]["class_counts"] == [5, 5, 5] and manifest["image_size"] is None
    assert len(manifest["content_sha256"]) == 64
    for index, path in enumerate(files):
        with Image.open(path) as image:
            assert tuple(train.sizes[index]) == (image.height, image.width)
            expected = np.asarray(image.convert("RGB"))
            verbatim = image.format == "JPEG" and image.mode in ("RGB", "L")
        if verbatim:  # copied byte for byte
            assert train.encoded(index) == path.read_bytes()
            np.testing.assert_array_equal(train.decode([index])[0], expected)
        else:  # re-encoded at quality 95
            got = train.decode([index])[0].astype(float)
            assert np.abs(got - expected).mean() < 12  # noisy images; CMYK round trip
    sizes = train.sizes
    assert manifest["splits"]["train"]["image_sizes"] == {"min": sizes.min(0).tolist(), "max": sizes.max(0).tolist()}
    train.verify()
    assert train.summary()["shards"] == len(train.shards)


def test_pack_npz_keeps_bytes_and_identity(same_size):
    npz, out = same_size
    encoded = load_npz(npz, decode=False)
    sharded = open_sharded(out)
    for mem, shard in zip(encoded, sharded):
        assert shard.image_size == (32, 32) and shard.view_size == (32, 32) and not shard.resizes
        np.testing.assert_array_equal(mem.labels, shard.labels)
        assert all(mem.encoded(i) == shard.encoded(i) for i in range(len(mem)))
    # The identity of the integrity checks: two opens give the same one; it digests the same JPEG
    # files and labels as the encoded .npz (which does not know its image size until decoded).
    identity = dataset_identity(sharded)
    check_same_dataset(dataset_identity(open_sharded(out)), identity, "the split")
    assert {**dataset_identity(encoded), "image_size": [32, 32]} == identity
    decoded = sharded.train.decoded()
    np.testing.assert_array_equal(decoded.images, load_npz(npz).train.images)


def test_pack_cifar_pickles(tmp_path):
    from test_data_loaders import _write_cifar10

    train_x, train_y, test_x, _ = _write_cifar10(tmp_path / "src", np.random.default_rng(0))
    out = pack(tmp_path / "src", tmp_path / "packed", quality=100, progress=False)
    train, test = open_sharded(out)
    assert train.name == "cifar10" and len(train.classes) == 10 and train.image_size == (32, 32)
    np.testing.assert_array_equal(train.labels, train_y)
    from coun_fast.data.jpeg import decode_all, encode_all

    np.testing.assert_array_equal(train.decoded().images, decode_all(*encode_all(train_x, 100)))  # Pillow's JPEG
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["source"]["kind"] == "cifar10" and manifest["normalization"]["images"] == len(train_x)
    pixels = train.decoded().images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(train.normalization.mean, pixels.mean(0), rtol=1e-9)


def test_pack_is_atomic_and_never_replaces_other_files(tmp_path, folder_pack):
    src, _ = folder_pack
    out = pack(src, tmp_path / "out", progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError, match="already holds a finished run; pass --overwrite"):
        pack(src, out, progress=False)
    bad = tmp_path / "bad"
    _image_folder(bad)
    (bad / "train" / "a" / "9.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"cannot read .*train/a/9\.jpg"):
        pack(bad, out, overwrite=True, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    assert not (tmp_path / ".out.partial").exists()
    with pytest.raises(ValueError, match=r"cannot read .*9\.jpg"):
        pack(bad, tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists() and not (tmp_path / ".new.partial").exists()
    pack(src, out, overwrite=True, shard_mib=1, progress=False)
    assert len(open_sharded(out).train.shards) == 1
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds 'notes.txt', which coun_fast did not write"):
        pack(src, other, overwrite=True, progress=False)
    with pytest.raises(FileNotFoundError, match="SRC does not exist"):
        pack(tmp_path / "missing", tmp_path / "x", progress=False)


def test_pack_cli(tmp_path, folder_pack, capsys):
    from coun_fast.cli import main

    src, _ = folder_pack
    assert main(["data", "pack", str(src), str(tmp_path / "p"), "--shard-size", "0.01", "--no-progress"]) == 0
    assert "train 15 images in" in capsys.readouterr().out
    assert main(["data", "sharded", "--data", str(tmp_path / "p"), "--verify", "--image-size", "48",
                 "--grid", str(tmp_path / "g.png"), "--samples", "3"]) == 0
    shown = capsys.readouterr().out
    assert "verified" in shown and "view_size      [48, 48]" in shown
    assert Image.open(tmp_path / "g.png").size[1] > 3 * 48
    with pytest.raises(SystemExit):
        main(["data", "pack", str(tmp_path / "none"), str(tmp_path / "q")])
    assert "SRC does not exist" in capsys.readouterr().err


# -- damaged shards ------------------------------------------------------------------------------
def _copy(out: Path, dest: Path) -> Path:
    dest.mkdir()
    for path in out.iterdir():
        (dest / path.name).write_bytes(path.read_bytes())
    return dest


def test_truncated_damaged_and_missing_shards_name_the_file(tmp_path, folder_pack):
    _, out = folder_pack
    shard = "train-00001.shard"
    copy = _copy(out, tmp_path / "truncated")
    data = (copy / shard).read_bytes()
    (copy / shard).write_bytes(data[:-10])
    with pytest.raises(ValueError, match=f"{shard} is truncated: it has {len(data) - 10} bytes"):
        open_sharded(copy)
    # A shard cut short whose manifest entry was edited to match: the footer is gone.
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["splits"]["train"]["shards"][1]["bytes"] = len(data) - 10
    write_manifest(copy / MANIFEST, manifest)
    with pytest.raises(ValueError, match=f"{shard} is truncated or damaged: it lacks its end marker"):
        open_sharded(copy)
    copy = _copy(out, tmp_path / "footer")
    damaged = bytearray(data)
    damaged[-FOOTER.size : -FOOTER.size + 8] = (10**6).to_bytes(8, "little")  # n
    (copy / shard).write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=f"{shard} is damaged"):
        open_sharded(copy)
    copy = _copy(out, tmp_path / "missing")
    (copy / shard).unlink()
    with pytest.raises(FileNotFoundError, match=f"shard file is missing: .*{shard}"):
        open_sharded(copy)
    (copy / MANIFEST).write_text("{")
    with pytest.raises(ValueError, match="manifest.json' is not a readable shards manifest"):
        open_sharded(copy)


@pytest.mark.parametrize("backend,workers", [("cpu", 0), ("cpu", 2), ("torch", 1)])
def test_corrupt_jpeg_in_a_shard_names_file_and_entry(tmp_path, folder_pack, backend, workers):
    _, out = folder_pack
    copy = _copy(out, tmp_path / "corrupt")
    train = open_sharded(copy).train
    shard = train.shards[2]
    raw = bytearray(shard.path.read_bytes())
    start = 16 + int(shard.offsets[1])  # entry 1's JPEG file: all but its first bytes overwritten
    raw[start + 2 : 16 + int(shard.offsets[2])] = bytes(int(shard.offsets[2] - shard.offsets[1]) - 2)
    shard.path.write_bytes(bytes(raw))
    train = open_sharded(copy).train
    with pytest.raises(ValueError, match=f"SHA-256.*|{shard.path.name} is corrupt"):
        train.verify()
    loader = AugmentedLoader(train, "eval", batch_size=4, backend=backend, shuffle=False, workers=workers,
                             device="cpu")
    with pytest.raises(ValueError, match=rf"{shard.path.name} is damaged: the bytes of its entry 1 do not match their CRC-32"):
        list(loader)  # read, the damaged file is refused before it is decoded


# -- streaming loaders -----------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["two_view", "eval", "simclr"])
def test_streamed_batches_equal_the_in_memory_loader(same_size, recipe):
    """Images of the views' size: the CIFAR recipes unchanged, the same batches as the in-memory
    data set (decoded from the same JPEG files) on every backend, with and without workers."""
    npz, out = same_size
    memory, sharded = load_npz(npz).train, open_sharded(out).train
    norm = memory.normalization
    want = list(AugmentedLoader(memory, recipe, batch_size=8, backend="cpu", seed=3, normalization=norm))
    for backend in BACKENDS:
        for workers in ((0, 2) if backend != "dali" else (0,)):
            got = list(AugmentedLoader(sharded, recipe, batch_size=8, backend=backend, seed=3, normalization=norm,
                                       workers=workers, device="cpu"))
            assert len(got) == len(want)
            for a, b in zip(want, got):
                assert torch.equal(a.indices, b.indices) and torch.equal(a.labels, b.labels)
                for x, y in zip(_views(a), _views(b)):
                    assert x.shape == y.shape and float((x - y).abs().max()) < TOLERANCE, (backend, workers)


@pytest.mark.parametrize("recipe", ["train", "two_view", "eval", "simclr"])
def test_resized_views_match_the_reference(folder_pack, recipe):
    """Mixed image sizes at a 40 px view: the recipes' resized form on every backend equals the
    plain CPU reference (augment_cpu) applied with the same parameters to the decoded images."""
    _, out = folder_pack
    train = open_sharded(out, view_size=40).train
    loaders = {b: AugmentedLoader(train, recipe, batch_size=6, backend=b, seed=5, workers=0, device="cpu")
               for b in BACKENDS}
    first = loaders["cpu"]
    assert first.recipe == resized_form(get_recipe(recipe)) and first.recipe.crop in ("resized", "center")
    batches = {b: list(loader) for b, loader in loaders.items()}
    for step, (chunk, params) in enumerate(first.jobs(0)):
        images = train.decode(chunk)
        for v, view in enumerate(params):
            want = np.stack([augment_cpu.augment_one(images[i], view.box[i], bool(view.flip[i]), view.jitter[i],
                                                     bool(view.gray[i]), (40, 40), first.normalization)
                             for i in range(len(chunk))])
            for backend, got in batches.items():
                diff = np.abs(_views(got[step])[v].numpy() - want).max()
                assert diff < TOLERANCE, f"{backend}: {diff}"


def test_resized_recipes_and_per_sample_boxes():
    from coun_fast.data.recipes import sample_params

    sizes = np.array([[300, 200], [50, 400], [224, 224], [10, 10]])
    center = sample_params(get_recipe("eval", crop="center"), np.random.default_rng(0), 4, sizes, (224, 224))[0]
    # side round(0.875 * min(H, W)), centred (rounded down)
    np.testing.assert_array_equal(center.box, [[62, 12, 175, 175], [3, 178, 44, 44], [14, 14, 196, 196],
                                               [0, 0, 9, 9]])
    boxes = sample_params(resized_form(get_recipe("train")), np.random.default_rng(1), 4, sizes, (224, 224))[0].box
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, :2] + boxes[:, 2:] <= sizes)
    # One size for all gives the draws of before (per-sample sizes broadcast the same way).
    rec = get_recipe("simclr")
    a = sample_params(rec, np.random.default_rng(2), 5, (32, 32))
    b = sample_params(rec, np.random.default_rng(2), 5, np.tile([32, 32], (5, 1)), (32, 32))
    for x, y in zip(a, b):
        for p, q in zip(x, y):
            np.testing.assert_array_equal(p, q)
    assert resized_form(get_recipe("simclr")) == get_recipe("simclr")


def test_splits_across_shards_and_resume_mid_epoch(same_size):
    _, out = same_size
    splits = open_sharded(out)
    train = splits.train
    assert len(train.shards) >= 4
    split = random_split(len(train), 0.3, seed=0)
    shard_of = train.locate(split.retain)[0]
    assert len(np.unique(shard_of)) == len(train.shards)  # the retain set spans every shard
    loader = AugmentedLoader(train, "eval", batch_size=5, indices=split.retain, backend="cpu", seed=1, workers=2)
    seen = []
    for batch in loader:
        seen += batch.indices.tolist()
        decoded = np.stack(train.decode(batch.indices.numpy()))
        x = (decoded / 255.0 - np.asarray(loader.normalization.mean)) / np.asarray(loader.normalization.std)
        np.testing.assert_allclose(batch.inputs.numpy(), x.transpose(0, 3, 1, 2), atol=1e-5)
    assert sorted(seen) == split.retain.tolist()
    # Resuming mid-epoch gives the batches an uninterrupted epoch gives from that step on.
    two = AugmentedLoader(train, "two_view", batch_size=4, indices=split.retain, backend="cpu", seed=2, workers=2)
    whole = list(two.iterate(1))
    resumed = list(two.iterate(1, start=3))
    assert len(resumed) == len(whole) - 3
    for a, b in zip(whole[3:], resumed):
        assert torch.equal(a.indices, b.indices)
        assert all(torch.equal(x, y) for x, y in zip(_views(a), _views(b)))
    # A split file of the shards records their identity; another data set is refused.
    other = dataset_identity(DatasetSplits(*(ImageDataset(d.name, d.split, d.labels[::-1].copy(), d.classes,
                                                           images=np.zeros((len(d), 2, 2, 3), np.uint8))
                                             for d in splits)))
    with pytest.raises(ValueError):
        check_same_dataset(dataset_identity(splits), other, "the split")


def test_loader_arguments_and_one_pass_at_a_time(same_size, folder_pack):
    _, out = same_size
    train = open_sharded(out).train
    with pytest.raises(ValueError, match="workers must be an integer >= 0"):
        AugmentedLoader(train, "eval", backend="cpu", workers=-1)
    with pytest.raises(ValueError, match="prefetch must be an integer >= 1"):
        AugmentedLoader(train, "eval", backend="cpu", prefetch=0)
    loader = AugmentedLoader(train, "eval", batch_size=4, backend="cpu", workers=1)
    first = loader.iterate(0)
    next(first)
    with pytest.raises(RuntimeError, match="already being iterated"):
        next(loader.iterate(0))
    first.close()
    assert len(list(loader.iterate(0))) == len(loader)  # a closed pass frees the loader
    with pytest.raises(ValueError, match="differ in size; a sharded data set is read batch by batch"):
        open_sharded(folder_pack[1]).train.decoded()


def test_fit_and_unlearn_from_shards(tmp_path, same_size):
    """A run on a packed data set is the usual commands with --dataset sharded."""
    from coun_fast.cli import main

    _, out = same_size
    common = ["--dataset", "sharded", "--data", str(out), "--epochs", "1", "--batch-size", "16", "--device", "cpu",
              "--no-progress"]
    assert main(["train", *common, "--model", "small_cnn", "--out", str(tmp_path / "orig")]) == 0
    assert main(["unlearn", "--method", "coun", "--original", str(tmp_path / "orig"), "--out", str(tmp_path / "coun"),
                 "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--no-progress"]) == 0
    assert main(["evaluate", str(tmp_path / "coun")]) == 0


# -- bounded memory --------------------------------------------------------------------------------
_MEMORY_CHECK = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    import numpy as np
    from coun_fast.data import shards
    from coun_fast.data.shards import open_sharded

    cap, mode = int(sys.argv[2]), sys.argv[3]
    shards.RELEASE_BYTES = cap // 4
    train = open_sharded(sys.argv[1], view_size=32).train

    def status(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    if mode == "loader":  # warm up: code and allocator pools that any run touches once, whatever the data
        from coun_fast.data import AugmentedLoader
        loader = AugmentedLoader(train, "eval", batch_size=32, backend="cpu", workers=0)
        for step, batch in zip(range(2), loader):
            pass
        train.release()
    data = status("VmData")
    resource.setrlimit(resource.RLIMIT_DATA, (data + cap, data + cap))  # private memory: at most +cap
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := RSS now
    before = status("VmRSS")
    total = 0
    if mode == "bytes":
        for start in range(0, len(train), 256):
            total += sum(int(f.sum(dtype=np.uint64)) for f in train.encoded_arrays(np.arange(start, min(start + 256, len(train)))))
    else:
        for batch in loader:
            total += 1
    print(status("VmHWM") - before, train.stored_bytes, total)
""")


def _big_pack(folder: Path, target_bytes: int) -> Path:
    """A packed set of about ``target_bytes`` of JPEG files: a few large 256x256 noise JPEGs repeated."""
    rng = np.random.default_rng(0)
    files = [_jpeg(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), quality=95) for _ in range(8)]
    folder.mkdir()
    writer = ShardWriter(folder, "train", 64 * 1024**2, 2)
    count = total = 0
    while total < target_bytes:
        writer.add(Sample(files[count % 8], count % 2, (256, 256), False))
        total += len(files[count % 8])
        count += 1
    train = writer.close()
    test = ShardWriter(folder, "test", 64 * 1024**2, 2)
    test.add(Sample(files[0], 0, (256, 256), False))
    manifest = {"format": "coun_fast.shards", "version": 1, "name": "big", "classes": ["0", "1"],
                "image_size": [256, 256], "splits": {"train": train, "test": test.close()},
                "normalization": {"mean": [0.5] * 3, "std": [0.29] * 3, "images": 0}}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def _peak_growth(folder: Path, cap: int, mode: str) -> tuple[int, int]:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs")
    done = subprocess.run([sys.executable, "-c", _MEMORY_CHECK, str(folder), str(cap), mode], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    growth, stored, total = (int(v) for v in done.stdout.split())
    assert total > 0
    return growth, stored


def test_reading_ten_times_the_memory_cap_stays_under_it(tmp_path):
    """Every byte of a packed set 10x a memory cap is read (each page touched), in a process whose
    private memory is capped (RLIMIT_DATA) and whose peak RSS growth is measured: it stays under the cap."""
    cap = 32 * 1024**2
    folder = _big_pack(tmp_path / "big", 10 * cap + 1)
    growth, stored = _peak_growth(folder, cap, "bytes")
    assert stored > 10 * cap
    assert growth < cap, f"peak RSS grew by {growth / 2**20:.1f} MiB reading {stored / 2**20:.0f} MiB"


@pytest.mark.slow
def test_loader_over_ten_times_the_memory_cap_stays_under_it(tmp_path):
    """The same through AugmentedLoader (decoding every image in this process)."""
    cap = 32 * 1024**2
    folder = _big_pack(tmp_path / "big", 10 * cap + 1)
    growth, stored = _peak_growth(folder, cap, "loader")
    assert growth < cap, f"peak RSS grew by {growth / 2**20:.1f} MiB reading {stored / 2**20:.0f} MiB"


# -- models ------------------------------------------------------------------------------------------
def test_imagenet_resnets_match_timm_sizes():
    from coun_fast.models import build, forward_flops, rebuild

    for name, params, gflops, features in (("resnet18_imagenet", 11_689_512, 3.628, 512),
                                           ("resnet50_imagenet", 25_557_032, 8.178, 2048)):
        model = build(name, 1000).eval()
        assert sum(p.numel() for p in model.parameters()) == params  # timm's resnet18 / resnet50
        assert abs(forward_flops(model, (3, 224, 224)) / 1e9 - gflops) < 1e-3
        with torch.no_grad():
            f = model.forward_features(torch.zeros(1, 3, 64, 48))
        assert f.shape == (1, features) and model.num_features == features
        assert type(rebuild(model.build_args)) is type(model) and model.first_layer().kernel_size == (7, 7)


# -- GPU decoding (skipped without a GPU) ------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_gpu_decoding_matches_the_cpu_path(folder_pack, backend):
    if backend == "dali" and not dali_installed():
        pytest.skip("DALI is not installed")
    if backend == "torch" and torchvision_decoder() is None:
        pytest.skip("torchvision does not import: the torch backend decodes with Pillow workers")
    _, out = folder_pack
    train = open_sharded(out, view_size=64).train
    norm = train.normalization
    cpu = list(AugmentedLoader(train, "two_view", batch_size=6, backend="cpu", seed=4, workers=0, device="cpu"))
    gpu = AugmentedLoader(train, "two_view", batch_size=6, backend=backend, seed=4, device="cuda", normalization=norm)
    assert gpu.augmenter.decoder in ("dali-nvjpeg", "torchvision-nvjpeg")
    for a, b in zip(cpu, gpu):
        for x, y in zip(_views(a), _views(b)):
            # nvjpeg's IDCT and chroma upsampling differ from libjpeg-turbo's by a few levels
            assert float((x - y.cpu()).abs().mean()) < 0.05
