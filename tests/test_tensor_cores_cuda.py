"""The CUDA paths on a GPU: the tensor-core path is taken when switched on, TF32 against the float64
oracle, bit-determinism, CUDA-graph capture of forward + backward, agreement of the paths with the
float64 reference, the opt-in occupancy variant bit for bit against the default tensor-core
kernels, and the memory of a large batch. The property tests of the exact and tensor-core paths
over random shapes are in test_losses_property.py ("cuda" and "cuda-tc"); the kernels' arithmetic
is also checked on the CPU through the emulation (test_cuda_emulation.py). Every test here needs a
GPU."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coun_fast import functional as F
from coun_fast.ops import backend as backends
from coun_fast.ops.contrastive import (PATH_EXACT, PATH_TENSOR_CORES, PATH_TENSOR_CORES_OCCUPANCY, REDUCTIONS,
                                       RULE_DIAGONAL, contrastive_forward)
from helpers import check_against_oracle, make_feature, reference_cross_view, reference_nt_xent

pytestmark = pytest.mark.cuda

LOSSES = {
    "nt_xent": lambda a, b, backend="fused": F.nt_xent(a, b, 0.2, backend=backend),
    "cross_view": lambda a, b, backend="fused": F.cross_view_info_nce(a, b, 0.1, backend=backend),
    "sup_con": lambda a, b, backend="fused": F.sup_con(
        torch.cat([a, b]), torch.arange(a.shape[0], device=a.device).repeat(2) % 7, 0.1, backend=backend),
}
PATHS = {"exact": False, "tensor_cores": True, "tensor_cores_occupancy": "occupancy"}


def leaves(n: int, d: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator(device="cuda").manual_seed(seed)
    return tuple(torch.randn(n, d, device="cuda", generator=generator).to(dtype).requires_grad_() for _ in range(2))


def loss_and_grads(name: str, a: torch.Tensor, b: torch.Tensor, backend: str = "fused") -> tuple[torch.Tensor, ...]:
    loss = LOSSES[name](a, b, backend)
    return (loss.detach(), *torch.autograd.grad(loss, (a, b)))


def test_tensor_core_path_is_the_default_and_can_be_switched_off():
    a, b = leaves(40, 24, torch.bfloat16)
    args = (a.detach(), b.detach(), 0.1, RULE_DIAGONAL, None, None, None, False, 0, True, REDUCTIONS["mean"])
    sm80 = torch.cuda.get_device_capability(a.device) >= (8, 0)
    assert backends.cuda_path(torch.bfloat16, a.device) == (PATH_TENSOR_CORES if sm80 else PATH_EXACT)
    assert backends.cuda_path(torch.float32, a.device) == PATH_EXACT  # TF32 not allowed (conftest)
    with backends.tensor_cores(False):
        assert backends.cuda_path(torch.bfloat16, a.device) == PATH_EXACT
    with backends.tensor_cores("occupancy"):
        assert backends.cuda_path(torch.bfloat16, a.device) == (PATH_TENSOR_CORES_OCCUPANCY if sm80 else PATH_EXACT)
        assert backends.cuda_path(torch.float32, a.device) == PATH_EXACT
    # The tensor-core path keeps the normalized rows for the backward; the exact path keeps nothing.
    assert contrastive_forward(*args, PATH_TENSOR_CORES)[2].numel() > 0
    assert contrastive_forward(*args, PATH_EXACT)[2].numel() == 0


@pytest.fixture
def allow_tf32():
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


@settings(max_examples=15, deadline=None)
@given(n=st.one_of(st.sampled_from((1, 2, 3, 31, 33, 127, 257)), st.integers(1, 600)),
       dim=st.one_of(st.sampled_from((1, 3, 31, 33, 127, 257, 513)), st.integers(1, 700)),
       temperature=st.floats(0.02, 1.0), seed=st.integers(0, 2**31))
def test_tf32_matches_oracle(allow_tf32, n, dim, temperature, seed):
    generator = torch.Generator().manual_seed(seed)
    z1, z2 = make_feature(n, dim, torch.float32, generator), make_feature(n, dim, torch.float32, generator)
    with backends.tensor_cores(True):
        assert backends.cuda_path(torch.float32, torch.device("cuda")) == PATH_TENSOR_CORES
        check_against_oracle(lambda a, b: F.cross_view_info_nce(a, b, temperature, backend="fused"),
                             lambda a, b, upcast: reference_cross_view(a, b, temperature, upcast=upcast),
                             [z1, z2], torch.float32, "cuda", temperature, names=["z1", "z2"], tf32=True)
        check_against_oracle(lambda a, b: F.nt_xent(a, b, temperature, backend="fused"),
                             lambda a, b, upcast: reference_nt_xent(a, b, temperature, upcast=upcast),
                             [z1, z2], torch.float32, "cuda", temperature, names=["z1", "z2"], tf32=True)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("shape", [(256, 512), (3000, 128), (77, 1000)], ids=str)
def test_runs_are_bit_identical(path, name, shape):
    a, b = leaves(*shape, torch.bfloat16)
    with backends.tensor_cores(PATHS[path]):
        first, second = loss_and_grads(name, a, b), loss_and_grads(name, a, b)
    for label, x, y in zip(("loss", "grad[a]", "grad[b]"), first, second):
        assert torch.equal(x, y), label


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name", list(LOSSES))
def test_cuda_graph_replays_forward_and_backward(path, name):
    """The whole loss (forward, backward, the gradient accumulation into .grad) is captured in one
    CUDA graph; replays on new inputs give the eager results bit for bit."""
    a, b = leaves(256, 512, torch.bfloat16)
    static_a, static_b = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    with backends.tensor_cores(PATHS[path]):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up outside the capture (module loading, workspace sizes)
                LOSSES[name](static_a, static_b).backward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        static_a.grad = static_b.grad = None
        with torch.cuda.graph(graph):
            static_loss = LOSSES[name](static_a, static_b)
            static_loss.backward()
        for seed in (1, 2):
            new_a, new_b = leaves(256, 512, torch.bfloat16, seed)
            with torch.no_grad():
                static_a.copy_(new_a)
                static_b.copy_(new_b)
            graph.replay()
            eager = loss_and_grads(name, new_a, new_b)
            for label, x, y in zip(("loss", "grad[a]", "grad[b]"), (static_loss, static_a.grad, static_b.grad), eager):
                assert torch.equal(x, y), f"{label} after replay with seed {seed}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("shape", [(256, 512), (4096, 128)], ids=str)
def test_large_shapes_against_float64(dtype, name, shape):
    """CoUn's shape (split sweep, streamed backward) and a large one (resident backward), both paths,
    against the float64 reference: the loss within 1e-2 and every gradient within 2% of its largest
    entry (bf16 operands round at 2^-9; the random-shape property tests apply the stricter 2x rule)."""
    a, b = leaves(*shape, dtype)
    reference = loss_and_grads(name, a.double().detach().requires_grad_(), b.double().detach().requires_grad_(),
                               "reference")
    for path, enabled in PATHS.items():
        with backends.tensor_cores(enabled):
            result = loss_and_grads(name, a, b)
        for label, x, y in zip(("loss", "grad[a]", "grad[b]"), result, reference):
            tolerance = 1e-2 if label == "loss" else 2e-2 * float(y.abs().max())
            error = float((x.double() - y).abs().max())
            assert error <= tolerance, f"{path} {label}: error {error:.3e} > {tolerance:.3e}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("shape", [(256, 512), (1000, 96), (4096, 128), (3000, 200), (257, 31), (2048, 300)], ids=str)
def test_occupancy_variant_is_bit_identical(dtype, name, shape):
    """The opt-in occupancy variant computes the default tensor-core kernels' results bit for bit
    (split and unsplit sweeps; resident G for D <= 128 and <= 256, streamed above)."""
    a, b = leaves(*shape, dtype)
    with backends.tensor_cores(True):
        default = loss_and_grads(name, a, b)
    with backends.tensor_cores("occupancy"):
        variant = loss_and_grads(name, a, b)
    for label, x, y in zip(("loss", "grad[a]", "grad[b]"), default, variant):
        assert torch.equal(x, y), label


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", list(LOSSES))
def test_tensor_core_loss_is_float32_exact(dtype, name):
    """bf16 and fp16 inputs are multiplied as they are (scaled by powers of two) and normalized by
    float32 factors: the loss equals the float64 loss of the same inputs to float32 rounding, here at
    a size with plain tiles (no per-pair tests) beside the diagonal ones."""
    a, b = leaves(1000, 96, dtype)
    reference = loss_and_grads(name, a.double().detach().requires_grad_(), b.double().detach().requires_grad_(),
                               "reference")[0]
    with backends.tensor_cores(True):
        loss = loss_and_grads(name, a, b)[0]
    assert abs(float(loss) - float(reference)) <= 2e-5 * max(1.0, abs(float(reference)))


@pytest.mark.slow
def test_large_batch_extra_memory():
    """2N = 131072 rows of D = 128 in bf16: forward + backward in well under 300 MiB of extra memory."""
    a, b = leaves(65536, 128, torch.bfloat16)
    with backends.tensor_cores(True):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        F.nt_xent(a, b, 0.1, backend="fused").backward()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
    assert extra < 300 * 2**20, f"{extra / 2**20:.1f} MiB"
