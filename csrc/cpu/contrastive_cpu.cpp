// CPU kernels of the contrastive-loss family: forward, backward and the similarity matrix.
//
// Math (see contrastive.h): a_i = x_i / max(||x_i||, eps), b_j likewise, s_ij = a_i . b_j / tau,
//   l_i = lse_i - (1/|Pos(i)|) sum_{p in Pos(i)} s_ip,   lse_i = log sum_{j compared} exp(s_ij).
// Gradient, for upstream weights w_i = dL/dl_i (w_i = 0 for an anchor without positives):
//   dL/ds_ij = w_i exp(s_ij - lse_i) - [j in Pos(i)] w_i / |Pos(i)|           (logit_gradient)
//   dL/da_i  = (1/tau) sum_j dL/ds_ij b_j,    dL/db_j = (1/tau) sum_i dL/ds_ij a_i
//   dL/dx_i  = (g_i - (g_i . a_i) a_i) / max(||x_i||, eps)   with g_i = dL/da_i  (fused normalize)
//
// Algorithm (the same as the CUDA kernels'):
// - Inputs of any stride and dtype are normalized once into float32 copies: the owner's rows
//   (scaled by 1/tau, so one micro-GEMM yields logits), and the other matrix both as column
//   panels (for S tiles) and as rows (for the gradient accumulation). Memory is O((M + N) D).
// - Work is split into tasks of up to kTaskRows rows. A task sweeps the columns in tiles of up to
//   kTileCols: it computes the S tile with a register-blocked micro-GEMM, then consumes it. Small
//   problems get tiles only as large as they need (a 4 x 8 call does not pad to 32 x 128).
// - Forward: an online log-sum-exp per row (running max and rescaled sum), so any temperature is
//   safe; positive logits are summed from the tile (positives found by comparison) or taken by
//   one dot product (a positive named by the rule).
//   Only lse, count and loss per row are written.
// - Backward (row owner): the tile is recomputed, turned in place into dL/ds for up to two
//   directions (the owner's rows as anchors, and as candidates of the other matrix, which is how
//   a symmetric loss or A-is-B gets its full gradient in one pass), then multiplied into the
//   task's gradient rows by the same micro-GEMM. One task owns its rows from start to end and
//   adds tiles in a fixed order: no atomics, and results are bit-identical run to run.
// - Small problems run on the calling thread (see parallel.h), larger ones on a persistent pool.
// - The reduction of the per-anchor losses (sum, or each direction's mean over anchors with a
//   positive) is summed in row order in double precision.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "coun_fast/contrastive.h"
#include "parallel.h"
#include "simd.h"

namespace coun_fast {
namespace cpu {
namespace {

constexpr int64_t kTaskRows = 4 * kMicroRows;  // most rows owned by one task
constexpr int64_t kTileCols = 128;             // most columns of one S tile (a multiple of kMicroCols)
constexpr float kInf = std::numeric_limits<float>::infinity();

int64_t round_up(int64_t x, int64_t multiple) { return (x + multiple - 1) / multiple * multiple; }

// 1 / max(||x_i||, eps) per row, the norm accumulated in float32 in index order.
std::vector<float> inverse_norms(const MatrixView& x, int num_threads) {
  std::vector<float> inv(x.rows);
  parallel_for(x.rows, num_threads, [&](int64_t r) {
    float sum = 0.f;
    for (int64_t k = 0; k < x.dim; ++k) {
      const float v = x.at(r, k);
      sum += v * v;
    }
    inv[r] = 1.f / std::max(std::sqrt(sum), kNormEps);
  });
  return inv;
}

// Normalized rows times `scale`, row-major [rows_pad][dim_pad], zero padded.
std::vector<float> pack_rows(const MatrixView& x, const std::vector<float>& inv_norm, float scale,
                             int64_t rows_pad, int64_t dim_pad, int num_threads) {
  std::vector<float> out(rows_pad * dim_pad, 0.f);
  parallel_for(x.rows, num_threads, [&](int64_t r) {
    const float f = inv_norm[r] * scale;
    for (int64_t k = 0; k < x.dim; ++k) out[r * dim_pad + k] = x.at(r, k) * f;
  });
  return out;
}

// Normalized rows as column panels of the transposed matrix: [rows_pad / kMicroCols][dim][kMicroCols].
std::vector<float> pack_panels(const MatrixView& x, const std::vector<float>& inv_norm,
                               int64_t rows_pad, int num_threads) {
  std::vector<float> out(rows_pad * x.dim, 0.f);
  parallel_for(rows_pad / kMicroCols, num_threads, [&](int64_t panel) {
    float* dst = out.data() + panel * x.dim * kMicroCols;
    for (int64_t j = 0; j < kMicroCols; ++j) {
      const int64_t r = panel * kMicroCols + j;
      if (r >= x.rows) break;
      for (int64_t k = 0; k < x.dim; ++k) dst[k * kMicroCols + j] = x.at(r, k) * inv_norm[r];
    }
  });
  return out;
}

// tile[task_rows x tile_cols] = rows[task_rows x dim] . panels(columns c0 ..)^T
void similarity_tile(const float* rows, int64_t dim_pad, int64_t dim, const float* panels,
                     int64_t c0, int64_t task_rows, int64_t tile_cols, float* tile) {
  for (int64_t mb = 0; mb < task_rows; mb += kMicroRows) {
    for (int64_t p = 0; p < tile_cols; p += kMicroCols) {
      micro_gemm<false>(rows + mb * dim_pad, dim_pad, panels + (c0 + p) * dim, kMicroCols, dim,
                        tile + mb * tile_cols + p, tile_cols);
    }
  }
}

// The problem's shapes and packed operands, shared by the forward, backward and similarity.
struct Packed {
  int64_t rows, cols, dim, dim_pad;
  int64_t task_rows, tile_cols;  // the problem's tile: kTaskRows x kTileCols, or less when small
  int64_t rows_pad, cols_pad;
  std::vector<float> row_inv_norm;
  std::vector<float> rows_scaled;  // [rows_pad][dim_pad], a_i / tau
  std::vector<float> col_panels;   // [cols_pad / kMicroCols][dim][kMicroCols], b_j

  Packed(const MatrixView& row_view, const MatrixView& col_view, float temperature,
         std::vector<float> col_inv_norm, int num_threads)
      : rows(row_view.rows),
        cols(col_view.rows),
        dim(row_view.dim),
        dim_pad(round_up(row_view.dim, kMicroCols)),
        task_rows(std::min(kTaskRows, round_up(row_view.rows, kMicroRows))),
        tile_cols(std::min(kTileCols, round_up(col_view.rows, kMicroCols))),
        rows_pad(round_up(row_view.rows, task_rows)),
        cols_pad(round_up(col_view.rows, tile_cols)),
        row_inv_norm(inverse_norms(row_view, num_threads)),
        rows_scaled(pack_rows(row_view, row_inv_norm, 1.f / temperature, rows_pad, dim_pad,
                              num_threads)),
        col_panels(pack_panels(col_view, col_inv_norm, cols_pad, num_threads)) {}

  int64_t tasks() const { return rows_pad / task_rows; }

  void tile(int64_t r0, int64_t c0, float* out) const {
    similarity_tile(rows_scaled.data() + r0 * dim_pad, dim_pad, dim, col_panels.data(), c0, task_rows,
                    tile_cols, out);
  }

  // s_rc from the packed operands (one dot product).
  float logit(int64_t r, int64_t c) const {
    const float* panel = col_panels.data() + (c / kMicroCols) * dim * kMicroCols + c % kMicroCols;
    float sum = 0.f;
    for (int64_t k = 0; k < dim; ++k) sum += rows_scaled[r * dim_pad + k] * panel[k * kMicroCols];
    return sum;
  }
};

// Sets the entries of one tile row that are not compared to `value`: row `r` of the owner against
// columns [c0, c0 + valid) of the other matrix. `owner_is_anchor`: the owner's rows are the anchors
// (else the candidates; the comparison is oriented for kPairedPrefix).
void mask_uncompared(const Comparison& compare, int64_t r, int64_t c0, int64_t valid, bool owner_is_anchor,
                     float* row, float value) {
  switch (compare.mode) {
    case Compare::kExcludeSelf:
      if (r >= c0 && r < c0 + valid) row[r - c0] = value;
      return;
    case Compare::kPairedPrefix:
      if (owner_is_anchor) {  // columns below `pairs` belong to their own anchor only
        for (int64_t c = c0; c < std::min(c0 + valid, compare.pairs); ++c)
          if (c != r) row[c - c0] = value;
      } else if (r < compare.pairs) {  // this candidate belongs to anchor r only
        for (int64_t c = c0; c < c0 + valid; ++c)
          if (c != r) row[c - c0] = value;
      }
      return;
    default:
      return;
  }
}

// The per-anchor weight and log-sum-exp of one direction, padded to `size`; an anchor that does
// not contribute gets weight 0 and lse +inf, so its softmax term is exactly 0.
void effective_stats(const Direction* direction, int64_t count, int64_t size,
                     std::vector<float>& weight, std::vector<float>& lse) {
  weight.assign(size, 0.f);
  lse.assign(size, kInf);
  if (direction == nullptr) return;
  const float scale = gradient_scale(direction->stats);
  for (int64_t i = 0; i < count; ++i) {
    weight[i] = anchor_weight(direction->stats, i, scale);
    if (weight[i] != 0.f) lse[i] = direction->stats.lse[i];
  }
}

// One direction of the forward: per-anchor loss, lse and count of `anchors` against `candidates`.
void forward_direction(const MatrixView& anchors, const MatrixView& candidates, float temperature,
                       const Positives& positives, const Comparison& compare, float* loss, float* lse,
                       float* count, int num_threads) {
  const int threads = threads_for(anchors.rows * candidates.rows * anchors.dim, num_threads);
  const Packed packed(anchors, candidates, temperature, inverse_norms(candidates, threads), threads);
  const int64_t num_anchors = packed.rows, num_candidates = packed.cols;
  const bool named = positives.named();

  const int64_t task_rows = packed.task_rows, tile_cols = packed.tile_cols;
  parallel_for(packed.tasks(), threads, [&](int64_t task) {
    const int64_t r0 = task * task_rows;
    std::vector<float> tile(task_rows * tile_cols);
    float row_max[kTaskRows], row_sum[kTaskRows], positive_sum[kTaskRows], positive_count[kTaskRows];
    std::fill_n(row_max, kTaskRows, -kInf);
    std::fill_n(row_sum, kTaskRows, 0.f);
    std::fill_n(positive_sum, kTaskRows, 0.f);
    std::fill_n(positive_count, kTaskRows, 0.f);

    for (int64_t c0 = 0; c0 < packed.cols_pad; c0 += tile_cols) {
      packed.tile(r0, c0, tile.data());
      const int64_t valid_cols = std::min(tile_cols, num_candidates - c0);
      for (int64_t i = 0; i < task_rows && r0 + i < num_anchors; ++i) {
        const int64_t r = r0 + i;
        float* s = tile.data() + i * tile_cols;
        if (!named) {
          for (int64_t c = 0; c < valid_cols; ++c) {
            if (is_compared(r, c0 + c, compare) && positives.is_positive(r, c0 + c)) {
              positive_sum[i] += s[c];
              positive_count[i] += 1.f;
            }
          }
        }
        for (int64_t c = valid_cols; c < tile_cols; ++c) s[c] = -kInf;
        mask_uncompared(compare, r, c0, valid_cols, true, s, -kInf);

        Vec vmaximum = splat(-kInf);
        for (int64_t c = 0; c < tile_cols; c += kLanes) vmaximum = vmax(vmaximum, load(s + c));
        const float tile_max = reduce_max(vmaximum);
        if (tile_max == -kInf) continue;  // every entry of this tile is masked
        if (tile_max > row_max[i]) {
          row_sum[i] *= std::exp(row_max[i] - tile_max);
          row_max[i] = tile_max;
        }
        Vec vsum{};
        const Vec shift = splat(row_max[i]);
        for (int64_t c = 0; c < tile_cols; c += kLanes) vsum += vexp(load(s + c) - shift);
        row_sum[i] += reduce_sum(vsum);
      }
    }

    for (int64_t i = 0; i < task_rows && r0 + i < num_anchors; ++i) {
      const int64_t r = r0 + i;
      if (named) {
        const int64_t p = positives.single(r);
        const bool valid = index_positive_valid(p, r, num_candidates, compare);
        positive_sum[i] = valid ? packed.logit(r, p) : 0.f;
        positive_count[i] = valid ? 1.f : 0.f;
      }
      lse[r] = row_max[i] + std::log(row_sum[i]);
      count[r] = positive_count[i];
      loss[r] = anchor_loss(lse[r], positive_sum[i], positive_count[i]);
    }
  });
}

// The gradient of the owner's raw rows for up to two directions: the owner's rows as anchors
// (as_anchor, stats over the owner's rows) and as candidates of the other matrix's anchors
// (as_candidate, stats over the other's rows).
void backward_owner(const MatrixView& owner, const MatrixView& other, float temperature,
                    const Comparison& compare, const Direction* as_anchor, const Direction* as_candidate,
                    void* grad_owner, int num_threads) {
  const int threads = threads_for(owner.rows * other.rows * owner.dim, num_threads);
  std::vector<float> other_inv_norm = inverse_norms(other, threads);
  const Packed packed(owner, other, temperature, other_inv_norm, threads);
  const int64_t num_rows = packed.rows, num_cols = packed.cols, dim_pad = packed.dim_pad;
  const std::vector<float> other_rows =
      pack_rows(other, other_inv_norm, 1.f, packed.cols_pad, dim_pad, threads);

  std::vector<float> row_weight, row_lse, col_weight, col_lse;
  effective_stats(as_anchor, num_rows, packed.rows_pad, row_weight, row_lse);
  effective_stats(as_candidate, num_cols, packed.cols_pad, col_weight, col_lse);

  const int64_t tile_rows = packed.task_rows, tile_cols = packed.tile_cols;
  parallel_for(packed.tasks(), threads, [&](int64_t task) {
    const int64_t r0 = task * tile_rows;
    const int64_t task_rows = std::min(tile_rows, num_rows - r0);
    std::vector<float> tile(tile_rows * tile_cols);
    std::vector<float> grad(tile_rows * dim_pad, 0.f);

    for (int64_t c0 = 0; c0 < packed.cols_pad; c0 += tile_cols) {
      packed.tile(r0, c0, tile.data());
      const int64_t valid_cols = std::min(tile_cols, num_cols - c0);

      // S tile -> dL/dS tile, softmax parts first (vectorized), then the positive parts.
      for (int64_t i = 0; i < tile_rows; ++i) {
        const int64_t r = r0 + i;
        float* s = tile.data() + i * tile_cols;
        for (int64_t c = 0; c < tile_cols; c += kLanes) {
          const Vec logits = load(s + c);
          Vec g{};
          if (as_anchor != nullptr) g += row_weight[r] * vexp(logits - row_lse[r]);
          if (as_candidate != nullptr)
            g += load(col_weight.data() + c0 + c) * vexp(logits - load(col_lse.data() + c0 + c));
          store(s + c, g);
        }
        if (i >= task_rows) continue;
        if (as_anchor != nullptr && row_weight[r] != 0.f) {
          const Positives& positives = as_anchor->positives;
          const float minus = positive_gradient(row_weight[r], as_anchor->stats.count[r]);
          if (positives.named()) {
            const int64_t p = positives.single(r);
            if (p >= c0 && p < c0 + valid_cols) s[p - c0] -= minus;
          } else {
            for (int64_t c = 0; c < valid_cols; ++c)
              if (positives.is_positive(r, c0 + c)) s[c] -= minus;
          }
        }
        if (as_candidate != nullptr && !as_candidate->positives.named()) {
          const Positives& positives = as_candidate->positives;
          for (int64_t c = 0; c < valid_cols; ++c) {
            const int64_t j = c0 + c;
            if (col_weight[j] != 0.f && positives.is_positive(j, r))
              s[c] -= positive_gradient(col_weight[j], as_candidate->stats.count[j]);
          }
        }
      }
      if (as_candidate != nullptr && as_candidate->positives.named()) {
        for (int64_t c = 0; c < valid_cols; ++c) {
          const int64_t j = c0 + c, p = as_candidate->positives.single(j);
          if (col_weight[j] != 0.f && p >= r0 && p < r0 + task_rows)
            tile[(p - r0) * tile_cols + c] -=
                positive_gradient(col_weight[j], as_candidate->stats.count[j]);
        }
      }
      // Entries that are not compared carry no gradient (padding columns are zero rows already).
      // A kPairedPrefix problem is never symmetric, so the owner is either anchor or candidate.
      for (int64_t i = 0; i < task_rows; ++i)
        mask_uncompared(compare, r0 + i, c0, valid_cols, as_anchor != nullptr, tile.data() + i * tile_cols, 0.f);

      for (int64_t mb = 0; mb < tile_rows; mb += kMicroRows) {
        for (int64_t d0 = 0; d0 < dim_pad; d0 += kMicroCols) {
          micro_gemm<true>(tile.data() + mb * tile_cols, tile_cols,
                           other_rows.data() + c0 * dim_pad + d0, dim_pad, tile_cols,
                           grad.data() + mb * dim_pad + d0, dim_pad);
        }
      }
    }

    // Epilogue: g = (1/tau) grad, projected through the normalization.
    for (int64_t i = 0; i < task_rows; ++i) {
      const int64_t r = r0 + i;
      const float inv_norm = packed.row_inv_norm[r];
      const float* g = grad.data() + i * dim_pad;
      const bool clamped = inv_norm >= 1.f / kNormEps;  // x / eps is linear: no projection
      float dot = 0.f;
      for (int64_t k = 0; k < packed.dim; ++k) dot += g[k] * owner.at(r, k) * inv_norm;
      if (clamped) dot = 0.f;
      const float scale = inv_norm / temperature;
      for (int64_t k = 0; k < packed.dim; ++k) {
        const float unit = owner.at(r, k) * inv_norm;
        store_element(grad_owner, r * packed.dim + k, owner.dtype, (g[k] - dot * unit) * scale);
      }
    }
  });
}

}  // namespace
}  // namespace cpu

// ---- forward ----

void contrastive_forward_cpu(const Problem& problem, float* out, float* stats, int num_threads) {
  using namespace cpu;
  const int64_t m = problem.a.rows, total = problem.total_rows();
  const bool keep_rows = problem.reduction == Reduction::kNone;
  std::vector<float> rows(keep_rows ? 0 : total);
  float* loss = keep_rows ? out : rows.data();
  float* lse = stats;
  float* count = stats + total;
  forward_direction(problem.a, problem.b, problem.temperature, problem.positives,
                    problem.compare, loss, lse, count, num_threads);
  if (problem.symmetric)
    forward_direction(problem.b, problem.a, problem.temperature, problem.positives.reversed(),
                      problem.compare, loss + m, lse + m, count + m, num_threads);

  // Anchors with a positive per direction, and the reduced loss (row order, double precision).
  double sums[2] = {0.0, 0.0}, valid[2] = {0.0, 0.0};
  for (int64_t r = 0; r < total; ++r) {
    const int d = r < m ? 0 : 1;
    sums[d] += loss[r];
    valid[d] += count[r] > 0.f ? 1.0 : 0.0;
  }
  stats[2 * total] = static_cast<float>(valid[0]);
  stats[2 * total + 1] = static_cast<float>(valid[1]);
  if (problem.reduction == Reduction::kSum) {
    out[0] = static_cast<float>(sums[0] + sums[1]);
  } else if (problem.reduction == Reduction::kMean) {
    out[0] = static_cast<float>(sums[0] / std::max(valid[0], 1.0) + sums[1] / std::max(valid[1], 1.0));
  }
}

// ---- backward ----

void contrastive_backward_cpu(const Problem& problem, const float* grad_out, const float* stats,
                              void* grad_a, void* grad_b, int num_threads) {
  using namespace cpu;
  const Direction forward{problem.positives, direction_stats(problem, stats, grad_out, 0)};
  const Direction reverse{problem.positives.reversed(), direction_stats(problem, stats, grad_out, 1)};
  const Direction* reverse_ptr = problem.symmetric ? &reverse : nullptr;
  if (problem.self) {
    backward_owner(problem.a, problem.a, problem.temperature, problem.compare, &forward,
                   &forward, grad_a, num_threads);
    return;
  }
  backward_owner(problem.a, problem.b, problem.temperature, problem.compare, &forward,
                 reverse_ptr, grad_a, num_threads);
  backward_owner(problem.b, problem.a, problem.temperature, problem.compare, reverse_ptr,
                 &forward, grad_b, num_threads);
}

// ---- similarity matrix ----

void similarity_cpu(const MatrixView& a, const MatrixView& b, float temperature, float* out,
                    int num_threads) {
  using namespace cpu;
  const int threads = threads_for(a.rows * b.rows * a.dim, num_threads);
  const Packed packed(a, b, temperature, inverse_norms(b, threads), threads);
  parallel_for(packed.tasks(), threads, [&](int64_t task) {
    const int64_t r0 = task * packed.task_rows;
    std::vector<float> tile(packed.task_rows * packed.tile_cols);
    for (int64_t c0 = 0; c0 < packed.cols_pad; c0 += packed.tile_cols) {
      packed.tile(r0, c0, tile.data());
      const int64_t valid_cols = std::min(packed.tile_cols, packed.cols - c0);
      for (int64_t i = 0; i < packed.task_rows && r0 + i < packed.rows; ++i)
        std::copy_n(tile.data() + i * packed.tile_cols, valid_cols, out + (r0 + i) * packed.cols + c0);
    }
  });
}

}  // namespace coun_fast
