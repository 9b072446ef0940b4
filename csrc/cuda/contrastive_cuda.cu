// CUDA kernels of the contrastive-loss family: forward, backward and the similarity matrix.
//
// Math (see contrastive.h and the CPU kernels): a_i = x_i / max(||x_i||, eps), b_j likewise,
// s_ij = a_i . b_j / tau, l_i = lse_i - mean_{p in Pos(i)} s_ip over the compared candidates j.
//   dL/ds_ij = w_i exp(s_ij - lse_i) - [j in Pos(i)] w_i / |Pos(i)|            (logit_gradient)
//   dL/dx_i  = (g_i - (g_i . a_i) a_i) / max(||x_i||, eps),  g_i = (1/tau) sum_j dL/ds_ij b_j
//
// Algorithm (the same tiling as the CPU kernels, all scalar math shared through math.h):
// - inverse_norms_kernel: one warp per row writes 1 / max(||x||, eps) into the workspace.
// - One thread block of 16 x 16 threads owns kTile = 64 rows and sweeps the other matrix in
//   tiles of 64 columns. A tile of S is accumulated in registers (4 x 4 per thread) from operand
//   slices of kSlice features staged in shared memory, normalized (and scaled by 1/tau) as they
//   are loaded, so inputs of any stride and of float32 / float16 / bfloat16 are read directly.
//   Accumulation is float32 throughout (SIMT FMA; no tensor cores in this version).
// - Forward: online log-sum-exp per row (running max, rescaled sum; each row's 64 columns are
//   spread over the 16 threads of a half-warp and reduced by shuffles), so any temperature is
//   safe; positives are summed as they are met. Writes loss, lse and count per row: O(M) memory.
// - Backward (row owner): the block recomputes each S tile, turns it into the dL/dS tile for up
//   to two directions (the owner's rows as anchors and as candidates), stages it in shared memory
//   and adds dS . B_tile into the float32 gradient rows it owns in the workspace. No other block
//   touches those rows and tiles are added in a fixed order: no atomics, bit-deterministic. The
//   block then projects its rows through the normalization and writes them in the input dtype.
// - The M x N matrix is never stored, except by similarity_kernel, whose job that is.
#include <cmath>
#include <cstdint>

#include <algorithm>

#include "coun_fast/contrastive.h"
#include "cuda_api.h"
#include "reduce.cuh"
#include "tc.h"

namespace coun_fast {
namespace {

constexpr int kThreads = 16;                    // threads per block side (16 x 16)
constexpr int kPerThread = 4;                   // rows (and columns) of S per thread
constexpr int kTile = kThreads * kPerThread;    // 64 rows x 64 columns per tile
constexpr int kSlice = 16;                      // features per shared-memory slice
constexpr int kReduceThreads = 256;             // threads of the reduction block
constexpr float kInf = INFINITY;

// ---- kernels ----

__global__ void inverse_norms_kernel(MatrixView x, float* inv_norm) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= x.rows) return;
  float sum = 0.f;
  for (int64_t k = lane; k < x.dim; k += 32) {
    const float v = x.at(row, k);
    sum += v * v;
  }
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (lane == 0) inv_norm[row] = 1.f / fmaxf(sqrtf(sum), kNormEps);
}

// The operands of one S tile: normalized row slices staged in shared memory.
struct TileOperands {
  float rows[kSlice][kTile + 1];  // [feature][row], +1 against bank conflicts on the store
  float cols[kSlice][kTile + 1];  // [feature][column]
};

// Loads features [k0, k0 + kSlice) of rows [first, first + kTile) of x, times inv_norm * scale,
// into dst[feature][row]; rows or features out of range read as 0.
__device__ void load_slice(const MatrixView& x, const float* inv_norm, float scale, int64_t first,
                           int64_t k0, float (*dst)[kTile + 1]) {
  const int tid = threadIdx.y * kThreads + threadIdx.x;
  for (int idx = tid; idx < kTile * kSlice; idx += kThreads * kThreads) {
    const int r = idx / kSlice, k = idx % kSlice;
    const int64_t row = first + r, feature = k0 + k;
    float v = 0.f;
    if (row < x.rows && feature < x.dim) v = x.at(row, feature) * inv_norm[row] * scale;
    dst[k][r] = v;
  }
}

// acc[i][j] = s(row r0 + ty + 16 i, column c0 + tx + 16 j): logits, already divided by tau.
__device__ void similarity_tile(const MatrixView& a, const float* inv_a, const MatrixView& b,
                                const float* inv_b, float inv_temperature, int64_t r0, int64_t c0,
                                TileOperands& smem, float (&acc)[kPerThread][kPerThread]) {
#pragma unroll
  for (int i = 0; i < kPerThread; ++i)
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) acc[i][j] = 0.f;
  for (int64_t k0 = 0; k0 < a.dim; k0 += kSlice) {
    __syncthreads();  // the previous slice (or the caller's use of shared memory) is done
    load_slice(a, inv_a, inv_temperature, r0, k0, smem.rows);
    load_slice(b, inv_b, 1.f, c0, k0, smem.cols);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kSlice; ++k) {
      float a_frag[kPerThread], b_frag[kPerThread];
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) a_frag[i] = smem.rows[k][threadIdx.y + kThreads * i];
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) b_frag[j] = smem.cols[k][threadIdx.x + kThreads * j];
#pragma unroll
      for (int i = 0; i < kPerThread; ++i)
#pragma unroll
        for (int j = 0; j < kPerThread; ++j) acc[i][j] = fmaf(a_frag[i], b_frag[j], acc[i][j]);
    }
  }
}

// Reductions over the 16 threads (threadIdx.x) that share a row: one half-warp.
__device__ float row_max(float v) {
  for (int offset = kThreads / 2; offset > 0; offset /= 2)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

__device__ float row_sum(float v) {
  for (int offset = kThreads / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__global__ void __launch_bounds__(kThreads* kThreads)
    forward_kernel(MatrixView anchors, MatrixView candidates, const float* inv_a,
                   const float* inv_b, float inv_temperature, Positives positives,
                   Comparison compare, float* loss, float* lse, float* count) {
  __shared__ TileOperands smem;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTile;
  float running_max[kPerThread], running_sum[kPerThread], positive_sum[kPerThread],
      positive_count[kPerThread];
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    running_max[i] = -kInf;
    running_sum[i] = positive_sum[i] = positive_count[i] = 0.f;
  }

  for (int64_t c0 = 0; c0 < candidates.rows; c0 += kTile) {
    float s[kPerThread][kPerThread];
    similarity_tile(anchors, inv_a, candidates, inv_b, inv_temperature, r0, c0, smem, s);
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int64_t r = r0 + threadIdx.y + kThreads * i;
      float tile_max = -kInf;
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const int64_t c = c0 + threadIdx.x + kThreads * j;
        const bool compared = r < anchors.rows && c < candidates.rows && is_compared(r, c, compare);
        if (compared && positives.is_positive(r, c)) {
          positive_sum[i] += s[i][j];
          positive_count[i] += 1.f;
        }
        s[i][j] = compared ? s[i][j] : -kInf;
        tile_max = fmaxf(tile_max, s[i][j]);
      }
      tile_max = row_max(tile_max);  // the same value in all 16 threads of the row
      if (tile_max == -kInf) continue;
      if (tile_max > running_max[i]) {
        running_sum[i] *= __expf(running_max[i] - tile_max);
        running_max[i] = tile_max;
      }
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) running_sum[i] += __expf(s[i][j] - running_max[i]);
    }
  }

#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const float total = row_sum(running_sum[i]);
    const float pos_sum = row_sum(positive_sum[i]);
    const float pos_count = row_sum(positive_count[i]);
    const int64_t r = r0 + threadIdx.y + kThreads * i;
    if (threadIdx.x == 0 && r < anchors.rows) {
      const float row_lse = running_max[i] + logf(total);
      lse[r] = row_lse;
      count[r] = pos_count;
      loss[r] = anchor_loss(row_lse, pos_sum, pos_count);
    }
  }
}

struct BackwardDirections {
  bool has_anchor, has_candidate;
  Direction as_anchor, as_candidate;
};

// The directions' gradient scales (1 / anchors with a positive for a mean), read once per thread.
struct DirectionScales {
  float as_anchor, as_candidate;
};

__device__ DirectionScales direction_scales(const BackwardDirections& d) {
  return {d.has_anchor ? gradient_scale(d.as_anchor.stats) : 0.f,
          d.has_candidate ? gradient_scale(d.as_candidate.stats) : 0.f};
}

// dL/ds for owner row r and other row c (0 when the pair is not compared or out of range).
__device__ float pair_gradient(float s, int64_t r, int64_t c, int64_t rows, int64_t cols,
                               const Comparison& compare, const BackwardDirections& d,
                               const DirectionScales& scales) {
  if (r >= rows || c >= cols) return 0.f;
  float g = 0.f;
  if (d.has_anchor && is_compared(r, c, compare)) {  // the owner's row r is the anchor
    const float w = anchor_weight(d.as_anchor.stats, r, scales.as_anchor);
    if (w != 0.f)
      g += logit_gradient(__expf(s - d.as_anchor.stats.lse[r]), d.as_anchor.positives.is_positive(r, c),
                          w, d.as_anchor.stats.count[r]);
  }
  if (d.has_candidate && is_compared(c, r, compare)) {  // the other's row c is the anchor
    const float w = anchor_weight(d.as_candidate.stats, c, scales.as_candidate);
    if (w != 0.f)
      g += logit_gradient(__expf(s - d.as_candidate.stats.lse[c]),
                          d.as_candidate.positives.is_positive(c, r), w,
                          d.as_candidate.stats.count[c]);
  }
  return g;
}

struct BackwardShared {
  TileOperands operands;
  float grad_logits[kTile][kTile + 1];  // dL/dS tile [owner row][other row]
  float other_rows[kTile][kTile + 1];   // normalized other rows [other row][feature]
};

__global__ void __launch_bounds__(kThreads* kThreads)
    backward_kernel(MatrixView owner, MatrixView other, const float* inv_owner,
                    const float* inv_other, float temperature, Comparison compare,
                    BackwardDirections directions, float* grad_accum, void* grad_owner) {
  __shared__ BackwardShared smem;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t dim = owner.dim;
  const int tid = threadIdx.y * kThreads + threadIdx.x;
  const DirectionScales scales = direction_scales(directions);

  for (int64_t c0 = 0; c0 < other.rows; c0 += kTile) {
    float s[kPerThread][kPerThread];
    similarity_tile(owner, inv_owner, other, inv_other, 1.f / temperature, r0, c0, smem.operands, s);
#pragma unroll
    for (int i = 0; i < kPerThread; ++i)
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const int ri = threadIdx.y + kThreads * i, cj = threadIdx.x + kThreads * j;
        smem.grad_logits[ri][cj] =
            pair_gradient(s[i][j], r0 + ri, c0 + cj, owner.rows, other.rows, compare, directions,
                          scales);
      }

    // grad rows [r0, r0 + 64) += dS_tile . B_tile, 64 features at a time.
    for (int64_t d0 = 0; d0 < dim; d0 += kTile) {
      __syncthreads();  // grad_logits written / previous other_rows slice consumed
      for (int idx = tid; idx < kTile * kTile; idx += kThreads * kThreads) {
        const int c = idx / kTile, k = idx % kTile;
        const int64_t row = c0 + c, feature = d0 + k;
        smem.other_rows[c][k] =
            row < other.rows && feature < dim ? other.at(row, feature) * inv_other[row] : 0.f;
      }
      __syncthreads();
      float partial[kPerThread][kPerThread] = {};
      for (int c = 0; c < kTile; ++c) {
#pragma unroll
        for (int i = 0; i < kPerThread; ++i) {
          const float g = smem.grad_logits[threadIdx.y + kThreads * i][c];
#pragma unroll
          for (int j = 0; j < kPerThread; ++j)
            partial[i][j] = fmaf(g, smem.other_rows[c][threadIdx.x + kThreads * j], partial[i][j]);
        }
      }
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        const int64_t r = r0 + threadIdx.y + kThreads * i;
        if (r >= owner.rows) continue;
#pragma unroll
        for (int j = 0; j < kPerThread; ++j) {
          const int64_t k = d0 + threadIdx.x + kThreads * j;
          if (k >= dim) continue;
          float& slot = grad_accum[r * dim + k];
          slot = c0 == 0 ? partial[i][j] : slot + partial[i][j];
        }
      }
    }
  }
  __syncthreads();  // this block's gradient rows are complete (global writes visible in-block)

  // Epilogue: one warp per row, projected through the normalization.
  const int warp = tid / 32, lane = tid % 32, warps = kThreads * kThreads / 32;
  for (int i = warp; i < kTile; i += warps) {
    const int64_t r = r0 + i;
    if (r >= owner.rows) break;
    const float inv_norm = inv_owner[r];
    const float* g = grad_accum + r * dim;
    float dot = 0.f;
    for (int64_t k = lane; k < dim; k += 32) dot += g[k] * owner.at(r, k) * inv_norm;
    for (int offset = 16; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
    if (inv_norm >= 1.f / kNormEps) dot = 0.f;  // x / eps is linear: no projection
    const float scale = inv_norm / temperature;
    for (int64_t k = lane; k < dim; k += 32)
      store_element(grad_owner, r * dim + k, owner.dtype, (g[k] - dot * owner.at(r, k) * inv_norm) * scale);
  }
}

__global__ void __launch_bounds__(kThreads* kThreads)
    similarity_kernel(MatrixView a, MatrixView b, const float* inv_a, const float* inv_b,
                      float inv_temperature, float* out) {
  __shared__ TileOperands smem;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * kTile;
  float s[kPerThread][kPerThread];
  similarity_tile(a, inv_a, b, inv_b, inv_temperature, r0, c0, smem, s);
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int64_t r = r0 + threadIdx.y + kThreads * i;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int64_t c = c0 + threadIdx.x + kThreads * j;
      if (r < a.rows && c < b.rows) out[r * b.rows + c] = s[i][j];
    }
  }
}

// The op's output and the valid-anchor counts from the per-anchor losses (reduce.cuh).
__global__ void __launch_bounds__(kReduceThreads)
    reduce_kernel(const float* loss, const float* count, int64_t split, int64_t total,
                  Reduction reduction, float* valid_out, float* out) {
  reduce_losses<kReduceThreads>(loss, count, split, total, reduction, valid_out, out);
}

// ---- launchers ----

unsigned blocks_for(int64_t rows) { return static_cast<unsigned>((rows + kTile - 1) / kTile); }

void launch_inverse_norms(const MatrixView& x, float* out, cudaStream_t stream) {
  constexpr int kNormThreads = 256;  // 8 rows per block, one warp each
  const auto blocks = static_cast<unsigned>((x.rows * 32 + kNormThreads - 1) / kNormThreads);
  COUN_FAST_LAUNCH(inverse_norms_kernel, blocks, kNormThreads, 0, stream, x, out);
}

// Sets the device and computes both inputs' inverse norms into `inv` (a.rows + b.rows floats).
int prepare(const MatrixView& a, const MatrixView& b, const CudaLaunch& launch, float* inv) {
  const cudaError_t status = cudaSetDevice(launch.device);
  if (status != cudaSuccess) return status;
  auto stream = static_cast<cudaStream_t>(launch.stream);
  launch_inverse_norms(a, inv, stream);
  launch_inverse_norms(b, inv + a.rows, stream);
  return cudaSuccess;
}

// Scratch of the exact path, in floats: inverse norms of both inputs, then either the per-anchor
// losses of a reduced forward (T) or the backward's float32 gradient rows (rows x dim).
int64_t exact_scratch_floats(const Problem& problem, bool backward) {
  const int64_t norms = problem.a.rows + problem.b.rows;
  if (!backward) return norms + problem.total_rows();
  return norms + std::max(problem.a.rows, problem.b.rows) * problem.a.dim;
}

int exact_forward(const Problem& problem, float* out, float* stats, const CudaLaunch& launch) {
  auto* scratch = static_cast<float*>(launch.scratch);
  const int64_t m = problem.a.rows, total = problem.total_rows();
  if (int status = prepare(problem.a, problem.b, launch, scratch)) return status;
  const float* inv_a = scratch;
  const float* inv_b = scratch + m;
  float* loss = problem.reduction == Reduction::kNone ? out : scratch + m + problem.b.rows;
  auto stream = static_cast<cudaStream_t>(launch.stream);
  const float inv_temperature = 1.f / problem.temperature;
  const dim3 block(kThreads, kThreads);
  COUN_FAST_LAUNCH(forward_kernel, blocks_for(m), block, 0, stream, problem.a, problem.b, inv_a, inv_b,
                   inv_temperature, problem.positives, problem.compare, loss, stats, stats + total);
  if (problem.symmetric)
    COUN_FAST_LAUNCH(forward_kernel, blocks_for(problem.b.rows), block, 0, stream, problem.b, problem.a,
                     inv_b, inv_a, inv_temperature, problem.positives.reversed(), problem.compare,
                     loss + m, stats + m, stats + total + m);
  COUN_FAST_LAUNCH(reduce_kernel, 1, kReduceThreads, 0, stream, loss, stats + total, m, total,
                   problem.reduction, stats + 2 * total, out);
  return cudaGetLastError();
}

int exact_backward_owner(const MatrixView& owner, const MatrixView& other, float temperature,
                         const Comparison& compare, const Direction* as_anchor,
                         const Direction* as_candidate, void* grad_owner,
                         const CudaLaunch& launch) {
  auto* scratch = static_cast<float*>(launch.scratch);
  if (int status = prepare(owner, other, launch, scratch)) return status;
  BackwardDirections directions{as_anchor != nullptr, as_candidate != nullptr, {}, {}};
  if (as_anchor) directions.as_anchor = *as_anchor;
  if (as_candidate) directions.as_candidate = *as_candidate;
  float* grad_accum = scratch + owner.rows + other.rows;
  COUN_FAST_LAUNCH(backward_kernel, blocks_for(owner.rows), dim3(kThreads, kThreads), 0,
                   static_cast<cudaStream_t>(launch.stream), owner, other, scratch, scratch + owner.rows,
                   temperature, compare, directions, grad_accum, grad_owner);
  return cudaGetLastError();
}

int exact_backward(const Problem& problem, const float* grad_out, const float* stats, void* grad_a,
                   void* grad_b, const CudaLaunch& launch) {
  const Direction forward{problem.positives, direction_stats(problem, stats, grad_out, 0)};
  const Direction reverse{problem.positives.reversed(), direction_stats(problem, stats, grad_out, 1)};
  const Direction* reverse_ptr = problem.symmetric ? &reverse : nullptr;
  const float tau = problem.temperature;
  if (problem.self)
    return exact_backward_owner(problem.a, problem.a, tau, problem.compare, &forward,
                                &forward, grad_a, launch);
  if (int status = exact_backward_owner(problem.a, problem.b, tau, problem.compare, &forward,
                                        reverse_ptr, grad_a, launch))
    return status;
  return exact_backward_owner(problem.b, problem.a, tau, problem.compare, reverse_ptr,
                              &forward, grad_b, launch);
}

}  // namespace

CudaWorkspace cuda_workspace(const Problem& problem, CudaPath path, int device) {
  if (path != CudaPath::kExact) return tc::workspace(problem, device);
  return CudaWorkspace{0, 4 * exact_scratch_floats(problem, false),
                       4 * exact_scratch_floats(problem, true)};
}

int contrastive_forward_cuda(const Problem& problem, float* out, float* stats,
                             const CudaLaunch& launch) {
  if (launch.path != CudaPath::kExact) return tc::forward(problem, out, stats, launch);
  return exact_forward(problem, out, stats, launch);
}

int contrastive_backward_cuda(const Problem& problem, const float* grad_out, const float* stats,
                              void* grad_a, void* grad_b, const CudaLaunch& launch) {
  if (launch.path != CudaPath::kExact)
    return tc::backward(problem, grad_out, stats, grad_a, grad_b, launch);
  return exact_backward(problem, grad_out, stats, grad_a, grad_b, launch);
}

int similarity_cuda(const MatrixView& a, const MatrixView& b, float temperature, float* out,
                    const CudaLaunch& launch) {
  auto* inv = static_cast<float*>(launch.scratch);
  if (int status = prepare(a, b, launch, inv)) return status;
  COUN_FAST_LAUNCH(similarity_kernel, dim3(blocks_for(a.rows), blocks_for(b.rows)),
                   dim3(kThreads, kThreads), 0, static_cast<cudaStream_t>(launch.stream), a, b, inv,
                   inv + a.rows, 1.f / temperature, out);
  return cudaGetLastError();
}

const char* cuda_error_string(int error) {
  return cudaGetErrorString(static_cast<cudaError_t>(error));
}

const char* cuda_architectures() { return COUN_FAST_CUDA_ARCHS_STRING; }

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

}  // namespace coun_fast
