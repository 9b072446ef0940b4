// Scalar math shared by the CPU and CUDA kernels (host and device inline functions).
//
// Everything that decides *what* is computed lives here, once: element loads and stores for the
// three input dtypes, which candidate is compared with which anchor, which candidates are positives,
// the per-anchor loss from its statistics, and the gradient coefficient of one similarity entry.
// The CPU tests therefore exercise the same indexing and masking logic that the GPU kernels use.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define COUN_FAST_HD __host__ __device__ __forceinline__
#else
#define COUN_FAST_HD inline
#endif

namespace coun_fast {

// Element types the kernels read and write. Accumulation is always float32.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Rows are divided by max(||x||, kNormEps), as torch.nn.functional.normalize does.
constexpr float kNormEps = 1e-12f;

COUN_FAST_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

COUN_FAST_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// bfloat16 is the upper half of a float32.
COUN_FAST_HD float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

// Round to nearest even; NaN stays NaN (a quiet bit is forced so rounding cannot make it Inf).
COUN_FAST_HD uint16_t float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// IEEE binary16 -> binary32, exact (normals, subnormals, Inf, NaN).
COUN_FAST_HD float fp16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1fu) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    if (mantissa == 0) return bits_float(sign);
    // Subnormal: value = mantissa * 2^-24.
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return bits_float(sign | float_bits(magnitude));
  }
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// IEEE binary32 -> binary16, round to nearest even, overflow to Inf.
COUN_FAST_HD uint16_t float_to_fp16(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t magnitude = u & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (magnitude >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: Inf
  if (magnitude < 0x38800000u) {
    // Result is subnormal (or zero): value / 2^-24, rounded to nearest even.
    const float scaled = bits_float(magnitude) * 16777216.0f;  // exact: a power-of-two scale
    const float rounded = nearbyintf(scaled);                  // default rounding mode: ties to even
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(rounded));
  }
  uint32_t v = magnitude - (112u << 23);  // rebias the exponent
  v += 0xfffu + ((v >> 13) & 1u);
  return static_cast<uint16_t>(sign | (v >> 13));
}

COUN_FAST_HD float load_element(const void* data, int64_t offset, DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
      return fp16_to_float(static_cast<const uint16_t*>(data)[offset]);
    case DType::kBFloat16:
      return bf16_to_float(static_cast<const uint16_t*>(data)[offset]);
    default:
      return static_cast<const float*>(data)[offset];
  }
}

COUN_FAST_HD void store_element(void* data, int64_t offset, DType dtype, float value) {
  switch (dtype) {
    case DType::kFloat16:
      static_cast<uint16_t*>(data)[offset] = float_to_fp16(value);
      break;
    case DType::kBFloat16:
      static_cast<uint16_t*>(data)[offset] = float_to_bf16(value);
      break;
    default:
      static_cast<float*>(data)[offset] = value;
  }
}

// A strided (rows x dim) matrix of one of the element types; strides are in elements.
struct MatrixView {
  const void* data;
  int64_t rows;
  int64_t dim;
  int64_t row_stride;
  int64_t col_stride;
  DType dtype;

  COUN_FAST_HD float at(int64_t row, int64_t col) const {
    return load_element(data, row * row_stride + col * col_stride, dtype);
  }
};

// Whether the index ranges [a0, a1) and [c0, c1) share no index.
COUN_FAST_HD bool ranges_disjoint(int64_t a0, int64_t a1, int64_t c0, int64_t c1) { return a1 <= c0 || c1 <= a0; }

// Which candidates are the positives of an anchor. The rule is one of four; the three structured
// rules need no index tensor (the callers' common cases), the index and label rules read device or
// host memory.
//
//   kIndex     anchor a's one positive is index[a] (the forward direction); in the transposed
//              direction (transposed = true: anchors are the forward direction's candidates) the
//              positives of anchor c are the rows a with index[a] == c, so no inverse permutation
//              is ever built.
//   kLabels    every compared candidate with the anchor's label.
//   kDiagonal  anchor a's positive is candidate a (paired rows: CoUn's cross-view loss, CLIP).
//   kPartner   anchor a's positive is its partner a +- half in [0, 2 half) (SimCLR's NT-Xent over
//              cat(view1, view2), half = N).
enum class PositiveRule : int32_t { kIndex = 0, kLabels = 1, kDiagonal = 2, kPartner = 3 };

struct Positives {
  PositiveRule rule;
  const int64_t* index;             // kIndex: [forward anchors]
  const int64_t* anchor_labels;     // kLabels: [anchors of this direction]
  const int64_t* candidate_labels;  // kLabels: [candidates of this direction]
  int64_t half;                     // kPartner
  bool transposed;                  // kIndex: this is the forward direction transposed

  // Positives as a comparison of keys: candidate c is a positive of anchor a exactly when
  // row_key(a) == column_key(c) (and c is compared with a). Kernels load each key once per row or
  // column instead of once per pair.
  COUN_FAST_HD int64_t row_key(int64_t anchor) const {
    switch (rule) {
      case PositiveRule::kIndex:
        return transposed ? anchor : index[anchor];
      case PositiveRule::kLabels:
        return anchor_labels[anchor];
      case PositiveRule::kDiagonal:
        return anchor;
      default:
        return anchor < half ? anchor + half : anchor - half;
    }
  }

  COUN_FAST_HD int64_t column_key(int64_t candidate) const {
    switch (rule) {
      case PositiveRule::kIndex:
        return transposed ? index[candidate] : candidate;
      case PositiveRule::kLabels:
        return candidate_labels[candidate];
      default:
        return candidate;
    }
  }

  COUN_FAST_HD bool is_positive(int64_t anchor, int64_t candidate) const {
    return row_key(anchor) == column_key(candidate);
  }

  // The one positive of `anchor` when the rule names it directly (named()), else -1 (find
  // positives by comparing keys).
  COUN_FAST_HD int64_t single(int64_t anchor) const { return named() ? row_key(anchor) : -1; }

  // Whether single() names every anchor's positive (else positives are found by comparison).
  COUN_FAST_HD bool named() const {
    return rule == PositiveRule::kDiagonal || rule == PositiveRule::kPartner ||
           (rule == PositiveRule::kIndex && !transposed);
  }

  // Whether no candidate in [c0, c1) is a positive of an anchor in [a0, a1). Conservative: false
  // whenever the rule cannot tell without reading keys (index and label rules). Kernels skip the
  // key comparisons of a tile of which this is true.
  COUN_FAST_HD bool none_in(int64_t a0, int64_t a1, int64_t c0, int64_t c1) const {
    switch (rule) {
      case PositiveRule::kDiagonal:
        return ranges_disjoint(a0, a1, c0, c1);
      case PositiveRule::kPartner:  // keys of [a0, a1) lie in [a0 + half, a1 + half) or [a0 - half, a1 - half)
        return ranges_disjoint(a0 + half, a1 + half, c0, c1) && ranges_disjoint(a0 - half, a1 - half, c0, c1);
      default:
        return false;
    }
  }

  // The positives of the transposed direction (candidates as anchors against the anchors).
  COUN_FAST_HD Positives reversed() const {
    Positives r = *this;
    r.anchor_labels = candidate_labels;
    r.candidate_labels = anchor_labels;
    r.transposed = !transposed;
    return r;
  }
};

// Which candidates an anchor is compared with (the support of its softmax):
//   kAll           every candidate;
//   kExcludeSelf   every candidate but candidate i for anchor i (the anchor itself: anchors and
//                  candidates are one set, or the anchors are the first candidates);
//   kPairedPrefix  candidates [0, pairs) belong to one anchor each (candidate i to anchor i: a
//                  batch's keys in MoCo or a memory-bank loss), the rest (a queue of negatives)
//                  to every anchor. Orientation matters: compared(anchor, candidate).
enum class Compare : int32_t { kAll = 0, kExcludeSelf = 1, kPairedPrefix = 2 };

struct Comparison {
  Compare mode;
  int64_t pairs;  // kPairedPrefix

  COUN_FAST_HD bool compared(int64_t anchor, int64_t candidate) const {
    switch (mode) {
      case Compare::kExcludeSelf:
        return anchor != candidate;
      case Compare::kPairedPrefix:
        return candidate >= pairs || candidate == anchor;
      default:
        return true;
    }
  }

  // Whether every anchor in [a0, a1) is compared with every candidate in [c0, c1) (conservative:
  // may be false when they all are). Kernels skip the comparisons of a tile of which this is true.
  COUN_FAST_HD bool all_compared(int64_t a0, int64_t a1, int64_t c0, int64_t c1) const {
    switch (mode) {
      case Compare::kExcludeSelf:
        return ranges_disjoint(a0, a1, c0, c1);
      case Compare::kPairedPrefix:
        return c0 >= pairs;
      default:
        return true;
    }
  }
};

// Whether the rectangle of anchors [a0, a1) x candidates [c0, c1) is plain: every pair compared and
// none positive (conservative, as all_compared and none_in), so a kernel's tile there needs no
// per-pair test.
COUN_FAST_HD bool plain_rectangle(const Comparison& comparison, const Positives& positives, int64_t a0, int64_t a1,
                                  int64_t c0, int64_t c1) {
  return comparison.all_compared(a0, a1, c0, c1) && positives.none_in(a0, a1, c0, c1);
}

COUN_FAST_HD bool is_compared(int64_t anchor, int64_t candidate, const Comparison& comparison) {
  return comparison.compared(anchor, candidate);
}

// A directly named positive counts only when it is a candidate the anchor is compared with; an
// out-of-range index (possible only when input checks were skipped) means "no positive", never an
// out-of-bounds read.
COUN_FAST_HD bool index_positive_valid(int64_t positive, int64_t anchor, int64_t num_candidates,
                                       const Comparison& comparison) {
  return positive >= 0 && positive < num_candidates && is_compared(anchor, positive, comparison);
}

// How the per-anchor losses are reduced to the op's output: kNone keeps them (T values); kSum adds
// them; kMean averages each direction over its anchors that have a positive and adds the
// directions' means (the symmetric CLIP / CoUn form).
enum class Reduction : int32_t { kNone = 0, kSum = 1, kMean = 2 };

// Per-anchor statistics of one direction: the forward writes lse and count; the backward reads the
// upstream gradient: grad[i * grad_stride] (stride 0: one scalar for a reduced loss), divided by
// *valid_anchors for kMean (valid_anchors: the forward's count of anchors with a positive).
struct RowStats {
  const float* lse;            // [anchors] log-sum-exp of the anchor's compared logits
  const float* count;          // [anchors] number of positives; 0 means the loss is the constant 0
  const float* grad;           // upstream gradient (see above)
  int64_t grad_stride;         // 1: one value per anchor; 0: one value for all
  const float* valid_anchors;  // kMean: the direction's anchors with a positive; else nullptr
};

// One direction of the loss as seen by the backward: anchors of that direction x candidates.
struct Direction {
  Positives positives;
  RowStats stats;
};

// l_i = lse_i - (sum of positive logits) / count, or 0 without positives.
COUN_FAST_HD float anchor_loss(float lse, float positive_logit_sum, float count) {
  return count > 0.f ? lse - positive_logit_sum / count : 0.f;
}

// The scale the upstream gradient of a direction is multiplied by: 1 / (anchors with a positive)
// for kMean, else 1.
COUN_FAST_HD float gradient_scale(const RowStats& stats) {
  if (stats.valid_anchors == nullptr) return 1.f;
  const float valid = *stats.valid_anchors;
  return 1.f / (valid > 1.f ? valid : 1.f);
}

// The anchor's upstream weight w_i = dL / d l_i: 0 when its loss is constant (no positive).
COUN_FAST_HD float anchor_weight(const RowStats& stats, int64_t anchor, float scale) {
  return stats.count[anchor] > 0.f ? stats.grad[anchor * stats.grad_stride] * scale : 0.f;
}

// The positive part of the logit gradient below: w_i / count_i for each positive of anchor i.
COUN_FAST_HD float positive_gradient(float weight, float count) { return weight / count; }

// d(w_i * l_i)/d s_ij = w_i * softmax_ij - [j positive] * w_i / count_i,
// softmax_ij = exp(s_ij - lse_i).
COUN_FAST_HD float logit_gradient(float softmax, bool positive, float weight, float count) {
  return weight * softmax - (positive ? positive_gradient(weight, count) : 0.f);
}

}  // namespace coun_fast
