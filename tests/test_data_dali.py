"""The DALI augmentation backend against the plain CPU reference (:mod:`coun_fast.data.augment_cpu`).

Tolerances are measured (DALI 2.4, CPU operators; max |dali - cpu| over many batches, in
normalized units with std ~0.25) and set at about twice the measurement:

* ``train``, ``two_view``, ``eval``: crop, flip and normalize are exact but for the normalization,
  which DALI computes as ``(x - mean) * (1 / std)``: max 4.8e-7, mean 1.2e-7;
* ``chjgn`` (jitter, hue, gray on pad crops): max 7.6e-6, mean 4.6e-8 (luma sums and the mean);
* ``simclr`` (resized crops too): max 3.6e-5, mean 5e-7 (the resize's coordinate arithmetic);
  arbitrary boxes (down-scaling, out of the image) with strong jitter: max 5.3e-5, mean 2.5e-7;
* JPEG: DALI's CPU decoder gives Pillow's pixels exactly (0 levels); one level is allowed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

dali = pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install nvidia-dali-cuda130)")

from coun_fast.data import augment_cpu  # noqa: E402
from coun_fast.data.augment_dali import DaliAugmenter, dali_version  # noqa: E402
from coun_fast.data.dataset import ImageDataset  # noqa: E402
from coun_fast.data.jpeg import decode_all, encode_all  # noqa: E402
from coun_fast.data.loader import AugmentedLoader  # noqa: E402
from coun_fast.data.recipes import RECIPES, ViewParams, get_recipe, normalization, sample_params  # noqa: E402

NORM = normalization((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
# (max, mean) of |dali - cpu| per recipe, about twice the measured values (module docstring).
TOLERANCE = {
    "train": (1e-6, 3e-7),
    "two_view": (1e-6, 3e-7),
    "eval": (1e-6, 3e-7),
    "chjgn": (1.5e-5, 1e-7),
    "simclr": (7e-5, 1e-6),
}
FORCED_TOLERANCE = (1e-4, 5e-7)  # arbitrary boxes and strong jitter on every sample
SIZES = [(32, 32), (17, 23)]
CPU = torch.device("cpu")


def _images(count: int, size: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, *size, 3), dtype=np.uint8)


def _dataset(images: np.ndarray) -> ImageDataset:
    return ImageDataset("random", "train", np.arange(len(images)) % 3, ("a", "b", "c"), images=images)


def _smooth_images(count: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """Gradients plus a little noise: JPEG-friendly images whose decoders agree closely."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : size[0], 0 : size[1]]
    slopes = rng.integers(1, 4, (count, 1, 1, 3, 2))
    ramps = rng.integers(0, 100, (count, 1, 1, 3)) + slopes[..., 0] * rows[..., None] + slopes[..., 1] * cols[..., None]
    return np.clip(ramps + rng.integers(-1, 2, ramps.shape), 0, 255).astype(np.uint8)


def _reference(images: np.ndarray, indices: np.ndarray, params: list[ViewParams], size, norm=NORM) -> list[np.ndarray]:
    return [augment_cpu.apply_view(images[indices], view, norm, size) for view in params]


def _assert_cpu_only(augmenter: DaliAugmenter) -> None:
    """No GPU or mixed operator in any of its pipelines (with ``device_id=None`` on a machine with a
    GPU, DALI would quietly run one on the current device)."""
    for pipe in augmenter._pipelines.values():
        graph = pipe.serialize()
        assert b"gpu" not in graph and b"mixed" not in graph


def _check_close(got: list[torch.Tensor], want: list[np.ndarray], tolerance: tuple[float, float]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == torch.float32 and g.device.type == "cpu"
        diff = np.abs(g.numpy() - w)
        assert diff.max() <= tolerance[0], f"max |dali - cpu| = {diff.max():.3g} > {tolerance[0]:.3g}"
        assert diff.mean() <= tolerance[1], f"mean |dali - cpu| = {diff.mean():.3g} > {tolerance[1]:.3g}"


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_matches_cpu_reference(recipe: str, size: tuple[int, int]) -> None:
    images = _images(24, size, seed=1)
    rec = get_recipe(recipe)
    augmenter = DaliAugmenter(_dataset(images), NORM, size, device=CPU, max_batch=8, recipe=rec)
    assert augmenter.name == "dali" and augmenter.device == CPU
    rng = np.random.default_rng(2)
    got, want = [], []
    for batch in (8, 8, 5, 1, 3):  # full batches, a smaller last batch, single samples
        indices = rng.choice(len(images), batch, replace=False)
        params = sample_params(rec, rng, batch, size)
        views = augmenter.views(indices, params)
        assert len(views) == rec.views
        got += views
        want += _reference(images, indices, params, size)
    _check_close([torch.cat(got)], [np.concatenate(want)], TOLERANCE[recipe])
    _assert_cpu_only(augmenter)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_arbitrary_parameters_extend_the_graph(size: tuple[int, int]) -> None:
    """A ``train`` augmenter given boxes to resize (down-scaling and out of the image too), strong
    jitter on every sample and gray flags builds the bigger graph it needs and matches the reference."""
    count = 16
    images = np.concatenate([_images(count // 2, size, seed=3), (_images(count // 2, size, seed=4) // 86) * 85])
    augmenter = DaliAugmenter(_dataset(images), NORM, size, device=CPU, max_batch=count, recipe=get_recipe("train"))
    rng = np.random.default_rng(5)
    box = np.concatenate([rng.integers(-6, 7, (count, 2)), rng.integers(3, 40, (count, 2))], axis=1)
    jitter = np.stack(
        [rng.uniform(0, 2, count), rng.uniform(0, 2, count), rng.uniform(0, 2, count), rng.uniform(-0.5, 0.5, count)], axis=1
    ).astype(np.float32)
    jitter[::5, 3] = 0.0  # no hue rotation for some
    jitter[1::7] = (1.0, 1.0, 1.0, 0.25)  # hue rotation alone for others
    params = [ViewParams(box, rng.random(count) < 0.5, jitter, rng.random(count) < 0.3)]
    indices = np.arange(count)
    _check_close(augmenter.views(indices, params), _reference(images, indices, params, size), FORCED_TOLERANCE)
    assert len(augmenter._pipelines) == 2  # the recipe's graph and the extended one
    _assert_cpu_only(augmenter)


def test_batches_larger_than_max_batch_are_chunked() -> None:
    size = (17, 23)
    images = _images(30, size, seed=6)
    rec = get_recipe("two_view")
    augmenter = DaliAugmenter(_dataset(images), NORM, size, device=CPU, max_batch=8, recipe=rec)
    rng = np.random.default_rng(7)
    indices = rng.permutation(30)[:19]
    params = sample_params(rec, rng, 19, size)
    _check_close(augmenter.views(indices, params), _reference(images, indices, params, size), TOLERANCE["two_view"])


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_jpeg_decoded_by_dali_matches_pillow(size: tuple[int, int]) -> None:
    images = _images(12, size, seed=8)
    jpeg, offsets = encode_all(images, quality=90)
    encoded = ImageDataset("jpeg", "train", np.zeros(12, np.int64), ("a",), jpeg=jpeg, offsets=offsets)
    pillow = decode_all(jpeg, offsets)
    rng = np.random.default_rng(9)
    indices = rng.permutation(12)[:10]
    # Identity normalization on the 0..255 scale: the eval view is the decoded pixels themselves.
    pixels = normalization((0.0, 0.0, 0.0), (1 / 255,) * 3)
    eval_view = DaliAugmenter(encoded, pixels, size, device=CPU, max_batch=10, recipe=get_recipe("eval"))
    params = sample_params(get_recipe("eval"), rng, 10, size)
    decoded = eval_view.views(indices, params)[0].numpy().transpose(0, 2, 3, 1)
    assert np.abs(decoded - pillow[indices]).max() <= 1.0 + 1e-3  # measured: 0 levels
    # Whole views of the encoded data set: the reference on Pillow's pixels, within one level.
    rec = get_recipe("two_view")
    augmenter = DaliAugmenter(encoded, NORM, size, device=CPU, max_batch=10, recipe=rec)
    params = sample_params(rec, rng, 10, size)
    one_level = 1 / 255 / min(NORM.std) + 1e-6
    _check_close(augmenter.views(indices, params), _reference(pillow, indices, params, size), (one_level, 1e-3))
    _assert_cpu_only(augmenter)


def test_deterministic_and_parameter_driven() -> None:
    size = (32, 32)
    images = _images(16, size, seed=10)
    rec = get_recipe("chjgn")
    augmenter = DaliAugmenter(_dataset(images), NORM, size, device=CPU, max_batch=16, recipe=rec)
    indices = np.arange(16)
    params = sample_params(rec, np.random.default_rng(11), 16, size)
    first = augmenter.views(indices, params)
    second = augmenter.views(indices, params)  # after another run overwrote DALI's buffers
    other = DaliAugmenter(_dataset(images), NORM, size, device=CPU, max_batch=16, recipe=rec).views(indices, params)
    for a, b, c in zip(first, second, other):
        assert torch.equal(a, b) and torch.equal(a, c)
    # The two views were drawn with different parameters, and so differ; so do other draws.
    assert not torch.equal(first[0], first[1])
    redrawn = augmenter.views(indices, sample_params(rec, np.random.default_rng(12), 16, size))
    assert not torch.equal(first[0], redrawn[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dtype_and_memory_format(dtype: torch.dtype, channels_last: bool) -> None:
    size = (17, 23)
    images = _images(6, size, seed=13)
    rec = get_recipe("two_view")
    augmenter = DaliAugmenter(
        _dataset(images), NORM, size, device=CPU, dtype=dtype, channels_last=channels_last, max_batch=4, recipe=rec
    )
    indices = np.array([5, 0, 3])
    params = sample_params(rec, np.random.default_rng(14), 3, size)
    views = augmenter.views(indices, params)
    float32 = DaliAugmenter(_dataset(images), NORM, size, device=CPU, max_batch=4, recipe=rec).views(indices, params)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    for view, full in zip(views, float32):
        assert view.shape == (3, 3, *size) and view.dtype == dtype and view.device == CPU
        assert view.is_contiguous(memory_format=memory)
        assert torch.equal(view, full.to(dtype))  # the float32 result, cast
    empty = augmenter.views(np.zeros(0, np.int64), sample_params(rec, np.random.default_rng(0), 0, size))
    assert [tuple(v.shape) for v in empty] == [(0, 3, *size)] * 2 and all(v.dtype == dtype for v in empty)


def test_invalid_calls() -> None:
    size = (17, 23)
    images = _images(4, size, seed=15)
    rec = get_recipe("train")
    augmenter = DaliAugmenter(_dataset(images), NORM, size, device=CPU, max_batch=4, recipe=rec)
    params = sample_params(rec, np.random.default_rng(16), 3, size)
    with pytest.raises(ValueError, match="one sample's parameters per index"):
        augmenter.views(np.arange(2), params)
    with pytest.raises(ValueError, match="max_batch"):
        DaliAugmenter(_dataset(images), NORM, size, device=CPU, max_batch=0, recipe=rec)
    assert dali_version() == dali.__version__


def test_loader_end_to_end_matches_cpu_backend() -> None:
    images = _images(40, (17, 23), seed=17)
    dataset = _dataset(images)
    kwargs = dict(batch_size=16, seed=3, device="cpu")
    dali_loader = AugmentedLoader(dataset, "two_view", backend="dali", **kwargs)
    cpu_loader = AugmentedLoader(dataset, "two_view", backend="cpu", **kwargs)
    assert dali_loader.augmenter.name == "dali"
    batches = 0
    for (dali_views, dali_y, dali_idx), (cpu_views, cpu_y, cpu_idx) in zip(dali_loader, cpu_loader, strict=True):
        assert torch.equal(dali_idx, cpu_idx) and torch.equal(dali_y, cpu_y)
        _check_close(list(dali_views), [v.numpy() for v in cpu_views], TOLERANCE["two_view"])
        batches += 1
    assert batches == 3  # 16 + 16 + a last batch of 8


def test_loader_on_jpeg_matches_cpu_backend() -> None:
    images = _images(20, (32, 32), seed=18)
    jpeg, offsets = encode_all(images, quality=90)
    encoded = ImageDataset("jpeg", "train", np.arange(20) % 2, ("a", "b"), jpeg=jpeg, offsets=offsets)
    kwargs = dict(batch_size=8, seed=4, device="cpu", normalization=NORM)
    dali_loader = AugmentedLoader(encoded, "train", backend="dali", **kwargs)
    cpu_loader = AugmentedLoader(encoded, "train", backend="cpu", **kwargs)
    one_level = 1 / 255 / min(NORM.std) + 1e-6
    for dali_batch, cpu_batch in zip(dali_loader, cpu_loader, strict=True):
        assert torch.equal(dali_batch.indices, cpu_batch.indices)
        _check_close([dali_batch.inputs], [cpu_batch.inputs.numpy()], (one_level, 1e-3))


# -- GPU ---------------------------------------------------------------------------------------------
GPU_TOLERANCE = {"train": 1e-5, "two_view": 1e-5, "eval": 1e-5, "chjgn": 2e-4, "simclr": 2e-4}


@pytest.mark.cuda
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_gpu_pipeline_matches_cpu_reference(recipe: str) -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    size = (17, 23)
    images = _images(24, size, seed=19)
    rec = get_recipe(recipe)
    augmenter = DaliAugmenter(_dataset(images), NORM, size, device=device, max_batch=16, recipe=rec)
    assert b"gpu" in next(iter(augmenter._pipelines.values())).serialize()
    rng = np.random.default_rng(20)
    for batch in (16, 5):
        indices = rng.choice(len(images), batch, replace=False)
        params = sample_params(rec, rng, batch, size)
        views = augmenter.views(indices, params)
        for view, want in zip(views, _reference(images, indices, params, size)):
            assert view.device == device and view.dtype == torch.float32 and view.shape == want.shape
            assert np.abs(view.cpu().numpy() - want).max() <= GPU_TOLERANCE[recipe]
    channels_last = DaliAugmenter(
        _dataset(images), NORM, size, device=device, dtype=torch.bfloat16, channels_last=True, max_batch=16, recipe=rec
    )
    indices = np.arange(16)
    params = sample_params(rec, rng, 16, size)
    for view, want in zip(channels_last.views(indices, params), _reference(images, indices, params, size)):
        assert view.dtype == torch.bfloat16 and view.is_contiguous(memory_format=torch.channels_last)
        assert np.abs(view.float().cpu().numpy() - want).max() <= 0.05


@pytest.mark.cuda
def test_gpu_jpeg_mixed_decoder_close_to_pillow() -> None:
    """nvJPEG's chroma upsampling may differ from libjpeg's by a few levels: bounds are loose."""
    device = torch.device("cuda", torch.cuda.current_device())
    size = (32, 32)
    images = _smooth_images(16, size, seed=21)
    jpeg, offsets = encode_all(images, quality=95)
    encoded = ImageDataset("jpeg", "train", np.zeros(16, np.int64), ("a",), jpeg=jpeg, offsets=offsets)
    pixels = normalization((0.0, 0.0, 0.0), (1 / 255,) * 3)
    augmenter = DaliAugmenter(encoded, pixels, size, device=device, max_batch=16, recipe=get_recipe("eval"))
    params = sample_params(get_recipe("eval"), np.random.default_rng(22), 16, size)
    decoded = augmenter.views(np.arange(16), params)[0].cpu().numpy().transpose(0, 2, 3, 1)
    diff = np.abs(decoded - decode_all(jpeg, offsets))
    assert diff.max() <= 12.0 and diff.mean() <= 1.5
