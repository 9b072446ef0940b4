// The kernel API of coun_fast._C: contrastive losses over raw pointers, no torch, no Python.
//
// One family covers InfoNCE, NT-Xent, SupCon and CoUn's cross-view loss (math.h holds the shared
// element math):
//
//   a_i = x_i / max(||x_i||, eps)   anchors A, M x D        s_ij = a_i . b_j / tau
//   b_j = y_j / max(||y_j||, eps)   candidates B, N x D
//   l_i = log sum_{j compared} exp(s_ij) - mean_{p in Pos(i)} s_ip
//
// A Problem is one loss call: the forward direction A -> B and, when symmetric, the transposed
// direction B -> A (its per-anchor rows follow A's: T = M + N rows in all, else T = M). The forward
// writes the reduced loss (or T per-anchor losses) and the statistics the backward needs; the M x N
// matrix is never stored. The backward writes the gradients of both inputs' raw rows. Every output
// row is computed by one worker from start to end in a fixed order: no atomics on values, and
// results are bit-identical run to run.
//
// Statistics (float32): stats[0:T] = lse, stats[T:2T] = count (positives per anchor),
// stats[2T + d] = anchors with a positive in direction d (d = 0, 1; the second is 0 when not
// symmetric).
#pragma once

#include <cstdint>

#include "coun_fast/math.h"

namespace coun_fast {

// Largest feature dimension the kernels accept (every backend).
constexpr int64_t kMaxDim = 2048;

struct Problem {
  MatrixView a;          // anchors of the forward direction, M x D
  MatrixView b;          // candidates, N x D; the same view as `a` when self
  bool self;             // the anchors are their own candidates (one input)
  Comparison compare;    // which candidates each anchor is compared with (math.h)
  bool symmetric;        // add the transposed direction, B's rows as anchors against A (only with
                         // a comparison that is the same both ways: kAll or kExcludeSelf)
  float temperature;     // tau > 0
  Positives positives;   // of the forward direction
  Reduction reduction;

  COUN_FAST_HD int64_t total_rows() const { return a.rows + (symmetric ? b.rows : 0); }
  COUN_FAST_HD int64_t stats_floats() const { return 2 * total_rows() + 2; }
  COUN_FAST_HD int64_t output_floats() const { return reduction == Reduction::kNone ? total_rows() : 1; }
};

// The statistics of direction d (0: A -> B, 1: B -> A) inside a stats buffer of `problem`, with
// the upstream gradient `grad` of the op's output (T values for kNone, else one).
COUN_FAST_HD RowStats direction_stats(const Problem& problem, const float* stats, const float* grad,
                                      int d) {
  const int64_t total = problem.total_rows(), offset = d == 0 ? 0 : problem.a.rows;
  const bool reduced = problem.reduction != Reduction::kNone;
  return RowStats{stats + offset, stats + total + offset,
                  grad == nullptr ? nullptr : (reduced ? grad : grad + offset), reduced ? 0 : 1,
                  problem.reduction == Reduction::kMean ? stats + 2 * total + d : nullptr};
}

// ---- CPU (csrc/cpu) ----

// out: problem.output_floats(); stats: problem.stats_floats(). num_threads: at most this many
// threads (the kernels run serially when the work is small).
void contrastive_forward_cpu(const Problem& problem, float* out, float* stats, int num_threads);

// grad_out: the upstream gradient of `out`; grad_a (M x D, a's dtype, contiguous); grad_b (N x D,
// b's dtype) or nullptr when self.
void contrastive_backward_cpu(const Problem& problem, const float* grad_out, const float* stats,
                              void* grad_a, void* grad_b, int num_threads);

// out (M x N, float32, row-major) = a_hat . b_hat^T / tau.
void similarity_cpu(const MatrixView& a, const MatrixView& b, float temperature, float* out,
                    int num_threads);

// The instruction-set variant of the CPU kernels this machine runs: "avx512", "avx2", "baseline"
// (picked at run time among those built) or "native" (a build for the building machine only).
const char* cpu_kernel_variant();

// ---- CUDA (csrc/cuda), compiled when nvcc is found ----

// Which CUDA kernels run a problem (the Python side chooses: coun_fast/ops/backend.py).
//   kExact        float32 SIMT arithmetic for every input dtype.
//   kTensorCores  bf16 / fp16 inputs on tensor cores (mma.sync, fp32 accumulation); fp32 inputs
//                 on TF32 tensor cores. Normalized rows are kept in a workspace saved for the
//                 backward; small problems split the candidate sweep across thread blocks.
//   kTensorCoresOccupancy  the same arithmetic, bit for bit, with kernels compiled for more blocks
//                 per multiprocessor (tc_params.h: kOccupancyBlocks); opt-in, not yet run on a GPU.
enum class CudaPath : int32_t { kExact = 0, kTensorCores = 1, kTensorCoresOccupancy = 2 };

// Where a CUDA call runs. The extension links its own (static) CUDA runtime, so the caller's
// current device is not visible to it: every call names its device. `stream` is a cudaStream_t
// (the caller's current stream). `saved` is device memory kept from the forward to the backward,
// `scratch` memory for the duration of one call; their sizes come from cuda_workspace().
struct CudaLaunch {
  int device;
  void* stream;
  CudaPath path;
  void* saved;
  void* scratch;
};

// Bytes of the saved workspace and of the forward's and the backward's scratch for `problem` on
// `device` (the split of small problems depends on the device's multiprocessor count).
struct CudaWorkspace {
  int64_t saved_bytes;
  int64_t forward_scratch_bytes;
  int64_t backward_scratch_bytes;
};
CudaWorkspace cuda_workspace(const Problem& problem, CudaPath path, int device);

// Same contracts as the CPU functions; every pointer is device memory. Each returns 0 on success,
// else a cudaError_t value (cuda_error_string() names it).
int contrastive_forward_cuda(const Problem& problem, float* out, float* stats,
                             const CudaLaunch& launch);
int contrastive_backward_cuda(const Problem& problem, const float* grad_out, const float* stats,
                              void* grad_a, void* grad_b, const CudaLaunch& launch);
int similarity_cuda(const MatrixView& a, const MatrixView& b, float temperature, float* out,
                    const CudaLaunch& launch);

const char* cuda_error_string(int error);

// Information about the CUDA build: the architectures compiled for (e.g. "80,86,89,90"), the
// number of visible devices (0 without a driver or GPU; never fails).
const char* cuda_architectures();
int cuda_device_count();

}  // namespace coun_fast
