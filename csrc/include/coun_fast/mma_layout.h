// Where each lane of a warp reads and holds tile elements in the tensor-core kernels.
//
// Host and device inline functions, so that tests compile them on the CPU against an emulation of
// the PTX instructions' documented semantics (tests/test_mma_layout.py runs
// csrc/tests/mma_layout_test.cpp). Nothing here touches memory.
//
// Shared-memory tiles. A tile holds rows of 128 bytes ("chunk rows": 64 bf16/fp16 or 32 fp32
// features) in 16-byte units (8 per row); unit u of row r is stored at unit position u ^ (r % 8)
// (an XOR swizzle). Eight lanes that read the same logical unit of eight consecutive rows (what
// ldmatrix does) then touch eight different positions, i.e. all 32 banks once: no conflicts; and
// the eight cp.async writes of one row also land in eight different bank groups.
//
// PTX fragments (warp-level mma.sync, 32-bit registers; g = lane / 4, t = lane % 4):
//   m16n8k16 (bf16, f16): A reg j = A[g + 8 (j % 2)][2t + 8 (j / 2) .. +1]
//                         B reg j = B[k = 2t + 8 j .. +1][n = g]
//                         C/D value i = C[g + 8 (i / 2)][2t + (i % 2)]
//   m16n8k8 (tf32):       A reg j = A[g + 8 (j % 2)][t + 4 (j / 2)]
//                         B reg j = B[k = t + 4 j][n = g]
//                         C/D as above.
// In 32-bit words both shapes read word t of 16-byte unit j / 2 of their row (A) or of column n's
// row in a k-contiguous layout (B), so the same ldmatrix addresses serve both (see below).
//
// ldmatrix.x4 (b16): lanes 8 q .. 8 q + 7 give the row addresses of 8 x 8 matrix q; lane l then
// holds in register q the two b16 elements (row l / 4, columns 2 (l % 4) .. +1) of matrix q, or,
// with .trans, (rows 2 (l % 4) .. +1, column l / 4).
#pragma once

#include <cstdint>

#include "coun_fast/math.h"

namespace coun_fast::mma {

constexpr int kRowBytes = 128;  // bytes of one chunk row of a shared-memory tile
constexpr int kUnitBytes = 16;  // one ldmatrix row / one cp.async copy
constexpr int kUnitsPerRow = kRowBytes / kUnitBytes;

// Byte offset of 16-byte unit `unit` (0..7) of row `row` in a swizzled tile of 128-byte rows.
COUN_FAST_HD uint32_t swizzled_offset(int row, int unit) {
  return static_cast<uint32_t>(row * kRowBytes + ((unit ^ (row % 8)) * kUnitBytes));
}

// The row (within a 16-row block) and the 16-byte unit (within a 128-byte row) whose address lane
// `lane` gives to ldmatrix.x4 to load the A fragment of k-step `kstep` (32 bytes of k per step:
// 16 bf16 / fp16 or 8 tf32 elements): matrices 0..3 are (rows 0-7, unit 2ks), (rows 8-15, unit
// 2ks), (rows 0-7, unit 2ks+1), (rows 8-15, unit 2ks+1), i.e. A regs 0..3.
COUN_FAST_HD int a_row(int lane) { return lane % 16; }
COUN_FAST_HD int a_unit(int lane, int kstep) { return 2 * kstep + lane / 16; }

// The same for the B fragments of two adjacent n-blocks (16 rows of a k-contiguous tile, i.e.
// 16 candidates): matrices 0..3 are (n-block 0, unit 2ks), (n-block 0, unit 2ks+1),
// (n-block 1, unit 2ks), (n-block 1, unit 2ks+1): registers 0, 1 are n-block 0's B regs and
// 2, 3 n-block 1's.
COUN_FAST_HD int b_row(int lane) { return lane % 8 + 8 * (lane / 16); }
COUN_FAST_HD int b_unit(int lane, int kstep) { return 2 * kstep + (lane / 8) % 2; }

// ldmatrix.x4.trans of a row-major (k rows x n columns) b16 tile for the B fragments of two
// adjacent n-blocks: matrices 0..3 are (k rows 0-7, n-block 0), (k rows 8-15, n-block 0),
// (k rows 0-7, n-block 1), (k rows 8-15, n-block 1). `nunit` is the 16-byte unit holding n-block 0
// (8 b16 columns per unit).
COUN_FAST_HD int bt_row(int lane) { return lane % 8 + 8 * ((lane / 8) % 2); }
COUN_FAST_HD int bt_unit(int lane, int nunit) { return nunit + lane / 16; }

// Coordinates of accumulator value i (0..3) of lane `lane` in its 16 x 8 C tile.
COUN_FAST_HD int c_row(int lane, int i) { return lane / 4 + 8 * (i / 2); }
COUN_FAST_HD int c_col(int lane, int i) { return 2 * (lane % 4) + i % 2; }

// The tf32 G product takes the logits' gradient straight from the accumulators of one 8-column
// block, read in a permuted k order: logical k = t holds column 2t and k = t + 4 column 2t + 1.
// A regs 0..3 are then accumulator values 0, 2, 1, 3, and B reg j of lane l reads candidate
// (k row) tf32_b_row(l, j) of the block.
COUN_FAST_HD int tf32_a_value(int reg) { return reg == 1 ? 2 : (reg == 2 ? 1 : reg); }
COUN_FAST_HD int tf32_b_row(int lane, int reg) { return 2 * (lane % 4) + reg; }

}  // namespace coun_fast::mma
