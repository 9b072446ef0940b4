// Portable SIMD building blocks of the CPU kernels: a float vector type (GCC/Clang vector
// extensions: 16 lanes with AVX-512, 8 with AVX, else 4), a vectorized exp, and the register-blocked
// micro-GEMM that both the similarity tiles and the gradient accumulation run on.
//
// Included only by contrastive_cpu.cpp, which is compiled once per instruction-set variant; the
// variant's namespace (COUN_FAST_CPU_VARIANT) keeps each compilation's inline functions apart.
#pragma once

#include <cstdint>
#include <cstring>

namespace coun_fast::cpu::COUN_FAST_CPU_VARIANT {

#if defined(__AVX512F__)
constexpr int kLanes = 16;
constexpr int kMicroRows = 8;  // 8 rows x 2 vectors = 16 accumulators of 32 zmm registers
#elif defined(__AVX__)
constexpr int kLanes = 8;
constexpr int kMicroRows = 6;  // 6 rows x 2 vectors = 12 accumulators of 16 ymm registers
#else
constexpr int kLanes = 4;
constexpr int kMicroRows = 6;  // 6 rows x 2 vectors = 12 accumulators of 16 xmm registers
#endif
constexpr int kMicroCols = 2 * kLanes;  // columns of one micro-tile (two vectors)

typedef float Vec __attribute__((vector_size(kLanes * 4)));
typedef int32_t IVec __attribute__((vector_size(kLanes * 4)));
// Same vector, but only 4-byte aligned: for loads and stores at any float address.
typedef float UVec __attribute__((vector_size(kLanes * 4), aligned(4)));

inline Vec load(const float* p) { return *reinterpret_cast<const UVec*>(p); }
inline void store(float* p, Vec v) { *reinterpret_cast<UVec*>(p) = v; }
inline Vec splat(float x) { return Vec{} + x; }

inline Vec vmax(Vec a, Vec b) { return a > b ? a : b; }

inline float reduce_max(Vec v) {
  float m = v[0];
  for (int i = 1; i < kLanes; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

inline float reduce_sum(Vec v) {
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

// exp(x) for every lane, relative error ~2 ulp; exactly 0 below -87.3 (so exp(-inf) = 0).
// exp(x) = 2^n * exp(r) with n = round(x / ln 2) and |r| <= ln(2)/2; exp(r) by its degree-7
// Taylor polynomial (truncation error r^8/8! < 6e-9).
inline Vec vexp(Vec x) {
  const IVec underflow = x < -87.3f;
  x = x > 88.7f ? splat(88.7f) : x;
  x = x < -87.3f ? splat(-87.3f) : x;
  const float kRound = 12582912.f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const Vec n = (x * 1.44269504088896341f + kRound) - kRound;
  const Vec r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;  // ln 2 = hi + lo
  Vec p = splat(1.f / 5040.f);
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const IVec exponent = (__builtin_convertvector(n, IVec) + 127) << 23;
  Vec scale;
  std::memcpy(&scale, &exponent, sizeof(scale));
  const Vec result = p * scale;
  IVec bits;
  std::memcpy(&bits, &result, sizeof(bits));
  bits &= ~underflow;
  Vec out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// C[kMicroRows x kMicroCols] (+)= A[kMicroRows x K] . B[K x kMicroCols].
// A is row-major with leading dimension lda; B row-major with ldb (a packed panel has ldb =
// kMicroCols); C row-major with ldc. The accumulators stay in registers for the whole K loop.
template <bool kAccumulate>
inline void micro_gemm(const float* __restrict a, int64_t lda, const float* __restrict b,
                       int64_t ldb, int64_t k_size, float* __restrict c, int64_t ldc) {
  Vec lo[kMicroRows];
  Vec hi[kMicroRows];
#pragma GCC unroll 8
  for (int r = 0; r < kMicroRows; ++r) {
    lo[r] = kAccumulate ? load(c + r * ldc) : Vec{};
    hi[r] = kAccumulate ? load(c + r * ldc + kLanes) : Vec{};
  }
  for (int64_t k = 0; k < k_size; ++k) {
    const Vec b_lo = load(b + k * ldb);
    const Vec b_hi = load(b + k * ldb + kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < kMicroRows; ++r) {
      const float a_rk = a[r * lda + k];
      lo[r] += a_rk * b_lo;
      hi[r] += a_rk * b_hi;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kMicroRows; ++r) {
    store(c + r * ldc, lo[r]);
    store(c + r * ldc + kLanes, hi[r]);
  }
}

}  // namespace coun_fast::cpu::COUN_FAST_CPU_VARIANT
