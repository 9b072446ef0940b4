// The tensor-core path of the CUDA kernels (see tc_kernels.cuh for the algorithm), as the rest of
// the CUDA code calls it. Same contracts as contrastive_forward_cuda / contrastive_backward_cuda.
#pragma once

#include <cstdint>

#include "coun_fast/contrastive.h"

namespace coun_fast::tc {

CudaWorkspace workspace(const Problem& problem, int device);
int forward(const Problem& problem, float* out, float* stats, const CudaLaunch& launch);
int backward(const Problem& problem, const float* grad_out, const float* stats, void* grad_a,
             void* grad_b, const CudaLaunch& launch);

}  // namespace coun_fast::tc
