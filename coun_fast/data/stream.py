"""Streaming augmenters: batches of a :class:`~coun_fast.data.shards.ShardedDataset` decoded as
they are needed, behind the interface of :mod:`coun_fast.data.backends`.

Every batch is a job ``(indices, params)`` whose per-sample parameters the loader drew on the
host from ``(seed, epoch, step)``; the augmenters read the samples' JPEG files from the mapped
shards and apply the recipe semantics of :mod:`coun_fast.data.recipes`. Per backend:

* ``dali``: :class:`~coun_fast.data.augment_dali.DaliAugmenter` fed the mapped JPEG bytes by
  ``external_source``, decoded by DALI's ``mixed`` decoder (nvjpeg) on a GPU, or its CPU decoder
  with ``device_id=None``; a background thread runs the next batches while the caller trains.
* ``torch``: the JPEG files decoded on the GPU by ``torchvision.io.decode_jpeg(device="cuda")``
  where torchvision imports (in a background thread, as for DALI); otherwise (no torchvision, or
  a CPU device) by Pillow in worker processes; then augmented on the device by
  :func:`coun_fast.data.augment_torch.apply_view` over the images of their own sizes.
* ``cpu``: Pillow decodes and a per-sample torch pipeline (:func:`view_into`) augments, in worker
  processes that write the float views into shared memory.

Worker processes are a ``torch.utils.data.DataLoader`` over the jobs (one whole batch per job,
``prefetch`` jobs per worker in flight, persistent across epochs), so decoding overlaps training.
Memory is bounded by the batches in flight, ``workers x prefetch`` (threads: ``prefetch``),
whatever the data set's size; shards release the pages they read (:mod:`.shards`).
"""

from __future__ import annotations

import functools
import itertools
import queue
import threading
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from coun_fast.data import augment_torch
from coun_fast.data._pil import as_threads, decode_one
from coun_fast.data.recipes import IDENTITY_JITTER, Normalization, Recipe, ViewParams
from coun_fast.data.shards import ShardedDataset

Job = tuple[np.ndarray, list[ViewParams]]
MAX_DEFAULT_WORKERS = 16


def torchvision_decoder() -> Callable | None:
    """``torchvision.io.decode_jpeg`` when torchvision imports (None otherwise: it does not import
    with every torch build, e.g. a CPU-only torch without a matching torchvision)."""
    try:
        from torchvision.io import decode_jpeg
    except Exception:  # missing, or built for another torch
        return None
    return decode_jpeg


def default_workers() -> int:
    """Decoding worker processes by default: one per available core, at most 16."""
    return min(MAX_DEFAULT_WORKERS, as_threads(None))


# -- the per-sample CPU pipeline ---------------------------------------------------------------
def box_region(image: np.ndarray, box) -> np.ndarray:
    """The pixels of ``box`` (top, left, height, width) of a uint8 (H, W, 3) image, zero outside it."""
    top, left, height, width = (int(v) for v in box)
    rows, cols = image.shape[:2]
    if top >= 0 and left >= 0 and top + height <= rows and left + width <= cols:
        return image[top : top + height, left : left + width]
    region = np.zeros((height, width, 3), np.uint8)
    y0, y1 = max(top, 0), min(top + height, rows)
    x0, x1 = max(left, 0), min(left + width, cols)
    if y0 < y1 and x0 < x1:
        region[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
    return region


def view_into(out: Tensor, image: np.ndarray, box, flip: bool, jitter: np.ndarray, gray: bool,
              norm: Normalization, out_size: tuple[int, int]) -> None:
    """One view of one uint8 (H, W, 3) image written into ``out`` (3, out_h, out_w) float32.

    The semantics of :mod:`coun_fast.data.recipes`, computed per sample with torch: the box is
    cut (zero outside the image), mirrored first when flipped (the same pixels as mirroring the
    resized view: the sampling grid is symmetric), resized by ``F.interpolate`` (bilinear,
    half-pixel centres, no antialias: the reference's rule) channel by channel, then colour steps
    (:mod:`.augment_torch`) and normalization into ``out``.
    """
    region = box_region(image, box)
    planes = np.ascontiguousarray((region[:, ::-1] if flip else region).transpose(2, 0, 1))  # (3, h, w)
    # One channel per "image" of a batch of three: torch's bilinear kernel vectorizes a single
    # channel along the width, 2-3x faster than three interleaved or planar channels.
    x = torch.from_numpy(planes).float().unsqueeze(1)  # (3, 1, h, w)
    if region.shape[:2] != tuple(out_size):
        x = F.interpolate(x, size=tuple(out_size), mode="bilinear", align_corners=False, antialias=False)
    x = x.squeeze(1).unsqueeze(0)  # (1, 3, H, W)
    jitter = np.asarray(jitter, np.float32)
    if not np.array_equal(jitter, IDENTITY_JITTER) or gray:
        hwc = x.permute(0, 2, 3, 1) / 255.0
        if not np.array_equal(jitter, IDENTITY_JITTER):
            hwc = augment_torch._color_jitter(hwc, torch.from_numpy(jitter[None]), bool(jitter[3] != 0))
        if gray:
            hwc = augment_torch._gray(hwc).expand_as(hwc)
        mean = torch.tensor(norm.mean).view(3, 1, 1)
        std = torch.tensor(norm.std).view(3, 1, 1)
        torch.sub(hwc[0].permute(2, 0, 1), mean, out=out)
        out.div_(std)
        return
    scale = torch.tensor([1.0 / (255.0 * s) for s in norm.std]).view(3, 1, 1)
    bias = torch.tensor([-m / s for m, s in zip(norm.mean, norm.std)]).view(3, 1, 1)
    torch.addcmul(bias, x[0], scale, out=out)


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An uninitialised tensor, in shared memory inside a DataLoader worker (so handing it to the
    main process copies nothing), else in ordinary memory."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    try:
        storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * dtype.itemsize)
        return torch.empty(0, dtype=dtype).set_(storage, 0, shape)
    except (AttributeError, RuntimeError, TypeError):  # private API moved: the DataLoader copies instead
        return torch.empty(shape, dtype=dtype)


class _Failure(str):
    """A worker's error message, returned rather than raised so the main process raises it cleanly."""


def cpu_views(dataset: ShardedDataset, norm: Normalization, out_size: tuple[int, int], indices: np.ndarray,
              params: list[ViewParams]) -> list[Tensor]:
    """The ``cpu`` backend's job: one (B, 3, H, W) float32 tensor per view."""
    outputs = [_empty((len(indices), 3, *out_size), torch.float32) for _ in params]
    for i, data in enumerate(dataset.encoded_arrays(indices)):
        image = decode_one(data, lambda i=i: dataset.describe(int(indices[i])))
        for out, view in zip(outputs, params):
            view_into(out[i], image, view.box[i], bool(view.flip[i]), view.jitter[i], bool(view.gray[i]), norm, out_size)
    return outputs


def decode_pixels(dataset: ShardedDataset, indices: np.ndarray, params: object = None) -> Tensor:
    """The ``torch`` backend's CPU job: the images' pixels back to back, a (P, 3) uint8 tensor
    (image b's rows from the pixel ``sum(H_c * W_c for c < b)`` on; sizes are the manifest's)."""
    sizes = dataset.sizes[indices]
    pixels = _empty((int((sizes[:, 0] * sizes[:, 1]).sum()), 3), torch.uint8)
    at = 0
    for i, data in enumerate(dataset.encoded_arrays(indices)):
        image = decode_one(data, lambda i=i: dataset.describe(int(indices[i])))
        if image.shape[:2] != tuple(sizes[i]):
            raise ValueError(f"{dataset.describe(int(indices[i]))} decodes to {image.shape[0]}x{image.shape[1]} "
                             f"but its shard records {sizes[i][0]}x{sizes[i][1]}: the shard is damaged")
        count = image.shape[0] * image.shape[1]
        pixels[at : at + count].numpy()[:] = image.reshape(-1, 3)
        at += count
    return pixels


class _Task(torch.utils.data.Dataset):
    """What a worker process runs per job; errors come back as :class:`_Failure`."""

    def __init__(self, function: Callable) -> None:
        self.function = function

    def __getitem__(self, job: Job):
        try:
            return self.function(*job)
        except ValueError as error:
            return _Failure(str(error))


class _Jobs(torch.utils.data.Sampler):
    """The jobs of the current pass (the DataLoader's workers persist across passes)."""

    def __init__(self) -> None:
        self.jobs: Iterable[Job] = ()

    def __iter__(self) -> Iterator[Job]:
        return iter(self.jobs)


def _identity(value):
    return value


class WorkerPool:
    """``function(indices, params)`` run for a stream of jobs in ``workers`` processes (0: in this
    process), results in job order, ``prefetch`` jobs per worker ahead."""

    def __init__(self, function: Callable, workers: int, prefetch: int, pin_memory: bool = False) -> None:
        self.function = function
        self.workers = workers
        self._jobs = _Jobs()
        options = {}
        if workers > 0:
            options = dict(prefetch_factor=prefetch, persistent_workers=True)
        self._loader = torch.utils.data.DataLoader(
            _Task(function), batch_size=None, sampler=self._jobs, num_workers=workers, collate_fn=_identity,
            pin_memory=pin_memory, **options,
        )
        self._lock = threading.Lock()

    def run(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, object]]:
        """(job, result) per job, in order; raises ValueError with a worker's error."""
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("this loader is already being iterated; finish (or close) that iteration first")
        finished = False
        try:
            sent, received = itertools.tee(jobs)  # the DataLoader reads ahead of the results
            self._jobs.jobs = sent
            for job, result in zip(received, self._loader):
                if isinstance(result, _Failure):
                    raise ValueError(str(result))
                yield job, result
            finished = True
        finally:
            self._jobs.jobs = ()
            if not finished:  # an error or an abandoned pass: stop the workers now (see close)
                self.close()
            self._lock.release()

    def close(self) -> None:
        """Stop the worker processes now (the next pass starts new ones). Left to the garbage
        collector, a pool caught in a reference cycle (an exception's traceback, say) has its
        queues finalized before its workers are told to stop, and each then takes a timeout."""
        iterator = getattr(self._loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self._loader._iterator = None


def prefetched(function: Callable[[np.ndarray, list[ViewParams]], object], jobs: Iterable[Job],
               depth: int, lock: threading.Lock) -> Iterator[tuple[np.ndarray, object]]:
    """``function(indices, params)`` per job computed ``depth`` jobs ahead in a background thread
    (which holds ``lock`` while it runs one: one pass at a time per augmenter); results in order."""
    results: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def work() -> None:
        try:
            for indices, params in jobs:
                if stop.is_set():
                    return
                with lock:
                    value = function(indices, params)
                while not stop.is_set():
                    try:
                        results.put((indices, value, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # handed to the consumer
            results.put((None, None, error))
            return
        results.put((None, None, StopIteration()))

    thread = threading.Thread(target=work, name="coun-fast-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            indices, value, error = results.get()
            if isinstance(error, StopIteration):
                return
            if error is not None:
                raise error
            yield indices, value
    finally:
        stop.set()
        thread.join()


class StreamingAugmenter:
    """The augmenter of a sharded data set (see the module docstring): :meth:`stream` maps jobs
    to views with decoding in the background; :meth:`views` does one job in this process."""

    def __init__(self, backend: str, dataset: ShardedDataset, norm: Normalization, out_size: tuple[int, int], *,
                 device: torch.device, dtype: torch.dtype, channels_last: bool, max_batch: int, recipe: Recipe,
                 workers: int | None = None, prefetch: int = 2) -> None:
        if workers is None:
            workers = default_workers()
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an integer >= 0 (0: decode in this process); got {workers!r}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be an integer >= 1; got {prefetch!r}")
        self.name, self.dataset, self.norm = backend, dataset, norm
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.device, self.dtype, self.channels_last = device, dtype, channels_last
        self.prefetch = prefetch
        self._lock = threading.Lock()
        self.decoder = "pillow"
        self._pool: WorkerPool | None = None
        self._dali = self._gpu_decode = None
        if backend == "dali":
            from coun_fast.data.augment_dali import DaliAugmenter

            self._dali = DaliAugmenter(dataset, norm, out_size, device=device, dtype=dtype, channels_last=channels_last,
                                       max_batch=max_batch, recipe=recipe)
            self.decoder = "dali-nvjpeg" if device.type == "cuda" else "dali-cpu"
        elif backend == "torch" and device.type == "cuda" and (decode := torchvision_decoder()) is not None:
            self._gpu_decode = decode
            self.decoder = "torchvision-nvjpeg"
        # The workers' jobs are plain functions of the data (no reference back to this object: a
        # cycle through the DataLoader would leave its workers to the garbage collector, whose
        # order of finalization makes their shutdown wait out a timeout).
        elif backend == "torch":
            self._decode_job = functools.partial(decode_pixels, dataset)
            self._pool = WorkerPool(self._decode_job, workers, prefetch, pin_memory=device.type == "cuda")
        elif backend == "cpu":
            if device.type != "cpu":
                raise ValueError(f"backend 'cpu' produces CPU tensors; got device {device}")
            self._cpu_job = functools.partial(cpu_views, dataset, norm, self.out_size)
            self._pool = WorkerPool(self._cpu_job, workers, prefetch)
        else:
            raise ValueError(f"no streaming augmenter for backend {backend!r}")
        self.workers = self._pool.workers if self._pool is not None else 0

    # -- in this process ------------------------------------------------------------------------
    def _finish(self, views: list[Tensor]) -> list[Tensor]:
        out = []
        for view in views:
            view = view.to(self.device, non_blocking=True).to(self.dtype)
            out.append(view.contiguous(memory_format=torch.channels_last) if self.channels_last else view)
        return out

    def _ragged_views(self, pixels: Tensor, indices: np.ndarray, params: list[ViewParams]) -> list[Tensor]:
        sizes = torch.from_numpy(self.dataset.sizes[indices]).to(self.device)
        areas = sizes[:, 0] * sizes[:, 1]
        starts = torch.cumsum(areas, 0) - areas
        gather = augment_torch.ragged_gather(pixels.to(self.device, non_blocking=True), starts, sizes)
        return [augment_torch.apply_view(gather, view, self.norm, self.out_size, dtype=self.dtype,
                                         channels_last=self.channels_last, device=self.device) for view in params]

    def _gpu_views(self, indices: np.ndarray, params: list[ViewParams]) -> list[Tensor]:
        files = [torch.from_numpy(np.array(f)) for f in self.dataset.encoded_arrays(indices)]
        from torchvision.io import ImageReadMode

        try:
            images = self._gpu_decode(files, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError as error:
            shards = sorted({str(self.dataset.shards[s].path) for s in self.dataset.locate(indices)[0].tolist()})
            raise ValueError(f"cannot decode a batch of JPEG files from {', '.join(shards)} on the GPU: "
                             f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from error
        pixels = torch.cat([image.permute(1, 2, 0).reshape(-1, 3) for image in images])
        return self._ragged_views(pixels, indices, params)

    def _in_process(self, indices: np.ndarray, params: list[ViewParams]) -> list[Tensor]:
        if self._dali is not None:
            return self._dali.views(indices, params)
        return self._gpu_views(indices, params)

    def views(self, indices: np.ndarray, params: list[ViewParams]) -> list[Tensor]:
        """One job in this process (no workers, no prefetch)."""
        indices = np.asarray(indices, dtype=np.int64)
        if self._pool is None:
            with self._lock:
                return self._in_process(indices, params)
        if self.name == "cpu":
            return self._finish(self._cpu_job(indices, params))
        return self._ragged_views(self._decode_job(indices, params), indices, params)

    def close(self) -> None:
        """Stop the decoding worker processes, if any (a later pass starts them again)."""
        if self._pool is not None:
            self._pool.close()

    def stream(self, jobs: Iterable[Job]) -> Iterator[tuple[np.ndarray, list[Tensor]]]:
        """(indices, views) per job, in order, decoded ahead in the background."""
        if self._pool is None:
            yield from prefetched(self._in_process, jobs, self.prefetch, self._lock)
            return
        for (indices, params), result in self._pool.run(jobs):
            if self.name == "cpu":
                yield indices, self._finish(result)
            else:
                yield indices, self._ragged_views(result, indices, params)
