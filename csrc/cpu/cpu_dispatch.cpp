// The CPU entry points of contrastive.h: each call goes to one instruction-set variant of the
// kernels in contrastive_cpu.cpp, picked once per process.
//
// The build (CMakeLists.txt) compiles the kernels into namespace coun_fast::cpu::<variant> for
//   baseline  the compiler's default target (x86-64: SSE2), runs everywhere;
//   avx2      -mavx2 -mfma, on x86-64 CPUs that report AVX2 and FMA;
//   avx512    -mavx512f/vl/bw/dq -mavx2 -mfma, on x86-64 CPUs that report all of these;
// or, with COUN_FAST_CPU_ARCH set to an -march value, a single variant "native" for that target.
// COUN_FAST_CPU_NATIVE, COUN_FAST_CPU_AVX2 and COUN_FAST_CPU_AVX512 say which were built. This
// file itself is compiled for the baseline target, so it runs on any CPU the package installs on.
#include <cstdlib>
#include <cstring>

#include "coun_fast/contrastive.h"

#define COUN_FAST_DECLARE_CPU_VARIANT(ns)                                                              \
  namespace coun_fast::cpu::ns {                                                                       \
  void forward(const Problem& problem, float* out, float* stats, int num_threads);                     \
  void backward(const Problem& problem, const float* grad_out, const float* stats, void* grad_a,       \
                void* grad_b, int num_threads);                                                        \
  void similarity(const MatrixView& a, const MatrixView& b, float temperature, float* out,             \
                  int num_threads);                                                                    \
  }

#if defined(COUN_FAST_CPU_NATIVE)
#define COUN_FAST_CPU_FALLBACK native
#else
#define COUN_FAST_CPU_FALLBACK baseline
#endif
COUN_FAST_DECLARE_CPU_VARIANT(COUN_FAST_CPU_FALLBACK)
#if defined(COUN_FAST_CPU_AVX2)
COUN_FAST_DECLARE_CPU_VARIANT(avx2)
#endif
#if defined(COUN_FAST_CPU_AVX512)
COUN_FAST_DECLARE_CPU_VARIANT(avx512)
#endif

namespace coun_fast {
namespace {

struct CpuKernels {
  const char* name;
  decltype(&cpu::COUN_FAST_CPU_FALLBACK::forward) forward;
  decltype(&cpu::COUN_FAST_CPU_FALLBACK::backward) backward;
  decltype(&cpu::COUN_FAST_CPU_FALLBACK::similarity) similarity;
};

// (Two levels, so that a macro argument such as COUN_FAST_CPU_FALLBACK is expanded before #ns.)
#define COUN_FAST_CPU_KERNELS(ns) COUN_FAST_CPU_KERNELS_OF(ns)
#define COUN_FAST_CPU_KERNELS_OF(ns) CpuKernels{#ns, &cpu::ns::forward, &cpu::ns::backward, &cpu::ns::similarity}

// COUN_FAST_CPU_KERNELS=baseline|avx2 caps the variant below what the CPU runs (for tests and
// benchmarks); unset or any other value: no cap.
int variant_cap() {
  const char* wanted = std::getenv("COUN_FAST_CPU_KERNELS");
  if (wanted != nullptr && std::strcmp(wanted, "baseline") == 0) return 0;
  if (wanted != nullptr && std::strcmp(wanted, "avx2") == 0) return 1;
  return 2;
}

// The best built variant this CPU runs, within the cap.
CpuKernels pick() {
  [[maybe_unused]] const int cap = variant_cap();
#if defined(COUN_FAST_CPU_AVX512) || defined(COUN_FAST_CPU_AVX2)
  __builtin_cpu_init();
#endif
#if defined(COUN_FAST_CPU_AVX512)
  if (cap >= 2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return COUN_FAST_CPU_KERNELS(avx512);
#endif
#if defined(COUN_FAST_CPU_AVX2)
  if (cap >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return COUN_FAST_CPU_KERNELS(avx2);
#endif
  return COUN_FAST_CPU_KERNELS(COUN_FAST_CPU_FALLBACK);
}

const CpuKernels& kernels() {
  static const CpuKernels chosen = pick();
  return chosen;
}

}  // namespace

void contrastive_forward_cpu(const Problem& problem, float* out, float* stats, int num_threads) {
  kernels().forward(problem, out, stats, num_threads);
}

void contrastive_backward_cpu(const Problem& problem, const float* grad_out, const float* stats,
                              void* grad_a, void* grad_b, int num_threads) {
  kernels().backward(problem, grad_out, stats, grad_a, grad_b, num_threads);
}

void similarity_cpu(const MatrixView& a, const MatrixView& b, float temperature, float* out,
                    int num_threads) {
  kernels().similarity(a, b, temperature, out, num_threads);
}

const char* cpu_kernel_variant() { return kernels().name; }

}  // namespace coun_fast
