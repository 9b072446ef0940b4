// The CUDA API the kernels are written against: the real runtime, or (compiled with
// COUN_FAST_EMULATE by a host C++ compiler) the CPU emulation in csrc/emulation, which runs the
// same CUDA source on threads so that tests can check it without a GPU.
#pragma once

#ifdef COUN_FAST_EMULATE
#include "../emulation/cuda_emulation.h"
#else
#include <cuda_runtime.h>
// The kernel's dynamic shared memory, as a byte array named `name`.
#define COUN_FAST_DYNAMIC_SHARED(name) extern __shared__ __align__(128) unsigned char name[]
// kernel<<<grid, block, shared_bytes, stream>>>(args...); `kernel` must be one token or variable.
#define COUN_FAST_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  kernel<<<(grid), (block), (shared_bytes), (stream)>>>(__VA_ARGS__)
#endif
