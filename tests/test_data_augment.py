"""Augmentation recipes, the cpu and torch backends, and the loader: semantics, statistics, determinism.

The statistical tests read the crop offset and the flip back from the *output* images (the source
image encodes each pixel's row and column), so they test what the backends did, not only what the
parameter sampler drew. Seeds are fixed: the tests are deterministic; the bounds are several
standard deviations wide.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from coun_fast.data import augment_cpu, augment_torch
from coun_fast.data.dataset import ImageDataset
from coun_fast.data.loader import AugmentedLoader
from coun_fast.data.recipes import (
    IDENTITY_JITTER,
    RECIPES,
    ViewParams,
    batch_rng,
    channel_stats,
    get_recipe,
    normalization,
    sample_params,
)

UNIT = normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # keeps pixels at u / 255


def random_images(n: int, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def coordinate_image(size: int = 32) -> np.ndarray:
    """Pixel (r, c) = (r + 1, c + 1, 255): the position is readable and never 0, so padding shows."""
    r, c = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return np.stack([r + 1, c + 1, np.full_like(r, 255)], -1).astype(np.uint8)[None]


def make_dataset(images: np.ndarray, num_classes: int = 4) -> ImageDataset:
    labels = np.arange(len(images)) % num_classes
    return ImageDataset("toy", "train", labels, [f"c{i}" for i in range(num_classes)], images=images)


def identity_params(n: int, h: int, w: int) -> ViewParams:
    return ViewParams(
        np.tile([0, 0, h, w], (n, 1)), np.zeros(n, bool), np.tile(IDENTITY_JITTER, (n, 1)), np.zeros(n, bool)
    )


# -- recipes and parameters ------------------------------------------------------------------------
def test_recipe_table():
    assert {"train", "two_view", "simclr", "eval"} <= set(RECIPES)
    assert RECIPES["train"].views == 1 and RECIPES["two_view"].views == 2
    assert RECIPES["simclr"].scale == (0.2, 1.0) and RECIPES["simclr"].jitter == (0.4, 0.4, 0.4, 0.1)
    assert RECIPES["simclr"].jitter_p == 0.8 and RECIPES["simclr"].grayscale_p == 0.2
    assert get_recipe("simclr", views=1).views == 1


def test_params_are_a_function_of_the_seed():
    a = sample_params(RECIPES["simclr"], batch_rng(3, 1, 7), 64, (32, 32))
    b = sample_params(RECIPES["simclr"], batch_rng(3, 1, 7), 64, (32, 32))
    c = sample_params(RECIPES["simclr"], batch_rng(3, 1, 8), 64, (32, 32))
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0].box, c[0].box)


def test_resized_crop_boxes_stay_inside_and_cover_the_scale_range():
    (view,) = sample_params(get_recipe("simclr", views=1), batch_rng(0, 0, 0), 20000, (32, 40))
    top, left, h, w = view.box.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 40).all()
    area = h * w / (32 * 40)
    assert area.min() < 0.25 and area.max() > 0.95
    assert 0.45 < np.mean(view.flip) < 0.55
    jittered = (view.jitter != IDENTITY_JITTER).any(1)
    assert abs(jittered.mean() - 0.8) < 0.02 and abs(view.gray.mean() - 0.2) < 0.02
    b, c, s, hue = view.jitter[jittered].T
    assert b.min() >= 0.6 and b.max() <= 1.4 and abs(hue).max() <= 0.1


# -- what the backends do, read back from the outputs -----------------------------------------------
@pytest.mark.parametrize("apply", [augment_cpu.apply_view, lambda im, p, n, s: augment_torch.apply_view(torch.from_numpy(im), p, n, s).numpy()], ids=["cpu", "torch"])
def test_pad_crop_offsets_are_uniform_and_flips_half(apply):
    n = 81 * 60
    images = np.repeat(coordinate_image(32), n, axis=0)
    (view,) = sample_params(RECIPES["train"], batch_rng(0, 0, 0), n, (32, 32))
    out = np.rint(apply(images, view, UNIT, (32, 32)) * 255).astype(int)  # (n, 3, 32, 32)
    centre_row, centre_col = out[:, 0, 16, 16] - 1, out[:, 1, 16, 16] - 1
    dy = centre_row - 16
    flipped = out[:, 1, 16, 15] > out[:, 1, 16, 16]  # columns decrease to the right after a mirror
    dx = np.where(flipped, centre_col - 15, centre_col - 16)  # mirrored output column 16 is crop column 15
    np.testing.assert_array_equal(dy, view.box[:, 0])
    np.testing.assert_array_equal(dx, view.box[:, 1])
    np.testing.assert_array_equal(flipped, view.flip)
    counts = np.zeros((9, 9))
    np.add.at(counts, (dy + 4, dx + 4), 1)
    assert stats.chisquare(counts.ravel()).pvalue > 1e-3
    assert abs(flipped.mean() - 0.5) < 0.03
    # Zero padding: a crop shifted by +4 rows shows 4 zero rows at the bottom.
    shifted = ViewParams(np.array([[4, 0, 32, 32]]), np.zeros(1, bool), IDENTITY_JITTER[None], np.zeros(1, bool))
    out = apply(images[:1], shifted, UNIT, (32, 32))
    assert (out[0, :, 28:, :] == 0).all() and (out[0, :, :28, :] > 0).all()


def test_two_views_differ_per_sample():
    images = random_images(256)
    v1, v2 = sample_params(RECIPES["two_view"], batch_rng(0, 0, 0), 256, (32, 32))
    a = augment_cpu.apply_view(images, v1, UNIT, (32, 32))
    b = augment_cpu.apply_view(images, v2, UNIT, (32, 32))
    same_params = (v1.box == v2.box).all(1) & (v1.flip == v2.flip)
    differs = np.abs(a - b).reshape(256, -1).max(1) > 0
    np.testing.assert_array_equal(differs, ~same_params)
    assert same_params.mean() < 0.05  # 1 / (81 * 2) per sample


def test_eval_is_normalize_only_and_statistics_are_computed():
    images = random_images(64, 9, 11)
    norm = channel_stats(images)
    pixels = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(norm.mean, pixels.mean(0), rtol=1e-10)
    np.testing.assert_allclose(norm.std, pixels.std(0), rtol=1e-8)
    out = augment_cpu.apply_view(images, identity_params(64, 9, 11), norm, (9, 11))
    assert out.shape == (64, 3, 9, 11) and out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1.0, atol=1e-4)


def test_color_operations_meaning():
    x = np.random.default_rng(1).random((8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(augment_cpu.rotate_hue(x, 1.0), x, atol=1e-5)  # a full turn
    np.testing.assert_allclose(augment_cpu.rotate_hue(augment_cpu.rotate_hue(x, 0.3), -0.3), x, atol=1e-5)
    np.testing.assert_array_equal(augment_cpu.color_jitter(x, 1, 1, 1, 0), x)
    grey = augment_cpu.color_jitter(x, 1, 1, 0, 0)  # saturation 0: every channel equals the luma
    np.testing.assert_allclose(grey, np.repeat(augment_cpu.gray(x), 3, -1), atol=1e-6)
    flat = augment_cpu.color_jitter(x, 1, 0, 1, 0)  # contrast 0: the mean luma everywhere
    np.testing.assert_allclose(flat, augment_cpu.gray(x).mean(), atol=1e-6)
    red = np.zeros((1, 1, 3), np.float32)
    red[..., 0] = 1
    np.testing.assert_allclose(augment_cpu.rotate_hue(red, 1 / 3)[0, 0], [0, 1, 0], atol=1e-6)  # red -> green


def test_grayscale_makes_channels_equal():
    images = random_images(4)
    params = identity_params(4, 32, 32)._replace(gray=np.ones(4, bool))
    out = augment_cpu.apply_view(images, params, UNIT, (32, 32))
    np.testing.assert_allclose(out[:, 0], out[:, 1])
    np.testing.assert_allclose(out[:, 0], (images / 255.0) @ np.array([0.299, 0.587, 0.114]), atol=1e-6)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("size", [(32, 32), (17, 23), (1, 1), (2, 3)])
def test_torch_backend_equals_cpu_reference(recipe, size):
    images = random_images(33, *size, seed=2)
    norm = channel_stats(images)
    for view in sample_params(RECIPES[recipe], batch_rng(1, 0, 0), 33, size):
        expected = augment_cpu.apply_view(images, view, norm, size)
        got = augment_torch.apply_view(torch.from_numpy(images), view, norm, size).numpy()
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)


def test_torch_backend_dtype_and_memory_format():
    images = torch.from_numpy(random_images(5))
    (view,) = sample_params(RECIPES["train"], batch_rng(0, 0, 0), 5, (32, 32))
    out = augment_torch.apply_view(images, view, UNIT, (32, 32), dtype=torch.bfloat16, channels_last=True)
    assert out.dtype == torch.bfloat16 and out.shape == (5, 3, 32, 32)
    assert out.is_contiguous(memory_format=torch.channels_last)


# -- the loader ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_epoch_covers_each_index_once(backend):
    data = make_dataset(random_images(50, 8, 8))
    retain = np.arange(3, 50, 2)
    loader = AugmentedLoader(data, "two_view", batch_size=7, indices=retain, backend=backend, device="cpu", seed=1)
    seen = []
    for (x1, x2), y, idx in loader:
        assert x1.shape == x2.shape == (len(idx), 3, 8, 8) and x1.dtype == torch.float32
        assert torch.equal(y, torch.from_numpy(data.labels)[idx])
        seen.append(idx.numpy())
    seen = np.concatenate(seen)
    assert len(loader) == 4 and sorted(seen.tolist()) == retain.tolist()
    second = np.concatenate([b.indices.numpy() for b in loader])  # the next epoch: a new order
    assert sorted(second.tolist()) == retain.tolist() and not np.array_equal(seen, second)


def test_drop_last_and_no_shuffle():
    data = make_dataset(random_images(10, 4, 4))
    loader = AugmentedLoader(data, "eval", batch_size=4, drop_last=True, shuffle=False, device="cpu")
    batches = list(loader)
    assert len(loader) == len(batches) == 2
    assert torch.cat([b.indices for b in batches]).tolist() == list(range(8))
    assert isinstance(batches[0].inputs, torch.Tensor)


def test_loader_determinism_resume_and_backends_agree():
    data = make_dataset(random_images(40, 12, 12))
    make = lambda backend: AugmentedLoader(data, "simclr", batch_size=16, backend=backend, device="cpu", seed=5)
    a, b = list(make("cpu").iterate(2)), list(make("cpu").iterate(2))
    for x, y in zip(a, b):
        assert torch.equal(x.inputs[0], y.inputs[0]) and torch.equal(x.inputs[1], y.inputs[1])
        assert torch.equal(x.indices, y.indices)
    resumed = list(make("cpu").iterate(2, start=1))
    assert torch.equal(resumed[0].inputs[1], a[1].inputs[1])
    for x, y in zip(a, make("torch").iterate(2)):
        assert torch.equal(x.indices, y.indices)
        torch.testing.assert_close(x.inputs[0], y.inputs[0], atol=2e-5, rtol=0)
    other_seed = next(iter(AugmentedLoader(data, "simclr", batch_size=16, device="cpu", seed=6).iterate(2)))
    assert not torch.equal(other_seed.indices, a[0].indices)


def test_loader_normalization_default_and_override():
    data = make_dataset(random_images(20, 6, 6))
    loader = AugmentedLoader(data, "eval", batch_size=20, device="cpu", shuffle=False)
    assert loader.normalization == data.normalization == channel_stats(data.images)
    x = next(iter(loader)).inputs
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    loader = AugmentedLoader(data, "eval", batch_size=20, device="cpu", normalization=((0, 0, 0), (1, 1, 1)))
    x = next(iter(loader))
    assert float(x.inputs.min()) >= 0 and float(x.inputs.max()) <= 1


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(recipe="fancy"), ValueError, "recipe must be"),
        (dict(batch_size=0), ValueError, "batch_size must be"),
        (dict(indices=[0, 99]), ValueError, r"indices must lie in \[0, 10\)"),
        (dict(indices=[]), ValueError, "indices is empty"),
        (dict(backend="gpu"), ValueError, "backend must be one of"),
        (dict(seed=-1), ValueError, "seed must be"),
        (dict(dtype=torch.int32), ValueError, "dtype must be"),
        (dict(normalization=((0, 0, 0), (1, 0, 1))), ValueError, "std finite and > 0"),
    ],
)
def test_loader_errors(kwargs, error, match):
    data = make_dataset(random_images(10, 4, 4))
    with pytest.raises(error, match=match):
        AugmentedLoader(data, **kwargs)


def test_cpu_backend_refuses_a_gpu_device():
    data = make_dataset(random_images(4, 4, 4))
    with pytest.raises(ValueError, match="backend 'cpu' produces CPU tensors"):
        AugmentedLoader(data, backend="cpu", device="meta")


def test_recipe_validation():
    with pytest.raises(ValueError, match="flip must be a probability"):
        get_recipe("train", flip=1.5)
    with pytest.raises(ValueError, match="scale must satisfy"):
        get_recipe("simclr", scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="crop must be"):
        get_recipe("train", crop="centre")


def test_auto_backend_rule(monkeypatch, caplog):
    from coun_fast.data import backends

    monkeypatch.setattr(backends, "dali_installed", lambda: True)
    assert backends.resolve_backend("auto", torch.device("cuda", 0))[0] == "dali"
    assert backends.resolve_backend("auto", torch.device("cpu"))[0] == "cpu"
    monkeypatch.setattr(backends, "dali_installed", lambda: False)
    backend, reason = backends.resolve_backend("auto", torch.device("cuda", 0))
    assert backend == "torch" and "DALI is not installed" in reason
    with pytest.raises(RuntimeError, match="pip install nvidia-dali"):
        backends.resolve_backend("dali", torch.device("cpu"))
    data = make_dataset(random_images(4, 4, 4))
    with caplog.at_level("INFO", logger="coun_fast.data"):
        AugmentedLoader(data, "eval", device="cpu")
    assert "augmentation backend cpu on cpu (auto: the device is cpu)" in caplog.text
