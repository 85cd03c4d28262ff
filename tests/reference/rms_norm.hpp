// tests/reference/rms_norm.hpp — CPU references for RMSNorm forward/backward and RMSNorm → fp8 1×128 block quant.
//
// Semantics: shared/spec/linghe-kernels.md §2 (block quant), §3 (rms_norm_block_quant_fwd), §13 (RMSNorm fwd/bwd).
// The references reproduce kiln's fp32 operation order exactly where the GPU result is deterministic given the
// same fp32 intermediates (y = float(float(x·r)·w), the scale, the fp8 codes), and accumulate in double where
// the GPU's reduction order is its own (Σx², the backward sums); tests compare those with tolerances.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace kiln::ref {

// ---- fp8 e4m3 and the 1×128 block-quantization convention (§2; shared by every *_block_quant* family) -----------

constexpr int64_t kQuantBlock = 128;
constexpr float kE4m3Max = 448.0f;

// float8_e4m3fn, round to nearest even, saturating (PTX cvt.rn.satfinite.e4m3x2.f32): |v| > 448 (inf included)
// → ±448, NaN → 0x7F, the sign of a zero result kept. Found by bracketing |v| between consecutive decoded codes
// (no bit manipulation), so it can be checked against bit-level encoders.
uint8_t e4m3_from_float(float v);

// The dequant multiplier of a block with absolute maximum `amax` (NaN already excluded):
// s = max(amax/448, 1e-30), or with round_scale the smallest power of two ≥ that.
float block_scale(float amax, bool round_scale);

// Quantizes y [M, N] (row-major) in 1×128 blocks along rows: q [M, N], scale [N/128, M] (element (j, m) at j·M + m).
// N must be a multiple of 128.
void block_quant_rowwise(std::span<const float> y, int64_t M, int64_t N, bool round_scale, std::span<uint8_t> q,
                         std::span<float> scale);
// Quantizes yᵀ: qT [N, M] (qT[n, m] from y[m, n]) with blocks of 128 consecutive tokens of one channel, scale
// [ceil(M/128), N] (element (i, n) at i·N + n). A partial last token block uses its valid rows only.
void block_quant_transposed(std::span<const float> y, int64_t M, int64_t N, bool round_scale, std::span<uint8_t> qT,
                            std::span<float> scale);

// ---- RMSNorm ------------------------------------------------------------------------------------------------

// r[m] = 1/sqrt(Σ_k x[m,k]²/N + eps), accumulated in double and rounded to fp32 once. x is [M, N] row-major.
// Rows with ±inf give 0, rows with NaN give NaN.
std::vector<float> rms_inv(std::span<const float> x, int64_t M, int64_t N, float eps);

// How a GPU rms_inv row can be compared with rms_inv() above. The kernel sums x² in fp32, the reference in double:
//   nan        the row holds a NaN                           → the GPU value must be NaN
//   zero       the row holds ±inf, or some x² overflows fp32 → 1/sqrt(inf) = 0 exactly
//   unchecked  Σx² is near the fp32 limit                    → overflow depends on the GPU's summation order
//   close      otherwise                                     → within kRmsInvRelTol of the reference
enum class RmsInvExpect { close, nan, zero, unchecked };
// A few fp32 ulps: the fp32 sum's rounding (halved by the square root) plus an approximate rsqrt.
constexpr double kRmsInvRelTol = 4e-7;
std::vector<RmsInvExpect> rms_inv_expectations(std::span<const float> x, int64_t M, int64_t N);
bool rms_inv_agrees(RmsInvExpect e, float gpu, float reference);

// y[m,k] = float(float(x[m,k]·r[m])·w[k]): kiln's operation order, two separate fp32 multiplies.
std::vector<float> rms_norm_apply(std::span<const float> x, std::span<const float> w, std::span<const float> r,
                                  int64_t M, int64_t N);

struct BlockQuantOutputs {
  std::vector<uint8_t> q;        // [M, N]            (empty unless rowwise)
  std::vector<float> q_scale;    // [N/128, M]
  std::vector<uint8_t> qT;       // [N, M]            (empty unless transposed)
  std::vector<float> qT_scale;   // [ceil(M/128), N]
};

// rms_norm_block_quant_fwd from a given r (the GPU's rms_inv, or rms_inv_in in mode 1): y as rms_norm_apply, then
// the requested layouts.
BlockQuantOutputs rms_norm_block_quant(std::span<const float> x, std::span<const float> w, std::span<const float> r,
                                       int64_t M, int64_t N, bool round_scale, bool rowwise, bool transposed);

struct RmsNormGrads {
  std::vector<double> dx;       // [M, N]
  std::vector<double> dweight;  // [N]
};

// In double, with r recomputed from x and eps:
//   dx[m,k] = r·dy·w[k] − r³·x[m,k]·(Σ_j x[m,j]·dy[m,j]·w[j])/N,   dweight[k] = Σ_m x[m,k]·dy[m,k]·r[m].
RmsNormGrads rms_norm_bwd(std::span<const float> dy, std::span<const float> x, std::span<const float> w, int64_t M,
                          int64_t N, float eps);

}  // namespace kiln::ref
