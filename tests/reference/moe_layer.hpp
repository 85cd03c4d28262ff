// tests/reference/moe_layer.hpp — the end-to-end MoE layer (issue 7 item 3): a double-precision reference of the
// whole layer, the host-side expert GEMMs that read kiln's fp8 layouts, a CPU emulation of the kernel chain (the
// per-family references chained exactly as the GPU test chains the ops) and the layer's error budget.
//
// The layer (router → top-k → padded map → fused permute + fp8 quant → FC1 → prob-weighted SiLU + fp8 quant → FC2 →
// unweighted combine), with x [T, H], router weight wr [E, H], expert weights w1 [E, 2n, H] (gate rows first, then
// up) and w2 [E, H, n]:
//   logits = x·wrᵀ; probs = top-k softmax, renormalized over the k selected experts (or not: shape.renormalize);
//   z1_r = x_t·w1[e]ᵀ; h_r = silu(z1_r[:n])·z1_r[n:]·p_te; y2_r = h_r·w2[e]ᵀ; y_t = Σ_e y2_r (r = row of (t, e)).
// Backward from dy [T, H]: dprobs [T, E], dlogits [T, E], dx = dx_expert + dx_router, dwr [E, H], dw1, dw2.
//
// Layouts read by the host GEMMs (linghe-kernels.md §2, per-expert segmented; experts back to back with counts c_e,
// s_e = Σ_{e'<e} c_e', b_e = Σ_{e'<e} ceil(c_e'/128)): row-wise codes [M, W] with scales at s_e·W/128 shaped
// [W/128, c_e]; transposed codes at s_e·W shaped [W, c_e] with scales at b_e·W shaped [ceil(c_e/128), W].
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace kiln::ref {

struct MoeLayerShape {
  int64_t T = 512, H = 256, E = 16, k = 4, n = 128;
  int multiple_of = 16;     // the permute's padding (moe_permute_block_quant needs a multiple of 4)
  bool renormalize = true;  // probs = softmax over the k selected logits; false: the full softmax's scores
  int64_t num_out() const;  // moe_max_out_rows(T, E, k, multiple_of)
};

// Inputs (bf16-representable floats). bias [E] (selection only) is empty or steers the routing: the test's
// zero-count and all-to-few-experts cases.
struct MoeLayerInputs {
  std::vector<float> x, wr, w1, w2, dy, bias;
};
enum class MoeLayerRouting { random, zero_count_experts, all_to_first_k, all_to_one };  // all_to_one: expert 5 (k = 1)
// Heterogeneous magnitudes on purpose: per-token and per-128-column-block factors 2^{−1…1} on x and dy (a 16×
// spread of block scales), per-expert and per-output-channel factors on w1 (2^{−1…0}) and w2 (2^{−1…1}). A scale
// read from the wrong block, token, channel or expert is then an O(1) error, far above the tolerance; and the gate
// pre-activations a = x·w1ᵀ stay of order one (rms ≤ 4 per token), which the error budget's SiLU gain assumes.
MoeLayerInputs make_moe_layer_inputs(const MoeLayerShape& s, uint64_t seed, MoeLayerRouting routing);

// The cases the GPU test runs (its TEST_Fs index this list), so that the CPU test can emulate exactly them.
struct MoeLayerCase {
  const char* name;
  MoeLayerRouting routing;
  uint64_t seed;
  MoeLayerShape shape;
};
std::vector<MoeLayerCase> moe_layer_cases();

// The whole layer in double, with the selected experts taken from `routing_map` [T, E] (a discrete decision: the
// caller checks separately that the map is the exact top-k of the device's logits).
struct MoeLayerRef {
  std::vector<double> logits, probs, y, dprobs, dlogits, dx_expert, dx_router, dx, dwr, dw1, dw2;
};
MoeLayerRef moe_layer_reference(const MoeLayerInputs& in, const MoeLayerShape& s, std::span<const uint8_t> routing_map);

// ---- the layouts, read on the host ----------------------------------------------------------------------------

// Dequantized values [M, W] (row-major) of row-wise codes + segmented scales, and of transposed codes + segmented
// token-block scales. M = Σ counts.
std::vector<float> dequant_rowwise_segmented(std::span<const uint8_t> q, std::span<const float> q_scale,
                                             std::span<const int> counts, int64_t W);
std::vector<float> dequant_transposed_segmented(std::span<const uint8_t> qT, std::span<const float> qT_scale,
                                                std::span<const int> counts, int64_t W);

// Segmented row-wise scales (expert e at s_e·W/128, [W/128, c_e]) rearranged into one M-major [W/128, num_out]
// (moe_permute's scale_out layout; DeepGEMM's LHS scales); columns past Σ counts get `fill`.
std::vector<float> segmented_scales_to_m_major(std::span<const float> q_scale, std::span<const int> counts, int64_t W,
                                               int64_t num_out, float fill);

// The per-expert GEMMs (a plain reference loop in double, result rounded to bf16 like a grouped GEMM's output):
//   expert_gemm_nt: out[r, i] = Σ_k a[r, k]·w[e][i, k]   (w [E, N, K]: forward FC1 and FC2)
//   expert_gemm_nn: out[r, k] = Σ_i a[r, i]·w[e][i, k]   (w [E, N, K], a [M, N]: the data gradients)
//   expert_wgrad:   dw[e][i, k] = Σ_{r of e} a[r, i]·b[r, k]   (double, [E, N, K])
std::vector<float> expert_gemm_nt(std::span<const float> a, std::span<const int> counts, std::span<const float> w,
                                  int64_t N, int64_t K);
std::vector<float> expert_gemm_nn(std::span<const float> a, std::span<const int> counts, std::span<const float> w,
                                  int64_t N, int64_t K);
std::vector<double> expert_wgrad(std::span<const float> a, std::span<const float> b, std::span<const int> counts,
                                 int64_t N, int64_t K);

// ---- what a run of the chain produced, and the comparison -------------------------------------------------------

struct MoeLayerGot {
  std::vector<float> logits, probs, y, dprobs, dlogits, dx_expert, dx_router, dwr;
  std::vector<double> dw1, dw2;  // the host wgrads from the transposed layouts, in double
};

// Relative-L2 tolerances of each output against the double reference (derivation in moe_layer.cpp).
struct MoeLayerTolerances {
  double logits, probs, y, dprobs, dlogits, dx_expert, dx_router, dx, dwr, dw1, dw2;
};
MoeLayerTolerances moe_layer_tolerances();
constexpr double kFp8Step = 0.0625;        // 2^-4: e4m3 round-to-nearest, relative, normal range
constexpr double kBf16Step = 0.001953125;  // 2^-9: bf16 round-to-nearest, relative

struct MoeLayerCheck {
  std::string name;
  double err = 0, tol = 0;
  bool ok() const { return err <= tol; }  // NaN fails
};
// One entry per output; dx compares dx_expert + dx_router with the reference's sum.
std::vector<MoeLayerCheck> compare_moe_layer(const MoeLayerGot& got, const MoeLayerRef& want,
                                             const MoeLayerTolerances& tol);
std::string describe(const std::vector<MoeLayerCheck>& checks);

// ---- the chain emulated on the CPU with the per-family references ------------------------------------------------

// Deliberately broken variants, to show that the comparison catches layout errors.
enum class MoeLayerBreak {
  none,
  x_scale_token_major,   // FC1 reads the permuted x's scales as [c_e, H/128] instead of [H/128, c_e]
  h_qT_scale_unblocked,  // dW2 reads the SiLU's transposed scales at s_e/128·W (ignores the per-expert rounding up)
};
struct MoeLayerEmulation {
  MoeLayerGot got;
  std::vector<uint8_t> routing_map;
};
MoeLayerEmulation emulate_moe_layer(const MoeLayerInputs& in, const MoeLayerShape& s,
                                    MoeLayerBreak brk = MoeLayerBreak::none);

}  // namespace kiln::ref
