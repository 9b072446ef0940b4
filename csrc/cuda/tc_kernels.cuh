// Tensor-core kernels of the contrastive-loss family (FlashAttention-style), templated on the
// operand path (tc_primitives.cuh: Bf16Path, F16Path, Tf32Path).
//
// Math (contrastive.h, math.h): a_i = x_i / max(||x_i||, eps), s_ij = a_i . b_j / tau,
//   l_i = lse_i - mean_{p in Pos(i)} s_ip,   lse_i = log sum_{j compared} exp(s_ij),
//   dL/ds_ij = w_i exp(s_ij - lse_i) - [j in Pos(i)] w_i / |Pos(i)|      (w_i = dL/dl_i)
//   dL/dx_i  = (g_i - (g_i . a_i) a_i) / max(||x_i||, eps),  g_i = (1/tau) sum_j dL/ds_ij b_j.
// Fixed shift: for tau >= 1/32 the exponentials are taken as E_ij = exp(s_ij - 1/tau) <= 1 (unit
// rows give s_ij <= 1/tau), so no running maximum is needed, and the backward's two directions
// share one exponential: w_i exp(s_ij - lse_i) = E_ij * w_i exp(1/tau - lse_i), where the second
// factor ("coef") is one number per row, saved by the forward. Below 1/32 the forward keeps an
// online maximum and the backward takes one exponential per direction.
//
// Operands: the saved rows are the inputs scaled by a power of two, x_i 2^-e_i with
// ||x_i|| = m 2^e_i, m in [0.5, 1): exact in the input's own type (bf16, fp16; rounded to tf32 for
// fp32), so the tensor cores multiply the inputs themselves. The normalization is a factor per row,
// f_i = 2^e_i / max(||x_i||, eps), applied in float32 to the accumulators: a_i . b_j = f_i f_j
// (x_i 2^-e_i . y_j 2^-e_j). (Rounding normalized rows to bf16 instead would change their norms by
// up to 2^-8, and logits near 1/tau by as much times 1/tau.)
//
// Plain tiles: a tile (rows x columns) whose pairs are all in range, all compared and none positive
// (math.h's plain_rectangle says so from the index ranges alone) skips every per-pair test:
// with the fixed shift its epilogue is a multiply, an FMA, an exponential and an add per pair. All
// tiles but those on the diagonal (and, for NT-Xent, on the partner diagonals) and the last row
// and column tiles are plain when the positives are named by a rule.
//
// Kernels:
// - prepare_kernel: one warp per row scales both inputs into the saved workspace (rows padded to a
//   multiple of 128 and features to 64, zero filled) in the operand type, keeps 1 / norm and f,
//   and zeroes the counters of the cross-block merges.
// - forward_kernel: a block of 4 warps owns 128 anchors (32 per warp: two 16-row m-tiles) and
//   sweeps its share of the candidates in tiles of 64: S = A B^T on tensor cores (mma.sync,
//   operands through a 3-stage cp.async ring of 128-byte chunks, ldmatrix from swizzled shared
//   memory; the anchor tile stays resident when it fits), then the per-row log-sum-exp, positive
//   sum and count in registers (quad shuffles). Small problems split the candidate sweep over
//   blockIdx.y; the last block of a row tile to finish merges the partial (max, sum) statistics in
//   split order. The last row tile of all reduces the per-anchor losses (reduce.cuh). Everything
//   is deterministic: merges and sums run in a fixed order, counters only elect who merges.
// - backward kernels (row owner, no atomics on values): a block of 4 warps owns 64 rows (16 per
//   warp) of one input and sweeps the other input's rows in tiles of 64: it recomputes the S tile,
//   turns it into dL/ds in registers for both directions the owner's rows take part in, and
//   multiplies that (as the A operand, straight from the accumulators) with the other tile into
//   the gradient rows G. The resident variant keeps G in registers (D <= 256) and whole tiles in
//   shared memory (double-buffered); the streamed variant keeps G in a float32 buffer in global
//   memory (the block's own rows, L2-resident) and streams 128-byte chunks through the ring. Each
//   block writes its G rows (one buffer per split).
// - finish_kernel: one warp per gradient row sums the splits' G rows in split order and projects
//   them through the normalization into the gradient, in the input's dtype (a separate launch
//   spreads this over the whole device; done by the last block of each row tile, it took most of a
//   small problem's time).
#pragma once

#include <cstdint>

#include "cuda_api.h"

#include "coun_fast/contrastive.h"
#include "coun_fast/mma_layout.h"
#include "reduce.cuh"
#include "tc_plan.h"
#include "tc_primitives.cuh"

namespace coun_fast::tc {

// ---- shared helpers ----

// One direction of the forward: its anchors, candidates (as matrix indices 0 = A, 1 = B), their
// counts, its positives and where its rows start in the T per-anchor rows.
struct ForwardDirection {
  int anchor, candidate;
  int64_t anchors, candidates, offset;
  Positives positives;
};

__device__ inline ForwardDirection forward_direction(const Params& p, int d) {
  if (d == 0) return {0, 1, p.rows[0], p.rows[1], 0, p.problem.positives};
  return {1, 0, p.rows[1], p.rows[0], p.rows[0], p.problem.positives.reversed()};
}

// Copies `kRows` rows x 128 bytes (one chunk) from global memory (rows `row_bytes` apart) into a
// swizzled shared tile, asynchronously (the caller commits the group).
template <int kRows>
__device__ inline void copy_chunk(unsigned char* dst, const unsigned char* src, int64_t row_bytes) {
  const uint32_t base = smem_address(dst);
  for (int u = threadIdx.x; u < kRows * mma::kUnitsPerRow; u += kThreads) {
    const int row = u / mma::kUnitsPerRow, unit = u % mma::kUnitsPerRow;
    cp_async_16(base + mma::swizzled_offset(row, unit),
                src + row * row_bytes + unit * mma::kUnitBytes);
  }
}

// The ring: step i's data is loaded into stage i % kStages two steps ahead of its use. load(i, st)
// issues the copies of step i; compute(i, st) uses stage st. Groups are committed every step (empty
// ones too), so "all but kStages - 2 groups done" means step i's data arrived.
template <class Load, class Compute>
__device__ inline void run_ring(int steps, Load&& load, Compute&& compute) {
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < steps) load(i, i);
    cp_async_commit();
  }
  for (int i = 0; i < steps; ++i) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // step i visible to all; step i - 1's stage free for reuse
    const int next = i + kStages - 1;
    if (next < steps) load(next, next % kStages);
    cp_async_commit();
    compute(i, i % kStages);
  }
  cp_async_wait<0>();
  __syncthreads();
}

// acc[mt][nb] += A rows [row_base + 16 mt, +16) . B rows [8 nb, 8 nb + 8)^T over one chunk (128
// bytes of k: four k-steps), A and B in swizzled shared tiles of one chunk.
template <class Path, int kMTiles>
__device__ inline void chunk_product(float (&acc)[kMTiles][8][4], const unsigned char* a_tile,
                                     int row_base, const unsigned char* b_tile, int lane) {
  const uint32_t a_base = smem_address(a_tile), b_base = smem_address(b_tile);
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) {
    uint32_t a[kMTiles][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
      ldmatrix_x4(a[mt], a_base + mma::swizzled_offset(row_base + 16 * mt + mma::a_row(lane),
                                                       mma::a_unit(lane, ks)));
#pragma unroll
    for (int pair = 0; pair < 4; ++pair) {
      uint32_t b[4];
      ldmatrix_x4(b, b_base + mma::swizzled_offset(16 * pair + mma::b_row(lane), mma::b_unit(lane, ks)));
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        mma<Path::kLogits>(acc[mt][2 * pair], a[mt], b[0], b[1]);
        mma<Path::kLogits>(acc[mt][2 * pair + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

template <int kMTiles>
__device__ inline void zero(float (&acc)[kMTiles][8][4]) {
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int nb = 0; nb < 8; ++nb)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nb][i] = 0.f;
}

// ---- prepare ----

template <class Path>
__global__ void __launch_bounds__(kThreads) prepare_kernel(const Params p) {
  if (blockIdx.x == 0)
    for (int i = threadIdx.x; i < p.num_counters; i += kThreads) p.counters[i] = 0u;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int64_t row = int64_t(blockIdx.x) * kWarps + warp;
  const int matrix = row < p.rows_pad[0] ? 0 : 1;
  if (matrix == 1) {
    row -= p.rows_pad[0];
    if (p.problem.self || row >= p.rows_pad[1]) return;
  }
  const MatrixView& x = matrix == 0 ? p.problem.a : p.problem.b;
  int exponent = 0;  // ||x|| = m 2^exponent, m in [0.5, 1); 0 for a zero or non-finite norm
  if (row < x.rows) {
    float sum = 0.f;
    for (int64_t k = lane; k < x.dim; k += 32) {
      const float v = x.at(row, k);
      sum += v * v;
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    const float norm = sqrtf(sum), inv = 1.f / fmaxf(norm, kNormEps);
    if (norm > 0.f && norm < INFINITY) frexpf(norm, &exponent);
    if (lane == 0) {
      p.inv_norm[matrix][row] = inv;
      p.factor[matrix][row] = ldexpf(inv, exponent);
    }
  }
  void* out = p.operand_out[matrix] + row * p.row_bytes;
  void* gout = p.goperand_out[matrix] + row * p.grow_bytes;
  for (int64_t k = lane; k < p.dim_pad; k += 32) {
    const float v = row < x.rows && k < x.dim ? ldexpf(x.at(row, k), -exponent) : 0.f;
    store_operand<Path::kLogits>(out, k, v);
    if constexpr (Path::kSeparateGradientRows) store_operand<Path::kGradient>(gout, k, v);
  }
}

// ---- forward ----

// The per-anchor results from its (max, sum, positive cosine sum, positive count), max and sum in
// base-2 units of the logits.
__device__ inline void finish_row(const Params& p, const ForwardDirection& dir, int64_t r, float m,
                                  float l, float positive_sum, float positive_count) {
  const float log2_sum = m + log2f(l);  // -inf when no candidate is compared
  const float lse = log2_sum * kLn2;
  const int64_t i = dir.offset + r, total = p.problem.total_rows();
  p.stats[i] = lse;
  p.stats[total + i] = positive_count;
  p.loss_rows[i] = anchor_loss(lse, positive_sum * p.inv_temperature, positive_count);
  const bool has_positive = positive_count > 0.f;
  p.coef[i] = has_positive ? exp2f(p.c2 - log2_sum) : 0.f;
  p.inv_count[i] = has_positive ? 1.f / positive_count : 0.f;
}

// A row's running statistics: max and sum of exp (base-2 units), positive cosine sum and count.
struct RowState {
  float m, l, positive_sum, positive_count;
};

// Whether the forward tile of anchors [r0, r0 + kForwardRows) x candidates [c0, c0 + kCols) of a
// direction is plain (see the file's head).
__device__ inline bool forward_tile_plain(const Params& p, const ForwardDirection& dir, int64_t r0, int64_t c0) {
  const int64_t r1 = r0 + kForwardRows, c1 = c0 + kCols;
  return p.fixed_shift && r1 <= dir.anchors && c1 <= dir.candidates &&
         plain_rectangle(p.problem.compare, dir.positives, r0, r1, c0, c1);
}

template <class Path, bool kOccupancy>
__global__ void __launch_bounds__(kThreads, kOccupancy ? kOccupancyBlocks : 1) forward_kernel(const Params p) {
  COUN_FAST_DYNAMIC_SHARED(smem);
  const int d = blockIdx.z;
  const ForwardDirection dir = forward_direction(p, d);
  const int row_tile = blockIdx.x;
  if (row_tile >= p.forward_row_tiles[d]) return;
  const int64_t row0 = int64_t(row_tile) * kForwardRows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int col_tiles = static_cast<int>((dir.candidates + kCols - 1) / kCols);
  const int tiles_per_split = p.forward_tiles_per_split[d];
  const int t_begin = min(col_tiles, int(blockIdx.y) * tiles_per_split);
  const int t_end = min(col_tiles, t_begin + tiles_per_split);
  const Comparison compare = p.problem.compare;
  const float c2 = p.c2;

  unsigned char* q_smem = smem;
  unsigned char* k_smem = smem + (p.q_resident ? p.chunks : kStages) * kForwardQBytes;
  const unsigned char* q_rows = p.operand[dir.anchor] + row0 * p.row_bytes;
  const unsigned char* k_rows = p.operand[dir.candidate];

  // Row state of this thread's 4 rows (m-tile mt, half h: accumulator rows g and g + 8).
  RowState state[2][2];
  float row_factor[2][2];  // saved row -> unit row
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t r = row0 + 32 * warp + 16 * mt + mma::c_row(lane, 2 * h);
      state[mt][h] = {p.fixed_shift ? c2 : -INFINITY, 0.f, 0.f, 0.f};
      row_factor[mt][h] = r < dir.anchors ? p.factor[dir.anchor][r] : 0.f;
    }
  const float* candidate_factor = p.factor[dir.candidate];
  float col_factor[8][2];  // of the current column tile's candidates (0 past the end)

  float acc[2][8][4];
  zero(acc);
  if (p.q_resident)
    for (int kc = 0; kc < p.chunks; ++kc)
      copy_chunk<kForwardRows>(q_smem + kc * kForwardQBytes, q_rows + kc * kChunkBytes, p.row_bytes);

  const int chunks = p.chunks;
  auto load = [&](int step, int stage) {
    const int t = t_begin + step / chunks, kc = step % chunks;
    copy_chunk<kCols>(k_smem + stage * kTileChunkBytes,
                      k_rows + int64_t(t) * kCols * p.row_bytes + kc * kChunkBytes, p.row_bytes);
    if (!p.q_resident)
      copy_chunk<kForwardRows>(q_smem + stage * kForwardQBytes, q_rows + kc * kChunkBytes, p.row_bytes);
  };
  auto compute = [&](int step, int stage) {
    const int t = t_begin + step / chunks, kc = step % chunks;
    const int64_t col0 = int64_t(t) * kCols;
    if (kc == 0)  // loaded ahead of their use at the tile's end
#pragma unroll
      for (int nb = 0; nb < 8; ++nb)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t c = col0 + 8 * nb + mma::c_col(lane, e);
          col_factor[nb][e] = c < dir.candidates ? candidate_factor[c] : 0.f;
        }
    const unsigned char* q = q_smem + (p.q_resident ? kc : stage) * kForwardQBytes;
    chunk_product<Path, 2>(acc, q, 32 * warp, k_smem + stage * kTileChunkBytes, lane);
    if (kc != chunks - 1) return;
    // The S tile of candidates [t * 64, t * 64 + 64) is complete: fold it into the row states.
    if (forward_tile_plain(p, dir, row0, col0)) {
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float scale = row_factor[mt][h] * c2;
          float l = 0.f;
#pragma unroll
          for (int nb = 0; nb < 8; ++nb)
#pragma unroll
            for (int e = 0; e < 2; ++e) l += exp2f(fmaf(acc[mt][nb][2 * h + e] * col_factor[nb][e], scale, -c2));
          state[mt][h].l += l;
        }
      zero(acc);
      return;
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t r = row0 + 32 * warp + 16 * mt + mma::c_row(lane, 2 * h);
        const bool row_ok = r < dir.anchors;
        // Positive keys (math.h: a compared candidate is a positive when the keys match), loaded
        // here: such tiles are few, and registers held through the sweep cost every tile occupancy.
        const int64_t row_key = row_ok ? dir.positives.row_key(r) : 0;
        RowState& s = state[mt][h];
        float tile_max = -INFINITY;
        // acc becomes the cosine of each compared pair and -inf elsewhere, whose exponential below
        // adds an exact 0.
#pragma unroll
        for (int nb = 0; nb < 8; ++nb)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int64_t c = col0 + 8 * nb + mma::c_col(lane, e);
            const float x = acc[mt][nb][2 * h + e] * col_factor[nb][e] * row_factor[mt][h];  // cosine
            const bool valid = row_ok && c < dir.candidates && compare.compared(r, c);
            acc[mt][nb][2 * h + e] = valid ? x : -INFINITY;
            if (valid && row_key == dir.positives.column_key(c)) {
              s.positive_sum += x;
              s.positive_count += 1.f;
            }
            if (valid) tile_max = fmaxf(tile_max, x);
          }
        if (!p.fixed_shift) {  // online maximum, in base-2 units (c2 > 0 keeps the order)
          tile_max = quad_max(tile_max) * c2;
          const float m = fmaxf(s.m, tile_max);
          if (m != -INFINITY) {
            s.l *= exp2f(s.m - m);
            s.m = m;
          }
        }
        if (s.m != -INFINITY) {
          const float shift = -s.m;
#pragma unroll
          for (int nb = 0; nb < 8; ++nb)
#pragma unroll
            for (int e = 0; e < 2; ++e) s.l += exp2f(fmaf(acc[mt][nb][2 * h + e], c2, shift));
        }
      }
    zero(acc);
  };
  run_ring(max(0, t_end - t_begin) * chunks, load, compute);

  // Row totals over the quad; lane 0 of each quad holds them.
  const int splits = p.forward_splits;
  const int64_t rows_pad = p.partial_rows;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      RowState& s = state[mt][h];
      s.l = quad_sum(s.l);
      s.positive_sum = quad_sum(s.positive_sum);
      s.positive_count = quad_sum(s.positive_count);
      const int64_t r = row0 + 32 * warp + 16 * mt + mma::c_row(lane, 2 * h);
      if (lane % 4 != 0 || r >= dir.anchors) continue;
      if (splits == 1) {
        finish_row(p, dir, r, s.m, s.l, s.positive_sum, s.positive_count);
      } else {
        p.partial_stats[(int64_t(d) * splits + blockIdx.y) * rows_pad + r] =
            make_float4(s.m, s.l, s.positive_sum, s.positive_count);
      }
    }

  if (splits > 1) {
    if (!arrive_last(p.counters + forward_counter(p, d, row_tile), splits)) return;
    // The last split of this row tile merges the partials in split order: one row per thread.
    const int64_t r = row0 + threadIdx.x;
    if (r < dir.anchors) {
      float m = -INFINITY;
      for (int s = 0; s < splits; ++s)
        m = fmaxf(m, __ldcg(&p.partial_stats[(int64_t(d) * splits + s) * rows_pad + r]).x);
      float l = 0.f, positive_sum = 0.f, positive_count = 0.f;
      for (int s = 0; s < splits; ++s) {
        const float4 part = __ldcg(&p.partial_stats[(int64_t(d) * splits + s) * rows_pad + r]);
        if (part.x != -INFINITY) l += part.y * exp2f(part.x - m);
        positive_sum += part.z;
        positive_count += part.w;
      }
      finish_row(p, dir, r, m, l, positive_sum, positive_count);
    }
  }

  // The last row tile of all reduces the per-anchor losses into the output.
  const int finishers = p.forward_row_tiles[0] + (p.problem.symmetric ? p.forward_row_tiles[1] : 0);
  if (!arrive_last(p.counters + final_counter(p), finishers)) return;
  const int64_t total = p.problem.total_rows();
  reduce_losses<kThreads>(p.loss_rows, p.stats + total, p.rows[0], total, p.problem.reduction,
                          p.stats + 2 * total, p.out);
}

// ---- backward ----

// The owner's rows take part in up to two directions: as anchors (direction `as_anchor`) and as
// candidates of the other input's anchors (direction `as_candidate`); -1 when absent.
struct Owner {
  int matrix, other;
  int64_t rows, other_rows;
  int as_anchor, as_candidate;
};

__device__ inline Owner owner_of(const Params& p, int o) {
  const bool sym = p.problem.symmetric, self = p.problem.self;
  if (o == 0) return {0, 1, p.rows[0], p.rows[1], 0, sym ? 1 : (self ? 0 : -1)};
  return {1, 0, p.rows[1], p.rows[0], sym ? 1 : -1, 0};
}

__device__ inline Positives direction_positives(const Params& p, int d) {
  return d == 0 ? p.problem.positives : p.problem.positives.reversed();
}

__device__ inline int64_t direction_offset(const Params& p, int d) { return d == 0 ? 0 : p.rows[0]; }

// Per-row (or per-column) backward coefficients of one direction: dL/ds_ij's softmax part is
// exp_coef * E_ij (fixed shift) or weight * exp(s_ij - lse_ij) (online), its positive part
// positive (subtracted where the pair is positive).
struct Coefficients {
  float exp_coef;   // fixed shift: w * exp(1/tau - lse); online: w
  float lse2;       // online: lse in base-2 units
  float positive;   // w / count
};

__device__ inline Coefficients coefficients(const Params& p, int d, int64_t row, float scale) {
  if (d < 0) return {0.f, 0.f, 0.f};
  const RowStats stats = direction_stats(p.problem, p.stats, p.grad_out, d);
  const int64_t i = direction_offset(p, d) + row;
  const float w = stats.grad[row * stats.grad_stride] * scale;
  const float inv_count = p.inv_count[i];  // 0 without positives
  if (p.fixed_shift) return {w * p.coef[i], 0.f, w * inv_count};
  return {inv_count > 0.f ? w : 0.f, stats.lse[row] * kLog2e, w * inv_count};
}

__device__ inline float direction_scale(const Params& p, int d) {
  return d < 0 ? 0.f : gradient_scale(direction_stats(p.problem, p.stats, p.grad_out, d));
}

// The rows of this thread (h = 0, 1: accumulator rows g and g + 8) with their coefficients and
// positive keys: as anchors of direction as_anchor (its row key) and as candidates of direction
// as_candidate (its column key).
struct RowCoefficients {
  int64_t r[2];
  bool ok[2];
  float factor[2];  // saved row -> unit row
  Coefficients anchor[2];
  int64_t anchor_key[2], candidate_key[2];
};

// Whether the backward tile of owner rows [r0, r0 + kBackwardRows) x other rows [c0, c0 + kCols)
// is plain in both directions the owner's rows take part in (see the file's head).
__device__ inline bool backward_tile_plain(const Params& p, const Owner& owner, int64_t r0, int64_t c0) {
  const int64_t r1 = r0 + kBackwardRows, c1 = c0 + kCols;
  const Comparison& compare = p.problem.compare;
  if (!p.fixed_shift || r1 > owner.rows || c1 > owner.other_rows) return false;
  return (owner.as_anchor < 0 || plain_rectangle(compare, direction_positives(p, owner.as_anchor), r0, r1, c0, c1)) &&
         (owner.as_candidate < 0 || plain_rectangle(compare, direction_positives(p, owner.as_candidate), c0, c1, r0, r1));
}

// What a plain tile's dL/ds needs of this thread's two owner rows (accumulator rows g, g + 8).
struct RowTerms {
  float factor[2];    // saved row -> unit row
  float exp_coef[2];  // the anchor direction's fixed-shift coefficient (0 without one)
};

// What a plain tile's dL/ds needs of its columns, two at a time: (f_j, cc_j, f_j+1, cc_j+1) with
// f the other row's factor and cc its coefficient as a candidate of direction as_candidate (0
// without one); zeros past the other rows' end.
__device__ inline float4 column_pair(const Params& p, const Owner& owner, float scale_c, int64_t c) {
  float values[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    if (c + e >= owner.other_rows) continue;
    values[2 * e] = p.factor[owner.other][c + e];
    if (owner.as_candidate >= 0) values[2 * e + 1] = coefficients(p, owner.as_candidate, c + e, scale_c).exp_coef;
  }
  return make_float4(values[0], values[1], values[2], values[3]);
}

// dL/ds of a plain tile (backward_tile_plain: every pair compared in both directions, none
// positive, fixed shift) times the other row's factor, in place: E_ij (anchor coefficient of i +
// candidate coefficient of j) f_j, E_ij = exp(s_ij - 1/tau). `columns(nb)` gives column_pair of
// columns 8 nb + c_col(lane, 0) and the next.
template <class Columns>
__device__ inline void plain_logit_gradients(float c2, const RowTerms& rows, Columns&& columns,
                                             float (&acc)[8][4]) {
#pragma unroll
  for (int nb = 0; nb < 8; ++nb) {
    const float4 pair = columns(nb);
    const float f[2] = {pair.x, pair.z}, cc[2] = {pair.y, pair.w};
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float& value = acc[nb][2 * h + e];
        value = exp2f(fmaf(value * f[e], rows.factor[h] * c2, -c2)) * (rows.exp_coef[h] + cc[e]) * f[e];
      }
  }
}

// dL/ds of this thread's accumulator values times the other row's factor, in place, for any tile
// (per-pair comparisons, positives and the online shift): acc holds the products of the saved
// owner rows rc.r[h] and other rows col0 + 8 nb + c_col(lane, e); pairs that are not compared get 0.
__device__ inline void logit_gradients(const Params& p, const Owner& owner, const RowCoefficients& rc,
                                       float scale_c, int64_t col0, int lane, float (&acc)[8][4]) {
  const bool has_a = owner.as_anchor >= 0, has_c = owner.as_candidate >= 0;
  const float c2 = p.c2;
  const float* other_factor = p.factor[owner.other];
  const Positives pa = has_a ? direction_positives(p, owner.as_anchor) : Positives{};
  const Positives pc = has_c ? direction_positives(p, owner.as_candidate) : Positives{};
#pragma unroll
  for (int nb = 0; nb < 8; ++nb)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t c = col0 + 8 * nb + mma::c_col(lane, e);
      const bool col_ok = c < owner.other_rows;
      const float f = col_ok ? other_factor[c] : 0.f;
      Coefficients cc{0.f, 0.f, 0.f};
      int64_t a_column_key = 0, c_row_key = 0;  // column c's keys in the two directions
      if (col_ok) {
        if (has_a) a_column_key = pa.column_key(c);
        if (has_c) {
          cc = coefficients(p, owner.as_candidate, c, scale_c);
          c_row_key = pc.row_key(c);
        }
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t r = rc.r[h];
        float& value = acc[nb][2 * h + e];
        // Each direction's own comparison: the owner's row r as anchor (r, c), or as candidate (c, r).
        const bool as_anchor = has_a && rc.ok[h] && col_ok && p.problem.compare.compared(r, c);
        const bool as_candidate = has_c && rc.ok[h] && col_ok && p.problem.compare.compared(c, r);
        if (!as_anchor && !as_candidate) {
          value = 0.f;
          continue;
        }
        const float x = value * f * rc.factor[h] * c2;  // base-2 logit
        float g;
        if (p.fixed_shift) {
          g = exp2f(x - c2) * ((as_anchor ? rc.anchor[h].exp_coef : 0.f) + (as_candidate ? cc.exp_coef : 0.f));
        } else {
          g = 0.f;
          if (as_anchor && rc.anchor[h].exp_coef != 0.f) g += rc.anchor[h].exp_coef * exp2f(x - rc.anchor[h].lse2);
          if (as_candidate && cc.exp_coef != 0.f) g += cc.exp_coef * exp2f(x - cc.lse2);
        }
        if (as_anchor && rc.anchor_key[h] == a_column_key) g -= rc.anchor[h].positive;
        if (as_candidate && c_row_key == rc.candidate_key[h]) g -= cc.positive;
        value = g * f;
      }
    }
}

__device__ inline RowCoefficients row_coefficients(const Params& p, const Owner& owner, int64_t row0,
                                                   int warp, int lane) {
  RowCoefficients rc;
  const float scale_a = direction_scale(p, owner.as_anchor);
  const Positives pa = owner.as_anchor >= 0 ? direction_positives(p, owner.as_anchor) : Positives{};
  const Positives pc = owner.as_candidate >= 0 ? direction_positives(p, owner.as_candidate) : Positives{};
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t r = row0 + 16 * warp + mma::c_row(lane, 2 * h);
    rc.r[h] = r;
    rc.ok[h] = r < owner.rows;
    rc.factor[h] = rc.ok[h] ? p.factor[owner.matrix][r] : 0.f;
    rc.anchor[h] = rc.ok[h] ? coefficients(p, owner.as_anchor, r, scale_a) : Coefficients{0.f, 0.f, 0.f};
    rc.anchor_key[h] = rc.ok[h] && owner.as_anchor >= 0 ? pa.row_key(r) : 0;
    rc.candidate_key[h] = rc.ok[h] && owner.as_candidate >= 0 ? pc.column_key(r) : 0;
  }
  return rc;
}

__device__ inline RowTerms row_terms(const RowCoefficients& rc) {
  return {{rc.factor[0], rc.factor[1]}, {rc.anchor[0].exp_coef, rc.anchor[1].exp_coef}};
}

// dL/ds (times the other row's factor) of the tile of owner rows [row0, row0 + 64) x other rows
// [col0, col0 + 64), in place: plain_logit_gradients on a plain tile (its per-column terms from
// `columns`), else logit_gradients with the rows' full coefficients from `all_rows()` (the
// resident kernel reloads them there: such tiles are few, and keeping them in registers through
// the sweep would cost every tile occupancy; the streamed kernel keeps them, which spills less).
template <class AllRows, class Columns>
__device__ inline void tile_logit_gradients(const Params& p, const Owner& owner, const RowTerms& rows,
                                            AllRows&& all_rows, float scale_c, int64_t row0, int64_t col0,
                                            int lane, Columns&& columns, float (&acc)[8][4]) {
  if (backward_tile_plain(p, owner, row0, col0))
    plain_logit_gradients(p.c2, rows, columns, acc);
  else
    logit_gradients(p, owner, all_rows(), scale_c, col0, lane, acc);
}

// The gradient product of one 128-byte chunk of the other tile's gradient-operand rows:
// gacc[fb] (8 features each) += dS (16 owner rows x 64 candidates) . V chunk.
//   bf16 operands: dS as A fragments (packed pairs of the accumulators), V by ldmatrix.trans;
//   tf32: dS straight from the accumulators in a permuted k order, V by 32-bit shared loads.
template <Operand op>
struct GradientOperand;

template <>
struct GradientOperand<Operand::kBf16> {
  static constexpr int kBlocksPerChunk = 8;  // 64 features of 8
  uint32_t a[4][4];                          // 4 k-steps of 16 candidates

  __device__ void set(const float (&ds)[8][4]) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      a[kk][0] = pack_bf16(ds[2 * kk][0], ds[2 * kk][1]);
      a[kk][1] = pack_bf16(ds[2 * kk][2], ds[2 * kk][3]);
      a[kk][2] = pack_bf16(ds[2 * kk + 1][0], ds[2 * kk + 1][1]);
      a[kk][3] = pack_bf16(ds[2 * kk + 1][2], ds[2 * kk + 1][3]);
    }
  }

  template <int kBlocks>
  __device__ void product(float (&gacc)[kBlocks][4], int first_block, const unsigned char* v_chunk,
                          int lane) const {
    const uint32_t base = smem_address(v_chunk);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
      for (int pair = 0; pair < 4; ++pair) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, base + mma::swizzled_offset(16 * kk + mma::bt_row(lane),
                                                         mma::bt_unit(lane, 2 * pair)));
        mma<Operand::kBf16>(gacc[first_block + 2 * pair], a[kk], b[0], b[1]);
        mma<Operand::kBf16>(gacc[first_block + 2 * pair + 1], a[kk], b[2], b[3]);
      }
  }
};

template <>
struct GradientOperand<Operand::kTf32> {
  static constexpr int kBlocksPerChunk = 4;  // 32 features of 8
  uint32_t a[8][4];                          // 8 k-steps of 8 candidates

  __device__ void set(const float (&ds)[8][4]) {
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int reg = 0; reg < 4; ++reg) a[j][reg] = to_tf32(ds[j][mma::tf32_a_value(reg)]);
  }

  template <int kBlocks>
  __device__ void product(float (&gacc)[kBlocks][4], int first_block, const unsigned char* v_chunk,
                          int lane) const {
    const int g = lane / 4;
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int fb = 0; fb < 4; ++fb) {
        const int feature = 8 * fb + g;  // within the 32 features of the chunk
        const int unit = feature / 4, word = feature % 4;
        const auto* b0 = reinterpret_cast<const uint32_t*>(
            v_chunk + mma::swizzled_offset(8 * j + mma::tf32_b_row(lane, 0), unit) + 4 * word);
        const auto* b1 = reinterpret_cast<const uint32_t*>(
            v_chunk + mma::swizzled_offset(8 * j + mma::tf32_b_row(lane, 1), unit) + 4 * word);
        mma<Operand::kTf32>(gacc[first_block + fb], a[j], *b0, *b1);
      }
  }
};

// Writes (or adds) this thread's G values of feature blocks [0, kBlocks) starting at feature
// `feature0` for owner rows local_row[h] into a float32 buffer of rows `dim_pad` apart.
template <int kBlocks>
__device__ inline void store_g(float* rows, int64_t dim_pad, int64_t feature0, int64_t limit,
                               const int (&local_row)[2], int lane, const float (&gacc)[kBlocks][4]) {
#pragma unroll
  for (int fb = 0; fb < kBlocks; ++fb) {
    const int64_t f = feature0 + 8 * fb + mma::c_col(lane, 0);
    if (f >= limit) continue;
#pragma unroll
    for (int h = 0; h < 2; ++h)
      *reinterpret_cast<float2*>(rows + local_row[h] * dim_pad + f) =
          make_float2(gacc[fb][2 * h], gacc[fb][2 * h + 1]);
  }
}

template <int kBlocks>
__device__ inline void load_g(const float* rows, int64_t dim_pad, int64_t feature0, int64_t limit,
                              const int (&local_row)[2], int lane, float (&gacc)[kBlocks][4]) {
#pragma unroll
  for (int fb = 0; fb < kBlocks; ++fb) {
    const int64_t f = feature0 + 8 * fb + mma::c_col(lane, 0);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float2 v = make_float2(0.f, 0.f);
      if (f < limit) v = *reinterpret_cast<const float2*>(rows + local_row[h] * dim_pad + f);
      gacc[fb][2 * h] = v.x;
      gacc[fb][2 * h + 1] = v.y;
    }
  }
}

// Resident variant: D <= 64 kGChunks features; G in registers; whole tiles in shared memory:
// [owner tile: chunks][2 x other tile: chunks][F16Path: 2 x other tile, tf32 copy: gchunks].
template <class Path, int kGChunks, bool kOccupancy>
__global__ void __launch_bounds__(kThreads, kOccupancy && kGChunks <= 2 ? kOccupancyBlocks : 1)
    backward_resident_kernel(const Params p) {
  COUN_FAST_DYNAMIC_SHARED(smem);
  const int o = blockIdx.z;
  const Owner owner = owner_of(p, o);
  const int row_tile = blockIdx.x;
  if (row_tile >= p.backward_row_tiles[o]) return;
  const int64_t row0 = int64_t(row_tile) * kBackwardRows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int col_tiles = static_cast<int>((owner.other_rows + kCols - 1) / kCols);
  const int tiles_per_split = p.backward_tiles_per_split[o];
  const int t_begin = min(col_tiles, int(blockIdx.y) * tiles_per_split);
  const int t_end = min(col_tiles, t_begin + tiles_per_split);
  const int chunks = p.chunks, gchunks = p.gchunks;
  const int64_t tile_bytes = int64_t(chunks) * kTileChunkBytes;
  const int64_t gtile_bytes = int64_t(gchunks) * kTileChunkBytes;

  unsigned char* q_smem = smem;
  unsigned char* k_smem = smem + tile_bytes;  // 2 stages
  unsigned char* v_smem = Path::kSeparateGradientRows ? k_smem + 2 * tile_bytes : k_smem;
  const int64_t v_stage_bytes = Path::kSeparateGradientRows ? gtile_bytes : tile_bytes;
  const unsigned char* q_rows = p.operand[owner.matrix] + row0 * p.row_bytes;
  const unsigned char* k_rows = p.operand[owner.other];
  const unsigned char* v_rows = p.goperand[owner.other];

  auto load_tile = [&](int t, int stage) {
    for (int kc = 0; kc < chunks; ++kc)
      copy_chunk<kCols>(k_smem + stage * tile_bytes + kc * kTileChunkBytes,
                        k_rows + int64_t(t) * kCols * p.row_bytes + kc * kChunkBytes, p.row_bytes);
    if constexpr (Path::kSeparateGradientRows)
      for (int kc = 0; kc < gchunks; ++kc)
        copy_chunk<kCols>(v_smem + stage * gtile_bytes + kc * kTileChunkBytes,
                          v_rows + int64_t(t) * kCols * p.grow_bytes + kc * kChunkBytes, p.grow_bytes);
  };

  const RowTerms rows = row_terms(row_coefficients(p, owner, row0, warp, lane));
  const float scale_c = direction_scale(p, owner.as_candidate);
  // kOccupancy: per stage, the column terms of its tile (column_pair of columns 2 i, 2 i + 1 at i),
  // written by the first warp, so each is computed once per block instead of by every thread that
  // uses it (kBackwardStaticShared leaves room for them).
  __shared__ float4 staged_columns[2][kCols / 2];
  const bool stager = kOccupancy && threadIdx.x < kCols / 2;
  auto column_terms = [&](int t) {
    return stager ? column_pair(p, owner, scale_c, int64_t(t) * kCols + 2 * threadIdx.x) : make_float4(0.f, 0.f, 0.f, 0.f);
  };
  using GOp = GradientOperand<Path::kGradient>;
  constexpr int kBlocks = kGChunks * 8;  // feature blocks of 8 in registers
  float gacc[kBlocks][4];
#pragma unroll
  for (int fb = 0; fb < kBlocks; ++fb)
#pragma unroll
    for (int i = 0; i < 4; ++i) gacc[fb][i] = 0.f;

  for (int kc = 0; kc < chunks; ++kc)
    copy_chunk<kCols>(q_smem + kc * kTileChunkBytes, q_rows + kc * kChunkBytes, p.row_bytes);
  if (t_begin < t_end) {
    load_tile(t_begin, 0);
    if (stager) staged_columns[0][threadIdx.x] = column_terms(t_begin);
  }
  cp_async_commit();
  for (int t = t_begin; t < t_end; ++t) {
    const int stage = (t - t_begin) % 2;
    if (t + 1 < t_end) load_tile(t + 1, 1 - stage);
    cp_async_commit();
    // kOccupancy: the next tile's column terms, loaded now, stored once this tile's work is issued.
    const float4 next_columns = t + 1 < t_end ? column_terms(t + 1) : make_float4(0.f, 0.f, 0.f, 0.f);
    cp_async_wait<1>();
    __syncthreads();
    float acc[1][8][4];
    zero(acc);
    for (int kc = 0; kc < chunks; ++kc)
      chunk_product<Path, 1>(acc, q_smem + kc * kTileChunkBytes, 16 * warp,
                             k_smem + stage * tile_bytes + kc * kTileChunkBytes, lane);
    const int64_t col0 = int64_t(t) * kCols;
    auto all_rows = [&] { return row_coefficients(p, owner, row0, warp, lane); };
    tile_logit_gradients(p, owner, rows, all_rows, scale_c, row0, col0, lane, [&](int nb) {
      return kOccupancy ? staged_columns[stage][4 * nb + lane % 4]
                        : column_pair(p, owner, scale_c, col0 + 8 * nb + mma::c_col(lane, 0));
    }, acc[0]);
    GOp ds;
    ds.set(acc[0]);
#pragma unroll
    for (int gc = 0; gc < kBlocks / GOp::kBlocksPerChunk; ++gc)
      if (gc < gchunks)
        ds.product(gacc, gc * GOp::kBlocksPerChunk, v_smem + stage * v_stage_bytes + gc * kTileChunkBytes,
                   lane);
    if (stager) staged_columns[1 - stage][threadIdx.x] = next_columns;  // read after the next wait
    __syncthreads();  // this stage is read: the next iteration may refill it
  }
  cp_async_wait<0>();

  const int local_row[2] = {16 * warp + mma::c_row(lane, 0), 16 * warp + mma::c_row(lane, 2)};
  float* g_rows = p.g_partial + p.g_offset[o] + (int64_t(blockIdx.y) * p.rows_pad[owner.matrix] + row0) * p.dim_pad;
  store_g(g_rows, p.dim_pad, 0, p.dim_pad, local_row, lane, gacc);
}

// Streamed variant, any D: the ring carries, per column tile, the logits steps (owner chunk and
// other chunk) and then the gradient steps (one chunk of the other tile's gradient operand); G
// lives in the block's float32 rows in global memory, one chunk of features at a time in
// registers.
template <class Path>
__global__ void __launch_bounds__(kThreads) backward_streamed_kernel(const Params p) {
  COUN_FAST_DYNAMIC_SHARED(smem);
  const int o = blockIdx.z;
  const Owner owner = owner_of(p, o);
  const int row_tile = blockIdx.x;
  if (row_tile >= p.backward_row_tiles[o]) return;
  const int64_t row0 = int64_t(row_tile) * kBackwardRows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int col_tiles = static_cast<int>((owner.other_rows + kCols - 1) / kCols);
  const int tiles_per_split = p.backward_tiles_per_split[o];
  const int t_begin = min(col_tiles, int(blockIdx.y) * tiles_per_split);
  const int t_end = min(col_tiles, t_begin + tiles_per_split);
  const int chunks = p.chunks, gchunks = p.gchunks, steps_per_tile = chunks + gchunks;

  // Stage st: [owner chunk 8 KB][other chunk 8 KB].
  auto q_stage = [&](int st) { return smem + st * 2 * kTileChunkBytes; };
  auto k_stage = [&](int st) { return smem + st * 2 * kTileChunkBytes + kTileChunkBytes; };
  const unsigned char* q_rows = p.operand[owner.matrix] + row0 * p.row_bytes;
  const unsigned char* k_rows = p.operand[owner.other];
  const unsigned char* v_rows = p.goperand[owner.other];

  const RowCoefficients rc = row_coefficients(p, owner, row0, warp, lane);
  const float scale_c = direction_scale(p, owner.as_candidate);
  using GOp = GradientOperand<Path::kGradient>;
  constexpr int kBlocks = GOp::kBlocksPerChunk;
  constexpr int kFeaturesPerChunk = 8 * kBlocks;
  const int local_row[2] = {16 * warp + mma::c_row(lane, 0), 16 * warp + mma::c_row(lane, 2)};
  float* g_rows = p.g_partial + p.g_offset[o] + (int64_t(blockIdx.y) * p.rows_pad[owner.matrix] + row0) * p.dim_pad;

  float acc[1][8][4];
  GOp ds;
  auto load = [&](int step, int stage) {
    const int t = t_begin + step / steps_per_tile, s = step % steps_per_tile;
    const int64_t tile_row = int64_t(t) * kCols;
    if (s < chunks) {
      copy_chunk<kCols>(q_stage(stage), q_rows + s * kChunkBytes, p.row_bytes);
      copy_chunk<kCols>(k_stage(stage), k_rows + tile_row * p.row_bytes + s * kChunkBytes, p.row_bytes);
    } else {
      copy_chunk<kCols>(k_stage(stage), v_rows + tile_row * p.grow_bytes + (s - chunks) * kChunkBytes,
                        p.grow_bytes);
    }
  };
  auto compute = [&](int step, int stage) {
    const int t = t_begin + step / steps_per_tile, s = step % steps_per_tile;
    if (s < chunks) {
      if (s == 0) zero(acc);
      chunk_product<Path, 1>(acc, q_stage(stage), 16 * warp, k_stage(stage), lane);
      if (s == chunks - 1) {
        const int64_t col0 = int64_t(t) * kCols;
        tile_logit_gradients(p, owner, row_terms(rc), [&] { return rc; }, scale_c, row0, col0, lane, [&](int nb) {
          return column_pair(p, owner, scale_c, col0 + 8 * nb + mma::c_col(lane, 0));
        }, acc[0]);
        ds.set(acc[0]);
      }
      return;
    }
    const int64_t feature0 = int64_t(s - chunks) * kFeaturesPerChunk;
    float gacc[kBlocks][4];
    if (t == t_begin) {
#pragma unroll
      for (int fb = 0; fb < kBlocks; ++fb)
#pragma unroll
        for (int i = 0; i < 4; ++i) gacc[fb][i] = 0.f;
    } else {
      load_g(g_rows, p.dim_pad, feature0, p.dim_pad, local_row, lane, gacc);
    }
    ds.product(gacc, 0, k_stage(stage), lane);
    store_g(g_rows, p.dim_pad, feature0, p.dim_pad, local_row, lane, gacc);
  };
  run_ring(max(0, t_end - t_begin) * steps_per_tile, load, compute);
  if (t_begin >= t_end) {  // an empty split: its G rows are zero
    float zeros[kBlocks][4] = {};
    for (int64_t f0 = 0; f0 < p.dim_pad; f0 += kFeaturesPerChunk)
      store_g(g_rows, p.dim_pad, f0, p.dim_pad, local_row, lane, zeros);
  }
}

// ---- finish ----

// One warp per gradient row (A's rows, then B's unless self): the row's G summed over the splits
// in split order, projected through the normalization, dL/dx_r = (g - (g . a_r) a_r) / (tau
// max(||x_r||, eps)), written in the input's dtype. Each lane keeps its features (float4 groups
// lane, lane + 32, ...) in registers between the dot product and the write. kOccupancy: the splits'
// loads of all its groups are issued together (split outermost), one round trip to L2 per split
// instead of one per split and group; the sums keep the split order (the same bits).
template <class Path, bool kOccupancy>
__global__ void __launch_bounds__(kThreads) finish_kernel(const Params p) {
  constexpr int kGroups = kMaxDim / 128;  // float4 groups per lane at the largest dimension
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int64_t r = int64_t(blockIdx.x) * kWarps + warp;
  int o = 0;
  if (r >= p.rows[0]) {
    r -= p.rows[0];
    o = 1;
    if (p.problem.self || r >= p.rows[1]) return;
  }
  const int matrix = o;  // owner o's rows are matrix o's (owner_of)
  const MatrixView& x = matrix == 0 ? p.problem.a : p.problem.b;
  const int splits = p.backward_splits;
  const int64_t dim = x.dim, dim_pad = p.dim_pad, split_stride = p.rows_pad[matrix] * dim_pad;
  const float* g_row = p.g_partial + p.g_offset[o] + r * dim_pad;
  const float inv_norm = p.inv_norm[matrix][r];
  float4 g[kGroups], a[kGroups];
  float dot = 0.f;
  auto add_split = [&](int s, int i, int64_t k) {
    const float4 v = __ldcg(reinterpret_cast<const float4*>(g_row + s * split_stride + k));
    g[i].x += v.x;
    g[i].y += v.y;
    g[i].z += v.z;
    g[i].w += v.w;
  };
#pragma unroll
  for (int i = 0; i < kGroups; ++i) g[i] = a[i] = make_float4(0.f, 0.f, 0.f, 0.f);
  if constexpr (kOccupancy) {
    for (int s = 0; s < splits; ++s) {
#pragma unroll
      for (int i = 0; i < kGroups; ++i) {
        const int64_t k = (int64_t(i) * 32 + lane) * 4;
        if (k < dim_pad) add_split(s, i, k);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kGroups; ++i) {
    const int64_t k = (int64_t(i) * 32 + lane) * 4;
    if (k >= dim_pad) continue;
    if constexpr (!kOccupancy) {
      for (int s = 0; s < splits; ++s) add_split(s, i, k);
    }
    a[i].x = k < dim ? x.at(r, k) * inv_norm : 0.f;
    a[i].y = k + 1 < dim ? x.at(r, k + 1) * inv_norm : 0.f;
    a[i].z = k + 2 < dim ? x.at(r, k + 2) * inv_norm : 0.f;
    a[i].w = k + 3 < dim ? x.at(r, k + 3) * inv_norm : 0.f;
    dot += g[i].x * a[i].x + g[i].y * a[i].y + g[i].z * a[i].z + g[i].w * a[i].w;
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
  if (inv_norm >= 1.f / kNormEps) dot = 0.f;  // x / eps is linear: no projection
  const float scale = inv_norm * p.inv_temperature;
  void* grad = p.grad[matrix];
#pragma unroll
  for (int i = 0; i < kGroups; ++i) {
    const int64_t k = (int64_t(i) * 32 + lane) * 4;
    const float values[4] = {g[i].x - dot * a[i].x, g[i].y - dot * a[i].y, g[i].z - dot * a[i].z,
                             g[i].w - dot * a[i].w};
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (k + j < dim) store_element(grad, r * dim + k + j, x.dtype, values[j] * scale);
  }
}

// ---- launchers ----

// The backward kernel of a variant (tc_plan.h chooses g_chunks).
template <class Path, bool kOccupancy>
auto backward_kernel(int g_chunks) {
  return g_chunks == 2   ? backward_resident_kernel<Path, 2, kOccupancy>
         : g_chunks == 4 ? backward_resident_kernel<Path, 4, kOccupancy>
                         : backward_streamed_kernel<Path>;
}


// Raises a kernel's dynamic shared memory limit (cudaFuncSetAttribute is not a stream operation,
// so it is allowed during graph capture too). Without it a launch fails with "invalid argument"
// once the dynamic bytes plus the kernel's static shared memory pass 48 KB; the static part
// (arrive_last's flag, reduce.cuh's partial sums) is at most kStaticSharedReserve.
template <class Kernel>
inline cudaError_t allow_shared(Kernel kernel, int shared_bytes) {
  if (shared_bytes + kStaticSharedReserve <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared_bytes);
}

template <class Path>
int launch_prepare(const Params& p, cudaStream_t stream) {
  auto kernel = prepare_kernel<Path>;
  COUN_FAST_LAUNCH(kernel, prepare_grid(p), kThreads, 0, stream, p);
  return cudaGetLastError();
}

template <class Path>
int launch_forward(const Params& p, bool occupancy, int shared_bytes, cudaStream_t stream) {
  auto kernel = occupancy ? forward_kernel<Path, true> : forward_kernel<Path, false>;
  if (cudaError_t status = allow_shared(kernel, shared_bytes)) return status;
  COUN_FAST_LAUNCH(kernel, forward_grid(p), kThreads, shared_bytes, stream, p);
  return cudaGetLastError();
}

template <class Path>
int launch_backward(const Params& p, int g_chunks, bool occupancy, int shared_bytes, cudaStream_t stream) {
  auto kernel = occupancy ? backward_kernel<Path, true>(g_chunks) : backward_kernel<Path, false>(g_chunks);
  if (cudaError_t status = allow_shared(kernel, shared_bytes)) return status;
  COUN_FAST_LAUNCH(kernel, backward_grid(p), kThreads, shared_bytes, stream, p);
  return cudaGetLastError();
}

template <class Path>
int launch_finish(const Params& p, bool occupancy, cudaStream_t stream) {
  auto kernel = occupancy ? finish_kernel<Path, true> : finish_kernel<Path, false>;
  COUN_FAST_LAUNCH(kernel, finish_grid(p), kThreads, 0, stream, p);
  return cudaGetLastError();
}

}  // namespace coun_fast::tc
