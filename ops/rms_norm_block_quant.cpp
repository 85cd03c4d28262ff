// Host recipe: RMSNorm + fp8 1×128 block quantization (templates/kiln/rms_norm_block_quant.cuh).
// Spec: ../shared/spec/linghe-kernels.md §2–§3.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <utility>
#include <vector>

#include "kiln/ops/rms_norm.hpp"
#include "runtime/driver.hpp"
#include "runtime/family.hpp"
#include "runtime/log.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/validate.hpp"
#include "kiln/rms_norm_block_quant_args.h"
#include "kiln/rms_norm_block_quant_stream_args.h"
#include "ops/bench/rms_norm.hpp"

namespace kiln {
namespace {
using namespace detail;

enum : uint32_t { kRowKernel = 0, kTileKernel = 1 };
enum { P_N, P_MODE, P_ROUND, P_W_F32 };
enum { C_WARPS, C_COL_BLOCKS, C_PREFETCH, C_STAGES, C_OVERLAP, C_EXCHANGE };
constexpr int kConfigFields = 6;
// The tile kernel stages at most this many 128×128 blocks in shared memory (6 × 32 KiB + the fixed 22 KiB ≤ 227 KiB).
constexpr int kMaxStagedBlocks = 6;
static_assert(rms_norm_block_quant_tile_smem_bytes(kMaxStagedBlocks, true) <= 227 * 1024, "");

// The GLOBAL walk (no clusters: a persistent grid takes the (token tile, column chunk) items in turn and the row
// sums go through a tagged global workspace): exchange 3 = the stream kernel (rms_norm_block_quant_stream.cuh, mode
// 2: 16 warps, col_blocks = CB, stages = ring slots; prefetch 1 and overlap 1: each item's blocks stay in their ring
// slots between the passes and the next item's pass 1 runs first). (Session 5 round 2 also measured the ring kernel's
// per-block code on that walk, exchange 4: 33.5 µs at best at N = 2048 against the ring's 31.3, and stalls where an
// item's wait preceded the next item's pass 1; removed.)
constexpr int kStreamGlobal = 3;
// The overlap field of a stream config is a set of variant bits (rms_norm_block_quant_stream.cuh): 1 the base (always
// set), 2 LEAN (fewer non-arithmetic instructions a block, bit-exact), 32 FIRST (LEAN: item 0 quantized before item
// 1's pass 1), 64 TRACE (measurement only: kRmsqStreamTrace), 128 START (LEAN: only item 0's blocks requested until
// they have landed; with FIRST the rest after item 0's exchange). (Session 7 round 2 also measured the ring refilled by one TMA tensor copy a block from thread 0
// after the block barrier — 29.8–30.1 µs at N = 2048, 99.3 at 7168 against LEAN's 29.4–29.7 / 95.6 — the same at
// two CTAs an SM, 64 registers with spills — 40.2 / 196.3 — and with an L2 evict-first hint — 29.9 / 101.9; removed.)
constexpr int kStreamLean = 3, kStreamFirst = 32, kStreamStart = 128;
// 256 TIGHT (LEAN): pass 2 of full tiles from per-item bases and per-thread 32-bit offsets, shared memory at 32-bit
// addresses, the refill from one pointer with x's rows at immediate offsets. Needs x contiguous and M·N < 2^31
// (launch_stream drops the bit otherwise: LEAN runs, the same bits). Up to session 21 power-of-two scales only (the
// bit changed nothing at round_scale 0); from session 22 also round_scale 0, with its column brackets formed by each
// thread from the column maxima (block_quant_tile.cuh stage_col_codes_div_at).
constexpr int kStreamTight = 256;
// 512 SPLIT (on TIGHT): the full tiles' block barrier as an mbarrier arrive (after the column maxima) and wait (after
// the row codes), so the warps' skew at the barrier overlaps the row codes.
constexpr int kStreamSplit = 512;
// 2048 FLAT (on TIGHT): no divergent branch between a full block's phases (predicated row-scale stores, the column
// scales stored last) and the column maxima before the row codes (their atomics in flight meanwhile).
constexpr int kStreamFlat = 2048;
// (Bits 1024 TABLE — TIGHT's per-thread constants from a shared-memory table —, 4096 AHEADX — two blocks an item: the
// second block's x and weights read before the first block's barrier — and 8192 SPLIT2 — the previous block's qT
// store between SPLIT's arrive and wait, on a second mbarrier — measured slower (bench/NOTES.md) and were deleted;
// their values stay unused.)
// 16384 WLDG (on TIGHT): LEAN's weights (an LDG a block ahead) instead of the weights in shared memory.
constexpr int kStreamWldg = 16384;
// The prefetch field of a stream config: 1 (each item's blocks kept in their ring slots between the passes), and in
// session 14 | the codes' L2 hint on the default's structure (19203, two blocks an item, 4 slots; rmsq::kRmsqHint* in
// rms_norm_block_quant_stream.cuh): 16 QEL — the q / qT codes stored with an L2 evict-last policy — and 64 QEN, its
// code-shape control (the same code with an evict-normal policy). Bit-exact with the default by construction.
// (Session 14 round B, 30 rounds in one process, against 19203 = 25.15 / 90.85 µs at 2048 / 7168: QEL −0.02 / −2.08
// against the default, +0.69 / −2.02 against QEN; measured and deleted: 4 X256 — x's copies with the 256-byte L2
// prefetch size —, +0.32 / +0.70; 8 XEF — x's copies with an evict-first policy — against its control 32 XEN, +0.11 /
// +3.01; 128 PFS1 / 256 PFS2 — item it + 3's x prefetched into L2 after pass 2 of item it < 1 / 2 — against their
// control 512 (item it + 1's), +0.62 / +0.75 and +0.82 at 7168, the control +1.26 / +0.50 against the default.
// Values 2, 4, 8, 32, 128, 256, 512 stay unused; 2 was session 13's HP1.)
// (Round D measured 1040 QELD — QEL whose CTAs demote their code lines to evict-normal after a fence at the end, so that
// no evict-last line outlives the kernel — and its control 1088 on QEN: the demotion cost +4.3 / +4.3 / +9.1 µs at
// 2048 / 4096 / 7168; deleted, values unused.)
// QEL is the default where it won, with power-of-two scales and two blocks an item: N ≥ 4096 (make_spec) and at launch
// M·N ≥ 2^25 elements (the codes ≥ 64 MiB, beyond what L2 keeps; launch_stream drops the bit below: the same bits).
// Measured in one process against 19203, 30 rounds each (bench/NOTES.md, session 14): N = 7168, M = 8192 −2.02 / −1.98 /
// −2.29 µs (rounds B / C / D, 29–30 of 30 rounds won), −2.80 with the persisting lines reset before every flush;
// N = 4096 −0.96 / −1.58 (28 / 30 of 30); N = 2048 (2^24 elements) +0.69 / +0.83 (0 of 30: the previous call's
// left-over evict-last lines are written back inside the next call; +0.00 with them reset), so not there.
constexpr int kStreamHintQel = 16, kStreamHintQen = 64;
constexpr int64_t kStreamQelMinElems = int64_t{1} << 25;
// Session 15 (q2g), on QEL against the previous call's left-over evict-last lines (rmsq::kRmsqHint* in
// rms_norm_block_quant_stream.cuh; bit-exact by construction): DISC1 = 2048 | 524288 — at its start each CTA
// discards from L2 (no write-back) the code lines of its last item, one a thread: what a previous call with the same
// walk and outputs left there as dirty evict-last lines is dropped instead of written back during this call's start
// burst (q, qT 128-byte aligned and M % 128 == 0, else nothing is discarded) — and its control DISCZ1 = 262144 |
// 524288 (DISC1's code, no line). Measured in one process at 7168 × 8192 (bench/NOTES.md, session 15): round C, 30
// rounds, DISC1 −1.06 µs against QEL (28 of 30), −1.41 against DISCZ1 (29 of 30) — QEL's "cold" gap (its persisting
// lines reset before each flush) was −1.01 in the same round; round D (the host default against QEL forced) −0.70 (27
// of 30), 7168 × 16384 −0.61 (24 of 30), but 4096 +0.70 (1 of 30). So DISC1 is the default with QEL from N = 7168
// only (`kiln bench` 7168 in round D: 87.38–87.92 µs over three processes). (Measured and deleted: DISC over the last two / four items (2048 alone, + 131072) and its
// controls 4096 / 262144 — +0.06 / +0.08 / +0.51, +2.16 —; 1048576 DEM / 4194304 DEM2 — the last items' lines touched
// evict-normal at the CTA's end, control 2097152 — no gain; 8192 LATE2 +2.66, 32768 / 65536 EF2 / EF4 +3.1 / +3.7 and
// their control 16384 SELALL. Values unused.)
constexpr int kStreamHintDisc1 = 2048 | 524288, kStreamHintDiscZ1 = 262144 | 524288;
constexpr int kStreamHintOnQel = kStreamHintDisc1 | kStreamHintDiscZ1;
constexpr int64_t kStreamDisc1MinN = 7168;
// (Session 9 measured and deleted, bench/NOTES.md "Session 9 (helper q2)": 32768 HELP — 640 threads, pass 1 and the
// exchange on a helper warpgroup (setmaxnreg 32 / 112): 32.9 / 141.6 µs against 25.9 / 92.6 —, 131072 HX — the
// exchange alone on it, its polls staged in shared memory: 30.8 / 113.4 against 26.1 / 90.8 in its second round — and
// 262144 EPS — at N > 2048 the next item's polls staged in shared memory a block ahead: 94.8 against 91.1 at 7168, the
// exchange 1.0 → 0.6 µs an item but pass 2 slower by ≈ 1 µs with 28 KiB more shared memory. Values stay unused.)
// (Session 10 measured and deleted, bench/NOTES.md "Session 10 (helper q2)", in one process against 19203: 524288 DYN —
// the walk's items after each CTA's third from a global counter: 92.7 against 91.1 µs at 7168 —, 1048576 HALF0 —
// item 0's first block quantized before item 1's pass 1: 28.0 against 25.8 at 2048, item 0's exchange exposed —,
// 2097152 L2PF — x's items prefetched into L2 an item ahead: 30.0 / 109.1 against 25.8 / 91.8 — and 4194304 EARLYR —
// item it's r computed at the start of item it + 1's pass 1: 27.2 against 25.9 at 2048, though the exchange fell
// 0.42 → 0.13–0.19 µs an item. Values stay unused.)
// (Session 11 measured and deleted, bench/NOTES.md "Session 11 (helper q2s11)", 9 × 10 calls in one process against
// 19203 = 25.15 / 90.24 µs: 8388608 SKEW — warps 0–7 finish an item's exchange before the next item's pass 1: 25.66 /
// 91.47 —, + 16777216 MID — after its first block: 26.11 / 91.07 —, 33554432 PSKEW — warps 8–15 form a block's row
// codes after its column codes: 26.16 / 90.70 —, SKEW + PSKEW 25.87 / 91.49, and START (128) on 19203: 26.56 at 2048;
// in round 3 67108864 EPOLL — at 2048 the next item's polls a pass-2 block earlier, stale ones re-polled a block
// later: 27.57 against 25.22. Values stay unused.)
// (Session 12 measured and deleted, bench/NOTES.md "Session 12 (helper q2c)", interleaved against 19203: 134217728 FR —
// finish's chain in fewer instructions with the same bits (its exchange 0.48 → 0.38 µs an item in the timeline) —
// 26.06 / 26.24 against 25.06 / 25.34 at 2048, 90.61 / 90.45 / 91.04 against 90.29 / 90.91 / 91.58 at 7168; its parts
// alone, 4 FRC (the quotient, sqrtf and reciprocal without range branches) 26.11 / 25.74 against 25.34 / 25.14 and
// 90.32 / 91.58 against 90.91 / 91.58, 8 FRR (one vote, three independent shuffles) 26.00 and 16 FRB (rotated rows,
// immediate broadcast lanes) 25.82 against 25.34; the control
// 1073741824 FRN (the default's operations in FR's code shape) 25.78 against 25.14 and 91.87 against 91.58; 268435456
// NOSLEEP (re-polls without __nanosleep) 90.34 against 90.29; 536870912 EAGER (a stale pair summed locally after two
// re-polls) 110.80 against 90.91. Values stay unused.)
bool is_stream(const Specialization& s) { return s.kernel == kTileKernel && s.config[C_EXCHANGE] == kStreamGlobal; }
// exchange 5 = the non-persistent tile kernel (stages 0, mode 2) with clusters of K = gx_cluster(S) CTAs whose row
// sums meet in the global workspace (rms_norm_block_quant_tile_gx_kernel): CB = 1 or 2 at any S > 8.
// exchange 6 = the same grid and exchange with the stream kernel's per-block code (rms_norm_block_quant_tile512_kernel:
// 512 threads, y held, two CTAs an SM): CB = 1 or 2 (the second block staged in shared memory); overlap 1 =
// clusters of up to 16 CTAs instead of 8 (N = 2048, CB = 1: one cluster a row, no workspace; 7168: 14).
constexpr int kTileGlobal = 5, kTile512 = 6;
bool is_tile_gx(const Specialization& s) {
  return s.kernel == kTileKernel && s.config[C_STAGES] == 0 &&
         (s.config[C_EXCHANGE] == kTileGlobal || s.config[C_EXCHANGE] == kTile512);
}
bool is_tile512(const Specialization& s) { return is_tile_gx(s) && s.config[C_EXCHANGE] == kTile512; }
// Column chunks of a row in a tile config (the cluster size of a mode-2 cluster kernel).
int chunks_of(const Specialization& s) { return static_cast<int>(s.params[P_N] / (128 * s.config[C_COL_BLOCKS])); }
// Cluster size of a tile config (1 in mode 1 and for the GLOBAL stream kernel).
int cluster_of(const Specialization& s) {
  if (is_tile_gx(s)) return rms_norm_block_quant_gx_cluster(chunks_of(s), s.config[C_OVERLAP] ? 16 : 8);
  return s.params[P_MODE] == 2 && !is_stream(s) ? chunks_of(s) : 1;
}

void render(const Specialization& s, std::string& source, std::string& name) {
  source = "#include \"kiln/rms_norm_block_quant.cuh\"\n";
  const auto& p = s.params;
  const bool round = p[P_ROUND] != 0, wf32 = p[P_W_F32] != 0;
  if (s.kernel == kRowKernel && s.config[C_STAGES] > 0)  // the pipe kernel; prefetch = weights in registers,
    // exchange = two warps a row (SPLIT 2, Σx² exchanged), overlap = the kRmsqPipe* variant bits
    name = fmt::format("kiln::rms_norm_block_quant_pipe_kernel<{}, {}, {}, {}, {}, {}, {}, {}>", p[P_N],
                       s.config[C_WARPS], s.config[C_STAGES], s.config[C_PREFETCH] != 0, round, wf32,
                       s.config[C_EXCHANGE] ? 2 : 1, s.config[C_OVERLAP]);
  else if (s.kernel == kRowKernel)  // col_blocks: 128-column blocks a warp step covers (0 = 2: 16 lanes a block)
    name = fmt::format("kiln::rms_norm_block_quant_{}_kernel<{}, {}, {}, {}, {}>",
                       s.config[C_COL_BLOCKS] == 4 ? "row8" : "row", p[P_N], s.config[C_WARPS],
                       s.config[C_PREFETCH] != 0, round, wf32);
  else if (is_stream(s)) {  // the stream kernel: its own header (includes the family's)
    source = "#include \"kiln/rms_norm_block_quant_stream.cuh\"\n";
    name = fmt::format("kiln::rms_norm_block_quant_stream_kernel<{}, {}, {}, {}, {}, {}{}>", p[P_N],
                       s.config[C_COL_BLOCKS], round, wf32, s.config[C_STAGES], s.config[C_OVERLAP],
                       s.config[C_PREFETCH] != 1 ? fmt::format(", {}", s.config[C_PREFETCH]) : std::string());
  } else if (is_tile512(s)) {
    source = "#include \"kiln/rms_norm_block_quant_stream.cuh\"\n";
    name = fmt::format("kiln::rms_norm_block_quant_tile512_kernel<{}, {}, {}, {}, {}>", p[P_N], s.config[C_COL_BLOCKS],
                       round, wf32, cluster_of(s));
  } else if (is_tile_gx(s)) {
    name = fmt::format("kiln::rms_norm_block_quant_tile_gx_kernel<{}, {}, {}, {}, {}>", p[P_N], s.config[C_COL_BLOCKS],
                       round, wf32, cluster_of(s));
  } else if (s.config[C_STAGES] > 0)
    name = fmt::format("kiln::rms_norm_block_quant_ring_kernel<{}, {}, {}, {}, {}, {}, {}, {}, {}, {}>", p[P_N],
                       s.config[C_COL_BLOCKS], p[P_MODE], round, wf32, s.config[C_STAGES], s.config[C_OVERLAP] != 0,
                       s.config[C_WARPS], s.config[C_PREFETCH] != 0, s.config[C_EXCHANGE] != 0);
  else
    name = fmt::format("kiln::rms_norm_block_quant_tile_kernel<{}, {}, {}, {}, {}, {}>", p[P_N],
                       s.config[C_COL_BLOCKS], p[P_MODE], round, wf32, s.config[C_PREFETCH] != 0);
}

int smem_bytes(const Specialization& s) {
  if (s.kernel == kRowKernel && s.config[C_STAGES] > 0 && s.config[C_EXCHANGE])  // the pipe kernel, two warps a row
    return rms_norm_block_quant_pipe_smem_bytes(static_cast<int>(s.params[P_N]), s.config[C_WARPS],
                                                s.config[C_STAGES], 2);
  if (s.kernel == kRowKernel)
    return s.config[C_STAGES] > 0
               ? rms_norm_block_quant_pipe_smem_bytes(static_cast<int>(s.params[P_N]), s.config[C_WARPS],
                                                      s.config[C_STAGES], s.config[C_EXCHANGE] ? 2 : 1)
               : 0;
  if (is_stream(s))
    return rms_norm_block_quant_stream_smem_bytes(
        s.config[C_STAGES], (s.config[C_OVERLAP] & kStreamTight) != 0,
        (s.config[C_OVERLAP] & kStreamWldg) ? 0 : static_cast<int>(s.params[P_N]));
  if (is_tile512(s)) return s.config[C_COL_BLOCKS] == 2 ? 128 * 128 * 2 : 0;  // the second block's slot (+ static)
  if (s.config[C_STAGES] > 0)
    return rms_norm_block_quant_ring_smem_bytes(
        s.config[C_STAGES], s.config[C_WARPS],
        s.config[C_EXCHANGE] ? static_cast<int>(s.params[P_N] / (128 * s.config[C_COL_BLOCKS])) : 0);
  return rms_norm_block_quant_tile_smem_bytes(s.config[C_COL_BLOCKS], s.config[C_PREFETCH] != 0);
}

// The heuristic default config (the tuner, when it has an entry, overrides it).
// ring = false: never the persistent ring tile kernel (the fallback where its cluster cannot be co-scheduled).
Specialization make_spec(Arch arch, int64_t N, int mode, bool round, bool w_f32, bool ring = true);

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);
void search_space(const Specialization& s, std::vector<Specialization>& out);

// The op at `tokens` rows in the specialization's mode, with random inputs (bench preparation).
BenchInstance tune_instance(Runtime& rt, const Specialization& s, int64_t tokens) {
  const auto& p = s.params;
  return rms_norm_block_quant_instance(rt, tokens, p[P_N], static_cast<int>(p[P_MODE]), p[P_ROUND] != 0,
                                       p[P_W_F32] != 0);
}

FamilyDef g_family{
    "rms_norm_block_quant", {"row", "tile"}, {"N", "mode", "round_scale", "w_f32"},
    {"warps", "col_blocks", "prefetch", "stages", "overlap", "exchange"}, render, smem_bytes, enumerate, search_space,
    tune_instance};

// Test hook (rms_norm_block_quant_force_config): a config {warps, col_blocks, prefetch, stages, overlap, exchange}
// that make_spec uses for one (N, mode) wherever it is a point of the search space; N 0 = none.
struct ForcedConfig {
  int64_t N = 0;
  int mode = 0;
  std::array<int32_t, kConfigFields> config{};
};
ForcedConfig g_forced;

Specialization make_spec(Arch arch, int64_t N, int mode, bool round, bool w_f32, bool ring) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.params[P_N] = N;
  s.params[P_MODE] = mode;
  s.params[P_ROUND] = round;
  s.params[P_W_F32] = w_f32;
  if (mode == 0) {
    s.kernel = kRowKernel;
    // Rows up to 4096 columns: a persistent grid whose warps prefetch their next row (two rows in registers), the
    // row8 kernel (col_blocks 4: 8 lanes a 128-column block), 8 warps. Measured (round 5, H100, M = 8192): N = 2048
    // round_scale 1: 20.3 µs (row kernel 22.5–22.7), round_scale 0: 26.1 (row kernel 27.4–33.5).
    // Longer rows, one row per warp: round_scale 1 the row8 kernel with 4 warps (N = 7168: 82.6; row kernel 16 warps
    // 89.1), round_scale 0 the row kernel with 16 warps (115.1; row8 127.4). Up to N = 2048 on sm_90 the pipe
    // kernel (stages > 0: rows through per-warp shared-memory rings, weights in registers, the power-of-two scale
    // from bits) instead; longer rows cannot keep their weights in registers (without, the pipe lost at N = 2048).
    const bool long_row = N > 4096;
    s.config[C_COL_BLOCKS] = long_row && !round ? 0 : 4;
    s.config[C_WARPS] = !long_row ? 8 : round ? 4 : 16;
    s.config[C_PREFETCH] = !long_row;
    if (arch.sm >= 90 && N > 2048 && N % 1024 == 0 &&
        rms_norm_block_quant_pipe_smem_bytes(static_cast<int>(N), 8, 2, 2) <= 227 * 1024) {
      // The pipe kernel with two warps a row (weights loaded, 8 warps, two slots). Measured (session 5 round 1,
      // H100, M = 8192, N = 7168; tuner): round_scale 1 69.6 µs (row8 default 78.4), round_scale 0 90.1 (row
      // kernel 115–123); one warp a row 86–88.
      s.config[C_COL_BLOCKS] = 4;
      s.config[C_WARPS] = 8;
      s.config[C_STAGES] = 2;
      s.config[C_PREFETCH] = 0;
      s.config[C_EXCHANGE] = 1;
      // START1 + LEAN + NOFENCE (session 6 round 3, H100, M = 8192, N = 7168, 5 interleaved rounds in one process):
      // 67.76 µs vs 68.93 (START1 alone 68.11, LEAN + NOFENCE 68.48, BAND 70.98). Measured with round_scale at
      // N = 7168 only: the other split-row widths share the structure; round_scale 0 (not measured) keeps the plain
      // kernel.
      if (round) s.config[C_OVERLAP] = kRmsqPipeStart1 | kRmsqPipeLean | kRmsqPipeNoFence;
    }
    if (arch.sm >= 90 && N <= 2048) {
      // The pipe kernel, weights in registers, two row slots a warp. Measured (session 4, H100, M = 8192,
      // N = 2048): round_scale 1 8 warps 18.67 µs in round 2 (round 1 tune: 18.94; 16 warps 19.15, 4 warps 19.33;
      // row8 20.32; three slots 20.7, weights reloaded every row 23.0); round_scale 0 16 warps 25.02 (8 warps
      // 25.41; row8 25.92). At N = 7168 (weights cannot stay in registers) it lost to row8: 86.1 vs 79.5.
      s.config[C_WARPS] = round ? 8 : 16;
      s.config[C_STAGES] = 2;
      s.config[C_PREFETCH] = 1;
      // round_scale 1 at N = 2048: two warps a row (exchange 1), faster in all three session-5 measurements
      // (18.50 vs 18.53–18.59 µs, 18.56 vs 18.77, tuner 18.66 vs 18.69); round_scale 0 keeps one warp a row (tuner
      // 24.67 vs 24.83).
      if (round && N == 2048) s.config[C_EXCHANGE] = 1;
      // Two warps a row at N = 2048 round_scale 1: START1 + LEAN + NOFENCE (session 6 round 3, H100, M = 8192, 5
      // interleaved rounds in one process: 18.22 µs vs 18.72; START1 18.27, LEAN + NOFENCE 18.61, LEAN 18.67; TAIL
      // 18.54 with them, BAND 19.14 (both deleted since), three slots 19.39–19.54; one warp a row with them 18.62).
      // The other N ≤ 2048 defaults (one warp a row) keep the plain kernel (one warp a row gained nothing from them:
      // 18.62 vs 18.59).
      if (round && N == 2048) s.config[C_OVERLAP] = kRmsqPipeStart1 | kRmsqPipeLean | kRmsqPipeNoFence;
    }
  } else {
    s.kernel = kTileKernel;
    // Column blocks per CTA. Mode 2 splits a 128-token tile over a cluster of N/(128·cb) CTAs: the fewest blocks
    // that keep the cluster ≤ 16 CTAs on Hopper (non-portable sizes allowed); before sm_90 there are no clusters and
    // one CTA takes the whole row (cb = N/128). Measured on H100 at M = 8192: N = 2048 cb 1 / 2 / 4 = 41.9 / 47.1 /
    // 55.1 µs; N = 7168 cb 4 / 7 / 8 = 157.9 / 173.6 / 176.9 µs. Mode 1 needs no cluster: one block per CTA.
    const int nb = static_cast<int>(N / 128);
    const int max_cluster = arch.sm >= 90 ? 16 : 1;
    int cb = 1;
    if (mode == 2)
      while (nb % cb != 0 || nb / cb > max_cluster) ++cb;
    s.config[C_COL_BLOCKS] = cb;
    // For the tile kernel "prefetch" means: stage the CTA's whole slice in shared memory (2 … 6 blocks); never the
    // default (measured slower), a search-space point for the tuner.
    s.config[C_PREFETCH] = 0;
    // Mode 2 on sm_90: the persistent ring kernel, 256-thread CTAs with two slots (two CTAs an SM), partial sums
    // pushed (st.async). Up to 2 blocks a CTA the slice stays in the ring between the passes; wider slices pass
    // through it twice (RELOAD). Measured (round 4, H100, M = 8192, round_scale 1): N = 2048 cb 2 33.1–33.7 µs
    // (cb 1 + overlap 34.8, old tile kernel 38.3); N = 7168 RELOAD cb 4 125.1–125.6 (old tile kernel 165–171).
    // round_scale 0 (a division per element: more math per byte) prefers more warps or wider slices (round 5:
    // N = 2048 cb 1, one slot, 16 warps 52.6 µs vs 56.8 with the round_scale-1 choice; N = 7168 RELOAD cb 8 178.7
    // vs cb 4 197.1).
    int rcb = nb % 2 == 0 ? 2 : 1;
    while (nb % rcb != 0 || nb / rcb > 16) ++rcb;
    if (!round && nb <= 16) rcb = 1;
    if (!round && nb > 16) {
      int wide = 8;
      while (wide < nb && (nb % wide != 0 || nb / wide > 16)) ++wide;
      if (wide < nb) rcb = wide;
    }
    // (A prime number of blocks above 16 leaves one CTA a row: the tile kernel's default stays.)
    if (mode == 2 && arch.sm >= 90 && ring && (rcb <= 2 || nb / rcb > 1)) {
      const bool one_slot = !round && nb <= 16;  // cb 1, one slot, 512 threads (two CTAs an SM)
      s.config[C_WARPS] = one_slot ? 16 : 8;
      s.config[C_COL_BLOCKS] = rcb;
      s.config[C_STAGES] = one_slot ? 1 : 2;
      s.config[C_PREFETCH] = rcb > 2;                  // RELOAD
      s.config[C_OVERLAP] = rcb == 1 && !one_slot;     // two slots hold two tiles only with one block a CTA
      s.config[C_EXCHANGE] = nb / rcb > 1;             // pushes where there is a cluster
    }
    // Mode 2 on sm_90 with 16 or more blocks a row, or without power-of-two scales: the stream kernel on the GLOBAL
    // walk (no clusters), 2 blocks an item kept in their ring slots between the passes, 4 slots, overlap. Measured
    // (session 5 round 1, H100, M = 8192, tune): N = 7168 round_scale 1 102.6 µs (ring 120.9), round_scale 0 150.9
    // (ring 178.1); N = 2048 round_scale 0 48.6 (ring 52.1). N = 2048 round_scale 1: the kernels tied in the bench
    // (31.3), but ncu timed the stream kernel 27.5–28.5 µs against the ring's 30.6–31.3 (session 6 rounds 1–2): the
    // op's scratch re-mapping (now kiln's own pool, runtime alloc_async) cost it ≈ 3 µs outside the kernel.
    if (mode == 2 && arch.sm >= 90 && ring && (nb >= 16 || !round)) {
      const int scb = nb % 2 == 0 ? 2 : 1;
      s.config = {};
      s.config[C_WARPS] = kRmsqStreamThreads / 32;
      s.config[C_COL_BLOCKS] = scb;
      s.config[C_PREFETCH] = 1;  // x kept in its ring slots (| QEL where it won: below)
      s.config[C_STAGES] = 2 * scb;
      // LEAN (session 7 round 5, in one process: 27.66 µs against the base's 29.23 at N = 2048, 92.30 against 94.86
      // at 7168, one block an item 27.74 against 29.60; the bench rows 27.82 / 94.77, round_scale 0 44.90 against
      // 46.6; bit-exact). With power-of-two scales and two blocks an item: LEAN + TIGHT + FLAT + SPLIT + WLDG (session
      // 8 round 4, in one process: N = 2048 25.90 µs against LEAN's 27.71, N = 7168 90.93 against 93.26; ncu 24.19 /
      // 90.72 against 26.27 / 93.95; bit-exact; launch_stream drops the TIGHT bits where x is strided or M·N ≥ 2^31).
      // (Session 22 ran TIGHT at round_scale 0 too. The same set there, two blocks an item, read in `kiln bench`
      // (four alternating processes each) N = 2048 33.12 / 33.20 / 32.78 / 33.07 µs against LEAN's 33.74 / 33.76 /
      // 33.94 / 34.24, N = 7168 98.46 / 96.94 / 97.44 / 95.74 against 98.27 / 97.92 / 97.82 / 98.21 — but see below.)
      s.config[C_OVERLAP] =
          round && scb == 2 ? kStreamLean | kStreamTight | kStreamFlat | kStreamSplit | kStreamWldg : kStreamLean;
      // round_scale 0 up to N = 2048 (16 blocks a row): one block an item, two slots, TIGHT + SPLIT + WLDG (session
      // 22). `kiln tune` at N = 2048 in one process (H100), each candidate timed alone: 10.22 / 13.44 / 20.00 / 32.27
      // µs at 1024 / 2048 / 4096 / 8192 tokens, against 12.29 / 14.24 / 21.55 / 33.66 for two blocks an item with
      // the power-of-two set and 13.10 / 14.94 / 22.62 / 34.18 for LEAN (the session-21 default); re-timed
      // alternating with the default (one call each, the other kernel in between) it was the tuner's pick at 4096
      // and 8192 (35.34 against 40.06 µs at 8192). The two-block TIGHT kernel's code is the largest of the stream
      // variants (6520 SASS instructions at round_scale 0) and loses most when another kernel ran before it — what a
      // training step does between two calls — so it is not the default at round_scale 0 at any N (from N = 4096
      // LEAN stays, not measured otherwise).
      if (!round && nb <= 16) {
        s.config[C_COL_BLOCKS] = 1;
        s.config[C_STAGES] = 2;
        s.config[C_OVERLAP] = kStreamLean | kStreamTight | kStreamSplit | kStreamWldg;
      }
      s.config[C_EXCHANGE] = kStreamGlobal;
      // The codes stored evict-last (QEL, session 14: see kStreamHintQel) from N = 4096; launch_stream keeps it only
      // where M·N ≥ kStreamQelMinElems.
      if (round && scb == 2 && N >= 4096) s.config[C_PREFETCH] |= kStreamHintQel;
      // With it, from N = 7168, DISC1 (session 15: each CTA discards its last item's code lines at its start — the
      // previous call's left-overs; see kStreamHintDisc1); launch_stream drops both below kStreamQelMinElems.
      if (round && scb == 2 && N >= kStreamDisc1MinN) s.config[C_PREFETCH] |= kStreamHintDisc1;
    }
  }
  if (g_forced.N == N && g_forced.mode == mode && ring) {
    Specialization t = s;
    for (int i = 0; i < kConfigFields; ++i) t.config[i] = g_forced.config[i];
    if (in_search_space(t)) s = t;
  }
  return s;
}

// Ring-kernel points of the tile kernel (sm_90), all within 227 KiB of shared memory:
//  * the slice resident (prefetch 0): cb blocks per CTA with R ≥ cb slots (R ≥ 2·cb with overlap); CTAs of 8 or
//    (mode 2) 16 warps; mode 2 with a cluster: exchange by cluster barrier or by pushes;
//  * RELOAD (prefetch 1, mode 2, cb ≥ 2): each block passes through the ring twice (Σx², then the quantization, the
//    second copy from L2), so cb is not bounded by the ring: 2 or 3 slots, 8 warps, pushes where there is a cluster.
// A subset of R keeps the space (and the compile test) small.
void ring_points(const Specialization& base, int cb, std::vector<Specialization>& out) {
  if (base.arch.sm < 90) return;
  Specialization s = base;
  s.config = {};
  s.config[C_COL_BLOCKS] = cb;
  const bool mode2 = base.params[P_MODE] == 2;
  const int S = static_cast<int>(base.params[P_N] / (128 * cb));
  const std::vector<int> slots = !mode2 ? std::vector<int>{1, 2, 4} : cb <= 2 ? std::vector<int>{1, 2, 4}
                                                                             : std::vector<int>{cb, cb + 1, cb + 2};
  for (int overlap : {0, 1}) {
    if (overlap && !mode2) continue;
    for (int R : slots) {
      if (R < (overlap ? 2 * cb : cb) || R > kRmsNormBlockQuantMaxRing) continue;
      s.config[C_STAGES] = R;
      s.config[C_OVERLAP] = overlap;
      for (int warps : {8, 16}) {
        if (warps == 16 && !mode2) continue;
        s.config[C_WARPS] = warps;
        for (int exchange : {0, 1}) {
          if (exchange && !(mode2 && S > 1)) continue;
          if (rms_norm_block_quant_ring_smem_bytes(R, warps, exchange ? S : 0) > 227 * 1024) continue;
          s.config[C_EXCHANGE] = exchange;
          out.push_back(s);
        }
      }
    }
  }
  if (mode2 && cb >= 2 && S > 1)  // (one CTA a row: its serial Σx² over the whole row drifts a few ulps)
    for (int R : {2, 3}) {
      s.config[C_PREFETCH] = 1;
      s.config[C_STAGES] = R;
      s.config[C_OVERLAP] = 0;
      s.config[C_WARPS] = 8;
      s.config[C_EXCHANGE] = S > 1;
      out.push_back(s);
    }
}

// Stream-kernel points (exchange 3, sm_90, mode 2): 1 or 2 blocks an item, kept in their ring slots between the
// passes (prefetch 1), the next item's pass 1 first (overlap 1; with more variant bits, see kStreamLean …), slots for
// two items or one more. (Session 5 round 1
// measured the other variants slower and they were removed: the block kept in registers, 35–49 µs at N = 2048 vs
// 32.5; reloaded from L2, 120.8+ at N = 7168 vs 102.6; clusters with DSMEM pushes instead of the GLOBAL walk, 31.4 /
// 128.0 vs the ring's 31.6 / 120.9; mode 1, 22.4–25 vs the tile kernel's 19.0.)
void stream_points(const Specialization& base, int cb, std::vector<Specialization>& out) {
  if (base.arch.sm < 90 || base.params[P_MODE] != 2 || cb > 2) return;
  Specialization s = base;
  s.config = {};
  s.config[C_WARPS] = kRmsqStreamThreads / 32;
  s.config[C_COL_BLOCKS] = cb;
  s.config[C_EXCHANGE] = kStreamGlobal;
  s.config[C_PREFETCH] = 1;
  // (Session 7 round 3 also measured LEAN with slots for three items — R = 3·CB: 30.78 / 99.34 µs against 29.38 /
  // 95.60 with two — and FIRST alone — 30.80 / 101.25; removed, as was pass 1 two items ahead, which needs R = 3·CB.)
  constexpr int kTight = kStreamLean | kStreamTight;
  for (int overlap : {1, kStreamLean, kStreamLean | kStreamFirst | kStreamStart, kTight, kTight | kStreamSplit,
                      kTight | kStreamFlat, kTight | kStreamFlat | kStreamSplit, kTight | kStreamSplit | kStreamWldg,
                      kTight | kStreamFlat | kStreamSplit | kStreamWldg}) {
    if ((overlap & kStreamStart) && cb != 2) continue;  // (FIRST + START: two blocks an item)
    for (int R : {2 * cb, 2 * cb + 1}) {                // (slots for two items, or one more block: the base only)
      if (R > kRmsqStreamMaxRing ||
          rms_norm_block_quant_stream_smem_bytes(R, (overlap & kStreamTight) != 0, static_cast<int>(base.params[P_N])) >
              227 * 1024)
        continue;
      if (overlap != 1 && R != 2 * cb) continue;
      s.config[C_OVERLAP] = overlap;
      s.config[C_STAGES] = R;
      out.push_back(s);
    }
  }
  // Session 14: the codes' L2 hint on the power-of-two default (kStreamHint*; measured with power-of-two scales only,
  // the default there from N = 4096; at round_scale 0 these points are search-space variants).
  if (cb == 2) {
    s.config[C_OVERLAP] = kTight | kStreamFlat | kStreamSplit | kStreamWldg;
    s.config[C_STAGES] = 2 * cb;
    for (int h :
         {kStreamHintQel, kStreamHintQen, kStreamHintQel | kStreamHintDisc1, kStreamHintQel | kStreamHintDiscZ1}) {
      s.config[C_PREFETCH] = 1 | h;
      out.push_back(s);
    }
  }
}

// Tile-kernel GX points (sm_90, mode 2, one or two blocks a CTA): exchange 5 where a row has more than 8 chunks
// (else the plain cluster tile kernel covers it) with clusters of K = gx_cluster(S) ≥ 2; exchange 6 (tile512) at any
// K = gx_cluster(S) ≥ 2 (K = S: one cluster a row), and with clusters of up to 16 where that is larger.
void tile_gx_points(const Specialization& base, int cb, std::vector<Specialization>& out) {
  const int S = static_cast<int>(base.params[P_N] / (128 * cb));
  if (base.arch.sm < 90 || base.params[P_MODE] != 2 || cb > 2 || rms_norm_block_quant_gx_cluster(S) < 2) return;
  Specialization s = base;
  s.config = {};
  s.config[C_COL_BLOCKS] = cb;
  if (S > 8) {
    s.config[C_EXCHANGE] = kTileGlobal;
    out.push_back(s);
  }
  s.config[C_EXCHANGE] = kTile512;
  out.push_back(s);
  if (rms_norm_block_quant_gx_cluster(S, 16) > rms_norm_block_quant_gx_cluster(S, 8)) {
    s.config[C_OVERLAP] = 1;
    out.push_back(s);
  }
}

// Row kernel: 4, 8 or 16 warps; the two-row prefetch only where two rows fit the register budget (≤ 4096 columns).
// Tile kernel: column blocks per CTA that divide N/128; in mode 2 the cluster they imply must be ≤ 16 CTAs on
// Hopper (there are no clusters before sm_90: one CTA per row); mode 1 takes up to 8 blocks per CTA.
void search_space(const Specialization& base, std::vector<Specialization>& out) {
  const int64_t N = base.params[P_N];
  Specialization s = base;
  s.config = {};
  if (base.kernel == kRowKernel) {
    for (int col_blocks : {0, 4})  // 16 or (row8 kernel) 8 lanes a 128-column block
      for (int warps : {4, 8, 16})
        for (int prefetch : {0, 1}) {
          if (prefetch && N > 4096) continue;
          s.config[C_COL_BLOCKS] = col_blocks;
          s.config[C_WARPS] = warps;
          s.config[C_PREFETCH] = prefetch;
          out.push_back(s);
        }
    if (base.arch.sm >= 90) {  // pipe kernel (col_blocks 4: the row8 layout): row slots a warp that fit 227 KiB
      s.config[C_COL_BLOCKS] = 4;
      // Weights in registers (prefetch 1, fp32) where they take ≤ 64 registers: N ≤ 2048 (split rows of 4096
      // columns spilled at the split kernel's 80-register cap).
      // exchange 1: two warps a row (half a row each, their Σx² exchanged; N a multiple of 1024), two or three
      // slots.
      for (int warps : {4, 8, 16})
        for (int stages : {2, 3, 4})
          for (int wreg : {0, 1})
            for (int split : {1, 2}) {
              if (rms_norm_block_quant_pipe_smem_bytes(static_cast<int>(N), warps, stages, split) > 227 * 1024)
                continue;
              if (wreg && N > 2048) continue;
              if (split > 1 && (N % 1024 != 0 || stages > 3)) continue;
              s.config[C_WARPS] = warps;
              s.config[C_STAGES] = stages;
              s.config[C_PREFETCH] = wreg;
              s.config[C_EXCHANGE] = split > 1;
              out.push_back(s);
            }
      // Variant bits (overlap field, kRmsqPipe*) on the default structures only: up to N = 2048 two warps a row with
      // weights in registers (2 or 3 slots) and one warp a row (2 slots); longer rows two warps a row, weights
      // loaded, 2 slots. Session 6 round 3 (M = 8192): START1 + LEAN + NOFENCE won at N = 2048 and 7168 (the
      // defaults); BAND, TAIL (both deleted in session 8) and three slots lost (bench/NOTES.md).
      const bool split_ok = N % 1024 == 0;
      constexpr int kSLN = kRmsqPipeStart1 | kRmsqPipeLean | kRmsqPipeNoFence;
      for (int flags : {kRmsqPipeStart1, kRmsqPipeLean, kRmsqPipeLean | kRmsqPipeNoFence, kSLN}) {
        s.config[C_OVERLAP] = flags;
        s.config[C_WARPS] = 8;
        const bool all = flags == kSLN || flags == kRmsqPipeStart1;
        for (int stages : {2, 3})
          for (int split : {1, 2}) {
            if (stages == 3 && !(all && split == 2)) continue;
            if (split == 1 && !(all && N <= 2048)) continue;
            if (split == 2 && !split_ok) continue;
            s.config[C_STAGES] = stages;
            s.config[C_PREFETCH] = N <= 2048;
            s.config[C_EXCHANGE] = split > 1;
            if (rms_norm_block_quant_pipe_smem_bytes(static_cast<int>(N), 8, stages, split) > 227 * 1024) continue;
            out.push_back(s);
          }
      }
      s.config[C_OVERLAP] = 0;
      s.config[C_EXCHANGE] = 0;
    }
    return;
  }
  const int nb = static_cast<int>(N / 128);
  const int max_cluster = base.arch.sm >= 90 ? 16 : 1;
  for (int cb = 1; cb <= nb; ++cb) {
    if (nb % cb != 0) continue;
    if (base.params[P_MODE] == 2 ? nb / cb > max_cluster : cb > 8) continue;
    s.config[C_COL_BLOCKS] = cb;
    s.config[C_PREFETCH] = 0;
    out.push_back(s);
    if (cb >= 2 && cb <= kMaxStagedBlocks) {  // the slice staged in shared memory
      s.config[C_PREFETCH] = 1;
      out.push_back(s);
    }
    if (base.params[P_MODE] == 2 || cb == 1) ring_points(base, cb, out);
  }
  for (int cb = 1; cb <= std::min(nb, 2); ++cb)  // the stream kernel and the tile kernel's GX (no cluster-size bound)
    if (nb % cb == 0) {
      stream_points(base, cb, out);
      tile_gx_points(base, cb, out);
    }
}

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out) {
  if (m.hidden_size <= 0 || m.hidden_size % 128 != 0 || m.hidden_size > kRmsNormBlockQuantMaxN) return;
  for (int mode : {0, 1, 2})
    for (bool round : {false, true}) {
      out.push_back(make_spec(arch, m.hidden_size, mode, round, false));
    }
}

// Persistent ring grid: clusters (of `split` CTAs in mode 2) that can be resident at once (0: clusters that cannot be
// co-scheduled; the caller falls back), else groups of `split` CTAs (at least 1).
int ring_groups(Runtime::Impl& impl, const Kernel& k, unsigned split, bool cluster, unsigned threads, unsigned smem) {
  if (cluster) return impl.resident_clusters(k, split, threads, smem);
  return std::max(1, impl.device().sm_count * impl.resident_per_sm(k, static_cast<int>(threads), static_cast<int>(smem)) /
                         static_cast<int>(split));
}

// The GLOBAL exchange's row-sum workspace for `tiles` × `chunks` items (mode 2 with more than one chunk a row):
// tagged pairs in the runtime's scratch (Runtime::Impl::scratch: the stream's buffer, reused by every call on the
// stream), never cleared — a pair counts only with this launch's tag (never 0, so fresh memory never does, nor does
// an earlier launch's pair). A CUDA graph replays a captured launch with the same tag, so under capture the workspace
// (then the graph's own allocation) is cleared first (a memset node) and the tag is one no uncaptured launch uses.
// Returns the scratch (ptr 0: none); release it after the launch.
ScratchBuffer global_workspace(Runtime::Impl& impl, int64_t tiles, int chunks, int mode, Stream stream,
                               RmsqStreamArgs& sa) {
  if (mode != 2 || chunks <= 1) return {};
  static const char owner = 0;  // (the workspace's name in the runtime's scratch table)
  const size_t words = static_cast<size_t>(tiles * chunks * 128 * 2);
  const ScratchBuffer ws = impl.scratch(&owner, words * 4, stream);
  sa.ws = reinterpret_cast<unsigned long long*>(ws.ptr);
  sa.tag = impl.workspace_tag(ws.ptr, words, stream, "cuMemsetD32Async (rms_norm_block_quant workspace)");
  return ws;
}

// One wave of resident CTAs of kernel k over `items` (at most the items): the GLOBAL walk's most CTAs (the exchange
// waits for partners, so every CTA must be resident).
unsigned global_wave(Runtime::Impl& impl, const Kernel& k, int64_t items, int threads, unsigned smem) {
  const int64_t wave = static_cast<int64_t>(impl.device().sm_count) *
                       impl.resident_per_sm(k, threads, static_cast<int>(smem));
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(items, wave)));
}
// The GLOBAL walk's grid. Where a CTA runs few items (p = ⌈items / wave⌉ ≤ kGlobalFewItems), the wave's p on the
// fewest CTAs that keep it, ⌈items / p⌉ (every CTA p items or p − 1, fewer than p of them p − 1): the start burst
// (two items a CTA) is then half the work or more, and fewer CTAs ask for less of it at once. Else the wave. Session
// 12 (q2d), same cubin, in one process against the wave forced (bench/NOTES.md): N = 2048, M = 8192 (512 items, p = 4:
// 128 CTAs instead of 132) −0.29 / −0.32 / −0.61 µs in rounds A / B / C (faster in 51 of 51 rounds; 25.12–25.22),
// round_scale 0 (LEAN) −0.18 (15 of 15); N = 7168 (1792 items, p = 14) 128 CTAs +0.05 / +0.62 / +0.93, 129–131 +0.10
// to +0.51: the wave stays. The bits do not depend on the grid.
constexpr int64_t kGlobalFewItems = 4;
unsigned global_grid(Runtime::Impl& impl, const Kernel& k, int64_t items, int threads, unsigned smem) {
  const int64_t wave = global_wave(impl, k, items, threads, smem);
  const int64_t per_cta = (items + wave - 1) / wave;
  if (per_cta > kGlobalFewItems) return static_cast<unsigned>(wave);
  return static_cast<unsigned>((items + per_cta - 1) / per_cta);
}

// Launches a tile GX config (is_tile_gx(s)): grid (S, tiles), clusters of K, the clusters' row sums in the workspace.
void launch_tile_gx(Runtime::Impl& impl, const Specialization& s, const RmsNormBlockQuantArgs& a, Stream stream) {
  const int64_t tiles = (static_cast<int64_t>(a.M) + 127) / 128;
  const int S = chunks_of(s), K = cluster_of(s);
  LaunchDims d;
  d.block[0] = is_tile512(s) ? 512 : 256;
  d.smem = static_cast<unsigned>(smem_bytes(s));
  d.grid[0] = static_cast<unsigned>(S);
  d.grid[1] = static_cast<unsigned>(tiles);
  d.cluster[0] = static_cast<unsigned>(K);
  RmsqStreamArgs sa{a, nullptr, 0, nullptr};
  const ScratchBuffer ws = global_workspace(impl, tiles, S / K, 2, stream, sa);  // (none for one cluster a row)
  impl.launch(s, d, stream, sa);
  impl.release_scratch(ws, stream);
}

}  // namespace
namespace detail {
// Measurement hook (tests): while set, mode-2 calls that run a LEAN stream config run its TRACE variant, writing
// kRmsqStreamTraceSlots u64 records a CTA (grid of them) to this array.
std::atomic<unsigned long long*> rms_norm_block_quant_stream_trace{nullptr};
// Measurement hook (tests): while > 0, stream-kernel calls launch this many CTAs (at most one wave and the items)
// instead of the host's choice (global_grid). The bits do not depend on it: an item's partial sums are its own
// (tile, chunk)'s and the exchange sums a tile's chunks in chunk order whatever CTA ran them.
std::atomic<int> rms_norm_block_quant_stream_grid{0};
}  // namespace detail
namespace {

// Launches a stream-kernel config (is_stream(s)): one wave of resident CTAs over the tiles × chunks items.
void launch_stream(Runtime::Impl& impl, Specialization s, int mode, const RmsNormBlockQuantArgs& a, Stream stream) {
  unsigned long long* trace = detail::rms_norm_block_quant_stream_trace.load(std::memory_order_relaxed);
  if (trace && (s.config[C_OVERLAP] & 2)) s.config[C_OVERLAP] |= kRmsqStreamTrace;  // (not a search-space point)
  else trace = nullptr;
  if ((s.config[C_OVERLAP] & kStreamTight) &&
      (a.x_stride != s.params[P_N] || static_cast<int64_t>(a.M) * s.params[P_N] >= (int64_t{1} << 31))) {
    s.config[C_OVERLAP] &= ~(kStreamTight | kStreamSplit | kStreamFlat | kStreamWldg);
    s.config[C_PREFETCH] = 1;  // (the codes' L2 hint is a TIGHT variant)
  }
  if ((s.config[C_PREFETCH] & kStreamHintQel) && static_cast<int64_t>(a.M) * s.params[P_N] < kStreamQelMinElems)
    s.config[C_PREFETCH] &= ~(kStreamHintQel | kStreamHintOnQel);  // (QEL only where the codes exceed what L2
                                                                     // keeps, with its session-15 bits: the same bits)
  const int64_t tiles = (static_cast<int64_t>(a.M) + 127) / 128;
  const int chunks = chunks_of(s);
  LaunchDims d;
  d.block[0] = kRmsqStreamThreads;
  d.smem = static_cast<unsigned>(smem_bytes(s));
  const Kernel& k = impl.kernel(s);
  d.grid[0] = global_grid(impl, k, tiles * chunks, kRmsqStreamThreads, d.smem);
  if (const int forced = detail::rms_norm_block_quant_stream_grid.load(std::memory_order_relaxed); forced > 0)
    d.grid[0] = std::min(global_wave(impl, k, tiles * chunks, kRmsqStreamThreads, d.smem),
                         static_cast<unsigned>(forced));
  RmsqStreamArgs sa{a, nullptr, 0, trace};
  const ScratchBuffer ws = global_workspace(impl, tiles, chunks, mode, stream, sa);
  impl.launch(s, d, stream, sa);
  impl.release_scratch(ws, stream);
}

}  // namespace

namespace detail {
// Measurement hook (tests): while set, mode-0 calls that run the pipe kernel run its TRACE variant, writing
// kRmsqPipeTraceSlots u64 timestamps a warp (grid · warps of them) to this array.
std::atomic<unsigned long long*> rms_norm_block_quant_pipe_trace{nullptr};

// Test hook: later calls at hidden size N in output_mode `mode` run the config {warps, col_blocks, prefetch, stages,
// overlap, exchange} (on sm_90a). Returns false, changing nothing, for a config outside the search space; N = 0
// restores the heuristic. Not synchronized: call it while no op of this family runs.
bool rms_norm_block_quant_force_config(int64_t N, int mode, int warps, int col_blocks, int prefetch, int stages,
                                       int overlap, int exchange) {
  if (N == 0) {
    g_forced = {};
    return true;
  }
  if (mode < 0 || mode > 2 || N <= 0 || N % 128 != 0 || N > kRmsNormBlockQuantMaxN) return false;
  const std::array<int32_t, kConfigFields> config{warps, col_blocks, prefetch, stages, overlap, exchange};
  for (bool round : {false, true}) {
    Specialization t = make_spec(Arch::parse("sm_90a"), N, mode, round, false);
    for (int i = 0; i < kConfigFields; ++i) t.config[i] = config[i];
    if (!in_search_space(t)) return false;
  }
  g_forced = {N, mode, config};
  return true;
}
}  // namespace detail

KILN_REGISTER_FAMILY(rms_norm_block_quant, g_family)

void rms_norm_block_quant_fwd(Runtime& rt, const TensorRef& x, const TensorRef& weight, const TensorRef& rms_inv_in,
                              const RmsNormBlockQuantOutputs& out, const RmsNormBlockQuantOptions& opts,
                              Stream stream) {
  const Check ck{"rms_norm_block_quant_fwd"};
  const int mode = opts.output_mode;
  if (mode < 0 || mode > 2) ck.invalid("output_mode", fmt::format("expected 0, 1 or 2, got {}", mode));
  ck.finite_nonnegative("eps", opts.eps);
  ck.dtype("x", x, {DType::bf16});
  ck.rows("x", x, 16);
  const int64_t M = x.shape[0], N = x.shape[1];
  if (N <= 0 || N % 128 != 0)
    ck.shape_error("x", fmt::format("expected the last dim N to be a positive multiple of 128, got N = {}", N));
  if (N > kRmsNormBlockQuantMaxN)
    ck.shape_error("x", fmt::format("expected N ≤ {}, got N = {}", kRmsNormBlockQuantMaxN, N));
  ck.fits_int32("x", M, "M (rows)");
  if ((M + 127) / 128 > 65535) ck.invalid("x", fmt::format("M = {} exceeds the grid limit of {} rows", M, 65535 * 128));
  if (M > 0) ck.pointer("x", x, 16);
  ck.tensor("weight", weight, {DType::bf16, DType::f32}, {N}, 16);

  const bool row_out = mode != 1, col_out = mode != 0;
  if (row_out) {
    ck.tensor("q", out.q, {DType::e4m3}, {M, N}, 4);
    ck.tensor("q_scale", out.q_scale, {DType::f32}, {N / 128, M}, 4);
    if (out.rms_inv.defined()) ck.tensor("rms_inv", out.rms_inv, {DType::f32}, {M}, 4);
  }
  if (col_out) {
    ck.tensor("qT", out.qT, {DType::e4m3}, {N, M}, 16);
    ck.tensor("qT_scale", out.qT_scale, {DType::f32}, {(M + 127) / 128, N}, 4);
  }
  if (mode == 1) {
    if (!rms_inv_in.defined())
      ck.invalid("rms_inv_in", "output_mode 1 needs the rms_inv of an earlier mode-0/2 call, got none");
    ck.tensor("rms_inv_in", rms_inv_in, {DType::f32}, {M}, 4);
  } else if (rms_inv_in.defined()) {
    ck.invalid("rms_inv_in", fmt::format("only output_mode 1 reads it, got one with output_mode {}", mode));
  }
  if (M == 0) return;

  auto& impl = rt.impl();
  Specialization s =
      impl.tuned(make_spec(impl.target_arch(), N, mode, opts.round_scale, weight.dtype == DType::f32), M);
  RmsNormBlockQuantArgs a{};
  a.x = x.data;
  a.x_stride = x.strides[0];
  a.w = weight.data;
  a.q = static_cast<unsigned char*>(out.q.data);
  a.q_scale = static_cast<float*>(out.q_scale.data);
  a.rms_out = mode != 1 ? static_cast<float*>(out.rms_inv.data) : nullptr;
  a.rms_in = mode == 1 ? static_cast<const float*>(rms_inv_in.data) : nullptr;
  a.qT = static_cast<unsigned char*>(out.qT.data);
  a.qT_scale = static_cast<float*>(out.qT_scale.data);
  a.M = static_cast<int>(M);
  a.eps = opts.eps;
  if (unsigned long long* trace = detail::rms_norm_block_quant_pipe_trace.load(std::memory_order_relaxed);
      trace && mode == 0 && s.kernel == kRowKernel && s.config[C_STAGES] > 0) {
    s.config[C_OVERLAP] |= kRmsqPipeTrace;  // (not a search-space point: measurement only)
    a.qT = reinterpret_cast<unsigned char*>(trace);
  }

  LaunchDims d;
  if (is_stream(s)) {
    launch_stream(impl, s, mode, a, stream);
    return;
  }
  if (is_tile_gx(s)) {
    launch_tile_gx(impl, s, a, stream);
    return;
  }
  if (s.kernel == kRowKernel) {
    const unsigned warps = static_cast<unsigned>(s.config[C_WARPS]);
    int64_t grid = (M + warps - 1) / warps;
    d.smem = static_cast<unsigned>(smem_bytes(s));
    if (s.config[C_PREFETCH] || s.config[C_STAGES] > 0) {  // persistent: one wave of resident CTAs
      const Kernel& k = impl.kernel(s);
      grid = std::min<int64_t>(grid, static_cast<int64_t>(impl.device().sm_count) *
                                         impl.resident_per_sm(k, static_cast<int>(warps * 32),
                                                              static_cast<int>(d.smem)));
    }
    d.grid[0] = static_cast<unsigned>(grid);
    d.block[0] = warps * 32;
  } else {
    const int64_t tiles = (M + 127) / 128;
    int groups = 0;
    if (s.config[C_STAGES] > 0) {  // persistent: as many clusters as are resident at once, each looping over tiles
      const unsigned split = static_cast<unsigned>(N / (128 * s.config[C_COL_BLOCKS]));
      groups = ring_groups(impl, impl.kernel(s), split, mode == 2 && split > 1, s.config[C_WARPS] * 32,
                           static_cast<unsigned>(smem_bytes(s)));
      // A cluster shape this GPU cannot co-schedule: the non-persistent tile kernel's default instead.
      if (groups == 0) s.config = make_spec(s.arch, N, mode, opts.round_scale, false, false).config;
    }
    const int cb = s.config[C_COL_BLOCKS];
    const unsigned split = static_cast<unsigned>(N / (128 * cb));
    d.grid[0] = split;
    d.grid[1] = static_cast<unsigned>(s.config[C_STAGES] > 0 ? std::min<int64_t>(tiles, groups) : tiles);
    d.block[0] = s.config[C_STAGES] > 0 ? static_cast<unsigned>(s.config[C_WARPS]) * 32 : 256;
    d.smem = static_cast<unsigned>(smem_bytes(s));
    if (mode == 2) d.cluster[0] = split;
  }
  impl.launch(s, d, stream, a);
}

}  // namespace kiln
