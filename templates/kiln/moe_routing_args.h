// kiln/moe_routing_args.h — kernel argument blocks of the MoE routing family (top-k routing, row-id map), shared by
// the device template and the host recipe.
#pragma once

namespace kiln {

// Tokens per map block: the unit of the per-block expert histograms (hist[ceil(T/32), E]) that the map writer turns
// into destination rows. A block's token order inside one expert is a 32-bit mask in shared memory. 32 tokens keep
// the top-k CTAs small (256 threads at E = 256) so two share an SM and overlap their loads, math and stores.
constexpr int kMoeMapBlockTokens = 32;
// Largest expert count: top-k keeps E/32 scores per lane in registers; the map writer keeps E offsets and masks in
// shared memory.
constexpr int kMoeMaxExperts = 1024;
// Top-k routing keeps a lane's E/L experts in registers (at most 64 per lane, 8 lanes per token).
constexpr int kMoeTopkMaxExperts = 512;

struct MoeTopkFwdArgs {
  const float* logits;         // [T, E]
  const float* bias;           // [E] or null (selection only)
  float* probs;                // [T, E]
  unsigned char* routing_map;  // [T, E] 0/1
  int* hist;                   // [ceil(T/32), E] per-block expert counts (workspace)
  int T;
  float scale;                 // routed scaling factor
};

// Fused routing pipeline (moe_route_zero → moe_route → moe_route_map, chained by programmatic dependent launch).
// Superblocks of kMoeSuperBlocks map blocks: moe_route adds each block's histogram into its superblock's row, so the
// map kernel finds a block's prefix in ≤ ceil(nblocks/16) superblock rows plus ≤ 15 block rows.
constexpr int kMoeSuperBlocks = 16;

struct MoeZeroArgs {
  int* p;  // [n] set to 0
  int n;
  int* q;  // [1] set to 0, or null
};

struct MoeRouteArgs {
  const float* logits;         // [T, E]
  const float* bias;           // [E] or null (selection only)
  float* probs;                // [T, E]
  unsigned char* routing_map;  // [T, E] 0/1
  int* hist;                   // MAP: [nblocks, E] per-block expert counts (workspace)
  int* super;                  // [ceil(nblocks/16), E] per-superblock counts, zeroed by moe_route_zero
  int* counts;                 // !MAP: [E] tokens per expert, written by the last CTA to finish
  int* done;                   // !MAP: [1] CTAs finished, zeroed by moe_route_zero
  int* row_id_map;             // MAP: [T, E], −1 written here (the map kernel writes the routed entries)
  int T;
  float scale;                 // routed scaling factor
};

struct MoeRouteMapArgs {
  const unsigned char* routing_map;  // [T, E] 0/1 (moe_route's)
  const int* hist;                   // [nblocks, E]
  const int* super;                  // [ceil(nblocks/16), E]
  int* counts;                       // [E] real tokens per expert (out)
  int* row_id_map;                   // [T, E]: the routed entries (the rest is moe_route's −1)
  int* row_id_indices;               // [num_out] or null
  int* padded_counts;                // [E] or null
  int* offsets;                      // [E + 1] or null
  int T;
  int nblocks;
  int blocks_per_cta;                // consecutive map blocks per CTA
  int multiple_of;
  int num_out;
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
