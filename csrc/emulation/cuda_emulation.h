// A CPU emulation of the small part of CUDA that coun_fast's kernels and their host code use, so
// that csrc/cuda compiles with a host C++ compiler and runs on threads: the CUDA paths can then be
// tested on machines without a GPU (tests/test_cuda_emulation.py), through the same entry points
// (contrastive_forward_cuda, ...) the extension calls. "Device memory" is host memory.
//
// A launch runs the grid's blocks one after another; a block runs as one std::thread per CUDA
// thread. __syncthreads is a barrier of the block, warp-wide operations (shuffles, ldmatrix,
// mma.sync) exchange values through per-warp slots between two barriers of the warp. The
// warp-level matrix instructions are computed from the PTX ISA's statement of their fragment
// layouts, written here independently of coun_fast/mma_layout.h (which states the inverse
// mappings the kernels use), so the two check each other. cp.async copies synchronously, so the
// emulation checks what a kernel computes, not its timing: races and missing waits are out of
// its reach (compute-sanitizer on a GPU covers those). Unwritten shared memory reads as NaN.
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "coun_fast/math.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)
#define COUN_FAST_DYNAMIC_SHARED(name) unsigned char* name = ::coun_fast_emu::dynamic_shared()

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct float2 {
  float x, y;
};
struct float4 {
  float x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
using cudaStream_t = void*;
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidDevice = 101,
  cudaErrorNotSupported = 801,
};
enum cudaDeviceAttr : int {
  cudaDevAttrMultiProcessorCount,
  cudaDevAttrMaxSharedMemoryPerBlockOptin,
  cudaDevAttrComputeCapabilityMajor,
};
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize };

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

namespace coun_fast_emu {

constexpr int kWarpSize = 32;

// What the threads of the running block share.
struct Block {
  explicit Block(int threads, size_t shared_bytes)
      : block_barrier(threads), shared(shared_bytes + 128) {
    for (int w = 0; w < (threads + kWarpSize - 1) / kWarpSize; ++w)
      warp_barriers.push_back(std::make_unique<std::barrier<>>(std::min(kWarpSize, threads - w * kWarpSize)));
    slots.resize(warp_barriers.size());
    std::fill(shared.begin(), shared.end(), 0xff);  // reads of unwritten shared memory give NaN
    base = shared.data() + (128 - reinterpret_cast<uintptr_t>(shared.data()) % 128) % 128;
  }
  std::barrier<> block_barrier;
  std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
  std::vector<unsigned char> shared;
  unsigned char* base;
  struct Slot {
    uint32_t u[kWarpSize][8];
    float f[kWarpSize];
  };
  std::vector<Slot> slots;
};

// The emulated devices, by index: multiprocessors and shared memory per block (the split of small
// problems and the backward variant depend on them); all have compute capability 9.0.
struct Device {
  int sm_count, shared_optin;
};
inline Device g_devices[] = {{132, 227 * 1024}, {1, 227 * 1024}, {132, 48 * 1024}};
constexpr int kDevices = sizeof(g_devices) / sizeof(g_devices[0]);
inline int g_device = 0;

inline Block* g_block = nullptr;
inline uint3 g_block_index;
inline dim3 g_grid;
inline dim3 g_block_dim;
inline thread_local uint3 t_thread_index;

inline unsigned char* dynamic_shared() { return g_block->base; }
inline int linear_thread() {
  return static_cast<int>(t_thread_index.x + g_block_dim.x * (t_thread_index.y + g_block_dim.y * t_thread_index.z));
}
inline int lane() { return linear_thread() % kWarpSize; }
inline int warp() { return linear_thread() / kWarpSize; }
inline void warp_sync() { g_block->warp_barriers[warp()]->arrive_and_wait(); }
inline Block::Slot& slot() { return g_block->slots[warp()]; }

// ---- warp-wide operations ----

inline float shfl_xor(float v, int mask) {
  slot().f[lane()] = v;
  warp_sync();
  const float r = slot().f[lane() ^ mask];
  warp_sync();
  return r;
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lanes 8q .. 8q + 7 address the 8 rows (16
// bytes each) of matrix q; lane l receives, in register q, the b16 pair (row l / 4, columns
// 2 (l % 4), 2 (l % 4) + 1) of matrix q, or with .trans the pair (rows 2 (l % 4), 2 (l % 4) + 1,
// column l / 4). The lower-indexed element is the register's low half.
inline void ldmatrix(uint32_t (&r)[4], uint32_t address, bool trans) {
  slot().u[lane()][0] = address;
  warp_sync();
  const unsigned char* shared = g_block->base;
  const int l = lane();
  for (int q = 0; q < 4; ++q) {
    uint16_t lo, hi;
    if (!trans) {
      const uint32_t row = slot().u[8 * q + l / 4][0];
      std::memcpy(&lo, shared + row + 4 * (l % 4), 2);
      std::memcpy(&hi, shared + row + 4 * (l % 4) + 2, 2);
    } else {
      const uint32_t row0 = slot().u[8 * q + 2 * (l % 4)][0];
      const uint32_t row1 = slot().u[8 * q + 2 * (l % 4) + 1][0];
      std::memcpy(&lo, shared + row0 + 2 * (l / 4), 2);
      std::memcpy(&hi, shared + row1 + 2 * (l / 4), 2);
    }
    r[q] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
  }
  warp_sync();
}

enum class MmaType { kBf16, kF16, kTf32 };

inline float half_value(uint32_t reg, int half, MmaType type) {
  const auto bits = static_cast<uint16_t>(half ? reg >> 16 : reg & 0xffffu);
  return type == MmaType::kBf16 ? coun_fast::bf16_to_float(bits) : coun_fast::fp16_to_float(bits);
}

inline float tf32_value(uint32_t reg) { return coun_fast::bits_float(reg & 0xffffe000u); }

// mma.sync.aligned.{m16n8k16 (bf16, f16), m16n8k8 (tf32)}.row.col.f32: D = A B + C with A 16 x K,
// B K x 8, C/D 16 x 8 float; lane l = 4 groupID + threadID_in_group. Per the PTX ISA:
//   C/D: value i is (groupID + 8 (i / 2), 2 threadID + i % 2).
//   A, m16n8k16: register j holds the pair (groupID + 8 (j % 2), 2 threadID + 8 (j / 2) + {0, 1}).
//   B, m16n8k16: register j holds the pair (k = 2 threadID + 8 j + {0, 1}, n = groupID).
//   A, m16n8k8 tf32: register j holds (groupID + 8 (j % 2), threadID + 4 (j / 2)).
//   B, m16n8k8 tf32: register j holds (k = threadID + 4 j, n = groupID).
inline void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, MmaType type) {
  const int l = lane();
  for (int j = 0; j < 4; ++j) slot().u[l][j] = a[j];
  slot().u[l][4] = b0;
  slot().u[l][5] = b1;
  warp_sync();
  const bool tf32 = type == MmaType::kTf32;
  const int k_size = tf32 ? 8 : 16;
  auto a_at = [&](int row, int k) {
    if (tf32) {
      const int owner = 4 * (row % 8) + k % 4, reg = row / 8 + 2 * (k / 4);
      return tf32_value(slot().u[owner][reg]);
    }
    const int owner = 4 * (row % 8) + (k % 8) / 2, reg = row / 8 + 2 * (k / 8);
    return half_value(slot().u[owner][reg], k % 2, type);
  };
  auto b_at = [&](int k, int n) {
    if (tf32) return tf32_value(slot().u[4 * n + k % 4][4 + k / 4]);
    return half_value(slot().u[4 * n + (k % 8) / 2][4 + k / 8], k % 2, type);
  };
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int row = l / 4 + 8 * (i / 2), col = 2 * (l % 4) + i % 2;
    float sum = d[i];
    for (int k = 0; k < k_size; ++k) sum += a_at(row, k) * b_at(k, col);
    out[i] = sum;
  }
  warp_sync();
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

// cvt.rna.tf32.f32: round to 10 mantissa bits, ties away from zero.
inline uint32_t to_tf32(float x) {
  uint32_t u = coun_fast::float_bits(x);
  if ((u & 0x7f800000u) != 0x7f800000u) u += 0x1000u;
  return u & 0xffffe000u;
}

// ---- launches ----

// Runs kernel(args...) over the grid, blocks one after another, each as block.x * block.y *
// block.z threads (thread t has index (t % x, t / x % y, t / (x y)); warps are 32 consecutive t).
template <class Kernel, class... Args>
void launch(Kernel kernel, dim3 grid, dim3 block_dim, size_t shared_bytes, const Args&... args) {
  g_grid = grid;
  g_block_dim = block_dim;
  const int threads = static_cast<int>(block_dim.x * block_dim.y * block_dim.z);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        g_block_index = {x, y, z};
        Block block(threads, shared_bytes);
        g_block = &block;
        std::vector<std::thread> workers;
        workers.reserve(threads);
        for (int t = 0; t < threads; ++t)
          workers.emplace_back([&, t] {
            const auto u = static_cast<unsigned>(t);
            t_thread_index = {u % block_dim.x, u / block_dim.x % block_dim.y, u / (block_dim.x * block_dim.y)};
            kernel(args...);
            // An exited thread no longer takes part in barriers (as on the GPU).
            g_block->warp_barriers[warp()]->arrive_and_drop();
            g_block->block_barrier.arrive_and_drop();
          });
        for (auto& worker : workers) worker.join();
        g_block = nullptr;
      }
}

}  // namespace coun_fast_emu

#define COUN_FAST_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  ::coun_fast_emu::launch(kernel, grid, block, shared_bytes, __VA_ARGS__)

#define threadIdx (::coun_fast_emu::t_thread_index)
#define blockIdx (::coun_fast_emu::g_block_index)
#define gridDim (::coun_fast_emu::g_grid)
#define blockDim (::coun_fast_emu::g_block_dim)

inline void __syncthreads() { ::coun_fast_emu::g_block->block_barrier.arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline unsigned atomicAdd(unsigned* address, unsigned value) {
  return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST);
}
inline float __shfl_xor_sync(unsigned, float value, int mask) { return ::coun_fast_emu::shfl_xor(value, mask); }
template <class T>
inline T __ldcg(const T* address) {
  return *address;
}
inline size_t __cvta_generic_to_shared(const void* pointer) {
  return static_cast<size_t>(static_cast<const unsigned char*>(pointer) - ::coun_fast_emu::g_block->base);
}
[[noreturn]] inline void __trap() { std::abort(); }
inline float __expf(float x) { return std::exp(x); }

// ---- the runtime API the host code calls ----

inline cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= ::coun_fast_emu::kDevices) return cudaErrorInvalidDevice;
  ::coun_fast_emu::g_device = device;
  return cudaSuccess;
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int* count) {
  *count = ::coun_fast_emu::kDevices;
  return cudaSuccess;
}
inline const char* cudaGetErrorString(cudaError_t error) {
  return error == cudaSuccess ? "no error" : "emulated CUDA error";
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
  if (device < 0 || device >= ::coun_fast_emu::kDevices) return cudaErrorInvalidDevice;
  const auto& d = ::coun_fast_emu::g_devices[device];
  *value = attribute == cudaDevAttrMultiProcessorCount          ? d.sm_count
           : attribute == cudaDevAttrMaxSharedMemoryPerBlockOptin ? d.shared_optin
                                                                  : 9;
  return cudaSuccess;
}
template <class Kernel>
inline cudaError_t cudaFuncSetAttribute(Kernel, cudaFuncAttribute, int) {
  return cudaSuccess;
}
