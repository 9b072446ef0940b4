// The CUDA API the tensor-core kernels are written against: the real runtime, or (compiled with
// COUN_FAST_EMULATE by a host C++ compiler) the CPU emulation in csrc/emulation, which runs the
// same kernel source on threads so that tests can check it without a GPU.
#pragma once

#ifdef COUN_FAST_EMULATE
#include "../emulation/cuda_emulation.h"
#else
#include <cuda_runtime.h>
// The kernel's dynamic shared memory, as a byte array named `name`.
#define COUN_FAST_DYNAMIC_SHARED(name) extern __shared__ __align__(128) unsigned char name[]
#endif
