// ops/fp4_moe_import.cpp — host-memory importers of FP4 MoE weights into the canonical layout
// (include/kiln/ops/fp4_moe_import.hpp; spec fp4-moe.md §6.3–§6.4). No kernel family: byte moves on the host.
#include "kiln/ops/fp4_moe_import.hpp"

#include <fmt/format.h>

#include <cstring>

#include "runtime/validate.hpp"

// Every ops/<file>.cpp registers its family (CMakeLists.txt); this file has none.
extern "C" void kiln_register_family_fp4_moe_import() {}

namespace kiln {
namespace {

int64_t block_of(Fp4WeightFormat f) { return f == Fp4WeightFormat::nvfp4 ? 16 : 32; }

using detail::Check;

// The shape's sizes checked (typed errors naming the field); returns the scale columns C = k / B.
int64_t check_shape(const Check& ck, const Fp4HostShape& s, bool need_gated) {
  if (s.format != Fp4WeightFormat::nvfp4 && s.format != Fp4WeightFormat::mxfp4)
    ck.invalid("shape.format", fmt::format("expected nvfp4 (0) or mxfp4 (1), got {}", static_cast<int>(s.format)));
  const int64_t B = block_of(s.format);
  if (s.experts < 1) ck.shape_error("shape.experts", fmt::format("expected ≥ 1, got {}", s.experts));
  if (s.rows < 1) ck.shape_error("shape.rows", fmt::format("expected ≥ 1, got {}", s.rows));
  if (s.k < B || s.k % B != 0)
    ck.shape_error("shape.k", fmt::format("expected a positive multiple of {} (the scale block), got {}", B, s.k));
  if (need_gated && !s.gated) ck.invalid("shape.gated", "expected true (a gated GEMM1 with rows = 2I)");
  if (s.gated && s.rows % 2 != 0) ck.shape_error("shape.rows", fmt::format("expected 2I (even) when gated, got {}", s.rows));
  const int64_t limit = int64_t{1} << 40;
  if (s.experts > limit / s.rows || s.experts * s.rows > limit / s.k)
    ck.shape_error("shape", fmt::format("expected experts × rows × k ≤ 2^40, got {} × {} × {}", s.experts, s.rows, s.k));
  return s.k / B;
}

void check_in(const Check& ck, const char* name, const Fp4HostWeights& w) {
  if (w.codes == nullptr) ck.invalid(name, "expected codes non-null");
  if (w.scales == nullptr) ck.invalid(name, "expected scales non-null");
}
void check_out(const Check& ck, const Fp4HostWeightsOut& o, bool bias) {
  if (o.codes == nullptr) ck.invalid("out.codes", "expected non-null");
  if (o.scales == nullptr) ck.invalid("out.scales", "expected non-null");
  if (bias && o.bias == nullptr) ck.invalid("out.bias", "expected non-null: the input has a bias");
}

// Copies row `from` of expert e of the input's codes and bias into row `to` of the output's (the scales are
// copied by the caller: one side may be swizzled).
struct RowCopy {
  const Fp4HostWeights& in;
  const Fp4HostWeightsOut& out;
  int64_t rows, code_bytes;
  void codes_bias(int64_t e, int64_t from, int64_t to) const {
    std::memcpy(out.codes + (e * rows + to) * code_bytes, in.codes + (e * rows + from) * code_bytes,
                static_cast<size_t>(code_bytes));
    if (in.bias != nullptr) out.bias[e * rows + to] = in.bias[e * rows + from];
  }
};

// TRT-LLM-gen row d of a tensor ← canonical row: step 2 (inside blocks of `rb` rows, destination d takes source
// (rb/8)·(d mod 8) + ⌊d/8⌋) after step 1 (gated: interleaved row 2j = linear j, 2j + 1 = gate I + j).
int64_t trtllm_canonical_row(int64_t d, int64_t rows, bool gated, int rb) {
  const int64_t in_block = d % rb, i = d - in_block + (rb / 8) * (in_block % 8) + in_block / 8;
  if (!gated) return i;
  return i % 2 == 0 ? i / 2 : rows / 2 + i / 2;
}
// Byte of (expert e, row r, column c) in the 128×4 swizzled scale layout of R rows × C columns.
int64_t swizzled(int64_t e, int64_t r, int64_t c, int64_t R, int64_t C) {
  const int64_t rp = (R + 127) / 128, cp = (C + 3) / 4;
  return e * rp * cp * 512 + (r / 128) * cp * 512 + (c / 4) * 512 + (r % 32) * 16 + ((r % 128) / 32) * 4 + c % 4;
}

void trtllm(const Check& ck, const Fp4HostWeights& in, const Fp4HostShape& s, const Fp4HostWeightsOut& out, int rb,
            bool to_trtllm) {
  const int64_t C = check_shape(ck, s, false);
  if (rb != 16 && rb != 32) ck.invalid("row_block", fmt::format("expected 16 or 32, got {}", rb));
  if (s.rows % rb != 0)
    ck.shape_error("shape.rows", fmt::format("expected a multiple of row_block = {}, got {}", rb, s.rows));
  check_in(ck, "in", in);
  check_out(ck, out, in.bias != nullptr);
  if (to_trtllm) std::memset(out.scales, 0, static_cast<size_t>(fp4_moe_trtllm_scale_bytes(s)));  // padding 0
  const RowCopy rc{in, out, s.rows, s.k / 2};
  for (int64_t e = 0; e < s.experts; ++e)
    for (int64_t d = 0; d < s.rows; ++d) {
      const int64_t r = trtllm_canonical_row(d, s.rows, s.gated, rb);
      if (to_trtllm) rc.codes_bias(e, r, d); else rc.codes_bias(e, d, r);
      for (int64_t c = 0; c < C; ++c) {
        const int64_t canon = (e * s.rows + r) * C + c, sw = swizzled(e, d, c, s.rows, C);
        if (to_trtllm) out.scales[sw] = in.scales[canon]; else out.scales[canon] = in.scales[sw];
      }
    }
}

}  // namespace

int64_t fp4_moe_trtllm_scale_bytes(const Fp4HostShape& s) {
  const int64_t C = check_shape(Check{"fp4_moe_trtllm_scale_bytes"}, s, false);
  return s.experts * ((s.rows + 127) / 128) * ((C + 3) / 4) * 512;
}

void fp4_moe_import_trtllm(const Fp4HostWeights& in, const Fp4HostShape& shape, const Fp4HostWeightsOut& out,
                           int row_block) {
  trtllm(Check{"fp4_moe_import_trtllm"}, in, shape, out, row_block, false);
}

void fp4_moe_export_trtllm(const Fp4HostWeights& in, const Fp4HostShape& shape, const Fp4HostWeightsOut& out,
                           int row_block) {
  trtllm(Check{"fp4_moe_export_trtllm"}, in, shape, out, row_block, true);
}

void fp4_moe_import_gpt_oss(const Fp4HostWeights& in, const Fp4HostShape& s, const Fp4HostWeightsOut& out) {
  const Check ck{"fp4_moe_import_gpt_oss"};
  const int64_t C = check_shape(ck, s, true);
  check_in(ck, "in", in);
  check_out(ck, out, in.bias != nullptr);
  const RowCopy rc{in, out, s.rows, s.k / 2};
  const int64_t I = s.rows / 2;
  for (int64_t e = 0; e < s.experts; ++e)
    for (int64_t r = 0; r < s.rows; ++r) {  // canonical r ← checkpoint row: up j at 2j + 1, gate j at 2j
      const int64_t from = r < I ? 2 * r + 1 : 2 * (r - I);
      rc.codes_bias(e, from, r);
      std::memcpy(out.scales + (e * s.rows + r) * C, in.scales + (e * s.rows + from) * C, static_cast<size_t>(C));
    }
}

void fp4_moe_import_w1_w3(const Fp4HostWeights& w1, const Fp4HostWeights& w3, const Fp4HostShape& s,
                          const Fp4HostWeightsOut& out) {
  const Check ck{"fp4_moe_import_w1_w3"};
  const int64_t C = check_shape(ck, s, true);
  check_in(ck, "w1", w1);
  check_in(ck, "w3", w3);
  if ((w1.bias == nullptr) != (w3.bias == nullptr))
    ck.invalid(w1.bias == nullptr ? "w1.bias" : "w3.bias", "expected both biases or neither");
  check_out(ck, out, w1.bias != nullptr);
  const int64_t I = s.rows / 2, cb = s.k / 2;
  for (int64_t e = 0; e < s.experts; ++e)
    for (int64_t r = 0; r < s.rows; ++r) {  // canonical [w3 (up); w1 (gate)]
      const Fp4HostWeights& src = r < I ? w3 : w1;
      const int64_t j = r < I ? r : r - I;
      std::memcpy(out.codes + (e * s.rows + r) * cb, src.codes + (e * I + j) * cb, static_cast<size_t>(cb));
      std::memcpy(out.scales + (e * s.rows + r) * C, src.scales + (e * I + j) * C, static_cast<size_t>(C));
      if (src.bias != nullptr) out.bias[e * s.rows + r] = src.bias[e * I + j];
    }
}

}  // namespace kiln
