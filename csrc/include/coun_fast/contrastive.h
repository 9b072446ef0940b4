// The kernel API of coun_fast._C: contrastive losses over raw pointers, no torch, no Python.
//
// One family covers InfoNCE, NT-Xent, SupCon and CoUn's cross-view loss (see math.h for the
// shared element math and docs/kernels in the kernel files for the algorithms):
//
//   a_i = x_i / max(||x_i||, eps)   anchors A, M x D        s_ij = a_i . b_j / tau
//   b_j = y_j / max(||y_j||, eps)   candidates B, N x D
//   l_i = log sum_{j compared} exp(s_ij) - mean_{p in Pos(i)} s_ip
//
// contrastive_forward writes per-anchor loss, log-sum-exp and positive count (O(M) memory; the
// M x N matrix is never stored). contrastive_backward recomputes similarity tiles and writes the
// gradient of one input ("owner") with respect to its raw rows, for up to two directions at once:
// the owner's rows acting as anchors (as_anchor) and as candidates of the other matrix
// (as_candidate). Each owner row is computed by one worker from start to end in a fixed order:
// no atomics, bit-deterministic results.
#pragma once

#include <cstdint>

#include "coun_fast/math.h"

namespace coun_fast {

// Largest feature dimension the kernels accept (both backends).
constexpr int64_t kMaxDim = 2048;

// ---- CPU (csrc/cpu) ----

// anchors: M x D; candidates: N x D (the same view as anchors when exclude_self).
// Outputs (float32, length M): loss, lse, count.
void contrastive_forward_cpu(const MatrixView& anchors, const MatrixView& candidates,
                             float temperature, const Positives& positives, bool exclude_self,
                             float* loss, float* lse, float* count, int num_threads);

// owner: R x D; other: C x D. as_anchor: the direction whose anchors are the owner's rows (its
// stats have length R); as_candidate: the direction whose anchors are the other's rows (stats of
// length C). Either may be null, not both. grad_owner: R x D contiguous, in owner.dtype.
void contrastive_backward_cpu(const MatrixView& owner, const MatrixView& other, float temperature,
                              bool exclude_self, const Direction* as_anchor,
                              const Direction* as_candidate, void* grad_owner, int num_threads);

// out (M x N, float32, row-major) = a_hat . b_hat^T / tau.
void similarity_cpu(const MatrixView& a, const MatrixView& b, float temperature, float* out,
                    int num_threads);

// ---- CUDA (csrc/cuda), compiled when nvcc is found ----

// Where a CUDA call runs. The extension links its own (static) CUDA runtime, so the caller's
// current device is not visible to it: every call names its device. `stream` is a cudaStream_t
// (the caller's current stream); `workspace` is device memory of cuda_workspace_floats(...) floats.
struct CudaLaunch {
  int device;
  void* stream;
  float* workspace;
};

// Floats of workspace for a problem of `rows` x `cols` at feature dimension `dim`: the inverse
// norms of both inputs, and the backward's float32 gradient rows (rows x dim).
int64_t cuda_workspace_floats(int64_t rows, int64_t cols, int64_t dim);

// Same contracts as the CPU functions; every pointer is device memory. Each returns 0 on success,
// else a cudaError_t value (cuda_error_string() names it).
int contrastive_forward_cuda(const MatrixView& anchors, const MatrixView& candidates,
                             float temperature, const Positives& positives, bool exclude_self,
                             float* loss, float* lse, float* count, const CudaLaunch& launch);

int contrastive_backward_cuda(const MatrixView& owner, const MatrixView& other, float temperature,
                              bool exclude_self, const Direction* as_anchor,
                              const Direction* as_candidate, void* grad_owner,
                              const CudaLaunch& launch);

int similarity_cuda(const MatrixView& a, const MatrixView& b, float temperature, float* out,
                    const CudaLaunch& launch);

const char* cuda_error_string(int error);

// Information about the CUDA build: the architectures compiled for (e.g. "80;86;89;90"), the
// number of visible devices (0 without a driver or GPU; never fails).
const char* cuda_architectures();
int cuda_device_count();

}  // namespace coun_fast
