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
