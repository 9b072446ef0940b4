// Device primitives of the tensor-core kernels: asynchronous copies, ldmatrix, mma.sync, and the
// operand types (see coun_fast/mma_layout.h for the fragment layouts they rely on).
//
// Everything here needs sm_80 or newer (cp.async, bf16 and tf32 mma); the default architectures
// are 80, 86, 89 and 90. On an older target the functions compile to a trap.
#pragma once

#include "cuda_api.h"

#include <cstdint>

#include "coun_fast/math.h"
#include "coun_fast/mma_layout.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define COUN_FAST_TC_UNSUPPORTED 1
#endif
// COUN_FAST_EMULATE: the CPU emulation (csrc/emulation) stands in for the PTX instructions.

namespace coun_fast::tc {

// ---- operand types ----
//
// A path type names how rows are stored in the saved workspace and multiplied:
//   Bf16Path  bfloat16 inputs: rows in bf16, both products in bf16 (m16n8k16).
//   F16Path   float16 inputs: rows in fp16 for the logits (m16n8k16 f16), and a second copy in
//             fp32 for the gradient product on tf32 (m16n8k8): its other operand, the logits'
//             gradient, needs a float32 exponent range (entries of order 1/N^2 underflow in fp16)
//             and fp16's 11-bit precision (bf16's 8 bits would lose to the fp16 reference).
//   Tf32Path  float32 inputs with TF32 allowed: rows in fp32 (rounded to tf32), both products in
//             tf32 (m16n8k8).
enum class Operand { kBf16, kF16, kTf32 };

struct Bf16Path {
  static constexpr Operand kLogits = Operand::kBf16;
  static constexpr Operand kGradient = Operand::kBf16;
  static constexpr int kElementBytes = 2;  // of the logits operand
  static constexpr bool kSeparateGradientRows = false;
};
struct F16Path {
  static constexpr Operand kLogits = Operand::kF16;
  static constexpr Operand kGradient = Operand::kTf32;
  static constexpr int kElementBytes = 2;
  static constexpr bool kSeparateGradientRows = true;
};
struct Tf32Path {
  static constexpr Operand kLogits = Operand::kTf32;
  static constexpr Operand kGradient = Operand::kTf32;
  static constexpr int kElementBytes = 4;
  static constexpr bool kSeparateGradientRows = false;
};

// ---- conversions ----

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  // The element of the lower index goes in the lower half of the register; round to nearest even.
#if defined(__CUDA_ARCH__) && !defined(COUN_FAST_EMULATE) && !defined(COUN_FAST_TC_UNSUPPORTED)
  uint32_t out;  // one instruction for both (cvt's first source goes to the upper half)
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(out) : "f"(hi), "f"(lo));
  return out;
#else
  return static_cast<uint32_t>(float_to_bf16(lo)) | (static_cast<uint32_t>(float_to_bf16(hi)) << 16);
#endif
}

// Rounds to tf32 (10 mantissa bits, ties away from zero), returned as float32 bits.
__device__ __forceinline__ uint32_t to_tf32(float x) {
#if defined(COUN_FAST_EMULATE)
  return coun_fast_emu::to_tf32(x);
#elif defined(__CUDA_ARCH__) && !defined(COUN_FAST_TC_UNSUPPORTED)
  uint32_t out;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(out) : "f"(x));
  return out;
#else
  return float_bits(x);
#endif
}

// Stores a normalized value as operand type `op` at element `index` of `row_data`.
template <Operand op>
__device__ __forceinline__ void store_operand(void* row_data, int64_t index, float value) {
  if constexpr (op == Operand::kBf16) {
    static_cast<uint16_t*>(row_data)[index] = float_to_bf16(value);
  } else if constexpr (op == Operand::kF16) {
    static_cast<uint16_t*>(row_data)[index] = float_to_fp16(value);
  } else {
    static_cast<uint32_t*>(row_data)[index] = to_tf32(value);
  }
}

// ---- shared memory and asynchronous copies ----

__device__ __forceinline__ uint32_t smem_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// 16 bytes global -> shared, bypassing L1 (the rows are shared through L2 by every block).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src) {
#if defined(COUN_FAST_EMULATE)
  std::memcpy(coun_fast_emu::dynamic_shared() + dst, src, 16);
#elif !defined(COUN_FAST_TC_UNSUPPORTED)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if !defined(COUN_FAST_EMULATE) && !defined(COUN_FAST_TC_UNSUPPORTED)
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Wait until at most `pending` committed groups of this thread are still in flight.
template <int pending>
__device__ __forceinline__ void cp_async_wait() {
#if !defined(COUN_FAST_EMULATE) && !defined(COUN_FAST_TC_UNSUPPORTED)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(pending));
#endif
}

// ---- ldmatrix ----

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
#if defined(COUN_FAST_EMULATE)
  coun_fast_emu::ldmatrix(r, address, false);
#elif !defined(COUN_FAST_TC_UNSUPPORTED)
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
#else
  r[0] = r[1] = r[2] = r[3] = 0;
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t address) {
#if defined(COUN_FAST_EMULATE)
  coun_fast_emu::ldmatrix(r, address, true);
#elif !defined(COUN_FAST_TC_UNSUPPORTED)
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
#else
  r[0] = r[1] = r[2] = r[3] = 0;
#endif
}

// ---- mma.sync: d += a * b over one k-step (32 bytes of k per row) ----

template <Operand op>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(COUN_FAST_EMULATE)
  constexpr auto type = op == Operand::kBf16  ? coun_fast_emu::MmaType::kBf16
                        : op == Operand::kF16 ? coun_fast_emu::MmaType::kF16
                                              : coun_fast_emu::MmaType::kTf32;
  coun_fast_emu::mma(d, a, b0, b1, type);
#elif defined(COUN_FAST_TC_UNSUPPORTED)
  __trap();
#else
  if constexpr (op == Operand::kBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else if constexpr (op == Operand::kF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
}

// ---- cross-block completion ----

// Called by every thread of a block after it wrote its part of a result: true in exactly one
// block, the last of `expected` blocks to arrive on `counter`, which then sees every other block's
// writes (read them with __ldcg). The last block resets the counter to 0, so a workspace (and a
// CUDA graph replaying it) can use it again.
__device__ __forceinline__ bool arrive_last(unsigned* counter, unsigned expected) {
  __shared__ bool last;
  __threadfence();  // this thread's writes are visible device-wide before the arrival
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned previous = atomicAdd(counter, 1u);
    last = previous == expected - 1;
    if (last) *counter = 0u;
  }
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// Sums over the 4 lanes of a quad (the lanes that share an accumulator row).
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  return v;
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
  return v;
}

}  // namespace coun_fast::tc
