// ops/bench/moe_instances.hpp — prepared MoE cases at any shape, shared by the bench cases (ops/bench/moe.cpp) and
// the families' tune_instance (ops/moe_routing.cpp, ops/moe_permute.cpp). Each routes random logits once on the
// device to get a realistic map, then returns a runnable instance of the op with minimal bytes counted.
#pragma once
#include <cstdint>

#include "kiln/ops/moe.hpp"
#include "runtime/bench.hpp"

namespace kiln::detail {

BenchInstance moe_routing_fwd_instance(Runtime& rt, int64_t T, int64_t E, const MoeRoutingOptions& o, bool bias,
                                       bool with_map, int P);
BenchInstance moe_routing_bwd_instance(Runtime& rt, int64_t T, int64_t E, const MoeRoutingOptions& o);
BenchInstance moe_row_id_map_instance(Runtime& rt, int64_t T, int64_t E, int k, int P);
BenchInstance moe_permute_instance(Runtime& rt, int64_t T, int64_t E, int k, int P, int64_t Hd, bool fp8,
                                   bool m_major, bool probs);
BenchInstance moe_unpermute_instance(Runtime& rt, int64_t T, int64_t E, int k, int P, int64_t H, DType dt,
                                     bool weights, bool restore);
BenchInstance moe_permute_block_quant_instance(Runtime& rt, int64_t T, int64_t E, int k, int P, int64_t Hd,
                                               bool round, bool probs);

}  // namespace kiln::detail
