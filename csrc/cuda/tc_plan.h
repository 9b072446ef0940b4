// The tensor-core path's plan of a problem on a device: the workspace layout, the split of small
// problems, the kernel variants and launch shapes. Plain host C++, shared by tc.cu and the CPU
// emulation of the kernels (csrc/emulation).
//
// Saved workspace (kept from the forward to the backward), 256-byte aligned regions:
//   rows of A (and B) scaled by 2^-e, logits operand rows_pad x row_bytes each
//   the same rows as the gradient operand (F16Path) rows_pad x grow_bytes each
//   1 / norm of A (and B)                            rows floats each
//   2^e / norm of A (and B): saved row -> unit row   rows floats each
//   coef, inv_count                                  T floats each
//   counters                                         uint32, zero between launches
// Forward scratch: partial row statistics of a split sweep, and the per-anchor losses of a
// reduced loss. Backward scratch: the float32 gradient rows G of every split.
#pragma once

#include <algorithm>
#include <cstdint>

#include "tc_params.h"

namespace coun_fast::tc {

constexpr int64_t kAlign = 256;

inline int64_t round_up(int64_t x, int64_t multiple) { return (x + multiple - 1) / multiple * multiple; }
inline int64_t ceil_div(int64_t x, int64_t y) { return (x + y - 1) / y; }

struct DeviceInfo {
  int status = 0;  // cudaSuccess, or why the tensor-core path cannot run on the device
  int sm_count = 0;
  int shared_optin = 0;  // bytes of shared memory a block may use
  int major = 0;
};

enum class Kind { kBf16, kF16, kTf32 };

inline Kind kind_of(DType dtype) {
  return dtype == DType::kBFloat16 ? Kind::kBf16 : (dtype == DType::kFloat16 ? Kind::kF16 : Kind::kTf32);
}

// Splits of the candidate sweep so that `blocks` row tiles fill the device, at most `max_splits`.
inline int choose_splits(int64_t blocks, int sm_count, int64_t max_splits) {
  if (blocks <= 0 || blocks >= sm_count) return 1;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(sm_count, blocks), max_splits)));
}

// Regions are appended at aligned offsets.
struct Regions {
  int64_t bytes = 0;
  int64_t add(int64_t size) {
    const int64_t offset = bytes;
    bytes = round_up(bytes + size, kAlign);
    return offset;
  }
};

// Everything derived from the problem and the device: sizes, offsets and launch shapes.
struct Plan {
  Kind kind;
  Params params;  // pointers are offsets until bind() adds the bases
  int64_t saved_bytes, forward_scratch_bytes, backward_scratch_bytes;
  int forward_shared, backward_shared, g_chunks;
  int64_t operand_off[2], goperand_off[2], inv_off[2], factor_off[2], coef_off, inv_count_off, counters_off;
  int64_t partial_off, loss_off, g_off;
};

inline Plan make_plan(const Problem& problem, const DeviceInfo& device) {
  Plan plan{};
  plan.kind = kind_of(problem.a.dtype);
  Params& p = plan.params;
  p.problem = problem;
  const int element_bytes = plan.kind == Kind::kTf32 ? 4 : 2;
  const bool separate = plan.kind == Kind::kF16;
  const bool self = problem.self;
  p.rows[0] = problem.a.rows;
  p.rows[1] = self ? problem.a.rows : problem.b.rows;
  for (int i = 0; i < 2; ++i) p.rows_pad[i] = round_up(p.rows[i], kRowPad);
  p.dim_pad = round_up(problem.a.dim, kFeaturePad);
  p.row_bytes = p.dim_pad * element_bytes;
  p.grow_bytes = separate ? p.dim_pad * 4 : p.row_bytes;  // F16Path: tf32 copy
  p.chunks = static_cast<int>(p.row_bytes / kChunkBytes);
  p.gchunks = static_cast<int>(p.grow_bytes / kChunkBytes);
  const int64_t total = problem.total_rows();

  // Forward: 128 anchors per block, the sweep split when the row tiles leave the device idle.
  p.forward_row_tiles[0] = static_cast<int>(ceil_div(p.rows[0], kForwardRows));
  p.forward_row_tiles[1] = problem.symmetric ? static_cast<int>(ceil_div(p.rows[1], kForwardRows)) : 0;
  const int64_t forward_col_tiles[2] = {ceil_div(p.rows[1], kCols), ceil_div(p.rows[0], kCols)};
  const int64_t forward_max_splits =
      problem.symmetric ? std::min(forward_col_tiles[0], forward_col_tiles[1]) : forward_col_tiles[0];
  p.forward_splits = choose_splits(p.forward_row_tiles[0] + p.forward_row_tiles[1], device.sm_count,
                                   forward_max_splits);
  for (int d = 0; d < 2; ++d)
    p.forward_tiles_per_split[d] = static_cast<int>(ceil_div(forward_col_tiles[d], p.forward_splits));
  p.q_resident = p.chunks * kForwardQBytes <= 64 * 1024;
  plan.forward_shared = (p.q_resident ? p.chunks : kStages) * kForwardQBytes + kStages * kTileChunkBytes;

  // Backward: 64 owner rows per block; G in registers when D <= 256 and the tiles fit.
  p.backward_row_tiles[0] = static_cast<int>(ceil_div(p.rows[0], kBackwardRows));
  p.backward_row_tiles[1] = self ? 0 : static_cast<int>(ceil_div(p.rows[1], kBackwardRows));
  const int64_t backward_col_tiles[2] = {ceil_div(p.rows[1], kCols), ceil_div(p.rows[0], kCols)};
  const int64_t backward_max_splits =
      self ? backward_col_tiles[0] : std::min(backward_col_tiles[0], backward_col_tiles[1]);
  p.backward_splits = choose_splits(p.backward_row_tiles[0] + p.backward_row_tiles[1], device.sm_count,
                                    backward_max_splits);
  for (int o = 0; o < 2; ++o)
    p.backward_tiles_per_split[o] = static_cast<int>(ceil_div(backward_col_tiles[o], p.backward_splits));
  plan.g_chunks = p.dim_pad <= 128 ? 2 : (p.dim_pad <= 256 ? 4 : 0);
  const int resident_shared = 3 * p.chunks * kTileChunkBytes + (separate ? 2 * p.gchunks * kTileChunkBytes : 0);
  if (plan.g_chunks > 0 && resident_shared + kBackwardStaticShared > device.shared_optin) plan.g_chunks = 0;
  plan.backward_shared = plan.g_chunks > 0 ? resident_shared : kStages * 2 * kTileChunkBytes;

  p.num_counters = p.forward_row_tiles[0] + p.forward_row_tiles[1] + 1;
  p.fixed_shift = problem.temperature >= kFixedShiftMinTemperature;
  p.inv_temperature = 1.f / problem.temperature;
  p.c2 = kLog2e / problem.temperature;

  Regions saved;
  for (int i = 0; i < 2; ++i) {
    const bool own = i == 0 || !self;
    plan.operand_off[i] = own ? saved.add(p.rows_pad[i] * p.row_bytes) : plan.operand_off[0];
    plan.goperand_off[i] = !separate ? plan.operand_off[i]
                           : own     ? saved.add(p.rows_pad[i] * p.grow_bytes)
                                     : plan.goperand_off[0];
    plan.inv_off[i] = own ? saved.add(p.rows[i] * 4) : plan.inv_off[0];
    plan.factor_off[i] = own ? saved.add(p.rows[i] * 4) : plan.factor_off[0];
  }
  plan.coef_off = saved.add(total * 4);
  plan.inv_count_off = saved.add(total * 4);
  plan.counters_off = saved.add(int64_t(p.num_counters) * 4);
  plan.saved_bytes = saved.bytes;

  Regions forward_scratch;
  p.partial_rows = std::max(p.rows_pad[0], p.rows_pad[1]);
  plan.partial_off = p.forward_splits > 1
                         ? forward_scratch.add(2 * int64_t(p.forward_splits) * p.partial_rows * 16)
                         : 0;
  plan.loss_off = problem.reduction != Reduction::kNone ? forward_scratch.add(total * 4) : 0;
  plan.forward_scratch_bytes = forward_scratch.bytes;

  Regions backward_scratch;
  p.g_offset[0] = 0;
  p.g_offset[1] = int64_t(p.backward_splits) * p.rows_pad[0] * p.dim_pad;
  const int64_t g_floats =
      p.g_offset[1] + (self ? 0 : int64_t(p.backward_splits) * p.rows_pad[1] * p.dim_pad);
  plan.g_off = backward_scratch.add(g_floats * 4);
  plan.backward_scratch_bytes = backward_scratch.bytes;
  return plan;
}

// The plan's pointers into the caller's buffers.
inline void bind(Plan& plan, void* saved_base, void* forward_scratch, void* backward_scratch) {
  Params& p = plan.params;
  auto* saved = static_cast<unsigned char*>(saved_base);
  for (int i = 0; i < 2; ++i) {
    p.operand_out[i] = saved + plan.operand_off[i];
    p.goperand_out[i] = saved + plan.goperand_off[i];
    p.operand[i] = p.operand_out[i];
    p.goperand[i] = p.goperand_out[i];
    p.inv_norm[i] = reinterpret_cast<float*>(saved + plan.inv_off[i]);
    p.factor[i] = reinterpret_cast<float*>(saved + plan.factor_off[i]);
  }
  p.coef = reinterpret_cast<float*>(saved + plan.coef_off);
  p.inv_count = reinterpret_cast<float*>(saved + plan.inv_count_off);
  p.counters = reinterpret_cast<unsigned*>(saved + plan.counters_off);
  if (forward_scratch != nullptr) {
    auto* scratch = static_cast<unsigned char*>(forward_scratch);
    p.partial_stats = reinterpret_cast<float4*>(scratch + plan.partial_off);
    p.loss_rows = reinterpret_cast<float*>(scratch + plan.loss_off);
  }
  if (backward_scratch != nullptr)
    p.g_partial = reinterpret_cast<float*>(static_cast<unsigned char*>(backward_scratch) + plan.g_off);
}

// The forward's outputs (kNone writes the per-anchor losses straight into `out`).
inline void set_forward_outputs(Plan& plan, float* out, float* stats) {
  Params& p = plan.params;
  p.out = out;
  p.stats = stats;
  if (p.problem.reduction == Reduction::kNone) p.loss_rows = out;
}

// The backward's inputs and outputs (grad_b is unused when self).
inline void set_backward_io(Plan& plan, const float* grad_out, const float* stats, void* grad_a,
                            void* grad_b) {
  Params& p = plan.params;
  p.stats = const_cast<float*>(stats);
  p.grad_out = grad_out;
  p.grad[0] = grad_a;
  p.grad[1] = p.problem.self ? grad_a : grad_b;
}

// Launch shapes (blocks of kThreads threads).
inline dim3 prepare_grid(const Params& p) {
  const int64_t rows = p.rows_pad[0] + (p.problem.self ? 0 : p.rows_pad[1]);
  return dim3(static_cast<unsigned>(ceil_div(rows, kWarps)));
}
inline dim3 forward_grid(const Params& p) {
  return dim3(static_cast<unsigned>(std::max(p.forward_row_tiles[0], p.forward_row_tiles[1])),
              static_cast<unsigned>(p.forward_splits), p.problem.symmetric ? 2u : 1u);
}
inline dim3 backward_grid(const Params& p) {
  return dim3(static_cast<unsigned>(std::max(p.backward_row_tiles[0], p.backward_row_tiles[1])),
              static_cast<unsigned>(p.backward_splits), p.problem.self ? 1u : 2u);
}
inline dim3 finish_grid(const Params& p) {  // one warp per gradient row
  const int64_t rows = p.rows[0] + (p.problem.self ? 0 : p.rows[1]);
  return dim3(static_cast<unsigned>(std::max<int64_t>(1, ceil_div(rows, kWarps))));
}

}  // namespace coun_fast::tc
