// The reduction of per-anchor losses to the op's output, shared by the exact and the tensor-core
// CUDA paths: one block, a fixed summation order, so the result is bit-identical run to run.
#pragma once

#include "cuda_api.h"

#include <cstdint>

#include "coun_fast/math.h"

namespace coun_fast {

// Rows [0, split) belong to direction 0 and [split, total) to direction 1. Writes the anchors with
// a positive of each direction to valid_out[0..1] and, for kSum / kMean, the reduced loss to
// out[0] (kMean: each direction's mean over its anchors with a positive, summed). Called by all
// kThreads threads of one block.
template <int kThreads>
__device__ void reduce_losses(const float* loss, const float* count, int64_t split, int64_t total,
                              Reduction reduction, float* valid_out, float* out) {
  __shared__ double partial[4][kThreads];  // sum d0, sum d1, valid d0, valid d1
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  for (int64_t r = threadIdx.x; r < total; r += kThreads) {
    const double loss_r = __ldcg(loss + r), valid_r = __ldcg(count + r) > 0.f ? 1.0 : 0.0;
    const bool first = r < split;  // selects instead of acc[d]: the array stays in registers
    acc[0] += first ? loss_r : 0.0;
    acc[1] += first ? 0.0 : loss_r;
    acc[2] += first ? valid_r : 0.0;
    acc[3] += first ? 0.0 : valid_r;
  }
  for (int k = 0; k < 4; ++k) partial[k][threadIdx.x] = acc[k];
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    __syncthreads();
    if (threadIdx.x < stride)
      for (int k = 0; k < 4; ++k) partial[k][threadIdx.x] += partial[k][threadIdx.x + stride];
  }
  if (threadIdx.x != 0) return;
  valid_out[0] = static_cast<float>(partial[2][0]);
  valid_out[1] = static_cast<float>(partial[3][0]);
  if (reduction == Reduction::kSum) {
    out[0] = static_cast<float>(partial[0][0] + partial[1][0]);
  } else if (reduction == Reduction::kMean) {
    out[0] = static_cast<float>(partial[0][0] / fmax(partial[2][0], 1.0) +
                                partial[1][0] / fmax(partial[3][0], 1.0));
  }
}

}  // namespace coun_fast
