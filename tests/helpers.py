"""Test helpers: devices, inputs of every layout, oracles in any precision, and the tolerance rule.

Tolerance rule (see :func:`check_against_oracle`), for the loss and every gradient:

* float32 inputs: the fused result is compared with the float64 oracle elementwise,
  ``|fused - ref64| <= atol + rtol |ref64|`` with rtol = 1e-5 and atol = 1e-5 * max|ref64|
  (gradients span orders of magnitude with 1/tau and 1/||x||, so atol follows their scale), but
  never below a float32 rounding floor (:func:`rounding_floor`) for results whose exact value is
  ~0, such as the gradient of 1-D features, which normalization makes constant.
* float16 / bfloat16 inputs (the FlashAttention rule): the fused error may be at most twice the
  error of the oracle run in the input dtype, ``max|fused - ref64| <= 2 max|ref_same - ref64| +
  atol``, where atol is a few float32 ulps of the scale for the float32 loss and one ulp of the
  input dtype for gradients returned in that dtype (their rounding alone costs half of it), plus
  the same rounding floor.
* float32 inputs on TF32 tensor cores (``tf32=True``): against the float64 oracle within the bound
  that TF32's rounding implies. Operands rounded to 10 mantissa bits (unit roundoff u = 2^-11) move
  a logit of unit rows by at most ds = 2u / tau; a per-anchor loss by 2 ds, the loss (at most two
  directions' means) by 4 ds; a softmax entry by a relative 2 ds, and the gradient product rounds
  its operands too, so gradients move by at most (4 ds + 4u) max|grad|."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest
import torch
from torch import Tensor

from coun_fast.ops import backend as backends
from coun_fast.ops import reference

# "cuda" params carry the cuda marker: conftest skips them ("no CUDA GPU") at setup, so the GPU is
# never queried at import or collection time.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
# The kernels' devices and CUDA paths: "cuda" runs the exact path, "cuda-tc" the tensor-core path
# (bfloat16 / float16 inputs on tensor cores; float32 stays exact unless TF32 is allowed).
KERNEL_DEVICES = [*DEVICES, pytest.param("cuda-tc", marks=pytest.mark.cuda)]


@contextlib.contextmanager
def kernel_path(device: str) -> Iterator[str]:
    """The torch device of a KERNEL_DEVICES entry, with its CUDA path switched on for the block."""
    with backends.tensor_cores(device == "cuda-tc"):
        yield "cuda" if device.startswith("cuda") else device
LOW_PRECISION = (torch.float16, torch.bfloat16)
DTYPES = (torch.float32, *LOW_PRECISION)
FP32_RTOL = 1e-5
FP32_ATOL = 1e-5


def _index_of(flat_index: int, shape: Sequence[int]) -> tuple[int, ...]:
    index = []
    for size in reversed(shape):
        index.append(flat_index % size)
        flat_index //= size
    return tuple(reversed(index))


def describe_mismatch(name: str, actual: Tensor, expected: Tensor, bad: Tensor, excess: Tensor, rule: str) -> str:
    """A failure message: how many entries fail, where the worst one is, and its two values."""
    worst = int(torch.argmax(torch.where(torch.isnan(excess), torch.inf, excess)))
    position = _index_of(worst, actual.shape) if actual.dim() else ()
    got, want = actual.reshape(-1)[worst].item(), expected.reshape(-1)[worst].item()
    return (f"{name}: {int(bad.sum())} of {bad.numel()} entries mismatch ({rule}); worst at {position}: "
            f"got {got!r}, expected {want!r}, |diff| {abs(got - want):.3e}; shape {tuple(actual.shape)}")


def assert_close_verbose(name: str, actual: Tensor, expected: Tensor, *, rtol: float, atol: float) -> None:
    """Elementwise ``|actual - expected| <= atol + rtol |expected|`` (NaN always fails), in float64."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual - expected).abs()
    allowed = atol + rtol * expected.abs()
    bad = ~(diff <= allowed)
    if bool(bad.any()):
        pytest.fail(describe_mismatch(name, actual, expected, bad, diff - allowed, f"rtol={rtol:g}, atol={atol:g}"))


def assert_within_flash_bound(name: str, actual: Tensor, same_dtype: Tensor, expected: Tensor, *, atol: float) -> None:
    """``max|actual - expected| <= 2 max|same_dtype - expected| + atol`` (NaN in ``actual`` fails)."""
    actual, same_dtype, expected = (t.detach().double().cpu() for t in (actual, same_dtype, expected))
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    error = (actual - expected).abs()
    reference_error = (same_dtype - expected).abs().nan_to_num(nan=torch.inf).max() if error.numel() else 0.0
    bound = 2 * float(reference_error) + atol
    bad = ~(error <= bound)
    if bool(bad.any()):
        rule = f"bound 2 * {float(reference_error):.3e} (same-dtype oracle error) + {atol:.3e}"
        pytest.fail(describe_mismatch(name, actual, expected, bad, error - bound, rule))


def scale_of(t: Tensor) -> float:
    return float(t.detach().abs().max()) if t.numel() else 0.0


TF32_UNIT_ROUNDOFF = 2.0**-11


def tf32_tolerance(temperature: float, gradient: bool, scale: float) -> float:
    """The TF32 bound of the module docstring, absolute."""
    logit_error = 2 * TF32_UNIT_ROUNDOFF / temperature
    if not gradient:
        return 4 * logit_error
    return (4 * logit_error + 4 * TF32_UNIT_ROUNDOFF) * scale


def check_result(name: str, dtype: torch.dtype, fused: Tensor, same_dtype: Tensor | None, ref64: Tensor,
                 floor: float, tf32_temperature: float | None = None) -> None:
    """The dtype tolerance rule of this module, for one output (loss or gradient). ``floor`` is the
    float32 rounding level of the output, the absolute tolerance where the exact value is ~0;
    ``tf32_temperature``: float32 inputs ran on TF32 tensor cores at this temperature."""
    scale = scale_of(ref64)
    if dtype == torch.float32 and tf32_temperature is not None:
        tolerance = tf32_tolerance(tf32_temperature, name.startswith("grad"), scale)
        assert_close_verbose(name, fused, ref64, rtol=0.0, atol=tolerance + floor)
        return
    if dtype == torch.float32:
        assert_close_verbose(name, fused, ref64, rtol=FP32_RTOL, atol=max(FP32_ATOL * scale, floor))
        return
    out_eps = torch.finfo(fused.dtype).eps
    atol = (out_eps if fused.dtype in LOW_PRECISION else 8 * out_eps) * scale + floor
    assert same_dtype is not None
    assert_within_flash_bound(name, fused, same_dtype, ref64, atol=atol)


def rounding_floor(temperature: float, weight: float, rows: Tensor | None = None) -> float:
    """float32 rounding level of a result whose exact value is ~0 (a 1-D feature's gradient, the loss
    of a single pair): some float32 ulps of the logit scale ``weight / tau``, over ||x|| for the
    gradient of raw rows ``x`` (the normalization divides by it)."""
    floor = 64 * torch.finfo(torch.float32).eps * weight / temperature
    if rows is not None:
        floor /= float(rows.detach().double().norm(dim=-1).min())
    return floor


@dataclass(frozen=True)
class Feature:
    """One feature input: float64 master values (exactly representable in the test dtype), held in
    a storage of the given layout; ``view`` turns a leaf of that storage into the (rows, dim) input."""

    storage: Tensor
    layout: str

    def leaf(self, dtype: torch.dtype, device: str) -> Tensor:
        return self.storage.to(device=device, dtype=dtype).requires_grad_()

    def view(self, leaf: Tensor) -> Tensor:
        if self.layout == "transposed":
            return leaf.T
        if self.layout == "strided_cols":
            return leaf[:, ::2]
        if self.layout == "strided_rows":
            return leaf[1::2]
        if self.layout == "offset_cols":
            return leaf[:, 3:]
        return leaf


LAYOUTS = ("contiguous", "transposed", "strided_cols", "strided_rows", "offset_cols")


def make_feature(rows: int, dim: int, dtype: torch.dtype, generator: torch.Generator, layout: str = "contiguous",
                 scale: float = 1.0) -> Feature:
    """Gaussian rows of the given layout, rounded to ``dtype`` and held in float64."""
    shapes = {"contiguous": (rows, dim), "transposed": (dim, rows), "strided_cols": (rows, 2 * dim),
              "strided_rows": (2 * rows + 1, dim), "offset_cols": (rows, dim + 3)}
    values = torch.randn(shapes[layout], generator=generator, dtype=torch.float64) * scale
    return Feature(values.to(dtype).to(torch.float64), layout)


def random_weights(shape: Sequence[int], dtype: torch.dtype, generator: torch.Generator) -> Tensor:
    """Upstream gradient weights, exactly representable in ``dtype`` (so every run sees the same)."""
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float64).to(dtype).to(torch.float64)


def evaluate(fn: Callable[..., Tensor], features: Sequence[Feature], dtype: torch.dtype, device: str,
             weights: Tensor | None) -> tuple[Tensor, list[Tensor]]:
    """``fn`` on views of fresh leaves, and the gradients of every leaf of ``sum(weights * out)``."""
    leaves = [feature.leaf(dtype, device) for feature in features]
    out = fn(*(feature.view(leaf) for feature, leaf in zip(features, leaves)))
    objective = out.sum() if weights is None else (out * weights.to(device=device, dtype=out.dtype)).sum()
    grads = torch.autograd.grad(objective, leaves, allow_unused=True)
    grads = [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, grads)]
    return out.detach(), grads


def check_against_oracle(fused: Callable[..., Tensor], oracle: Callable[..., Tensor], features: Sequence[Feature],
                         dtype: torch.dtype, device: str, temperature: float, weights: Tensor | None = None,
                         names: Sequence[str] | None = None, tf32: bool = False) -> None:
    """The fused call against the float64 oracle (and the same-dtype oracle for float16/bfloat16):
    the output, and the gradient of every feature input, of ``sum(weights * out)`` (``out.sum()``
    without weights). ``oracle(*views, upcast=...)``. ``tf32``: float32 inputs run on TF32 tensor
    cores (the TF32 rule of the module docstring)."""
    out, grads = evaluate(fused, features, dtype, device, weights)
    expected_dtype = torch.float32
    assert out.dtype == expected_dtype, f"fused output is {out.dtype}, expected {expected_dtype}"
    for grad, feature in zip(grads, features):
        assert grad.dtype == dtype and grad.shape == feature.storage.shape
    out64, grads64 = evaluate(lambda *xs: oracle(*xs, upcast=True), features, torch.float64, "cpu", weights)
    out_same, grads_same = None, [None] * len(features)
    if dtype in LOW_PRECISION:
        out_same, grads_same = evaluate(lambda *xs: oracle(*xs, upcast=False), features, dtype, "cpu", weights)
    names = names or [f"input{i}" for i in range(len(features))]
    weight = 1.0 if weights is None else max(scale_of(weights), 1e-30)
    tf32_temperature = temperature if tf32 else None
    check_result("loss", dtype, out, out_same, out64, rounding_floor(temperature, 1.0), tf32_temperature)
    for name, grad, grad_same, grad64, feature in zip(names, grads, grads_same, grads64, features):
        floor = rounding_floor(temperature, weight, feature.view(feature.storage))
        check_result(f"grad[{name}]", dtype, grad, grad_same, grad64, floor, tf32_temperature)


def reference_info_nce(anchors: Tensor, candidates: Tensor | None, temperature: float, *, reduction: str = "mean",
                       upcast: bool = True, **kwargs) -> Tensor:
    """The oracle of ``functional.info_nce``: ``reference.info_nce_rows`` and ``reduce_rows``."""
    if kwargs.get("positive_index") is None and kwargs.get("anchor_labels") is None:
        kwargs["positive_index"] = torch.arange(anchors.shape[0], device=anchors.device)
    loss, valid = reference.info_nce_rows(anchors, candidates, temperature, upcast=upcast, **kwargs)
    split = anchors.shape[0] if kwargs.get("symmetric") else None
    return reference.reduce_rows(loss, valid, reduction, split=split)


def reference_nt_xent(z1: Tensor, z2: Tensor, temperature: float, *, reduction: str = "mean",
                      upcast: bool = True) -> Tensor:
    n = z1.shape[0]
    partner = torch.arange(2 * n, device=z1.device).roll(n)
    return reference_info_nce(torch.cat([z1, z2]), None, temperature, positive_index=partner, exclude_self=True,
                              reduction=reduction, upcast=upcast)


def reference_cross_view(z1: Tensor, z2: Tensor, temperature: float, *, reduction: str = "mean",
                         upcast: bool = True) -> Tensor:
    return reference_info_nce(z1, z2, temperature, symmetric=True, reduction=reduction, upcast=upcast)


def reference_sup_con(features: Tensor, labels: Tensor, temperature: float, *, upcast: bool = True) -> Tensor:
    return reference_info_nce(features, None, temperature, anchor_labels=labels, exclude_self=True, upcast=upcast)


@contextlib.contextmanager
def rank_of_group(argv: Sequence[str]) -> Iterator[tuple[int, int, Path]]:
    """The worker side of :func:`run_ranks`: ``argv`` = ``RANK WORLD DIRECTORY ...``; joins the gloo
    group (file rendezvous in DIRECTORY) with one thread per process, yields ``(rank, world,
    directory)`` and, after the block, ends the process as the command line does
    (``distributed.exit_process`` with the block's ``distributed.exit_status``)."""
    import torch.distributed as dist

    from coun_fast import distributed

    rank, world, directory = int(argv[0]), int(argv[1]), Path(argv[2])
    dist.init_process_group("gloo", init_method=f"file://{directory / 'rendezvous'}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    code = 0
    try:
        yield rank, world, directory
    except BaseException as error:  # noqa: BLE001 - reported as the interpreter would, then the status says it
        code = distributed.exit_status(error)
    distributed.exit_process(code)


def run_ranks(worker: Path, world: int, directory: Path, *args: str, timeout_s: float = 240) -> list[dict]:
    """Run ``python WORKER RANK WORLD DIRECTORY *ARGS`` as ``world`` processes (the ranks of a gloo
    group whose rendezvous file is in ``directory``), at most ``timeout_s`` seconds each; assert
    that every rank exits with 0 (showing its output otherwise) and return what each saved in
    ``directory/rank{RANK}.pt``."""
    ended = spawn_ranks(worker, world, directory, *args, timeout_s=timeout_s)
    for rank, (code, output) in enumerate(ended):
        assert code == 0, f"rank {rank} failed:\n{output}"
    return [torch.load(directory / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


def spawn_ranks(worker: Path, world: int, directory: Path, *args: str, timeout_s: float = 240
                ) -> list[tuple[int, str]]:
    """:func:`run_ranks`'s processes, whatever they end with: ``(exit code, output)`` of each rank
    (a rank still running after ``timeout_s`` seconds is killed, its output then begins with
    "(killed after ...)")."""
    processes = [subprocess.Popen([sys.executable, str(worker), str(rank), str(world), str(directory), *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for rank in range(world)]
    outputs = []
    try:
        for process in processes:
            try:
                outputs.append(process.communicate(timeout=timeout_s)[0])
            except subprocess.TimeoutExpired:
                process.kill()
                outputs.append(f"(killed after {timeout_s} s)\n" + (process.communicate()[0] or ""))
    finally:
        for process in processes:
            process.kill()
            process.wait()
    return [(process.returncode, output) for process, output in zip(processes, outputs)]
