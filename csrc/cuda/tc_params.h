// Parameters and constants of the tensor-core path, shared by its host code (tc.cu) and its
// kernels (tc_kernels.cuh).
#pragma once

#include "cuda_api.h"

#include <cstdint>

#include "coun_fast/contrastive.h"
#include "coun_fast/mma_layout.h"

namespace coun_fast::tc {

constexpr int kThreads = 128;          // 4 warps per block
constexpr int kWarps = kThreads / 32;
constexpr int kForwardRows = 128;      // anchors per forward block
constexpr int kBackwardRows = 64;      // owner rows per backward block
constexpr int kCols = 64;              // candidates per column tile
constexpr int kRowPad = 128;           // saved rows are padded to a multiple of this
constexpr int kFeaturePad = 64;        // saved features are padded to a multiple of this
constexpr int kStages = 3;             // depth of the cp.async ring
constexpr int kChunkBytes = mma::kRowBytes;        // one chunk row: 128 bytes of features
constexpr int kForwardQBytes = kForwardRows * kChunkBytes;  // 16 KB: one chunk of 128 rows
constexpr int kTileChunkBytes = kCols * kChunkBytes;        // 8 KB: one chunk of 64 rows
// Static shared memory a kernel may hold beside its dynamic bytes: the forward's reduce.cuh's 4 KB of
// partial sums and arrive_last's flag; the resident backward's staged column terms (1 KB, used by
// the occupancy variant; the plan leaves kBackwardStaticShared beside the backward's dynamic bytes).
constexpr int kStaticSharedReserve = 8 * 1024;
constexpr int kBackwardStaticShared = 1024;
constexpr float kFixedShiftMinTemperature = 1.f / 32.f;
// The occupancy variant (CudaPath::kTensorCoresOccupancy; opt-in, not yet run on a GPU) compiles the
// forward and the resident backward of up to 64 g_chunks features for this many blocks per
// multiprocessor (at most 168 registers a thread instead of the 200-240 that allow two), and the
// resident backward stages its per-column terms in shared memory once per tile; the finish kernel
// issues all of a row's loads of one split together.
constexpr int kOccupancyBlocks = 3;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Everything a kernel of the tensor-core path needs (passed by value; < 1 KB).
struct Params {
  Problem problem;
  int64_t rows[2];          // rows of A and B (B = A when self)
  int64_t rows_pad[2];      // rows of the saved matrices (multiple of kRowPad)
  int64_t dim_pad;          // features of the saved rows (multiple of kFeaturePad)
  int64_t row_bytes;        // bytes of one saved logits-operand row
  int64_t grow_bytes;       // bytes of one saved gradient-operand row
  int chunks;               // row_bytes / 128
  int gchunks;              // grow_bytes / 128
  const unsigned char* operand[2];   // rows of A and B scaled by a power of two, logits operand
  const unsigned char* goperand[2];  // the same rows as the gradient product's operand
  unsigned char* operand_out[2];     // (prepare_kernel writes them)
  unsigned char* goperand_out[2];
  float* inv_norm[2];       // [rows] 1 / max(||x||, eps)
  float* factor[2];         // [rows] saved row * factor = x / max(||x||, eps)
  float* coef;              // [T] exp(1/tau - lse) (0 without positives); forward -> backward
  float* inv_count;         // [T] 1 / count (0 without positives)
  unsigned* counters;       // [num_counters], zero between launches
  int num_counters;
  // forward
  int forward_splits;
  int forward_tiles_per_split[2];  // per direction
  int forward_row_tiles[2];
  bool q_resident;
  float4* partial_stats;    // [2][splits][partial_rows] (max, sum, positive sum, positive count)
  int64_t partial_rows;     // max(rows_pad)
  float* loss_rows;         // [T] per-anchor losses (the output itself for kNone)
  float* out;
  float* stats;
  // backward
  int backward_splits;
  int backward_tiles_per_split[2];  // per owner
  int backward_row_tiles[2];
  float* g_partial;         // owner o, split s: rows [g_offset[o] + s * rows_pad[o], ...) x dim_pad
  int64_t g_offset[2];
  const float* grad_out;
  void* grad[2];
  // scalars
  float inv_temperature;
  float c2;                 // log2(e) / tau: logits in base-2 units
  bool fixed_shift;
};

// Counter slots: forward merges per (direction, row tile), then the forward's final reduction.
__host__ __device__ inline int forward_counter(const Params& p, int d, int tile) {
  return (d == 0 ? 0 : p.forward_row_tiles[0]) + tile;
}
__host__ __device__ inline int final_counter(const Params& p) {
  return p.forward_row_tiles[0] + p.forward_row_tiles[1];
}

// Launchers of the kernels of one operand path (instantiated in tc_bf16.cu, tc_f16.cu,
// tc_tf32.cu). `g_chunks`: the backward's variant, 2 or 4 (resident, G in registers for up to
// 64 g_chunks features) or 0 (streamed); `occupancy`: the occupancy variant (kOccupancyBlocks).
// Each returns a cudaError_t value.
struct Bf16Path;
struct F16Path;
struct Tf32Path;

template <class Path>
int launch_prepare(const Params& p, cudaStream_t stream);
template <class Path>
int launch_forward(const Params& p, bool occupancy, int shared_bytes, cudaStream_t stream);
template <class Path>
int launch_backward(const Params& p, int g_chunks, bool occupancy, int shared_bytes, cudaStream_t stream);
template <class Path>
int launch_finish(const Params& p, bool occupancy, cudaStream_t stream);

}  // namespace coun_fast::tc
