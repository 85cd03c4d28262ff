// kiln/moe_routing_args.h — kernel argument blocks of the MoE routing family (top-k routing, row-id map), shared by
// the device template and the host recipe.
#pragma once

namespace kiln {

// Tokens per map block: the unit of the per-block expert histograms (hist[ceil(T/32), E]) that the map writer turns
// into destination rows. A block's token order inside one expert is a 32-bit mask in shared memory. The top-k
// forward's chunks are at least this long, so its chunk and superblock rows fit the same workspace.
constexpr int kMoeMapBlockTokens = 32;
// Largest expert count: the map writer keeps E offsets and masks in shared memory.
constexpr int kMoeMaxExperts = 1024;
// Top-k routing keeps a lane's experts in registers (32 lanes per token, at most 64 experts per lane).
constexpr int kMoeTopkMaxExperts = 512;

// The chunk counts of moe_route and the padded map's outputs: what moe_chunk_bases reads and writes (moe_route_map,
// or moe_route itself when it writes the map in the same launch).
struct MoeChunkMap {
  const int* chunk_counts;  // [nchunks, E] tokens of each chunk per expert
  const int* super;         // [ceil(nchunks / super_chunks), E] per-superblock counts
  int* counts;              // [E] real tokens per expert (out)
  int* row_id_map;          // [T, E]
  int* row_id_indices;      // [num_out] or null
  int* padded_counts;       // [E] or null
  int* offsets;             // [E + 1] or null
  int nchunks;
  int super_chunks;
  int multiple_of;
  int num_out;
};

// Top-k forward: moe_route_zero → moe_route → moe_route_map (map, unless moe_route writes it), chained by
// programmatic dependent launch.
struct MoeZeroArgs {
  int* p;  // [n] set to 0
  int n;
};

struct MoeRouteArgs {
  const float* logits;         // [T, E]
  const float* bias;           // [E] or null (selection only)
  float* probs;                // [T, E]
  unsigned char* routing_map;  // [T, E] 0/1
  int* chunk_counts;           // MAP: [nchunks, E] tokens of each chunk per expert
  int* super;                  // MAP: [ceil(nchunks / super_chunks), E] per-superblock counts (zeroed first)
  int* counts;                 // !MAP: [E] tokens per expert (zeroed first)
  unsigned* records;           // MAP: [T, K] per pick: expert | rank among the chunk's tokens routed to it << 16
  int* row_id_map;             // MAP, fill 0: [T, E] set to −1 here (moe_route_map writes the routed entries)
  int T;
  int tpw;                     // tokens per warp (a chunk is warps · tpw tokens)
  int super_chunks;            // chunks per superblock
  float scale;                 // routed scaling factor
  MoeChunkMap map;             // FUSE: the map this launch writes after its grid-wide arrival
  unsigned* arrive;            // FUSE: CTAs done counting (zeroed first, with the superblock rows)
  int run_tokens;              // moe_route_run_kernel: tokens per CTA (a contiguous run; ≤ 8 per warp)
  unsigned long long* trace;   // moe_route_run_kernel's TRACE variant only: kMoeRunTraceSlots u64 a CTA
  int persist_half;            // PERSIST: ints in each half of the per-stream superblock rows (zeroed whole for the
                               // next call)
};

// moe_route_run_kernel's measurement variants (template argument V, set through the Specialization's unnamed config
// field 5: never in the search space nor in a tuning file; tests/gpu/moe_route_measure_test.cpp). TRACE writes the
// CTA's phase stamps to MoeRouteArgs::trace; the others leave a phase out (their outputs are then incomplete or wrong:
// timing only): NOFILL the −1 rows of row_id_map, NOROWS the prob and routing-map rows' global stores, NOTAIL the
// bases and the routed rows after the grid-wide arrival, NOWAIT the arrival's spin (the bases read whatever counts are
// there), NOARRIVE the arrival, its spin and everything after it. The candidates (exact outputs) are listed below;
// values 64 (EARLY), 512 (PACK) and 8192 (FILLW) were candidates that lost in two rounds each (bench/NOTES.md
// session 8) and are deleted (512 is session 13's DRANK since).
enum : int {
  kMoeRunTrace = 1,
  kMoeRunNoFill = 2,
  kMoeRunNoRows = 4,
  kMoeRunNoTail = 8,
  kMoeRunNoWait = 16,
  kMoeRunNoArrive = 32,
  kMoeRunNoZero = 128,  // the op launches no moe_route_zero before the kernel (the superblock rows and the arrival
                        // counter keep the previous call's values; implies NOWAIT): what that launch costs
  kMoeRunCoop = 256,    // config `load` bit 4 (with ISSUELAST): one cooperative launch, no moe_route_zero
  kMoeRunApprox = 1024,  // the config `load` = 1 of the CTA-run kernel (a search-space point, not a measurement
                         // variant): selection on approximate keys, exact σ for the candidates only (moe_routing.cuh)
  kMoeRunIssue0 = 2048,  // a candidate (outputs exact): thread 0 issues the row copies before the first CTA barrier
  kMoeRunIssueLast = 4096,  // a candidate (outputs exact): as ISSUE0, by the CTA's last warp instead of warp 0
  // Session 9 candidates (outputs exact; moe_routing.cuh): the prob / map rows by bulk async copies (BULKST), the bias
  // clamp and its max |finite| once per CTA (BIASPRE). (16384 WAITEARLY, 32768 COUNTW, 2097152 PRELOAD, 4194304 NOFENCE
  // and the bases' ablations 524288 / 1048576 were measured in rounds 1–2 and deleted: bench/NOTES.md; 16384,
  // 524288, 1048576, 2097152 and 4194304 were session 13's TAIL5, STROWS, KEY5, LO8 and SEGIDX, deleted; 32768 is GRP5
  // and 512 DRANK below.)
  kMoeRunBulkStore = 65536,
  kMoeRunBiasPre = 131072,
  // PERSIST (in the default with the map since session 9): no moe_route_zero and no cooperative launch.
  // MoeRouteArgs::arrive points at a per-stream word that outlives the call and MoeRouteArgs::super at two halves of
  // superblock rows beside it (the Runtime's per-stream state, zero when first allocated): the arrival is the self-resetting grid-barrier count (CTA 0 adds 2^31 − (n − 1), the
  // others 1: the top bit flips once all arrived, the low bits return to 0), the call uses the half of the top bit's
  // value at its start and zeroes the other half, which the next call on the stream uses.
  kMoeRunPersist = 262144,
  // WARPPAD (a candidate, outputs exact): the bases' −1 entries of the inverse list for the padding rows written by a
  // warp (a lane a row) instead of a loop of the expert's one thread before the bases' last CTA barrier.
  kMoeRunWarpPad = 8388608,
  // FILLTMA (a candidate, outputs exact): the −1 rows of row_id_map by bulk async copies from a shared block of −1
  // instead of 16-byte stores by every thread — with fill 4 after the arrival (the selection's list holds the block),
  // with fill 3 by the copy-issuing warp right after the row copies (behind them in the copy engine's queue, while the
  // CTA computes; a block of its own): the release of the other CTA on the SM no longer waits behind them (round 1:
  // without the fill its arrival came ≈ 0.6 µs earlier).
  kMoeRunFillTma = 16777216,
  // Session 10 ablations (timing only, outputs wrong): NOSELECT — the keys are formed (their maximum decides a
  // never-taken branch, so they are not dead code), then no selection: the thread of part p < K records expert
  // p·E/16 as pick p; NOKEYS — neither keys nor selection (the same picks). What a faster selection can gain at most.
  kMoeRunNoSelect = 33554432,
  kMoeRunNoKeys = 67108864,
  // (Session 15, helper topk9, round A: timing-only probes of the tail's count-row loads — NOHOT, the superblock-row
  // loads aimed at chunk rows with ≈ 16 requesters a line: +1.81 µs (its wrong totals also made the outputs' tail
  // write ≈ 61 k more entries); NOSB, no superblock rows: −0.11; no count rows at all: −0.78 — deleted: bench/NOTES.md.)
  // (Round B: FULLQ / FULLH / FULLALL — the last quarter / half / all of the arrivals without a bulk −1 fill before
  // their spin, their row_id_map rows written whole from shared memory after the puts — +0.35 / +0.69 / +0.80 µs:
  // the whole rows' 8 MB at the end cost ≈ 1.5 µs of L2 writes; deleted: bench/NOTES.md.)
  // (Round C: FILLTAIL / FILLTAILH — the bulk −1 rows issued after the spin, behind the count-row loads, by every CTA /
  // by the last half of the arrivals — +0.80 / +0.24 µs: the fill's writes in flight hold the loads back (rows loaded
  // 2.2 µs after the spin instead of 0.9); deleted: bench/NOTES.md.)
  // EARLYPUT (session 15, helper topk9; outputs exact; config `load` bit 8192, on 17326075: 17334267, the default with
  // the map since session 15 round D): the tail's routed rows put right after the bases' block-scan barrier (each
  // expert's base less the warps-before total in shared memory beside the warp totals), by the upper half's threads
  // first, each pick's expert and rank read during the spin; no CTA barrier before the puts nor after the outputs
  // (moe_chunk_bases_put). Rounds B / C / D / E, one process: −0.05 / −0.13 / −0.21 / +0.08 µs against 17326075, lower
  // in 25 / 31 / 58 / 13 of 41 / 41 / 61 / 61 rounds.
  kMoeRunEarlyPut = 16384,
  // (Session 16, helper topk10, round A: VALROWS — no release and no spin; every warp polled its count rows by relaxed
  // loads until their sums validated them (superblock rows grow from zero, chunk rows in their own zeroed per-stream
  // halves) — +0.53 µs, with VALNAP (256 ns between poll rounds) +0.45, with VALFILL8 (the −1 copies one a warp)
  // +0.69, lower in 0 / 41 rounds each: the re-polls queue behind the CTA's own bulk −1 fill (a round ≈ 1.5–2 µs:
  // rows valid at 10.7–11.3 µs against the default's spin 9.1–10.0), and the fill, issued without the release's wait,
  // delays the SM partner's emits (its loop barrier max +0.5 … +1.1); deleted: bench/NOTES.md.)
  // (Session 16, rounds B–D: EARLYREL — the counts and the release as soon as every warp had recorded its picks, by
  // the expert warps behind named barriers, while the last warps emitted — −0.10 / +0.02 / +0.03 µs, lower in 50 / 26
  // / 25 of 61 rounds: its fence still waited for the last warps' row copies; RELROWS — those copies held until the
  // release — +0.62 (the release came 0.57 µs sooner at p50 but later at p90: the held copies and the earlier −1 fills
  // delayed the late CTAs); LATECOPY — only the copies reached after the counts started held until the count rows had
  // landed — +0.02; deleted: bench/NOTES.md.)
  // (Round E: HELPFILL — the grid's first half, by an atomic claim before its release, also filling the bulk −1 rows of
  // the second half's CTAs that had not claimed them yet — +0.51 µs: the claims and the helpers' extra fills delayed
  // the last releases by ≈ 2 µs; deleted: bench/NOTES.md.)
  // LEAN (a candidate, outputs exact; config `load` bit 128, with the approximate keys on Ling's layout): the same
  // selection in fewer instructions and shorter dependent chains — the group's two best keys by a tree, the group
  // ranks and the kept groups' margin from one round of G shuffles (no lk / hd reductions), candidate positions
  // from a shared-memory counter instead of a shuffle prefix, ranks over the first 16 list slots unrolled (zeroed at
  // the start: no padding, no loop).
  kMoeRunLean = 134217728,
  // LEAN3 (a candidate on LEAN, outputs exact; config `load` bit 512, with BULKST): the prob rows staged in a separate
  // unpadded buffer and, with the map rows, zeroed at kernel start (the emit writes only the picks: no zero fill in
  // the chain) and copied out by one bulk copy a warp (was one a row); the candidate mask built in four independent
  // chains; a thread's first two candidates appended unrolled.
  kMoeRunLean3 = 268435456,
  // Session 10 round 3 candidates (outputs unchanged; config `load` bits 1024 / 2048). WAITLEAN: the rows' (and the
  // bias') mbarrier wait loop without the globaltimer read per iteration (an iteration cap traps instead): each
  // suspended try_wait wakes at every copy completion of the CTA (≈ 22 iterations a warp measured), ≈ 20 SASS an
  // iteration → ≈ 5. FASTDIV: the tail's integer divisions by runtime values (P, super_chunks, the grid) as shifts
  // and masks where the divisor is a power of two (a uniform branch; else the division), the WARPPAD owner test
  // without a modulo where the grid has at least E CTAs.
  kMoeRunWaitLean = 536870912,
  kMoeRunFastDiv = 1073741824,
  // (Session 12, helper topk4, round A: REGROWS — every warp's rows by register loads at kernel start, no bulk row
  // copies — lost +1.27 µs: all rows land at once, no warp computes early; deleted: bench/NOTES.md.)
  // (Round B: REGLATE8 — the last W/2 warps' rows by register loads — −0.10 µs, and with those loads after the copies'
  // issue +0.79; deleted.)
  // REGLATE12 (outputs exact; config `load` bit 16777216, in the default with the map since session 12: 16781307 =
  // 4091 + it): the CTA's last W/4 warps load their rows by coalesced 16-byte register loads once the CTA's init is
  // done and store them into the shared rows (no mbarrier wait loop for them; they land early, ahead of the copy
  // engine's queue), the others by the bulk copies as before. (Round C: REGPRE4 — the 4 warps before the last — −0.20
  // against REGLATE12's −0.23; deleted.)
  kMoeRunRegLate12 = 64,
  // LEAN4 (session 12, helper topk5, unmeasured; outputs exact; config `load` bit 4096, on LEAN3: 16785403 =
  // 16781307 + it): LEAN's selection in fewer SASS instructions a thread — the candidate mask from the signs of
  // key − lo by funnel shifts, lo by log2 G xor rounds of minima, the appends' value chosen once (not per candidate),
  // the σ and rank passes over at most CAP / TPT = 2 slots a thread without loop arithmetic, the ranks' 64-bit
  // comparisons as carries added by addc (bench/NOTES.md).
  kMoeRunLean4 = 8192,
  // GRP5 (session 13, helper topk6; outputs exact; config `load` bit 16384, on LEAN4: 16801787 = 16785403 + it, in the
  // default with the map since session 13 round C, with DRANK below since round D): the group ranks and the kept
  // groups' margin count as the sign bits of score differences (FADD + LEA.HI a group, not FSETP + SEL + IADD3), the
  // tie at the cut as one popcount of the kept ballot (strict ranks keep ≥ TG groups a token, so a tie is a ballot of
  // more than TPW·SPAN·TG lanes). Rounds B / C, one process: −0.19 / −0.26 µs against 16785403, lower in 52 of 52
  // rounds; round D: +0.03 (lower in 7 of 31). (Measured and deleted, bench/NOTES.md: TAIL5 — the approximate keys'
  // appends, σ and ranks with predicated instructions, value 16384 — +0.05 alone, +0.19 on GRP5; on GRP5: STROWS — the
  // staged rows by the lanes' 16-byte stores, 524288 — +0.20, KEY5 — the keys without their clamp, 1048576 — −0.01,
  // LO8 — lo from G shuffles before the ballot, 2097152 — +0.24.)
  kMoeRunGrp5 = 32768,
  // DRANK (session 13, helper topk6; outputs exact; config `load` bit 524288, on GRP5: 17326075 = 16801787 + it, the
  // default with the map since session 13 round D): the candidate list's entries (ordered key k, 0xffff − e) stored as
  // the bits of the double 2^52 + k·2^16 + (0xffff − e) (exact: < 2^53; the same order as doubles and as u64 bits, so
  // the argmax rounds and the > 16-slot loop are unchanged), and the rank over the first 16 slots as the sign bits of
  // the DADD me − x (FP64 pipe) added by LEA.HI: 16 DADD + 16 ALU a thread instead of 40 ALU carries. Round D, one
  // process, 31 rounds: −0.13 µs against 16801787 (lower in 29), −0.10 against 16785403 (lower in 26). (SEGIDX — the
  // score gathers by shfl.idx with a segment mask, value 4194304 — −0.04, lower in 19 of 31: deleted.)
  kMoeRunDRank = 512,
  // (Session 12, helper topk3: TOTROW, LATEWAIT, SCATTER, SCATLATE, SPLIT, L1ROWS, FILLEARLY, DEFER1, LATEROWS —
  // candidates on 4091 measured in four rounds, none faster; deleted: bench/NOTES.md.)
  // (Session 14, helper topk8: on 17326075, measured in one process and deleted — the default at 32 warps +1.92 µs,
  // REGLATE8 +0.18, REGEARLY −0.16 / +0.22, WROW / WROW2 (unpadded rows, a copy a warp / two) +0.13 / +0.27, PISSUE
  // (the row copies issued by four warps) +0.10, FILLMID (the bulk −1 rows during the compute) +0.77, SPINFIRST /
  // SPIN2 (thread 0 spins right after its release) +0.74 / +0.77 / +0.08 / +0.30, SPINLITE / SPINSLOW (relaxed polls
  // and one acq_rel fence) +0.56 / +0.61, SPINNAP (polls 128 ns apart) +0.02, FILL1 (one 32-KB −1 copy) +0.14,
  // EARLYCNT (the counts by global reds when recorded) +2.50, PUTWARP (the routed rows by the experts' threads) +0.16:
  // bench/NOTES.md.)
};
// TRACE slots of a CTA: globaltimer ns and SM clock at entry and at the end (after a final CTA barrier), the SM id,
// then SM clock stamps (thread 0 unless noted) of the phases; per warp w (its lane 0) the clock when its rows have
// landed (kMoeRunTrWarp + 4w), its keys are formed (+ 1), its picks recorded (+ 2) and its prob / map rows stored
// (+ 3); 0 = not reached.
enum : int {
  kMoeRunTrStartNs = 0,
  kMoeRunTrStartClk,
  kMoeRunTrEndNs,
  kMoeRunTrEndClk,
  kMoeRunTrSm,
  kMoeRunTrInit,      // after the barrier inits and the mask zeroing (first CTA barrier)
  kMoeRunTrIssued,    // thread 0 has issued every row copy
  kMoeRunTrFilled,    // thread 0's share of the −1 rows issued (fill 3)
  kMoeRunTrLoopDone,  // the CTA barrier after the token loop (every warp done)
  kMoeRunTrPdl,       // griddepcontrol.wait passed (route_zero complete)
  kMoeRunTrCounted,   // count row + superblock atomics issued, CTA barrier passed (before the arrival)
  kMoeRunTrArrived,   // thread 0: arrival issued and its share of the late stores (fill 4 / 5) issued
  kMoeRunTrWaited,    // thread 0: the spin saw every CTA
  kMoeRunTrBases,     // moe_chunk_bases done (its final CTA barrier)
  kMoeRunTrPut,       // thread 0: its routed rows stored
  kMoeRunTrBasesLoaded,  // moe_chunk_bases: thread 0's count rows loaded (before the scan)
  kMoeRunTrWarp = 16,
  kMoeRunTrFillDone = kMoeRunTrWarp + 4 * 32,  // thread 0: its bulk −1 rows complete (FILLTMA, fill 4)
  kMoeRunTrScanned,                            // moe_chunk_bases: thread 0's block scan done
  kMoeRunTraceSlots = kMoeRunTrWarp + 4 * 32 + 4,
};

// Shared-memory layout of moe_route_run_kernel (CTA runs, TPT = 16 threads per token, 32 / TPT tokens per warp) for
// E experts, top-K, W warps: byte offsets, each 16-byte aligned. At E = 256 the rows are padded by 32 bytes (with a
// per-part rotation of the chunk order: conflict-free, one copy per row), else not at all (a few 2–4-way conflicts;
// a warp's rows are one copy).
constexpr int kMoeRunCap = 32;  // candidates per token in the rank-counting list (more: K argmax rounds instead)
struct MoeRunSmem {
  int rsf;     // row stride in floats
  int stage;   // LEAN3's prob rows (0 bytes without it)
  int kp;      // picks per token slot (K rounded up to 4)
  int nmw;     // 32-bit words of a per-expert token mask
  int rows, bias, sp, picks, list, mapbuf, emask, base, wtot, bars, misc, fillb, total;
};
constexpr int moe_run_align16(int x) { return (x + 15) / 16 * 16; }
constexpr MoeRunSmem moe_run_smem(int E, int K, int W, int TPT, bool stage = false) {
  MoeRunSmem l{};
  l.rsf = E == 256 ? E + 8 : E;
  l.kp = (K + 3) / 4 * 4;
  const int nt = 32 / TPT * W;  // tokens per CTA
  l.nmw = (nt + 31) / 32;
  int o = 0;
  l.rows = o;   o += moe_run_align16(nt * l.rsf * 4);
  l.bias = o;   o += moe_run_align16(E * 4);
  l.sp = o;     o += moe_run_align16(nt * l.kp * 4);
  l.picks = o;  o += moe_run_align16(nt * l.kp * 4);
  l.list = o;   o += moe_run_align16(nt * (kMoeRunCap + 2) * 8);
  l.mapbuf = o; o += moe_run_align16(nt * E);
  l.emask = o;  o += moe_run_align16(E * l.nmw * 4);
  l.base = o;   o += moe_run_align16(E * 4);
  l.wtot = o;   o += moe_run_align16(32 * 4);
  l.bars = o;   o += moe_run_align16((W + 2) * 8);  // [W] rows, [W] the bias, [W + 1] the bias prepared (BIASPRE)
  l.misc = o;   o += 16;                             // BIASPRE: max |finite bias|
  l.fillb = o;  o += 4096;                           // FILLTMA at fill 3: a block of −1 for the bulk row fill
  l.stage = o;  o += stage ? moe_run_align16(nt * E * 4) : 0;  // LEAN3: the prob rows, unpadded, zero from the start
  l.total = o;
  return l;
}

struct MoeRouteMapArgs {
  const unsigned* records;  // [T, K]
  MoeChunkMap map;
  int T;
  int chunk_tokens;
};

struct MoeTopkBwdArgs {
  const float* dprobs;               // [T, E]
  const float* logits;               // [T, E]
  const unsigned char* routing_map;  // [T, E] 0/1 (the forward's selection)
  float* dlogits;                    // [T, E]
  int T;
  float scale;
};

struct MoeMapCountArgs {
  const void* routing_map;  // [T, E] u8 or i32, nonzero = routed
  int* hist;                // [ceil(T/32), E]
  int T;
};

struct MoeMapScanArgs {
  int* hist;     // [nblocks, E]: counts in, exclusive per-expert prefix over blocks out (in place)
  int* counts;   // [E] real tokens per expert
  int nblocks;
};

// moe_map_fused_kernel: the row-id map in one launch (behind moe_route_zero, which zeroes the superblock rows and
// the arrival word). Chunks of chunk_tokens (a multiple of 32, ≤ kMoeMapFusedMaxChunk) tokens, one CTA each, the
// whole grid resident at once (the host checks).
constexpr int kMoeMapFusedMaxChunk = 256;
struct MoeMapFusedArgs {
  const void* routing_map;  // [T, E] u8 or i32
  MoeChunkMap map;          // the map's outputs; reads the chunk and superblock rows below after the arrival
  int* chunk_counts;        // [nchunks, E] (= map.chunk_counts)
  int* super;               // [ceil(nchunks / super_chunks), E] (= map.super; zeroed first)
  unsigned* arrive;         // CTAs done counting (zeroed first, with the superblock rows)
  int T;
  int chunk_tokens;
  unsigned long long* trace;  // measurement (V & 64): kMoeMapTraceSlots globaltimer stamps a CTA, else null
  int persist_half;           // PERSIST: ints in each half of the per-stream superblock rows
};
constexpr int kMoeMapTraceSlots = 8;  // start, loaded, counted, waited, based, end (ns), SM id

struct MoeMapWriteArgs {
  const void* routing_map;  // [T, E] u8 or i32
  const int* prefix;        // [nblocks, E] exclusive prefix over blocks (map_scan)
  const int* counts;        // [E]
  int* row_id_map;          // [T, E]
  int* row_id_indices;      // [num_out] or null
  int* padded_counts;       // [E] or null
  int* offsets;             // [E + 1] or null
  int T;
  int multiple_of;
  int num_out;
};

}  // namespace kiln
