"""One iterator over augmented batches, whatever the backend.

>>> loader = AugmentedLoader(train, "two_view", batch_size=256, indices=split.retain, seed=0)
>>> for (x1, x2), y, idx in loader:      # one epoch; the next ``for`` runs the next epoch
...     ...

Every batch is a :class:`Batch` ``(inputs, labels, indices)``: ``inputs`` is one NCHW float
tensor for a one-view recipe and a tuple of them for a multi-view recipe, ``labels`` the int64
labels and ``indices`` the samples' indices in the data set, all on the loader's device.

Order and augmentation are functions of ``(seed, epoch, step)`` alone: the same seed gives the
same batches on every backend and device, and ``iterate(epoch, start=step)`` resumes a run
mid-epoch exactly where it stopped.

Under ``torchrun`` each rank builds the loader with ``ranks=(rank, world size)``: ``batch_size``
stays the global batch B (divisible by the world size K), the order and the augmentation
parameters of every global batch are drawn exactly as in one process, and rank r is served rows
``[r * B/K, (r + 1) * B/K)`` of it; so the K ranks together visit every sample once per epoch, in
the one-process order for any K, and each sample's views are drawn with the one-process parameters
(the CPU backend's views are bit-identical to the one-process batch's rows; the tests check it). A
last batch smaller than B (``drop_last=False``) is split as evenly as possible (the first ranks get
one row more, as :func:`numpy.array_split`); when it has fewer rows than there are ranks it is
dropped under K > 1 (a rank cannot take an empty step).

A :class:`~coun_fast.data.shards.ShardedDataset` (larger than memory) is streamed: each batch's
JPEG files are read from the mapped shards and decoded as needed, ahead of the training step, by
the backend's decoder (:mod:`coun_fast.data.stream`). Its views have the data set's
``view_size``; when its images are not all of that size, the recipes take their resized form
(:func:`~coun_fast.data.recipes.resized_form`: random resized crop for training, centre crop for
evaluation, as ImageNet models are trained).
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from coun_fast.data.backends import log, make_augmenter, resolve_backend
from coun_fast.data.dataset import ImageDataset
from coun_fast.data.recipes import (Normalization, Recipe, ViewParams, batch_rng, get_recipe, resized_form,
                                    sample_params)
from coun_fast.data.recipes import normalization as make_normalization
from coun_fast.data.shards import is_sharded


class Batch(NamedTuple):
    inputs: Tensor | tuple[Tensor, ...]
    labels: Tensor
    indices: Tensor


def check_global_batch(batch_size: int, ranks: int) -> None:
    """ValueError unless the global ``batch_size`` is divisible by the number of ``ranks``."""
    if batch_size % ranks:
        raise ValueError(f"batch_size {batch_size} is the global batch and must be divisible by the number of ranks "
                         f"K={ranks} (each rank takes batch_size / K samples per step); choose a multiple of {ranks}")


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class AugmentedLoader:
    """Shuffled, augmented batches of an in-memory :class:`ImageDataset` on a device.

    Args:
        dataset: the data set (all of a split; pick samples with ``indices``).
        recipe: a :class:`Recipe` or its name (``train``, ``two_view``, ``simclr``, ``chjgn``, ``eval``).
        batch_size: samples per batch (>= 1).
        indices: the samples to iterate (e.g. a retain set), default all; indices reported in
            batches are indices into ``dataset``.
        backend: ``auto`` | ``dali`` | ``torch`` | ``cpu`` (see :mod:`coun_fast.data.backends`).
        device: where batches are produced; default the current GPU if any, else the CPU.
        shuffle: a new random order each epoch; else the order of ``indices``.
        drop_last: drop a final batch smaller than ``batch_size``.
        seed: fixes the order and the augmentation of every epoch.
        epoch: the epoch that the next ``for`` runs (then it counts up).
        normalization: ``(mean, std)`` on the [0, 1] scale; default the statistics of
            ``dataset``'s images. Pass the training split's statistics when loading a test split.
        dtype: floating dtype of the images (float32, or bfloat16/float16 for a GPU).
        channels_last: give images the channels-last memory format.
        workers: decoding worker processes for a sharded data set (default: one per core, at
            most 16; 0 decodes in this process); ignored for in-memory data sets.
        prefetch: batches decoded ahead per worker (or by the background thread) for a sharded
            data set; memory in use is about ``max(workers, 1) * prefetch`` batches.
        ranks: ``(rank, world size)`` of a distributed run: this rank's rows of every global batch
            (see the module's docstring); ``batch_size`` must be divisible by the world size.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        recipe: "str | Recipe" = "train",
        *,
        batch_size: int = 256,
        indices: "Sequence[int] | np.ndarray | None" = None,
        backend: str = "auto",
        device=None,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        epoch: int = 0,
        normalization: "Normalization | tuple | None" = None,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        workers: int | None = None,
        prefetch: int = 2,
        ranks: tuple[int, int] = (0, 1),
    ) -> None:
        if not isinstance(dataset, ImageDataset):
            raise TypeError(f"dataset must be an ImageDataset (see coun_fast.data.load_dataset); got {type(dataset).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
        self.rank, self.world_size = self._ranks(ranks, batch_size)
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0; got {seed!r}")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16; got {dtype}")
        self.recipe = get_recipe(recipe)
        self.dataset = dataset
        self.indices = self._indices(indices, len(dataset))
        self.batch_size, self.shuffle, self.drop_last = batch_size, bool(shuffle), bool(drop_last)
        self.seed, self.epoch = int(seed), int(epoch)
        self.device = _device(device)
        self.backend, reason = resolve_backend(backend, self.device)
        log.info("augmentation backend %s on %s (%s)", self.backend, self.device, reason)
        if normalization is None:
            self.normalization = dataset.normalization
        else:
            self.normalization = make_normalization(*normalization)
        self.streaming = is_sharded(dataset)
        if self.streaming:
            from coun_fast.data.stream import StreamingAugmenter

            self.image_size = dataset.view_size
            if dataset.resizes:
                self.recipe = resized_form(self.recipe)
            self.augmenter = StreamingAugmenter(
                self.backend, dataset, self.normalization, self.image_size, device=self.device, dtype=dtype,
                channels_last=channels_last, max_batch=batch_size, recipe=self.recipe, workers=workers,
                prefetch=prefetch,
            )
        else:
            # DALI decodes JPEG bytes itself (on the GPU with its mixed decoder); the others need pixels.
            source = dataset if self.backend == "dali" else dataset.decoded()
            self.image_size = source.view_size
            self.augmenter = make_augmenter(
                self.backend, source, self.normalization, self.image_size, device=self.device, dtype=dtype,
                channels_last=channels_last, max_batch=batch_size, recipe=self.recipe,
            )
        self._labels = torch.from_numpy(dataset.labels).to(self.device)

    @staticmethod
    def _ranks(ranks, batch_size: int) -> tuple[int, int]:
        try:
            rank, size = (int(v) for v in ranks)
        except (TypeError, ValueError):
            raise ValueError(f"ranks must be (rank, world size); got {ranks!r}") from None
        if size < 1 or not 0 <= rank < size:
            raise ValueError(f"ranks must be (rank, world size) with 0 <= rank < world size; got {ranks!r}")
        check_global_batch(batch_size, size)
        return rank, size

    @staticmethod
    def _indices(indices, size: int) -> np.ndarray:
        if indices is None:
            return np.arange(size, dtype=np.int64)
        index = np.asarray(indices)
        if index.ndim != 1 or (index.size and not np.issubdtype(index.dtype, np.integer)):
            raise ValueError(f"indices must be a 1-D array of integers; got dtype {index.dtype}, shape {index.shape}")
        index = index.astype(np.int64)
        if index.size == 0:
            raise ValueError("indices is empty: there is nothing to load")
        if index.min() < 0 or index.max() >= size:
            raise ValueError(f"indices must lie in [0, {size}) for this data set; got values in [{index.min()}, {index.max()}]")
        return index

    def __len__(self) -> int:
        """Batches per epoch (global batches: the same on every rank)."""
        full, rest = divmod(len(self.indices), self.batch_size)
        return full + (1 if rest and not self.drop_last and rest >= self.world_size else 0)

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def order(self, epoch: int) -> np.ndarray:
        """The sample indices of ``epoch`` in the order they are served."""
        if not self.shuffle:
            return self.indices
        return self.indices[np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(len(self.indices))]

    def jobs(self, epoch: int, start: int = 0, every: int = 1) -> Iterator[tuple[np.ndarray, list]]:
        """(sample indices, per-view parameters) of the batches of ``epoch`` at steps ``start``,
        ``start + every``, ... (``every`` > 1: a share of whole batches, see :meth:`iterate`)."""
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1; got {every!r}")
        order = self.order(epoch)
        for step in range(start, len(self), every):
            chunk = order[step * self.batch_size : (step + 1) * self.batch_size]
            sizes = self.dataset.sizes[chunk] if self.streaming else self.image_size
            params = sample_params(self.recipe, batch_rng(self.seed, epoch, step), len(chunk), sizes, self.image_size)
            if self.world_size > 1:  # this rank's rows of the global batch, drawn as in one process
                rows = np.array_split(np.arange(len(chunk)), self.world_size)[self.rank]
                lo, hi = int(rows[0]), int(rows[-1]) + 1
                chunk, params = chunk[lo:hi], [ViewParams(*(part[lo:hi] for part in view)) for view in params]
            yield chunk, params

    def iterate(self, epoch: int, start: int = 0, every: int = 1) -> Iterator[Batch]:
        """The batches of ``epoch`` from step ``start`` on (for resuming); does not change ``self.epoch``.

        ``every`` = k > 1 serves steps ``start``, ``start + k``, ... only, each exactly the batch of
        that step (the others are neither drawn nor augmented): with ``start`` = rank and ``every``
        = K, the K ranks of a distributed pass split the epoch's whole batches between them (a pass
        whose result is a sum over batches, e.g. of squared batch gradients)."""
        jobs = self.jobs(epoch, start, every)
        stream = getattr(self.augmenter, "stream", None)
        results = stream(jobs) if stream is not None else ((c, self.augmenter.views(c, p)) for c, p in jobs)
        for chunk, views in results:
            where = torch.from_numpy(chunk).to(self.device, non_blocking=True)
            inputs = views[0] if self.recipe.views == 1 else tuple(views)
            yield Batch(inputs, self._labels[where], where)

    def close(self) -> None:
        """Stop the decoding worker processes of a sharded data set now (a later pass starts them
        again); nothing to do for an in-memory one."""
        close = getattr(self.augmenter, "close", None)
        if close is not None:
            close()

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.epoch += 1
        return self.iterate(epoch)

    def __repr__(self) -> str:
        return (
            f"AugmentedLoader({self.dataset.name}/{self.dataset.split}, recipe={self.recipe.name!r}, "
            f"samples={self.num_samples}, batch_size={self.batch_size}"
            + (f", rank={self.rank} of {self.world_size}" if self.world_size > 1 else "")
            + f", backend={self.backend!r}, device={self.device})"
        )
