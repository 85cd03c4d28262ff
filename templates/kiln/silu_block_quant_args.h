// kiln/silu_block_quant_args.h — kernel argument blocks of the SiLU + block-quant families (shared expert and
// batched prob-weighted experts), shared by the device templates and the host recipes.
#pragma once

namespace kiln {

// One tile kernel serves the forward and backward of both families.
struct SiluBlockQuantArgs {
  const void* x;          // [M, 2n] bf16: gate = columns [0, n), up = [n, 2n)
  long long x_stride;     // elements between rows of x
  const void* g;          // backward: [M, n] bf16 incoming gradient
  long long g_stride;
  const float* w;         // batched: [M] fp32 per-row prob weight
  unsigned char* q;       // forward: y [M, n] e4m3; backward: dx [M, 2n] e4m3 (row-wise 1×128 blocks)
  float* q_scale;         // row-wise scales: [W/128, M], or per expert [W/128, c_e] at s_e·W/128   (W = n or 2n)
  unsigned char* qT;      // transposed codes: [W, M], or per expert [W, c_e] at s_e·W
  float* qT_scale;        // transposed scales: [ceil(M/128), W], or per expert [ceil(c_e/128), W] at b_e·W
  float* dw_partial;      // batched backward: [n/128, M] fp32, Σ over each tile's 128 columns
  const int* schedule;    // batched: the schedule kernel's output (see below)
  int M;                  // rows of x
  int tiles;              // shared expert: ceil(M/128)·(n/128); batched: unused (read from the schedule)
};

// Batched families: a one-CTA kernel turns counts [E] into the token-block schedule the tile kernel walks.
// Layout of `ws` (int32): [0] number of token blocks T, [1] status (0 ok, 1 counts invalid: negative, or not summing
// to M (trailing: exceeding M)), [2] Σ counts clamped to int32, [3] index of the first negative count or -1; then from
// element 4 (16-byte aligned) T entries {s_e, c_e, i, 0}: token block b_e + i is rows [s_e + 128·i,
// s_e + min(128·(i+1), c_e)).
struct SiluScheduleArgs {
  const int* counts;  // [E] int32 (device)
  int E;
  int M;
  int trailing;       // 1: Σ counts ≤ M is valid (rows past Σ counts belong to no expert); 0: Σ counts = M
  int capacity;       // entries the workspace holds: (M + 127·E)/128 + 1 ≥ Σ ceil(c_e/128) for valid counts
  int* ws;
  int* status;        // optional [1] int32 copy of ws[1] for the caller (null: none)
};

// Batched backward: dw[m] = Σ_j dw_partial[j, m] in column-block order (deterministic); NaN when counts were invalid;
// 0 for rows m ≥ Σ counts (trailing rows).
struct SiluDwReduceArgs {
  const float* partial;  // [n/128, M]
  const int* ws;         // the schedule (status)
  float* dw;             // [M] fp32
  int M;
};

constexpr int kSiluScheduleThreads = 1024;
constexpr int kSiluTileThreads = 512;
constexpr int kSiluMaxN = 32768;  // n ≤ 32768: tile and element indices stay in int32 / int64 as used

// σ table (TABLE = true), filled once per CTA with the same deterministic σ the kernel computes otherwise, indexed by
// a bf16 gate's bits: [row][7-bit mantissa][sign]. Rows: an optional constant row for every biased exponent below
// 102 (σ = 0.5 exactly there: |a| < 2^-25), one exact row per exponent in [lo, hi), an optional constant row for
// exponents ≥ 134 (|a| ≥ 128, inf: σ = 1 for a > 0, 0 for a < 0). Exponents outside a table without the matching
// constant row fall back to computing σ (one warp-uniform branch per row of 8 values). Sizes follow the shared
// memory each variant has left: the two-stage forward holds the full table (34 rows, no fallback), the one-stage
// forward 30 rows (two CTAs an SM), the backward 14 exact rows (|a| in [2^-9, 32)).
struct SiluTableShape {
  int lo, hi;
  bool low_const, high_const;
  constexpr int rows() const { return hi - lo + (low_const ? 1 : 0) + (high_const ? 1 : 0); }
  int entry = 4;  // bytes an entry: σ (or silu(a)); 8: the pair {σ, 1 + a·(1 − σ)} (sigma_table = 4, backward)
  constexpr int bytes() const { return 2 * rows() * 128 * entry; }
  constexpr bool complete() const { return low_const && high_const; }
};
constexpr int kSiluSigmaHalfBelow = 102;  // σ(a) == 0.5 for every bf16 a with a biased exponent below this
constexpr int kSiluSigmaSatFrom = 134;    // σ(a) == (a > 0) for every non-NaN bf16 a with a biased exponent from here
// table = 1: the variant's default size (above); table = 2: the complete table (34 rows) whatever the variant (used
// where shared memory allows it: the one-stage backward).
// table = 3 (forward only): the table holds silu(a) = a·σ(a) (the same fp32 product the kernel would form) for the
// exponents [102, 134) — no constant rows (a·σ is not constant there): gates outside compute it.
// table = 4 (backward only): entries {σ(a), 1 + a·(1 − σ(a))} (the derivative's factor, same fp32 operations) for
// the exponents [102, 134); gates outside compute both.
constexpr SiluTableShape silu_table_shape(bool bwd, int stages, int table = 1) {
  return table == 4   ? SiluTableShape{kSiluSigmaHalfBelow, kSiluSigmaSatFrom, false, false, 8}
         : table == 3 ? SiluTableShape{kSiluSigmaHalfBelow, kSiluSigmaSatFrom, false, false}
         : table == 2 || (!bwd && stages >= 2) ? SiluTableShape{kSiluSigmaHalfBelow, kSiluSigmaSatFrom, true, true}
         : bwd                               ? SiluTableShape{118, 132, false, false}
                                             : SiluTableShape{105, kSiluSigmaSatFrom, false, true};
}

// Dynamic shared memory of the tile kernel: one (STAGES = 1) or two (STAGES = 2, 3, 4) input buffers (gate, up
// [, grad] tiles of 128×128 bf16 [, 128 row weights]), the transposed codes of one or (the one-stage backward: both
// output halves at once) two 128-channel blocks (16 KiB each; twice with two code buffers), two (three) buffers of
// column maxima per output half, and the σ table.
constexpr int silu_stage_bytes(bool bwd, bool batched) { return (bwd ? 3 : 2) * 128 * 128 * 2 + (batched ? 512 : 0); }
constexpr int silu_codes_halves(bool bwd, int stages) { return bwd && stages == 1 ? 2 : 1; }
// table: 0 none (σ computed), 1 the variant's default table, 2 the complete table. code_buffers: 2 = the codes staged
// by tile parity (one barrier a tile; three column-maxima buffers instead of two).
constexpr int silu_tile_smem_bytes(bool bwd, bool batched, int stages, int table, int code_buffers = 1) {
  return (stages == 1 ? 1 : 2) * silu_stage_bytes(bwd, batched) +
         code_buffers * silu_codes_halves(bwd, stages) * 128 * 128 +
         (code_buffers == 2 ? 3 : 2) * (bwd ? 2 : 1) * 132 * 4 + (table ? silu_table_shape(bwd, stages, table).bytes() : 0);
}

}  // namespace kiln
