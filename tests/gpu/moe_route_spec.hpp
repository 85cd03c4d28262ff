// tests/gpu/moe_route_spec.hpp — the top-k forward's route-kernel specialization with a given config, shared by the
// MoE routing GPU tests that force configs (moe_routing_test.cpp, moe_route_measure_test.cpp).
#pragma once
#include <array>
#include <cstdint>

#include "kiln/ops/moe.hpp"
#include "runtime/family.hpp"
#include "runtime/specialization.hpp"

namespace kiln::test {

// ops/moe_routing.cpp route_spec: params E, top_k, sigmoid, n_group, topk_group, renormalize, bias, map_i32, map,
// map_fill; config warps, tokens_per_warp, fill, load, tpt (the unnamed field 5, a measurement variant, stays 0).
inline detail::Specialization moe_route_spec(detail::Arch arch, int64_t E, const MoeRoutingOptions& o, bool bias,
                                             bool map, const std::array<int, 5>& config) {
  detail::Specialization s;
  s.family = detail::find_family("moe_routing");
  s.arch = arch;
  s.kernel = 0;
  s.params = {E, o.top_k, o.score == MoeScore::sigmoid, o.n_group, o.topk_group, o.renormalize, bias, 0, map, 0};
  for (int i = 0; i < 5; ++i) s.config[i] = config[i];
  return s;
}

// ops/moe_routing.cpp map_spec(kMapFused): moe_make_row_id_map's specialization with config fill (3 / 4: one launch,
// the −1 rows before / after the CTA's arrival; 0: map_count → map_scan → map_write) and load (256: the stream's
// superblock rows and arrival word, no route_zero; 0: behind route_zero).
inline detail::Specialization moe_map_fused_spec(detail::Arch arch, int64_t E, bool map_i32, int fill, int load = 0) {
  detail::Specialization s;
  s.family = detail::find_family("moe_routing");
  s.arch = arch;
  s.kernel = 7;
  s.params = {E, 0, 0, 0, 0, 0, 0, map_i32, 0, 0};
  s.config[2] = fill;
  s.config[3] = load;
  return s;
}

}  // namespace kiln::test
