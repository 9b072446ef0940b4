"""The DALI backend: one DALI pipeline applies the host-drawn per-sample parameters of every view.

Semantics: :mod:`coun_fast.data.recipes`; tested against :mod:`coun_fast.data.augment_cpu`.

Design:

* **One pipeline per graph variant, built once.** The graph is fixed by a few features: the number
  of views, whether boxes need a resize (``crop="resized"``), colour jitter, hue rotation and
  grayscale. The recipe's features are built in ``__init__``; a batch whose parameters need more
  (say, a hand-made ``ViewParams`` with jitter for a ``train`` augmenter) gets a superset variant,
  built on first use and cached, never rebuilt.
* **Inputs by name.** Every call feeds the batch of images (uint8 HWC gathered by the indices, or
  for an encoded data set the JPEG files, decoded in the pipeline by ``fn.decoders.image``) and, per
  view, the parameters as per-sample argument inputs: crop anchor and shape, flip, the jitter
  factors and the gray flag. DALI draws nothing itself, so a seed gives the same views on every
  backend.
* **One iteration per call.** DALI's default (dynamic) executor with ``prefetch_queue_depth=1``:
  each call feeds its inputs, and ``run`` executes one iteration on them and returns once the
  outputs are ready (host-synchronous). Nothing is prefetched, so nothing can go stale; the
  executor frees intermediate buffers as soon as they are consumed (a view with colour jitter and
  hue is about a hundred small operators). Outputs are copied into fresh torch tensors.
* **Device.** On a CUDA device the pipeline runs with ``device_id=device.index`` and GPU operators;
  a decoded data set lives on the GPU as one uint8 torch tensor, the batch is gathered there and fed
  to a GPU ``external_source``; JPEG bytes go from the host to the ``mixed`` decoder. On the CPU
  the pipeline has ``device_id=None`` and CPU operators only. The operator device is chosen in one
  place, :attr:`DaliAugmenter._op_device`.

How each step maps onto DALI (arithmetic in float32, in the reference's order of operations):

1. crop: ``fn.slice`` with absolute anchor and shape, ``out_of_bounds_policy="pad"`` (zeros),
   which is exact (skipped when every box is the whole image); for resized crops then
   ``fn.resize`` of the whole slice to the output size (bilinear, ``antialias=False``, float
   output): sampling the slice clamps source coordinates to the box, as the reference does; DALI's
   filter arithmetic differs from the reference's by float rounding only.
2. ``/ 255``, brightness, contrast (centre: ``fn.reductions.mean`` of the luma after brightness),
   saturation, hue and grayscale are arithmetic expressions mirroring :mod:`.augment_cpu`, clamps
   included. The hue step is the reference's HSV rotation written with ``dali.math`` min/max and
   0/1 masks (DALI's own ``fn.hue`` rotates in YIQ space, a different colour model). Samples whose
   hue factor is 0, or whose gray flag is off, pass through a 0/1 blend ``m * a + (1 - m) * b``,
   exact for ``m`` in {0, 1}. Without colour steps the ``/ 255`` is folded into step 3.
3. ``fn.crop_mirror_normalize`` normalizes (mean and std on the scale of its input), mirrors the
   flipped samples and transposes to CHW (or keeps HWC for a channels-last result), in one
   operator; it multiplies by ``1 / std``, so results differ from the reference by a float
   rounding or two (measured <= 5e-7). Flipping last is equivalent: every step after the crop is
   per pixel, except the contrast mean, which a flip does not change.

Measured against :mod:`.augment_cpu` on the CPU (DALI 2.4): ``train``/``two_view``/``eval`` to
5e-7; ``chjgn`` to 1e-5; ``simclr`` to 4e-5 (the resize's coordinate arithmetic); JPEG files
decode to the same pixels as Pillow's. :mod:`tests.test_data_dali` holds the bounds.
"""

from __future__ import annotations

import ctypes
import os
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from coun_fast.data.dataset import ImageDataset
from coun_fast.data.recipes import LUMA, Normalization, Recipe, ViewParams


def dali_version() -> str:
    """The installed NVIDIA DALI version string (raises ImportError when DALI is missing)."""
    import nvidia.dali

    return str(nvidia.dali.__version__)


class _Features(NamedTuple):
    """What one pipeline variant computes; a variant serves any batch needing a subset of it."""

    views: int
    crop: bool
    resize: bool
    jitter: bool
    hue: bool
    gray: bool

    def union(self, other: "_Features") -> "_Features":
        """Every step of either; the number of views of ``other``."""
        return _Features(other.views, *(a or b for a, b in zip(self[1:], other[1:])))


def _recipe_features(recipe: Recipe, whole: bool) -> _Features:
    """The steps ``recipe`` needs; ``whole``: the images are known to have the output size."""
    jitter = recipe.jitter is not None and recipe.jitter_p > 0 and any(j > 0 for j in recipe.jitter)
    return _Features(
        views=recipe.views,
        crop=recipe.crop is not None or not whole,
        resize=recipe.crop in ("resized", "center"),
        jitter=jitter and any(j > 0 for j in recipe.jitter[:3]),
        hue=jitter and recipe.jitter[3] > 0,
        gray=recipe.grayscale_p > 0,
    )


def _params_features(params: list[ViewParams], out_size: tuple[int, int]) -> _Features:
    size = np.asarray(out_size)
    whole = np.asarray([0, 0, *out_size])
    return _Features(
        views=len(params),
        crop=any(bool(np.any(p.box != whole)) for p in params),
        resize=any(bool(np.any(p.box[:, 2:] != size)) for p in params),
        jitter=any(bool(np.any(p.jitter[:, :3] != 1)) for p in params),
        hue=any(bool(np.any(p.jitter[:, 3] != 0)) for p in params),
        gray=any(bool(np.any(p.gray)) for p in params),
    )


# The colour steps as DALI arithmetic on (H, W, 3) float images. On the CPU, operators on one
# channel (H, W, 1) cost a third of those on three, and ``min(max())`` is much cheaper than
# ``dali.math.clamp``, so the helpers work channel by channel where that is exact.


def _clip01(x):
    import nvidia.dali.math as dmath

    return dmath.min(dmath.max(x, 0.0), 1.0)  # np.clip(x, 0, 1)


def _channels(x):
    return x[:, :, 0:1], x[:, :, 1:2], x[:, :, 2:3]


def _gray(x):
    """Luma (H, W, 1), summed in the reference's order."""
    r, g, b = _channels(x)
    return r * LUMA[0] + g * LUMA[1] + b * LUMA[2]


def _rotate_hue(x, turns):
    """:func:`augment_cpu.rotate_hue` as DALI arithmetic: (H, W, 3) in [0, 1], per-sample turns.

    Bit for bit the reference's arithmetic, with two shortcuts that change no value: the candidate
    of the maximal channel is picked as the max over ``candidate * (channel == high)`` (candidates
    are >= 0, and where channels tie for the maximum their candidates are equal, so the reference's
    r-before-g-before-b priority is moot); and where chroma is 0 the hue is left unmasked, since it
    is multiplied by a saturation of exactly 0 there.
    """
    from nvidia.dali import types
    import nvidia.dali.math as dmath

    r, g, b = _channels(x)
    high = dmath.max(dmath.max(r, g), b)
    low = dmath.min(dmath.min(r, g), b)
    chroma = high - low
    safe = chroma + (chroma <= 0.0)  # chroma, or 1 where it is 0
    from_r = (g - b) / safe
    from_r = from_r + 6.0 * (from_r < 0.0)  # NumPy's % 6 on [-1, 1]
    from_g = (b - r) / safe + 2.0
    from_b = (r - g) / safe + 4.0
    hue = dmath.max(dmath.max(from_r * (r == high), from_g * (g == high)), from_b * (b == high)) / 6.0
    hue = hue + turns
    hue = hue - (hue >= 1.0) + (hue < 0.0)  # NumPy's % 1 on [-0.5, 1.5)
    saturation = chroma / (high + (high <= 0.0))  # 0 where high is 0 (chroma is 0 there too)
    k = types.Constant(np.float32([5.0, 3.0, 1.0])) + hue * 6.0  # in [1, 11)
    k = k - 6.0 * (k >= 6.0)  # % 6, exact here
    return high - high * saturation * dmath.min(dmath.max(dmath.min(k, 4.0 - k), 0.0), 1.0)


class DaliAugmenter:
    """The ``dali`` backend (see the module docstring).

    Args:
        dataset: decoded (uint8 NHWC ``images``) or encoded (JPEG bytes, in memory or in
            memory-mapped shards: :class:`~coun_fast.data.shards.ShardedDataset`) data set.
        norm: per-channel mean and std on the [0, 1] scale.
        out_size: (H, W) of the views; boxes in the parameters are in source pixels.
        device: ``cuda:i`` (GPU operators, ``device_id=i``) or ``cpu`` (CPU operators, no GPU).
        dtype: float32, float16 or bfloat16 result.
        channels_last: give results the channels-last memory format.
        max_batch: the pipeline's maximum batch size; larger batches are processed in chunks.
        recipe: the recipe whose graph is built up front.
    """

    name = "dali"

    def __init__(
        self,
        dataset: ImageDataset,
        norm: Normalization,
        out_size: tuple[int, int],
        *,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        max_batch: int = 256,
        recipe: Recipe,
    ) -> None:
        import nvidia.dali  # noqa: F401  (fail here, clearly, when DALI is missing)

        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"the dali backend runs on a CUDA device or the CPU; got {device}")
        if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1; got {max_batch!r}")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16; got {dtype}")
        self.device = device
        self.norm = norm
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.dtype, self.channels_last = dtype, bool(channels_last)
        self.max_batch = int(max_batch)
        self.recipe = recipe
        self.encoded = dataset.is_encoded
        on_gpu = device.type == "cuda"
        # The one place that picks operator devices.
        self._op_device = "gpu" if on_gpu else "cpu"
        self._decoder_device = "mixed" if on_gpu else "cpu"
        self._device_id = device.index if on_gpu else None
        self._images = self._stream = None
        self._files = dataset.encoded_arrays if self.encoded else None  # views of its JPEG files
        if not self.encoded:
            images = np.ascontiguousarray(dataset.images)
            self._images = torch.from_numpy(images).to(device) if on_gpu else images
        if on_gpu:
            # Batches are gathered on a side stream, so DALI's work does not wait for the model's.
            self._stream = torch.cuda.Stream(device)
            self._stream.wait_stream(torch.cuda.current_stream(device))  # the upload above
        self._threads = max(1, os.cpu_count() or 1)
        self._pipelines: dict[_Features, object] = {}
        # Without crops (recipe "eval") the slice is skipped, if the images have the output size.
        self._base = _recipe_features(recipe, whole=dataset.image_size == self.out_size)
        self._pipeline(self._base)

    # -- graph ----------------------------------------------------------------------------------
    def _pipeline(self, features: _Features):
        """The pipeline computing ``features`` (built on first use, then cached)."""
        pipe = self._pipelines.get(features)
        if pipe is None:
            pipe = self._build(features)
            self._pipelines[features] = pipe
        return pipe

    def _build(self, features: _Features):
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline

        pipe = Pipeline(
            batch_size=self.max_batch,
            num_threads=self._threads,
            device_id=self._device_id,
            exec_dynamic=True,  # frees intermediate buffers early; outputs are fresh buffers
            prefetch_queue_depth=1,  # one iteration per run(), on the inputs fed just before
            seed=0,
        )
        with pipe:
            if self.encoded:
                files = fn.external_source(name="jpeg", device="cpu", dtype=types.UINT8, ndim=1)
                # EXIF orientation is ignored, as Pillow does: pixels and sizes as the files store them.
                images = fn.decoders.image(files, device=self._decoder_device, output_type=types.RGB,
                                           adjust_orientation=False)
            else:
                images = fn.external_source(
                    name="images", device=self._op_device, layout="HWC", dtype=types.UINT8, ndim=3
                )
            pipe.set_outputs(*(self._view_graph(images, v, features) for v in range(features.views)))
        pipe.build()
        return pipe

    def _view_graph(self, images, v: int, features: _Features):
        """The graph of view ``v``: crop (+ resize), jitter, gray, normalize, flip + layout."""
        from nvidia.dali import fn, types

        crop = images  # the whole image when no box differs from it (recipe "eval")
        if features.crop:
            anchor = fn.external_source(name=f"anchor{v}", device="cpu", dtype=types.INT32, ndim=1)
            shape = fn.external_source(name=f"shape{v}", device="cpu", dtype=types.INT32, ndim=1)
            crop = fn.slice(
                images,
                anchor,
                shape,
                axis_names="HW",
                normalized_anchor=False,
                normalized_shape=False,
                out_of_bounds_policy="pad",
                fill_values=0,
                device=self._op_device,
            )
        if features.resize:
            crop = fn.resize(
                crop,
                size=list(self.out_size),
                interp_type=types.INTERP_LINEAR,
                antialias=False,
                dtype=types.FLOAT,
                device=self._op_device,
            )
        colour = features.jitter or features.hue or features.gray
        mean, std = np.asarray(self.norm.mean, np.float64), np.asarray(self.norm.std, np.float64)
        if colour:  # the colour steps work on [0, 1], as the reference does
            x = self._colour_graph(crop / 255.0, v, features)
        else:  # normalize straight from [0, 255]: one operator less, equal to float rounding
            x, mean, std = crop, mean * 255.0, std * 255.0
        return fn.crop_mirror_normalize(
            x,
            mean=mean.tolist(),
            std=std.tolist(),
            mirror=self._scalar("flip", v, types.INT32),
            output_layout="HWC" if self.channels_last else "CHW",
            dtype=types.FLOAT,
            device=self._op_device,
        )

    @staticmethod
    def _scalar(name: str, v: int, dtype=None):
        """The per-sample scalar parameter ``name`` of view ``v``, fed by name on every run."""
        from nvidia.dali import fn, types

        return fn.external_source(name=f"{name}{v}", device="cpu", dtype=dtype or types.FLOAT, ndim=0)

    def _colour_graph(self, x, v: int, features: _Features):
        """Colour jitter, hue and grayscale of view ``v`` on an (H, W, 3) float image in [0, 1]."""
        from nvidia.dali import fn

        if features.jitter:
            brightness = self._scalar("brightness", v)
            contrast = self._scalar("contrast", v)
            saturation = self._scalar("saturation", v)
            x = _clip01(x * brightness)
            mean = fn.reductions.mean(_gray(x), device=self._op_device)
            x = _clip01(contrast * x + (1.0 - contrast) * mean)
            x = _clip01(saturation * x + (1.0 - saturation) * _gray(x))
        if features.hue:
            turns, rotate = self._scalar("hue", v), self._scalar("rotate", v)
            x = rotate * _clip01(_rotate_hue(x, turns)) + (1.0 - rotate) * x
        if features.gray:
            to_gray = self._scalar("gray", v)
            x = to_gray * _gray(x) + (1.0 - to_gray) * x
        return x

    # -- running --------------------------------------------------------------------------------
    def _feed_images(self, pipe, indices: np.ndarray) -> None:
        if self.encoded:
            pipe.feed_input("jpeg", self._files(indices))
        elif self.device.type == "cuda":
            with torch.cuda.stream(self._stream):
                batch = self._images[torch.from_numpy(indices).to(self.device)]
            # DALI copies the batch on the same stream, so the copy follows the gather; later
            # allocations on that stream that reuse the batch's memory follow the copy.
            pipe.feed_input("images", batch, layout="HWC", cuda_stream=self._stream)
        else:
            pipe.feed_input("images", self._images[indices], layout="HWC")

    def _feed_view(self, pipe, v: int, params: ViewParams, features: _Features) -> None:
        if features.crop:
            box = np.asarray(params.box)
            pipe.feed_input(f"anchor{v}", np.ascontiguousarray(box[:, :2], dtype=np.int32))
            pipe.feed_input(f"shape{v}", np.ascontiguousarray(box[:, 2:], dtype=np.int32))
        pipe.feed_input(f"flip{v}", np.asarray(params.flip, dtype=np.int32))
        jitter = np.asarray(params.jitter, dtype=np.float32)
        if features.jitter:
            pipe.feed_input(f"brightness{v}", np.ascontiguousarray(jitter[:, 0]))
            pipe.feed_input(f"contrast{v}", np.ascontiguousarray(jitter[:, 1]))
            pipe.feed_input(f"saturation{v}", np.ascontiguousarray(jitter[:, 2]))
        if features.hue:
            pipe.feed_input(f"hue{v}", np.ascontiguousarray(jitter[:, 3]))
            pipe.feed_input(f"rotate{v}", (jitter[:, 3] != 0).astype(np.float32))
        if features.gray:
            pipe.feed_input(f"gray{v}", np.asarray(params.gray, dtype=np.float32))

    def _copy_out(self, output, batch: int) -> Tensor:
        """One pipeline output copied into a new torch tensor on :attr:`device`, of :attr:`dtype`."""
        height, width = self.out_size
        shape = (batch, height, width, 3) if self.channels_last else (batch, 3, height, width)
        if not output.is_dense_tensor() or tuple(output.as_tensor().shape()) != shape:
            raise ValueError(
                f"DALI produced views of shapes {sorted(set(output.shape()))}, expected {shape[1:]} for every "
                f"sample: are all images {height}x{width}?"
            )
        if self.device.type == "cuda":
            out = torch.empty(shape, dtype=torch.float32, device=self.device)
            stream = ctypes.c_void_p(torch.cuda.current_stream(self.device).cuda_stream)
            output.copy_to_external(ctypes.c_void_p(out.data_ptr()), stream, non_blocking=True)
        else:
            # NumPy backs large arrays with huge pages: far fewer page faults than torch.empty.
            out = torch.from_numpy(np.empty(shape, np.float32))
            output.copy_to_external(ctypes.c_void_p(out.data_ptr()))
        if self.channels_last:
            out = out.permute(0, 3, 1, 2)  # NCHW shape, NHWC strides: channels-last
        return out if self.dtype == torch.float32 else out.to(self.dtype)

    def _run(self, indices: np.ndarray, params: list[ViewParams]) -> list[Tensor]:
        features = self._base.union(_params_features(params, self.out_size))  # views: len(params)
        pipe = self._pipeline(features)
        self._feed_images(pipe, indices)
        for v, view in enumerate(params):
            self._feed_view(pipe, v, view, features)
        outputs = pipe.run()
        return [self._copy_out(output, len(indices)) for output in outputs]

    def views(self, indices: np.ndarray, params: list[ViewParams]) -> list[Tensor]:
        """One (B, 3, H, W) tensor on :attr:`device` per entry of ``params``, for the samples ``indices``."""
        indices = np.asarray(indices, dtype=np.int64)
        count = len(indices)
        for view in params:
            if len(view.box) != count or len(view.flip) != count or len(view.jitter) != count or len(view.gray) != count:
                raise ValueError(f"every ViewParams must hold one sample's parameters per index; expected {count}")
        if not params:
            return []
        if count == 0:
            shape = (0, 3, *self.out_size)
            empty = torch.empty(shape, dtype=self.dtype, device=self.device)
            return [empty.contiguous(memory_format=torch.channels_last) if self.channels_last else empty for _ in params]
        if count <= self.max_batch:
            return self._run(indices, params)
        parts = []
        for start in range(0, count, self.max_batch):
            stop = start + self.max_batch
            chunk = [ViewParams(p.box[start:stop], p.flip[start:stop], p.jitter[start:stop], p.gray[start:stop]) for p in params]
            parts.append(self._run(indices[start:stop], chunk))
        memory = torch.channels_last if self.channels_last else torch.contiguous_format
        return [torch.cat([part[v] for part in parts]).contiguous(memory_format=memory) for v in range(len(params))]
