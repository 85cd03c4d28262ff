// Host recipe: MoE permute / unpermute (templates/kiln/moe_permute.cuh). Spec: linghe-kernels.md §6.2–§6.4, §14.5.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "kiln/moe_permute_args.h"
#include "kiln/ops/moe.hpp"
#include "ops/bench/moe_instances.hpp"
#include "runtime/family.hpp"
#include "runtime/runtime_impl.hpp"
#include "runtime/validate.hpp"

namespace kiln {
namespace {
using namespace detail;

enum : uint32_t { kPermute = 0, kUnpermute = 1, kPermuteBlockQuant = 2 };
enum { P_N, P_E, P_SCALE_BLOCKS, P_M_MAJOR, P_PROBS, P_DTYPE, P_WEIGHTS, P_RESTORE, P_ROUND };
enum { C_THREADS, C_TOKENS };

constexpr int64_t kMaxRowBytes = 65536;
constexpr int64_t kMaxExperts = 1024;

// Bytes of one row: N elements of the specialization's dtype.
int64_t row_bytes(const Specialization& s) {
  return s.params[P_N] * static_cast<int64_t>(dtype_size(static_cast<DType>(s.params[P_DTYPE])));
}

void render(const Specialization& s, std::string& source, std::string& name) {
  source = "#include \"kiln/moe_permute.cuh\"\n";
  const auto& p = s.params;
  if (s.kernel == kPermuteBlockQuant) {
    name = fmt::format("kiln::moe_permute_block_quant_kernel<{}, {}, {}, {}>", p[P_N], p[P_E],
                       p[P_ROUND] != 0, p[P_PROBS] != 0);
  } else if (s.kernel == kPermute) {
    name = fmt::format("kiln::moe_permute_kernel<{}, {}, {}, {}, {}, {}, {}>", row_bytes(s), p[P_E], p[P_SCALE_BLOCKS],
                       p[P_M_MAJOR] != 0, p[P_PROBS] != 0, s.config[C_THREADS], s.config[C_TOKENS]);
  } else {
    const bool f32 = static_cast<DType>(p[P_DTYPE]) == DType::f32;
    const int64_t H = p[P_N];
    name = fmt::format("kiln::moe_unpermute_kernel<{}, {}, {}, {}, {}, {}>", H, f32 ? "float" : "kiln::bf16", p[P_E],
                       p[P_WEIGHTS] != 0, p[P_RESTORE] != 0, s.config[C_THREADS]);
  }
}

int smem_bytes(const Specialization& s) {
  return s.kernel == kPermuteBlockQuant ? moe_block_quant_smem_bytes(static_cast<int>(s.params[P_E])) : 0;
}

// Threads per CTA (a CTA per token): two 16-byte vectors of the row per thread, 64 … 512 threads.
int default_threads(int64_t row_bytes) {
  const int64_t nv = row_bytes / 16;
  const int64_t t = ((nv + 1) / 2 + 31) / 32 * 32;
  return static_cast<int>(std::clamp<int64_t>(t, 64, 512));
}

void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out);
void search_space(const Specialization& s, std::vector<Specialization>& out);

// The tuner's instance of `s` at `tokens` tokens: random logits routed top-min(8, E) with softmax, padded to 16.
BenchInstance tune_instance(Runtime& rt, const Specialization& s, int64_t tokens) {
  const auto& p = s.params;
  const int64_t E = p[P_E];
  const int k = static_cast<int>(std::min<int64_t>(8, E));
  if (s.kernel == kPermute) {
    const bool fp8 = static_cast<DType>(p[P_DTYPE]) == DType::e4m3;
    return moe_permute_instance(rt, tokens, E, k, 16, p[P_N], fp8,
                                p[P_M_MAJOR] != 0, p[P_PROBS] != 0);
  }
  if (s.kernel == kUnpermute) {
    const DType dt = static_cast<DType>(p[P_DTYPE]);
    return moe_unpermute_instance(rt, tokens, E, k, 16, p[P_N], dt,
                                  p[P_WEIGHTS] != 0, p[P_RESTORE] != 0);
  }
  return moe_permute_block_quant_instance(rt, tokens, E, k, 16, p[P_N], p[P_ROUND] != 0,
                                          p[P_PROBS] != 0);
}

FamilyDef g_family{"moe_permute",
                   {"permute", "unpermute", "permute_block_quant"},
                   {"N", "E", "scale_blocks", "m_major", "probs", "dtype", "weights", "restore", "round_scale"},
                   {"threads", "tokens"},
                   render,
                   smem_bytes,
                   enumerate,
                   search_space,
                   tune_instance};

Specialization permute_spec(Arch arch, int64_t N, DType dtype, int64_t E, int64_t ns, bool m_major, bool probs) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = kPermute;
  s.params[P_N] = N;
  s.params[P_DTYPE] = static_cast<int64_t>(dtype);
  s.params[P_E] = E;
  s.params[P_SCALE_BLOCKS] = ns;
  s.params[P_M_MAJOR] = ns > 0 && m_major;
  s.params[P_PROBS] = probs;
  // Tokens per CTA: short rows share a CTA (fewer CTAs, the compaction latency shared); then two vectors per thread.
  const int64_t nv = row_bytes(s) / 16;
  const int tpc = static_cast<int>(std::clamp<int64_t>(256 / nv, 1, 8));
  s.config[C_TOKENS] = tpc;
  s.config[C_THREADS] = std::max(32 * tpc, default_threads(tpc * row_bytes(s)));
  return s;
}

Specialization unpermute_spec(Arch arch, int64_t H, DType dtype, int64_t E, bool weights, bool restore) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = kUnpermute;
  s.params[P_N] = H;
  s.params[P_E] = E;
  s.params[P_DTYPE] = static_cast<int64_t>(dtype);
  s.params[P_WEIGHTS] = weights;
  s.params[P_RESTORE] = restore;
  s.config[C_THREADS] = default_threads(row_bytes(s));
  return s;
}

// permute_block_quant's 128-channel blocks a CTA (config `tokens`; 0: the default, 2 where they divide HD/128 —
// bench/NOTES.md session 18): the largest of the config's value, 2 and 1 that divides ns.
int64_t block_quant_cpb(const Specialization& s, int64_t ns) {
  for (int64_t c : {static_cast<int64_t>(s.config[C_TOKENS]), int64_t{2}, int64_t{1}})
    if (c >= 1 && ns % c == 0) return c;
  return 1;
}

Specialization block_quant_spec(Arch arch, int64_t Hd, int64_t E, bool round, bool probs) {
  Specialization s;
  s.family = &g_family;
  s.arch = arch;
  s.kernel = kPermuteBlockQuant;
  s.params[P_N] = Hd;
  s.params[P_DTYPE] = static_cast<int64_t>(DType::bf16);
  s.params[P_E] = E;
  s.params[P_PROBS] = probs;
  s.params[P_ROUND] = round;
  s.config[C_THREADS] = 256;
  return s;
}

// Threads 64 … 512 (powers of two) and the heuristic's, while a thread holds at most 8 vectors of the row.
// permute_block_quant: 256 threads, a 128 × 128 tile at a time; 1, 2 (the default) or 4 channel blocks a CTA.
void search_space(const Specialization& base, std::vector<Specialization>& out) {
  Specialization s = base;
  s.config = {};
  if (base.kernel == kPermuteBlockQuant) {
    s.config[C_THREADS] = 256;
    for (int cpb : {0, 1, 4}) {
      s.config[C_TOKENS] = cpb;
      out.push_back(s);
    }
    return;
  }
  const int64_t nv = row_bytes(base) / 16;
  Specialization def = base;
  if (base.kernel == kPermute) def = permute_spec(base.arch, base.params[P_N], static_cast<DType>(base.params[P_DTYPE]),
                                                  base.params[P_E], base.params[P_SCALE_BLOCKS],
                                                  base.params[P_M_MAJOR] != 0, base.params[P_PROBS] != 0);
  auto add = [&](int threads, int tokens) {
    s.config[C_THREADS] = threads;
    s.config[C_TOKENS] = base.kernel == kPermute ? tokens : 0;
    if (std::none_of(out.begin(), out.end(), [&](const Specialization& o) { return o.config == s.config; }))
      out.push_back(s);
  };
  if (base.kernel == kPermute) add(def.config[C_THREADS], def.config[C_TOKENS]);
  else add(default_threads(row_bytes(base)), 0);
  for (int tokens : {1, 2, 4, 8}) {
    if (base.kernel != kPermute && tokens > 1) break;
    for (int t : {64, 128, 256, 512}) {
      if (t < 32 * tokens || (tokens * nv + t - 1) / t > 8) continue;
      add(t, tokens);
    }
  }
}

// A model's dispatch: bf16 rows with probs, fp8 rows with M-major scales and probs; the combine (prob-weighted,
// restoring probs for the backward) and the plain sum (the permute's backward).
void enumerate(const ModelConfig& m, Arch arch, std::vector<Specialization>& out) {
  const int64_t H = m.hidden_size, E = m.num_experts;
  if (E <= 0 || E > kMaxExperts || H <= 0 || H % 128 != 0) return;
  out.push_back(permute_spec(arch, H, DType::bf16, E, 0, false, true));
  out.push_back(permute_spec(arch, H, DType::e4m3, E, H / 128, true, true));
  out.push_back(unpermute_spec(arch, H, DType::bf16, E, true, true));
  out.push_back(unpermute_spec(arch, H, DType::bf16, E, false, false));
  out.push_back(block_quant_spec(arch, H, E, true, true));
}

void check_map_tensor(const Check& ck, const TensorRef& map, int64_t& T, int64_t& E) {
  ck.dtype("row_id_map", map, {DType::i32});
  ck.shape("row_id_map", map, {-1, -1});
  ck.contiguous("row_id_map", map);
  T = map.shape[0];
  E = map.shape[1];
  if (E < 1 || E > kMaxExperts)
    ck.shape_error("row_id_map", fmt::format("expected 1 … {} experts (last dim), got {}", kMaxExperts, E));
  ck.fits_int32("row_id_map", T, "T (tokens)");
  if (T > 0) ck.pointer("row_id_map", map, 4);
}

void check_num_out(const Check& ck, const char* arg, int64_t num_out, int64_t T, int64_t E,
                   const MoePermuteOptions& o) {
  if (o.top_k < 0 || o.top_k > E) ck.invalid("top_k", fmt::format("expected 0 (= E) … E = {}, got {}", E, o.top_k));
  if (o.multiple_of < 1 || o.multiple_of > 128)
    ck.invalid("multiple_of", fmt::format("expected 1 … 128, got {}", o.multiple_of));
  ck.fits_int32(arg, num_out, "num_out_tokens");
  const int64_t need = moe_max_out_rows(T, E, o.top_k == 0 ? E : o.top_k, o.multiple_of);
  if (num_out < need)
    ck.shape_error(arg, fmt::format("num_out_tokens = {} is smaller than the map may need: {} rows (T = {}, E = {}, "
                                    "top_k = {}, multiple_of = {})",
                                    num_out, need, T, E, o.top_k == 0 ? E : o.top_k, o.multiple_of));
}

}  // namespace

KILN_REGISTER_FAMILY(moe_permute, g_family)

void moe_permute(Runtime& rt, const TensorRef& inp, const TensorRef& scale, const TensorRef& probs,
                 const MoeRowIdMap& map, const TensorRef& out, const TensorRef& scale_out, const TensorRef& probs_out,
                 const MoePermuteOptions& opts, Stream stream) {
  const Check ck{"moe_permute"};
  int64_t T = 0, E = 0;
  check_map_tensor(ck, map.row_id_map, T, E);
  ck.dtype("inp", inp, {DType::bf16, DType::e4m3});
  ck.shape("inp", inp, {T, -1});
  ck.contiguous("inp", inp);
  const int64_t Hd = inp.shape[1];
  const int64_t row_bytes = Hd * static_cast<int64_t>(dtype_size(inp.dtype));
  if (Hd <= 0 || row_bytes % 16 != 0 || row_bytes > kMaxRowBytes)
    ck.shape_error("inp", fmt::format("expected rows of a multiple of 16 bytes up to {} (Hd = {} {})", kMaxRowBytes,
                                      Hd, dtype_name(inp.dtype)));
  if (T > 0) ck.pointer("inp", inp, 16);
  ck.dtype("out", out, {inp.dtype});
  ck.shape("out", out, {-1, Hd});
  ck.contiguous("out", out);
  const int64_t num_out = out.shape[0];
  check_num_out(ck, "out", num_out, T, E, opts);
  if (num_out > 0) ck.pointer("out", out, 16);

  int64_t ns = 0;
  bool m_major = false;
  if (scale.defined()) {
    if (inp.dtype != DType::e4m3)
      ck.invalid("scale", fmt::format("block scales go with fp8_e4m3 rows, got inp of dtype {}", dtype_name(inp.dtype)));
    if (Hd % 128 != 0) ck.shape_error("inp", fmt::format("1×128 block scales need Hd % 128 == 0, got Hd = {}", Hd));
    ns = Hd / 128;
    ck.dtype("scale", scale, {DType::f32});
    ck.contiguous("scale", scale);
    const bool tok = scale.ndim == 2 && scale.shape[0] == T && scale.shape[1] == ns;
    const bool mm = scale.ndim == 2 && scale.shape[0] == ns && scale.shape[1] == T;
    switch (opts.scale_layout) {
      case MoeScaleLayout::automatic:
        if (!tok && !mm)
          ck.shape_error("scale", fmt::format("expected [T, Hd/128] = [{}, {}] (token-major) or [Hd/128, T] = [{}, {}] "
                                              "(M-major), got {}",
                                              T, ns, ns, T, shape_str(scale)));
        if (tok && mm)
          ck.invalid("scale", fmt::format("shape {} fits both layouts (T == Hd/128 = {}): pass scale_layout",
                                          shape_str(scale), T));
        m_major = mm;
        break;
      case MoeScaleLayout::token_major:
        ck.shape("scale", scale, {T, ns});
        break;
      case MoeScaleLayout::m_major:
        ck.shape("scale", scale, {ns, T});
        m_major = true;
        break;
      default: ck.invalid("scale_layout", fmt::format("unknown value {}", static_cast<int>(opts.scale_layout)));
    }
    if (T > 0) ck.pointer("scale", scale, 4);
    if (!scale_out.defined()) ck.invalid("scale_out", "scale is given, so scale_out [Hd/128, num_out] is required");
    ck.tensor("scale_out", scale_out, {DType::f32}, {ns, num_out}, 4);
  } else if (scale_out.defined()) {
    ck.invalid("scale_out", "given without scale");
  }
  if (probs.defined()) {
    ck.tensor("probs", probs, {DType::f32}, {T, E}, 4);
    if (!probs_out.defined()) ck.invalid("probs_out", "probs is given, so probs_out [num_out] is required");
    ck.tensor("probs_out", probs_out, {DType::f32}, {num_out}, 4);
  } else if (probs_out.defined()) {
    ck.invalid("probs_out", "given without probs");
  }
  const bool pad = map.offsets.defined() || map.tokens_per_expert.defined();
  if (pad) {
    ck.tensor("offsets", map.offsets, {DType::i32}, {E + 1}, 4);
    ck.tensor("tokens_per_expert", map.tokens_per_expert, {DType::i32}, {E}, 4);
  }
  // The inverse indices let the scales be gathered in row order (coalesced stores); used only with scales.
  const bool gather = scale.defined() && map.row_id_indices.defined();
  if (gather) ck.tensor("row_id_indices", map.row_id_indices, {DType::i32}, {num_out}, 4);
  if (opts.fill_tail && !pad)
    ck.invalid("fill_tail", "needs the map's offsets and tokens_per_expert to know where the tail starts");
  if (T == 0 && !(pad && opts.fill_tail) && !(gather && num_out > 0)) return;

  auto& impl = rt.impl();
  const Specialization s =
      impl.tuned(permute_spec(impl.target_arch(), Hd, inp.dtype, E, ns, m_major, probs.defined()), T);
  MoePermuteArgs a{};
  a.inp = inp.data;
  a.scale = static_cast<const float*>(scale.data);
  a.probs = static_cast<const float*>(probs.data);
  a.row_id_map = static_cast<const int*>(map.row_id_map.data);
  a.offsets = static_cast<const int*>(map.offsets.data);
  a.counts = static_cast<const int*>(map.tokens_per_expert.data);
  a.out = out.data;
  a.scale_out = static_cast<float*>(scale_out.data);
  a.probs_out = static_cast<float*>(probs_out.data);
  a.T = static_cast<int>(T);
  a.num_out = static_cast<int>(num_out);
  a.pad_scale = opts.round_scale ? std::ldexp(1.0f, -99) : 1e-30f;
  a.row_id_indices = gather ? static_cast<const int*>(map.row_id_indices.data) : nullptr;
  const int threads = s.config[C_THREADS], tpc = s.config[C_TOKENS];
  a.token_ctas = static_cast<int>((T + tpc - 1) / tpc);
  a.pad_ctas = pad ? static_cast<int>(E) : 0;
  a.tail_ctas = pad && opts.fill_tail ? kMoePermuteTailCtas : 0;
  const int64_t scale_ctas = gather ? (num_out + threads - 1) / threads : 0;
  LaunchDims d;
  d.grid[0] = static_cast<unsigned>(a.token_ctas + a.pad_ctas + a.tail_ctas + scale_ctas);
  d.block[0] = static_cast<unsigned>(threads);
  if (d.grid[0] == 0) return;
  impl.launch(s, d, stream, a);
}

void moe_unpermute(Runtime& rt, const TensorRef& x, const TensorRef& row_id_map, const TensorRef& weights,
                   const TensorRef& out, const TensorRef& restore_probs, const MoePermuteOptions& opts,
                   Stream stream) {
  const Check ck{"moe_unpermute"};
  int64_t T = 0, E = 0;
  check_map_tensor(ck, row_id_map, T, E);
  ck.dtype("x", x, {DType::bf16, DType::f32});
  ck.shape("x", x, {-1, -1});
  ck.contiguous("x", x);
  const int64_t num_out = x.shape[0], H = x.shape[1];
  const int64_t row_bytes = H * static_cast<int64_t>(dtype_size(x.dtype));
  if (H <= 0 || row_bytes % 16 != 0 || row_bytes > kMaxRowBytes)
    ck.shape_error("x", fmt::format("expected rows of a multiple of 16 bytes up to {} (H = {} {})", kMaxRowBytes, H,
                                    dtype_name(x.dtype)));
  check_num_out(ck, "x", num_out, T, E, opts);
  if (num_out > 0) ck.pointer("x", x, 16);
  ck.tensor("out", out, {x.dtype}, {T, H}, 16);
  if (weights.defined()) ck.tensor("weights", weights, {DType::f32}, {num_out}, 4);
  if (restore_probs.defined()) {
    if (!weights.defined()) ck.invalid("restore_probs", "restoring probs needs the permuted probs as weights");
    ck.tensor("restore_probs", restore_probs, {DType::f32}, {T, E}, 4);
  }
  if (T == 0) return;

  auto& impl = rt.impl();
  const Specialization s = impl.tuned(
      unpermute_spec(impl.target_arch(), H, x.dtype, E, weights.defined(), restore_probs.defined()), T);
  MoeUnpermuteArgs a{x.data,
                     static_cast<const float*>(weights.data),
                     static_cast<const int*>(row_id_map.data),
                     out.data,
                     static_cast<float*>(restore_probs.data),
                     static_cast<int>(T),
                     static_cast<int>(num_out)};
  LaunchDims d;
  d.grid[0] = static_cast<unsigned>(T);
  d.block[0] = static_cast<unsigned>(s.config[C_THREADS]);
  impl.launch(s, d, stream, a);
}

int64_t moe_block_quant_scale_blocks(int64_t num_out, int64_t E) { return (num_out + 127) / 128 + E; }

void moe_permute_block_quant(Runtime& rt, const TensorRef& x, const TensorRef& probs, const MoeRowIdMap& map,
                             const MoeBlockQuantPermuteOutputs& out, const MoePermuteOptions& opts, Stream stream) {
  const Check ck{"moe_permute_block_quant"};
  ck.dtype("x", x, {DType::bf16});
  ck.shape("x", x, {-1, -1});
  ck.contiguous("x", x);
  const int64_t T = x.shape[0], Hd = x.shape[1];
  if (Hd <= 0 || Hd % 128 != 0 || Hd * 2 > kMaxRowBytes)
    ck.shape_error("x", fmt::format("expected Hd a multiple of 128 up to {}, got {}", kMaxRowBytes / 2, Hd));
  ck.fits_int32("x", T, "T (tokens)");
  if (T > 0) ck.pointer("x", x, 16);
  if (!map.offsets.defined()) ck.invalid("offsets", "the block-quantized permute needs the map's offsets [E + 1]");
  ck.dtype("offsets", map.offsets, {DType::i32});
  ck.shape("offsets", map.offsets, {-1});
  const int64_t E = map.offsets.shape[0] - 1;
  if (E < 1 || E > kMaxExperts)
    ck.shape_error("offsets", fmt::format("expected [E + 1] with 1 ≤ E ≤ {}, got {}", kMaxExperts, shape_str(map.offsets)));
  ck.tensor("offsets", map.offsets, {DType::i32}, {E + 1}, 4);
  if (!map.row_id_indices.defined())
    ck.invalid("row_id_indices", "the block-quantized permute gathers rows through the map's inverse indices");
  ck.tensor("row_id_indices", map.row_id_indices, {DType::i32}, {-1}, 4);
  const int64_t num_out = map.row_id_indices.shape[0];
  check_num_out(ck, "row_id_indices", num_out, T, E, opts);
  if (opts.multiple_of % 4 != 0)
    ck.invalid("multiple_of", fmt::format("the transposed segments need a multiple of 4 (16 in linghe), got {}",
                                          opts.multiple_of));
  const int64_t ns = Hd / 128, nb = moe_block_quant_scale_blocks(num_out, E);
  ck.tensor("q", out.q, {DType::e4m3}, {num_out, Hd}, 16);
  ck.tensor("q_scale", out.q_scale, {DType::f32}, {num_out * ns}, 4);
  ck.tensor("qT", out.qT, {DType::e4m3}, {num_out * Hd}, 16);
  ck.tensor("qT_scale", out.qT_scale, {DType::f32}, {nb * Hd}, 4);
  if (probs.defined()) {
    ck.tensor("probs", probs, {DType::f32}, {T, E}, 4);
    if (!out.probs_out.defined()) ck.invalid("probs_out", "probs is given, so probs_out [num_out] is required");
    ck.tensor("probs_out", out.probs_out, {DType::f32}, {num_out}, 4);
  } else if (out.probs_out.defined()) {
    ck.invalid("probs_out", "given without probs");
  }
  if (nb > 0x7fffffff) ck.invalid("row_id_indices", "too many row blocks for one grid");
  if (num_out == 0) return;

  auto& impl = rt.impl();
  const Specialization s =
      impl.tuned(block_quant_spec(impl.target_arch(), Hd, E, opts.round_scale, probs.defined()), T);
  MoePermuteBlockQuantArgs a{};
  a.x = x.data;
  a.probs = static_cast<const float*>(probs.data);
  a.row_id_indices = static_cast<const int*>(map.row_id_indices.data);
  a.offsets = static_cast<const int*>(map.offsets.data);
  a.q = static_cast<unsigned char*>(out.q.data);
  a.q_scale = static_cast<float*>(out.q_scale.data);
  a.qT = static_cast<unsigned char*>(out.qT.data);
  a.qT_scale = static_cast<float*>(out.qT_scale.data);
  a.probs_out = static_cast<float*>(out.probs_out.data);
  a.T = static_cast<int>(T);
  a.num_out = static_cast<int>(num_out);
  a.max_blocks = static_cast<int>(nb);
  LaunchDims d;
  d.grid[0] = static_cast<unsigned>(nb);
  a.cpb = static_cast<int>(block_quant_cpb(s, ns));
  d.grid[1] = static_cast<unsigned>(ns / a.cpb);
  d.block[0] = 256;
  d.smem = static_cast<unsigned>(smem_bytes(s));
  impl.launch(s, d, stream, a);
}

}  // namespace kiln
