// Host recipe: the FP4 block-scaled fused MoE layer (templates/kiln/fp4_moe.cuh) around its grouped GEMM
// (ops/fp4_moe_internal.hpp). Spec: fp4-moe.md §1.2, §2, §7–§9, §12.2. Pipeline: fp4_moe_route → permutation
// metadata → gather + dequantize → GEMM1 (+ activation) → GEMM2 → finalize (do_finalize). Nothing on the host depends
// on the routing: buffers are sized for T·K + E_l·(tile − 1) rows, so a call can be captured in a CUDA graph.
//
// Formats: kiln accepts every weight (NVFP4, MXFP4) × hidden (bf16, NVFP4, MXFP8, E4M3 per tensor) combination —
// more than FlashInfer's §5.5 list — since the GEMM runs W4A16 on exactly dequantized bf16 activations.
#include <fmt/format.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "kiln/fp4_moe_args.h"
#include "kiln/ops/fp4_moe.hpp"
#include "ops/fp4_moe_internal.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/validate.hpp"

namespace kiln {
namespace {
using namespace detail;

enum : uint32_t { kMetaSmall = 0, kMetaHist = 1, kMetaScan = 2, kMetaScatter = 3, kGather = 4, kFinalize = 5 };
enum { P_EL, P_K, P_FMT };
enum { C_THREADS };

constexpr int64_t kChunk = 256;           // tokens a CTA of the metadata kernels (f4m::kChunk)
constexpr int64_t kSmallSlots = 4096;     // T·K up to which one CTA builds the metadata (spec §12.2)

void render(const Specialization& s, std::string& source, std::string& name) {
  source = "#include \"kiln/fp4_moe.cuh\"\n";
  // Zeros (a default Specialization, compile tests) stand for E_l 32, K 1, 256 threads.
  const int64_t el = s.params[P_EL] > 0 ? s.params[P_EL] : 32, k = s.params[P_K] > 0 ? s.params[P_K] : 1;
  const int64_t fmt_ = s.params[P_FMT], threads = s.config[C_THREADS] > 0 ? s.config[C_THREADS] : 256;
  switch (s.kernel) {
    case kMetaSmall: name = fmt::format("kiln::fp4_moe_meta_small_kernel<{}, {}>", el, k); break;
    case kMetaHist: name = fmt::format("kiln::fp4_moe_meta_hist_kernel<{}, {}>", el, k); break;
    case kMetaScan: name = fmt::format("kiln::fp4_moe_meta_scan_kernel<{}>", el); break;
    case kMetaScatter: name = fmt::format("kiln::fp4_moe_meta_scatter_kernel<{}, {}>", el, k); break;
    case kGather: name = fmt::format("kiln::fp4_moe_gather_kernel<{}, {}>", fmt_, threads); break;
    default: name = fmt::format("kiln::fp4_moe_finalize_kernel<{}, {}>", k, threads); break;
  }
}

int smem_bytes(const Specialization&) { return 0; }  // static shared memory only (≤ 22 KB at E_l = 512)

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);

// No search space, no tune instance: one config a kernel.
FamilyDef g_family{"fp4_moe",
                   {"meta_small", "meta_hist", "meta_scan", "meta_scatter", "gather", "finalize"},
                   {"E_l", "K", "format"},
                   {"threads"},
                   render,
                   smem_bytes,
                   enumerate,
                   nullptr,
                   nullptr};

Specialization spec(Arch arch, uint32_t kernel, int64_t el, int64_t k, int64_t fmt, int threads) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = kernel;
  s.params[P_EL] = el;
  s.params[P_K] = k;
  s.params[P_FMT] = fmt;
  s.config[C_THREADS] = threads;
  return s;
}

// The finalize kernel's threads for rows of h_out columns: a thread a 16-byte piece, 32 … 256.
int finalize_threads(int64_t h_out) { return static_cast<int>(std::clamp<int64_t>((h_out / 8 + 31) / 32 * 32, 32, 256)); }

// What the op launches for a model's FP4 MoE (the same spec() calls as the entry points below; the gather's threads
// are the entry point's fixed 256, the finalize's those of H_out = H).
void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out) {
  const std::optional<Fp4MoeModel> f = fp4_moe_of(m);
  if (!f) return;
  const int64_t el = f->local_experts, k = f->routing.top_k;
  out.push_back(spec(arch, kMetaSmall, el, k, 0, 0));
  out.push_back(spec(arch, kMetaHist, el, k, 0, 0));
  out.push_back(spec(arch, kMetaScan, el, 0, 0, 0));
  out.push_back(spec(arch, kMetaScatter, el, k, 0, 0));
  out.push_back(spec(arch, kGather, 0, 0, static_cast<int64_t>(f->hidden), 256));
  out.push_back(spec(arch, kFinalize, 0, k, 0, finalize_threads(f->hidden_size)));
}

size_t up256(size_t b) { return (b + 255) / 256 * 256; }

// The workspace's regions (byte offsets; 256-byte aligned). GEMM2's output reuses the gathered activations' region
// (dead once GEMM1 has run).
struct Layout {
  size_t ids = 0, weights = 0, expanded = 0, perm_token = 0, perm_k = 0, counts = 0, offsets = 0, chunks = 0,
         row_scale = 0, act = 0, inter = 0, total = 0;
};
Layout layout(int64_t T, int64_t K, int64_t H, int64_t I, int64_t El, int64_t rows_cap, bool do_finalize) {
  Layout l;
  size_t at = 0;
  auto take = [&](size_t& field, int64_t bytes) {
    field = at;
    at += up256(static_cast<size_t>(std::max<int64_t>(bytes, 0)));
  };
  take(l.ids, T * K * 4);
  take(l.weights, do_finalize ? T * K * 2 : 0);
  take(l.expanded, do_finalize ? T * K * 4 : 0);
  take(l.perm_token, rows_cap * 4);
  take(l.perm_k, rows_cap * 4);
  take(l.counts, El * 4);
  take(l.offsets, (El + 1) * 4);
  take(l.chunks, fp4_moe_permute_chunk_words(T, El) * 4);
  take(l.row_scale, rows_cap * 4);
  take(l.act, rows_cap * H * 2);
  take(l.inter, rows_cap * I * 2);
  l.total = at;
  return l;
}


bool gated(Fp4MoeActivation a) { return a == Fp4MoeActivation::Swiglu || a == Fp4MoeActivation::Geglu; }

// An optional fp32 [dims] tensor.
void check_f32(const Check& ck, const char* arg, const TensorRef* t, std::initializer_list<int64_t> dims) {
  if (t != nullptr) ck.tensor(arg, *t, {DType::f32}, dims, 4);
}

}  // namespace

KILN_REGISTER_FAMILY(fp4_moe, g_family)

namespace detail {

int fp4_moe_layer_token_tile(Runtime& rt, int64_t T, int64_t top_k, int64_t local_experts) {
  return fp4_moe_gemm_token_tile(rt, T * top_k, local_experts);
}

int64_t fp4_moe_permute_chunk_words(int64_t tokens, int64_t experts) {
  return (tokens + kChunk - 1) / kChunk * experts;
}

void fp4_moe_permute(Runtime& rt, const Fp4MoePermuteCall& c, Stream stream) {
  if (c.tokens <= 0) return;
  auto& impl = rt.impl();
  Fp4MoeMetaArgs a{c.topk_ids, c.replay, c.expert_counts, c.expert_offsets, c.expanded_idx_to_permuted_idx,
                   c.permuted_idx_to_token, c.permuted_idx_to_k, c.chunk_counts, static_cast<long long>(c.tokens),
                   static_cast<int>(c.expert_offset), c.token_tile};
  const bool small = c.path == 0 || (c.path < 0 && c.tokens * c.top_k <= kSmallSlots);
  LaunchDims d;
  d.pdl = c.pdl;
  d.block[0] = static_cast<unsigned>(kChunk);
  if (small) {
    impl.launch(spec(rt.impl().target_arch(), kMetaSmall, c.experts, c.top_k, 0, 0), d, stream, a);
    return;
  }
  const int64_t chunks = (c.tokens + kChunk - 1) / kChunk;
  d.grid[0] = static_cast<unsigned>(chunks);
  impl.launch(spec(rt.impl().target_arch(), kMetaHist, c.experts, c.top_k, 0, 0), d, stream, a);
  LaunchDims s;
  s.pdl = true;
  s.block[0] = 1024;
  impl.launch(spec(rt.impl().target_arch(), kMetaScan, c.experts, 0, 0, 0), s, stream, a);
  d.pdl = true;
  impl.launch(spec(rt.impl().target_arch(), kMetaScatter, c.experts, c.top_k, 0, 0), d, stream, a);
}

void fp4_moe_gather(Runtime& rt, const Fp4MoeGatherCall& c, Stream stream) {
  if (c.rows_cap <= 0) return;
  auto& impl = rt.impl();
  // No search space (nothing to tune yet): the heuristic config, without a tuning-table lookup.
  const Specialization t = spec(rt.impl().target_arch(), kGather, 0, 0, static_cast<int64_t>(c.format), 256);
  const int threads = t.config[C_THREADS];
  Fp4MoeGatherArgs a{c.hidden, static_cast<const unsigned char*>(c.hidden_scale),
                     c.row_scale != nullptr ? c.per_token_scale : nullptr, c.permuted_idx_to_token,
                     c.expert_offsets, c.act, c.per_token_scale != nullptr ? c.row_scale : nullptr,
                     static_cast<long long>(c.rows_cap), static_cast<int>(c.hidden_size), static_cast<int>(c.experts)};
  LaunchDims d;
  d.pdl = c.pdl;
  d.block[0] = static_cast<unsigned>(threads);
  // Grid-stride over the rows: sized for rows_cap, at most what is resident at once (most of rows_cap is padding
  // headroom at decode: T·K rows and E_l·(tile − 1) spare).
  const Kernel& k = impl.kernel(t);
  const int64_t ctas = (c.rows_cap + threads / 32 - 1) / (threads / 32);
  d.grid[0] = static_cast<unsigned>(impl.persistent_grid(k, threads, 0, ctas));
  impl.launch(k, d, stream, a);
}

void fp4_moe_finalize(Runtime& rt, const Fp4MoeFinalizeCall& c, Stream stream) {
  if (c.tokens <= 0) return;
  auto& impl = rt.impl();
  const int threads = finalize_threads(c.hidden_out);
  const Specialization t = spec(rt.impl().target_arch(), kFinalize, 0, c.top_k, 0, threads);
  Fp4MoeFinalizeArgs a{c.y, c.expanded_idx_to_permuted_idx, static_cast<const unsigned short*>(c.weights), c.out,
                       static_cast<long long>(c.tokens), static_cast<long long>(c.y_ld),
                       static_cast<long long>(c.out_ld), static_cast<int>(c.hidden_out)};
  LaunchDims d;
  d.pdl = c.pdl;
  d.block[0] = static_cast<unsigned>(t.config[C_THREADS]);
  d.grid[0] = static_cast<unsigned>(c.tokens);
  impl.launch(impl.kernel(t), d, stream, a);
}

}  // namespace detail

int64_t fp4_moe_max_padded_rows(Runtime& rt, int64_t T, int64_t top_k, int64_t local_experts) {
  if (T <= 0) return 0;
  const int tile = detail::fp4_moe_layer_token_tile(rt, T, top_k, local_experts);
  return T * top_k + local_experts * (tile - 1);
}

int64_t fp4_moe_workspace_bytes(Runtime& rt, int64_t T, int64_t H, int64_t I, const Fp4MoeOptions& opt,
                                int64_t local_experts) {
  if (T <= 0) return 0;
  const int64_t K = opt.routing.top_k;
  const int64_t rows_cap = fp4_moe_max_padded_rows(rt, T, K, local_experts);
  return static_cast<int64_t>(layout(T, K, H, I, local_experts, rows_cap, opt.do_finalize).total);
}

void fp4_block_scale_moe(Runtime& rt, const Fp4MoeInputs& in, const Fp4MoeOutputs& out, const Fp4MoeOptions& opt,
                         Stream stream, const TensorRef* workspace) {
  using M = Fp4MoeRoutingMethod;
  using A = Fp4MoeActivation;
  using F = Fp4MoeHiddenFormat;
  const Check ck{"fp4_block_scale_moe"};

  // Routing (spec §3): the logits, the method and its constraints.
  const TensorRef& z = in.routing_logits;
  ck.dtype("routing_logits", z, {DType::f32, DType::bf16});
  if (z.ndim != 2) ck.shape_error("routing_logits", fmt::format("expected [T, E], got shape {}", shape_str(z)));
  ck.contiguous("routing_logits", z);
  const int64_t T = z.shape[0], E = z.shape[1];
  if (opt.num_experts != E)
    ck.shape_error("routing_logits",
                   fmt::format("expected E = num_experts = {} columns, got shape {}", opt.num_experts, shape_str(z)));
  if (E % 4 != 0 || E < 4 || E > 512)
    ck.invalid("num_experts", fmt::format("expected a multiple of 4 in [4, 512], got {}", E));
  const Fp4MoeRouteOptions& ro = opt.routing;
  const int mth = static_cast<int>(ro.method);
  if (mth < 0 || mth > 8) ck.invalid("routing_method", fmt::format("expected a routing method 0 … 8, got {}", mth));
  const int K = ro.top_k;
  if (K < 1 || K > 32 || K >= E)
    ck.invalid("top_k", fmt::format("expected 1 ≤ top_k ≤ 32 and top_k < num_experts ({}), got {}", E, K));
  if (ro.method == M::Llama4 && K != 1) ck.invalid("top_k", fmt::format("expected 1 for Llama4 routing, got {}", K));
  if (ro.method == M::DeepSeekV3 && K > 22) ck.invalid("top_k", fmt::format("expected ≤ 22 for DeepSeekV3, got {}", K));
  if (ro.method == M::DeepSeekV3 && ro.n_group > 1) {
    if (ro.n_group > 8 || E % ro.n_group != 0 || E / ro.n_group > 32)
      ck.invalid("n_group", fmt::format("expected n_group ≤ 8 dividing E = {} into groups of ≤ 32, got {}", E,
                                        ro.n_group));
    if (ro.topk_group < 1 || ro.topk_group > 4 || ro.topk_group > ro.n_group)
      ck.invalid("topk_group",
                 fmt::format("expected 1 ≤ topk_group ≤ min(4, n_group = {}), got {}", ro.n_group, ro.topk_group));
  }
  if (in.routing_bias != nullptr) {
    if (ro.method != M::DeepSeekV3 && ro.method != M::MiniMax2)
      ck.invalid("routing_bias", "expected none: only DeepSeekV3 and MiniMax2 routing take a bias");
    ck.tensor("routing_bias", *in.routing_bias, {z.dtype}, {E}, static_cast<int>(dtype_size(z.dtype)));
  }
  ck.fits_int32("routing_logits", T, "T (tokens)");
  if (T > 0) ck.pointer("routing_logits", z, static_cast<int>(dtype_size(z.dtype)));

  // Activation, weights, expert parallelism.
  const A act = opt.activation;
  if (act != A::Swiglu && act != A::Geglu && act != A::Relu2 && act != A::Identity)
    ck.invalid("activation", fmt::format("expected Swiglu (3), Geglu (4), Relu2 (6) or Identity (7), got {}",
                                         static_cast<int>(act)));
  const bool gate = gated(act);
  const Fp4MoeWeights& w1 = in.w1;
  const Fp4MoeWeights& w2 = in.w2;
  for (const auto& [name, w] : {std::pair<const char*, const Fp4MoeWeights*>{"w1", &w1}, {"w2", &w2}}) {
    if (w->format != Fp4WeightFormat::nvfp4 && w->format != Fp4WeightFormat::mxfp4)
      ck.invalid(name, fmt::format("expected format nvfp4 (0) or mxfp4 (1), got {}", static_cast<int>(w->format)));
    if (w->data == nullptr || reinterpret_cast<uintptr_t>(w->data) % 256 != 0)
      ck.invalid(name, fmt::format("expected a 256-byte aligned prepacked weight (fp4_moe_prepack), got address {}",
                                   w->data));
  }
  const int64_t El = w1.experts;
  if (El < 1 || El > E)
    ck.shape_error("w1", fmt::format("expected 1 … num_experts = {} local experts, got {}", E, El));
  if (opt.local_expert_offset < 0 || opt.local_expert_offset + El > E)
    ck.invalid("local_expert_offset",
               fmt::format("expected 0 ≤ local_expert_offset and local_expert_offset + local experts ({}) ≤ "
                           "num_experts = {}, got {}",
                           El, E, opt.local_expert_offset));
  if (w1.gated != gate)
    ck.invalid("w1", fmt::format("expected a weight prepacked with gated = {} for activation {}", gate,
                                 static_cast<int>(act)));
  if (gate && (w1.rows <= 0 || w1.rows % 2 != 0))
    ck.shape_error("w1", fmt::format("expected 2I rows (linear then gate) for a gated activation, got {}", w1.rows));
  const int64_t H = w1.k, I = gate ? w1.rows / 2 : w1.rows;
  if (H <= 0 || H % 32 != 0)
    ck.shape_error("w1", fmt::format("expected H (w1's k) a positive multiple of 32, got {}", H));
  if (I <= 0 || I % 8 != 0) ck.shape_error("w1", fmt::format("expected I a positive multiple of 8, got {}", I));
  if (w2.experts != El || w2.rows != H || w2.k != I || w2.gated)
    ck.shape_error("w2", fmt::format("expected a non-gated [E_l = {}, H = {}, I = {}] weight, got [{}, {}, {}]{}", El,
                                     H, I, w2.experts, w2.rows, w2.k, w2.gated ? " gated" : ""));

  // Hidden states (§5.5, §6.1).
  const F hf = opt.hidden_format;
  const TensorRef& x = in.hidden_states;
  switch (hf) {
    case F::bf16: ck.tensor("hidden_states", x, {DType::bf16}, {T, H}); break;
    case F::nvfp4: ck.tensor("hidden_states", x, {DType::u8}, {T, H / 2}); break;
    case F::mxfp8:
    case F::e4m3: ck.tensor("hidden_states", x, {DType::e4m3, DType::u8}, {T, H}); break;
    default: ck.invalid("hidden_format", fmt::format("expected bf16 (0), nvfp4 (1), mxfp8 (2) or e4m3 (3), got {}",
                                                     static_cast<int>(hf)));
  }
  const bool needs_scale = hf == F::nvfp4 || hf == F::mxfp8;
  if (needs_scale && in.hidden_states_scale == nullptr)
    ck.invalid("hidden_states_scale", fmt::format("expected [T, H/{}] block scales for {} hidden states",
                                                  hf == F::nvfp4 ? 16 : 32, hf == F::nvfp4 ? "nvfp4" : "mxfp8"));
  if (!needs_scale && in.hidden_states_scale != nullptr)
    ck.invalid("hidden_states_scale", "expected none: only nvfp4 and mxfp8 hidden states carry block scales");
  if (needs_scale)
    ck.tensor("hidden_states_scale", *in.hidden_states_scale, {DType::u8, DType::e4m3},
              {T, H / (hf == F::nvfp4 ? 16 : 32)}, 2);
  check_f32(ck, "per_token_scale", in.per_token_scale, {T});

  // Per-expert tensors (local experts).
  check_f32(ck, "gemm1_bias", in.gemm1_bias, {El, w1.rows});
  check_f32(ck, "gemm2_bias", in.gemm2_bias, {El, H});
  for (const auto& [name, t] : {std::pair<const char*, const TensorRef*>{"gemm1_alpha", in.gemm1_alpha},
                                {"gemm1_beta", in.gemm1_beta},
                                {"gemm1_clamp_limit", in.gemm1_clamp_limit}}) {
    if (t != nullptr && act != A::Swiglu)
      ck.invalid(name, fmt::format("expected none: α, β and the clamp limit go with Swiglu only, got activation {}",
                                   static_cast<int>(act)));
    check_f32(ck, name, t, {El});
  }
  check_f32(ck, "output1_scale_scalar", in.output1_scale_scalar, {El});
  check_f32(ck, "output1_scale_gate_scalar", in.output1_scale_gate_scalar, {El});
  check_f32(ck, "output2_scale_scalar", in.output2_scale_scalar, {El});

  ck.fits_int32("top_k", T * K, "T·K (routed slots)");

  // Outputs (§8) and the replay buffer (§9.2).
  int64_t H_out = 0;
  if (opt.do_finalize) {
    if (out.output == nullptr) ck.invalid("output", "expected a bf16 [T, H_out] output when do_finalize is true");
    ck.dtype("output", *out.output, {DType::bf16});
    if (out.output->ndim != 2 || out.output->shape[0] != T)
      ck.shape_error("output", fmt::format("expected [T = {}, H_out], got shape {}", T, shape_str(*out.output)));
    H_out = out.output->shape[1];
    if (H_out < 8 || H_out > H || H_out % 8 != 0)
      ck.shape_error("output", fmt::format("expected H_out a multiple of 8 in [8, H = {}], got {}", H, H_out));
    ck.contiguous("output", *out.output);
    if (T > 0) ck.pointer("output", *out.output, 16);
  } else {
    if (out.output != nullptr) ck.invalid("output", "expected none when do_finalize is false");
    if (out.gemm2_output == nullptr || out.expert_weights == nullptr || out.expanded_idx_to_permuted_idx == nullptr)
      ck.invalid(out.gemm2_output == nullptr     ? "gemm2_output"
                 : out.expert_weights == nullptr ? "expert_weights"
                                                 : "expanded_idx_to_permuted_idx",
                 "expected gemm2_output, expert_weights and expanded_idx_to_permuted_idx when do_finalize is false");
  }
  if (out.expert_weights != nullptr) ck.tensor("expert_weights", *out.expert_weights, {DType::bf16}, {T, K}, 2);
  if (out.expanded_idx_to_permuted_idx != nullptr)
    ck.tensor("expanded_idx_to_permuted_idx", *out.expanded_idx_to_permuted_idx, {DType::i32}, {T * K}, 4);
  if (in.routing_replay_out != nullptr) {
    const TensorRef& r = *in.routing_replay_out;
    ck.dtype("routing_replay_out", r, {DType::i16});
    if (r.ndim != 2 || r.shape[1] != K || r.shape[0] < T)
      ck.shape_error("routing_replay_out",
                     fmt::format("expected [N ≥ T = {}, top_k = {}], got shape {}", T, K, shape_str(r)));
    ck.contiguous("routing_replay_out", r);
    if (T > 0) ck.pointer("routing_replay_out", r, 2);
  }
  // Sizes that depend on the GEMM's token tile (int32 row indices), last.
  const int64_t rows_cap = T > 0 ? fp4_moe_max_padded_rows(rt, T, K, El) : 0;
  ck.fits_int32("hidden_states", rows_cap, "the permuted rows T·K + E_l·(tile − 1)");
  if (out.gemm2_output != nullptr) {
    const TensorRef& g = *out.gemm2_output;
    ck.dtype("gemm2_output", g, {DType::bf16});
    if (g.ndim != 2 || g.shape[1] != H || g.shape[0] < rows_cap)
      ck.shape_error("gemm2_output", fmt::format("expected [≥ {} (fp4_moe_max_padded_rows), H = {}], got shape {}",
                                                 rows_cap, H, shape_str(g)));
    ck.contiguous("gemm2_output", g);
    if (rows_cap > 0) ck.pointer("gemm2_output", g, 16);
  }
  const Layout lay = layout(T, K, H, I, El, rows_cap, opt.do_finalize);
  if (workspace != nullptr) {
    ck.dtype("workspace", *workspace, {DType::u8});
    ck.contiguous("workspace", *workspace);
    if (workspace->numel() < static_cast<int64_t>(lay.total))
      ck.shape_error("workspace", fmt::format("expected ≥ {} bytes (fp4_moe_workspace_bytes), got {}", lay.total,
                                              workspace->numel()));
    if (T > 0) ck.pointer("workspace", *workspace, 256);
  }
  if (T == 0) return;  // nothing to launch

  const int tile = fp4_moe_layer_token_tile(rt, T, K, El);
  static const char owner = 0;
  auto body = [&](CUdeviceptr base) {
    auto at = [&](size_t off) { return reinterpret_cast<char*>(base) + off; };
    auto* ids = reinterpret_cast<int32_t*>(at(lay.ids));
    void* weights = out.expert_weights != nullptr ? out.expert_weights->data : at(lay.weights);
    auto* expanded = out.expanded_idx_to_permuted_idx != nullptr
                         ? static_cast<int32_t*>(out.expanded_idx_to_permuted_idx->data)
                         : reinterpret_cast<int32_t*>(at(lay.expanded));
    auto* counts = reinterpret_cast<int32_t*>(at(lay.counts));
    auto* offsets = reinterpret_cast<int32_t*>(at(lay.offsets));
    void* act_buf = at(lay.act);
    void* inter = at(lay.inter);
    void* y = out.gemm2_output != nullptr ? out.gemm2_output->data : act_buf;  // act is dead after GEMM1
    float* row_scale = in.per_token_scale != nullptr ? reinterpret_cast<float*>(at(lay.row_scale)) : nullptr;

    const TensorRef ids_t = TensorRef::contiguous(ids, DType::i32, {T, K});
    const TensorRef w_t = TensorRef::contiguous(weights, DType::bf16, {T, K});
    fp4_moe_route(rt, z, in.routing_bias, ids_t, w_t, ro, stream);

    Fp4MoePermuteCall pc;
    pc.topk_ids = ids;
    pc.tokens = T;
    pc.top_k = K;
    pc.experts = El;
    pc.expert_offset = opt.local_expert_offset;
    pc.token_tile = tile;
    pc.expert_counts = counts;
    pc.expert_offsets = offsets;
    pc.expanded_idx_to_permuted_idx = expanded;
    pc.permuted_idx_to_token = reinterpret_cast<int32_t*>(at(lay.perm_token));
    pc.permuted_idx_to_k = reinterpret_cast<int32_t*>(at(lay.perm_k));
    pc.chunk_counts = reinterpret_cast<int32_t*>(at(lay.chunks));
    pc.replay = in.routing_replay_out != nullptr ? static_cast<int16_t*>(in.routing_replay_out->data) : nullptr;
    pc.pdl = true;  // after the route kernel
    fp4_moe_permute(rt, pc, stream);

    Fp4MoeGatherCall gc;
    gc.hidden = x.data;
    gc.hidden_scale = in.hidden_states_scale != nullptr ? in.hidden_states_scale->data : nullptr;
    gc.format = hf;
    gc.hidden_size = H;
    gc.per_token_scale = in.per_token_scale != nullptr ? static_cast<const float*>(in.per_token_scale->data) : nullptr;
    gc.permuted_idx_to_token = pc.permuted_idx_to_token;
    gc.expert_offsets = offsets;
    gc.experts = El;
    gc.rows_cap = rows_cap;
    gc.act = act_buf;
    gc.row_scale = row_scale;
    gc.pdl = true;
    fp4_moe_gather(rt, gc, stream);

    auto f32 = [](const TensorRef* t) { return t != nullptr ? static_cast<const float*>(t->data) : nullptr; };
    Fp4MoeGemmCall g1;  // the segments and the grid's bounds, GEMM2's too
    g1.expert_offsets = offsets;
    g1.expert_counts = counts;
    g1.rows_cap = rows_cap;
    g1.tiles_cap = T * K;
    g1.token_tile = tile;
    Fp4MoeGemmCall g2 = g1;

    g1.w = w1;
    g1.act = act_buf;
    g1.act_ld = H;
    g1.row_scale = row_scale;
    g1.bias = f32(in.gemm1_bias);
    g1.scale_a = f32(in.output1_scale_gate_scalar);
    g1.scale_b = f32(in.output1_scale_scalar);
    g1.alpha = f32(in.gemm1_alpha);
    g1.beta = f32(in.gemm1_beta);
    g1.limit = f32(in.gemm1_clamp_limit);
    g1.gemm1 = true;
    g1.activation = act;
    g1.out = inter;
    g1.out_ld = I;
    g1.pdl = true;  // after the gather, which passed its wait only once the metadata kernels had completed
    fp4_moe_gemm(rt, g1, stream);

    g2.w = w2;
    g2.act = inter;
    g2.act_ld = I;
    g2.bias = f32(in.gemm2_bias);
    g2.scale_a = f32(in.output2_scale_scalar);
    g2.out = y;
    g2.out_ld = H;
    g2.pdl = true;  // after GEMM1
    fp4_moe_gemm(rt, g2, stream);

    if (opt.do_finalize) {
      Fp4MoeFinalizeCall fc;
      fc.y = y;
      fc.y_ld = H;
      fc.expanded_idx_to_permuted_idx = expanded;
      fc.weights = weights;
      fc.tokens = T;
      fc.top_k = K;
      fc.hidden_out = H_out;
      fc.out = out.output->data;
      fc.out_ld = H_out;
      fc.pdl = true;  // after GEMM2 (kiln's own)
      fp4_moe_finalize(rt, fc, stream);
    }
  };
  if (workspace != nullptr) body(reinterpret_cast<CUdeviceptr>(workspace->data));
  else rt.impl().with_scratch(&owner, lay.total, stream, body);
}

namespace detail {

std::optional<Fp4MoeModel> fp4_moe_of(const ModelConfig& m) {
  if (m.fp4_moe.empty()) return std::nullopt;
  using M = Fp4MoeRoutingMethod;
  Fp4MoeModel f;
  f.weights = m.fp4_moe == "mxfp4" ? Fp4WeightFormat::mxfp4 : Fp4WeightFormat::nvfp4;
  const std::string& h = m.fp4_moe_hidden;
  f.hidden = h == "nvfp4" ? Fp4MoeHiddenFormat::nvfp4 : h == "mxfp8" ? Fp4MoeHiddenFormat::mxfp8
             : h == "e4m3"  ? Fp4MoeHiddenFormat::e4m3
                            : Fp4MoeHiddenFormat::bf16;
  const std::string& a = m.fp4_moe_activation;
  f.activation = a == "geglu" ? Fp4MoeActivation::Geglu : a == "relu2" ? Fp4MoeActivation::Relu2
                 : a == "identity" ? Fp4MoeActivation::Identity
                                   : Fp4MoeActivation::Swiglu;
  M method;
  if (m.fp4_moe_routing >= 0) {
    method = static_cast<M>(m.fp4_moe_routing);
  } else if (m.scoring_func == "sigmoid") {
    method = m.n_group > 1 || m.expert_bias ? M::DeepSeekV3 : m.norm_topk_prob ? M::SigmoidRenorm : M::Sigmoid;
  } else {
    method = m.norm_topk_prob ? M::Renormalize : M::Default;
  }
  f.routing.method = method;
  f.routing.top_k = m.num_experts_per_tok;
  f.routing.routed_scaling_factor = static_cast<float>(m.routed_scaling_factor);
  f.routing.norm_topk_prob = m.norm_topk_prob;
  if (method == M::DeepSeekV3 && m.n_group > 1) {
    f.routing.n_group = m.n_group;
    f.routing.topk_group = m.topk_group;
  }
  f.routing_bias = m.expert_bias && (method == M::DeepSeekV3 || method == M::MiniMax2);
  f.experts = m.num_experts;
  f.local_experts = m.fp4_moe_local_experts > 0 ? m.fp4_moe_local_experts : m.num_experts;
  f.hidden_size = m.hidden_size;
  f.intermediate = m.moe_intermediate_size;
  // The op's constraints (fp4_moe_route, fp4_block_scale_moe): skip what it would refuse.
  const int64_t E = f.experts, K = f.routing.top_k;
  if (E % 4 != 0 || E > 512 || K < 1 || K > 32 || K >= E || f.local_experts > 512) return std::nullopt;
  if (method == M::Llama4 && K != 1) return std::nullopt;
  if (method == M::DeepSeekV3 && K > 22) return std::nullopt;
  if (f.routing.n_group > 1 && (f.routing.n_group > 8 || E / f.routing.n_group > 32 || f.routing.topk_group > 4))
    return std::nullopt;
  if (f.hidden_size % 32 != 0 || f.intermediate <= 0 || f.intermediate % 32 != 0) return std::nullopt;
  return f;
}

}  // namespace detail
}  // namespace kiln
