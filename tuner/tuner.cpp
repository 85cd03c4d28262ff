#include "tuner/tuner.hpp"

#include <cuda.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <ctime>
#include <limits>
#include <thread>

#include "kiln/errors.hpp"
#include "kiln/version.hpp"
#include "runtime/driver.hpp"
#include "runtime/family.hpp"
#include "runtime/log.hpp"
#include "runtime/nvrtc_compiler.hpp"
#include "runtime/runtime_impl.hpp"
#include "tuner/tuning_table.hpp"

namespace kiln::tuner {
namespace {

using detail::BenchInstance;
using detail::Specialization;
using Clock = std::chrono::steady_clock;

// Written over every output before a candidate's checked run: an output the candidate never writes keeps it and
// cannot match the default's.
constexpr unsigned char kPoison = 0xA5;

std::string config_label(const Specialization& s) {
  std::string out;
  for (size_t i = 0; s.family && i < s.family->config_names.size(); ++i)
    out += fmt::format("{}{}={}", i ? " " : "", s.family->config_names[i], s.config[i]);
  return out.empty() ? "(no config)" : out;
}

// ---- output comparison ------------------------------------------------------------------------------------------

float bf16_value(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float f16_value(uint16_t h) {
  const uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  float v;
  if (exp == 0)
    v = std::ldexp(static_cast<float>(mant), -24);
  else if (exp == 31)
    v = mant ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  else
    v = std::ldexp(static_cast<float>(mant | 0x400), static_cast<int>(exp) - 25);
  return sign ? -v : v;
}

// Whether a and b are both finite nonzero powers of two, one twice the other: a block's power-of-two scale that a
// config moved by ×2 (see compare_fp8).
bool pow2_rescaled(double a, double b) {
  if (!std::isfinite(a) || !std::isfinite(b) || a == 0 || b == 0 || (a < 0) != (b < 0)) return false;
  int ea = 0, eb = 0;
  const double ma = std::frexp(std::abs(a), &ea), mb = std::frexp(std::abs(b), &eb);
  return ma == 0.5 && mb == 0.5 && std::abs(ea - eb) == 1;
}

// The comparisons walk fixed chunks of kCmpChunk elements, on up to hardware_concurrency threads, and combine the
// chunks' partial results in chunk order: the same verdict and message for any thread count (a CE gradient at 8192
// tokens is 1.3 G elements: one thread took ≈ 2.6 s a candidate).
constexpr size_t kCmpChunk = size_t{1} << 20;
size_t cmp_chunks(size_t n) { return (n + kCmpChunk - 1) / kCmpChunk; }

template <typename F>
void for_chunks(size_t n, F&& body) {  // body(chunk index, first element, end element)
  const size_t chunks = cmp_chunks(n);
  const size_t threads = std::min<size_t>({chunks, std::max(1u, std::thread::hardware_concurrency()), 32});
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;)
      body(c, c * kCmpChunk, std::min(n, (c + 1) * kCmpChunk));
  };
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
}

// Whether the two buffers hold the same bytes (then every comparison below accepts: it is checked first).
bool same_bytes(const uint8_t* a, const uint8_t* b, size_t bytes) {
  std::vector<char> differs(cmp_chunks(bytes), 0);
  for_chunks(bytes, [&](size_t c, size_t i0, size_t i1) { differs[c] = std::memcmp(a + i0, b + i0, i1 - i0) != 0; });
  return std::find(differs.begin(), differs.end(), 1) == differs.end();
}

// With `scales` (fp32 outputs), an element where both values are powers of two a factor of 2 apart is a rescaled
// block's scale — the fp32 side of compare_fp8's rescaled blocks — and a few are accepted (at most
// max(4, n / 10000), kept out of the relative L2), never a systematic change.
template <typename Decode>
std::string compare_floats(size_t n, Decode value, double max_rel_l2, double rtol, const char* name,
                           bool scales = false) {
  struct Part {
    double ref_sq = 0, diff_sq = 0;
    size_t finite = 0, bad = 0, first_bad = 0, rescaled = 0, first_rescaled = 0;
  };
  std::vector<Part> part(cmp_chunks(n));
  for_chunks(n, [&](size_t c, size_t i0, size_t i1) {
    double sq = 0;  // (locals: the chunk's loop keeps them in registers)
    size_t fin = 0;
    for (size_t i = i0; i < i1; ++i) {
      const double r = value(true, i);
      if (std::isfinite(r)) {
        sq += r * r;
        ++fin;
      }
    }
    part[c].ref_sq = sq;
    part[c].finite = fin;
  });
  double ref_sq = 0;
  size_t finite = 0;
  for (const Part& p : part) {
    ref_sq += p.ref_sq;
    finite += p.finite;
  }
  const double rms = finite ? std::sqrt(ref_sq / static_cast<double>(finite)) : 0.0;
  const double atol = rtol * rms;
  for_chunks(n, [&](size_t c, size_t i0, size_t i1) {
    Part p = part[c];
    for (size_t i = i0; i < i1; ++i) {
      const double r = value(true, i), g = value(false, i);
      bool ok;
      if (!std::isfinite(r))
        ok = (std::isnan(r) && std::isnan(g)) || r == g;  // NaN where ref has NaN, the same inf where it has inf
      else if (!std::isfinite(g))
        ok = false;
      else if (scales && pow2_rescaled(r, g)) {
        ok = true;
        if (p.rescaled++ == 0) p.first_rescaled = i;
      } else {
        p.diff_sq += (g - r) * (g - r);
        ok = std::abs(g - r) <= atol + rtol * std::abs(r);
      }
      if (!ok && p.bad++ == 0) p.first_bad = i;
    }
    part[c] = p;
  });
  double diff_sq = 0;
  size_t bad = 0, first_bad = 0, rescaled = 0, first_rescaled = 0;
  for (const Part& p : part) {
    diff_sq += p.diff_sq;
    if (p.bad && bad == 0) first_bad = p.first_bad;
    if (p.rescaled && rescaled == 0) first_rescaled = p.first_rescaled;
    bad += p.bad;
    rescaled += p.rescaled;
  }
  const size_t allowed_rescaled = std::max<size_t>(4, n / 10000);
  if (bad == 0 && rescaled > allowed_rescaled)
    return fmt::format("{}: {} of {} values are powers of two twice or half the default's (rescaled blocks; at most {} "
                       "allowed); first at [{}]: got {:.6g}, default {:.6g}",
                       name, rescaled, n, allowed_rescaled, first_rescaled, value(false, first_rescaled),
                       value(true, first_rescaled));
  const double rel = ref_sq > 0 ? std::sqrt(diff_sq / ref_sq) : (diff_sq > 0 ? INFINITY : 0.0);
  if (bad == 0 && rel <= max_rel_l2) return "";
  if (bad == 0)
    return fmt::format("{}: relative L2 {:.3g} > {:.3g}", name, rel, max_rel_l2);
  return fmt::format("{}: {} of {} elements differ beyond {:.3g}·|ref| + {:.3g} (relative L2 {:.3g}); first at [{}]: "
                     "got {:.6g}, default {:.6g}",
                     name, bad, n, rtol, atol, rel, first_bad, value(false, first_bad), value(true, first_bad));
}

// fp8 (sign-magnitude): the magnitude codes of a one-step flip differ by one, same sign, neither a NaN/inf code
// (e4m3: 0x7f; e5m2: above 0x7b). A block whose power-of-two scale doubled or halved (a config that sums a row's
// squares in another order can move r by an ulp and so move a block's amax across a power of two) changes its codes
// by one exponent step (`exp_step` = 8 for e4m3, 4 for e5m2; smaller differences among subnormal codes): a few such
// codes are accepted (at most max(512, n / 10000): a handful of 128-code blocks), never a systematic scale change.
std::string compare_fp8(const uint8_t* ref, const uint8_t* got, size_t n, const char* name, int max_finite,
                        int exp_step) {
  const size_t allowed = std::max<size_t>(2, n / 1000);
  const size_t allowed_rescaled = std::max<size_t>(512, n / 10000);
  struct Part {
    size_t flips = 0, rescaled = 0, bad = 0, first_bad = 0, first_flip = 0, first_rescaled = 0;
  };
  std::vector<Part> part(cmp_chunks(n));
  for_chunks(n, [&](size_t c, size_t i0, size_t i1) {
    Part p;
    for (size_t i = i0; i < i1; ++i) {
      if (ref[i] == got[i]) continue;
      const int dr = ref[i] & 0x7f, dg = got[i] & 0x7f;
      const bool same_sign_finite = (ref[i] & 0x80) == (got[i] & 0x80) && dr <= max_finite && dg <= max_finite;
      const int d = std::abs(dr - dg);
      if (same_sign_finite && d == 1) {
        if (p.flips++ == 0) p.first_flip = i;
      } else if (same_sign_finite && (d == exp_step || (std::min(dr, dg) < 2 * exp_step && d <= exp_step))) {
        if (p.rescaled++ == 0) p.first_rescaled = i;
      } else if (p.bad++ == 0) {
        p.first_bad = i;
      }
    }
    part[c] = p;
  });
  size_t flips = 0, rescaled = 0, bad = 0, first_bad = 0, first_flip = 0, first_rescaled = 0;
  for (const Part& p : part) {
    if (p.flips && flips == 0) first_flip = p.first_flip;
    if (p.rescaled && rescaled == 0) first_rescaled = p.first_rescaled;
    if (p.bad && bad == 0) first_bad = p.first_bad;
    flips += p.flips;
    rescaled += p.rescaled;
    bad += p.bad;
  }
  if (bad)
    return fmt::format("{}: {} of {} codes differ by more than one step; first at [{}]: got 0x{:02x}, default 0x{:02x}",
                       name, bad, n, first_bad, got[first_bad], ref[first_bad]);
  if (rescaled > allowed_rescaled)
    return fmt::format("{}: {} of {} codes differ by one exponent step (rescaled blocks; at most {} allowed); first at "
                       "[{}]: got 0x{:02x}, default 0x{:02x}",
                       name, rescaled, n, allowed_rescaled, first_rescaled, got[first_rescaled], ref[first_rescaled]);
  if (flips > allowed)
    return fmt::format("{}: {} one-step code flips (at most {} allowed); first at [{}]: got 0x{:02x}, default 0x{:02x}",
                       name, flips, allowed, first_flip, got[first_flip], ref[first_flip]);
  return "";
}

std::string compare_exact(const uint8_t* ref, const uint8_t* got, size_t n, size_t elem, const char* name) {
  for (size_t i = 0; i < n; ++i)
    if (std::memcmp(ref + i * elem, got + i * elem, elem) != 0) {
      int64_t r = 0, g = 0;
      std::memcpy(&r, ref + i * elem, std::min<size_t>(elem, 8));
      std::memcpy(&g, got + i * elem, std::min<size_t>(elem, 8));
      size_t count = 0;
      for (size_t j = i; j < n; ++j) count += std::memcmp(ref + j * elem, got + j * elem, elem) != 0;
      return fmt::format("{}: {} of {} elements differ; first at [{}]: got {}, default {}", name, count, n, i, g, r);
    }
  return "";
}

// ---- timing -------------------------------------------------------------------------------------------------------

std::string iso_utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

struct HostOutput {
  std::vector<uint8_t> bytes;
};

size_t output_bytes(const TensorRef& t) { return static_cast<size_t>(t.numel()) * dtype_size(t.dtype); }

void poison(const std::vector<TensorRef>& outputs) {
  for (const TensorRef& t : outputs)
    if (const size_t b = output_bytes(t))
      detail::check(detail::driver().cuMemsetD8Async(reinterpret_cast<CUdeviceptr>(t.data), kPoison, b, nullptr),
                    "cuMemsetD8Async (poison outputs)");
}

std::vector<HostOutput> download(const std::vector<TensorRef>& outputs) {
  detail::check(detail::driver().cuStreamSynchronize(nullptr), "cuStreamSynchronize");
  std::vector<HostOutput> out(outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i) {
    out[i].bytes.resize(output_bytes(outputs[i]));
    if (!out[i].bytes.empty()) detail::copy_to_host(out[i].bytes.data(), outputs[i].data, out[i].bytes.size());
  }
  return out;
}

TuningEntry make_entry(Runtime& rt, const Specialization& base, const Specialization& winner, int64_t tokens,
                       double median_us, double default_us, bool cold_code) {
  Specialization named = base;
  named.config = winner.config;
  TuningEntry e = to_entry(named, token_bucket(tokens));
  // The file format wants positive times; an event pair never measures below its 0.5 µs resolution anyway.
  e.median_us = std::max(median_us, 1e-3);
  e.default_us = std::max(default_us, 1e-3);
  e.provenance = current_provenance(rt);
  if (cold_code) e.provenance.timing = kTimingColdCode;
  return e;
}

}  // namespace

Provenance current_provenance(Runtime& rt) {
  const detail::DeviceInfo& dev = rt.impl().device();
  Provenance p;
  p.gpu = dev.name;
  p.sm_count = dev.sm_count;
  p.driver = detail::cuda_version_string(detail::driver().version);
  p.cuda = detail::cuda_version_string(CUDA_VERSION);
  p.nvrtc = detail::nvrtc_version();
  p.kiln_version = kVersion;
  p.date = iso_utc_now();
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "unknown");
  p.host = host;
  return p;
}

std::string compare_outputs(DType dtype, const void* ref_ptr, const void* got_ptr, size_t n) {
  const auto* ref = static_cast<const uint8_t*>(ref_ptr);
  const auto* got = static_cast<const uint8_t*>(got_ptr);
  const std::string name(dtype_name(dtype));
  if (same_bytes(ref, got, n * dtype_size(dtype))) return "";  // (what each rule below accepts; the common case)
  switch (dtype) {
    case DType::bf16:
      return compare_floats(
          n,
          [&](bool r, size_t i) {
            uint16_t b;
            std::memcpy(&b, (r ? ref : got) + 2 * i, 2);
            return static_cast<double>(bf16_value(b));
          },
          8e-3, 1.0 / 64, name.c_str());  // a config only reorders fp32 sums: ≤ 2 bf16 ulps per element
    case DType::f16:
      return compare_floats(
          n,
          [&](bool r, size_t i) {
            uint16_t h;
            std::memcpy(&h, (r ? ref : got) + 2 * i, 2);
            return static_cast<double>(f16_value(h));
          },
          2e-3, 1.0 / 512, name.c_str());
    case DType::f32:
      return compare_floats(
          n,
          [&](bool r, size_t i) {
            float f;
            std::memcpy(&f, (r ? ref : got) + 4 * i, 4);
            return static_cast<double>(f);
          },
          1e-5, 1e-4, name.c_str(), /*scales=*/true);  // (fp32 outputs include the quantizers' scales)
    case DType::e4m3:
      return compare_fp8(ref, got, n, name.c_str(), 0x7e, 8);
    case DType::e5m2:
      return compare_fp8(ref, got, n, name.c_str(), 0x7b, 4);
    default:
      return compare_exact(ref, got, n, dtype_size(dtype), name.c_str());
  }
}

size_t choose(const std::vector<CandidateResult>& c) {
  auto timed = [&](size_t i) { return c[i].ok() && c[i].us > 0; };
  if (c.empty() || !timed(0)) return 0;
  size_t best = 0;
  for (size_t i = 1; i < c.size(); ++i)
    if (timed(i) && c[i].us < c[best].us) best = i;
  const double d = c[0].us, must_beat = d - noise_band_us(d);
  if (best == 0 || c[best].us >= must_beat) return 0;  // a tie with the default goes to the default
  // Candidates within the band of the fastest are the same speed: take the earliest, so that runs agree.
  const double within = c[best].us + noise_band_us(c[best].us);
  for (size_t i = 1; i < c.size(); ++i)
    if (timed(i) && c[i].us <= within && c[i].us < must_beat) return i;
  return best;
}

size_t TuneResult::rejected() const {
  return static_cast<size_t>(std::count_if(candidates.begin(), candidates.end(), [](const CandidateResult& c) {
    return c.status.rfind("mismatch", 0) == 0 || c.status.rfind("error", 0) == 0;
  }));
}

bool tunable(const Specialization& s) {
  if (!s.family || !s.family->tune_instance || !s.family->search_space) return false;
  std::vector<Specialization> space;
  s.family->search_space(s, space);
  return space.size() > 1;
}

TuneResult tune_one(Runtime& rt, const Specialization& base, int64_t tokens, const TuneOptions& opts,
                    detail::L2Flusher& l2, Clock::time_point deadline) {
  const auto start = Clock::now();
  deadline = std::min(deadline, start + std::chrono::duration_cast<Clock::duration>(
                                            std::chrono::duration<double>(opts.spec_budget_s)));
  detail::TuningDepthScope tuning;  // ops the instance runs for other specializations never autotune
  rt.impl().bind_device();
  TuneResult r;
  r.base = base;
  r.tokens = tokens;
  const detail::FamilyDef& f = *base.family;
  auto finish = [&] {
    r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    return r;
  };
  if (!f.tune_instance || !f.search_space) {
    r.note = fmt::format("{} has nothing to tune", f.name);
    return finish();
  }

  BenchInstance inst;
  try {
    inst = f.tune_instance(rt, base, tokens);
  } catch (const std::exception& e) {
    r.note = fmt::format("error preparing the inputs: {}", e.what());
    return finish();
  }
  if (inst.outputs.empty()) {
    r.note = fmt::format("{}'s tune instance lists no outputs: candidates cannot be checked", f.name);
    return finish();
  }
  for (const TensorRef& t : inst.outputs)
    if (!t.is_contiguous()) {
      r.note = fmt::format("{}'s tune instance has a non-contiguous output", f.name);
      return finish();
    }

  // The default: the config the op picks by itself at this token count.
  Specialization def = base;
  try {
    detail::ForceConfigScope watch(base, /*observe=*/true);
    inst.run(nullptr);
    detail::check(detail::driver().cuStreamSynchronize(nullptr), "cuStreamSynchronize");
    if (watch.applied() == 0) {
      r.unused = true;
      r.note = "the op does not run this kernel for this shape on this GPU (it never asked for its config): "
               "nothing to tune";
      return finish();
    }
    def.config = watch.observed();
  } catch (const std::exception& e) {
    r.note = fmt::format("the default config failed: {}", e.what());
    return finish();
  }
  r.base = def;

  // Candidates: the default first, then the search space in its order.
  std::vector<Specialization> space;
  f.search_space(def, space);
  if (std::none_of(space.begin(), space.end(), [&](const Specialization& c) { return c.config == def.config; })) {
    // An entry naming it could never be loaded (tuning files must name a search-space config).
    r.note = fmt::format("{}'s default [{}] is not in its search space: not tuned", f.name, def.describe());
    return finish();
  }
  r.candidates.push_back({config_label(def), def, true});
  for (const Specialization& s : space)
    if (s.config != def.config) r.candidates.push_back({config_label(s), s});
  for (const InjectedCandidate& inj : opts.inject) {
    Specialization s = def;
    s.config = inj.config.config;
    CandidateResult c{inj.name, s};
    c.injected = true;
    r.candidates.push_back(std::move(c));
  }

  const int repeats = std::max(opts.repeats, 20);
  std::vector<HostOutput> reference;
  for (size_t i = 0; i < r.candidates.size(); ++i) {
    CandidateResult& c = r.candidates[i];
    if (i > 0 && Clock::now() > deadline) {
      c.status = "skipped: time budget";
      continue;
    }
    const InjectedCandidate* inj = c.injected ? &opts.inject[i - (r.candidates.size() - opts.inject.size())] : nullptr;
    std::function<void(Stream)> run;
    if (inj)
      run = [&, inj](Stream st) { inj->run(inst, st); };
    else
      run = inst.run;
    if (auto bad = opts.compile_errors.find(c.spec.key()); bad != opts.compile_errors.end()) {
      c.status = fmt::format("error: does not compile: {}", bad->second);
      if (i == 0) {
        r.note = fmt::format("the default config does not compile: {}", bad->second);
        return finish();
      }
      continue;
    }
    try {
      detail::ForceConfigScope force(c.spec);
      poison(inst.outputs);
      if (inst.restore) inst.restore(nullptr);
      run(nullptr);
      std::vector<HostOutput> got = download(inst.outputs);
      if (!inj && force.applied() == 0)
        throw Error(fmt::format("the op of {} did not pick its config through Runtime::Impl::tuned", f.name));
      if (i == 0) {
        reference = std::move(got);
      } else {
        for (size_t o = 0; o < got.size() && c.ok(); ++o) {
          const std::string why = compare_outputs(inst.outputs[o].dtype, reference[o].bytes.data(), got[o].bytes.data(),
                                                  static_cast<size_t>(inst.outputs[o].numel()));
          if (!why.empty()) c.status = fmt::format("mismatch: output {} {}", o, why);
        }
      }
      // Mismatches are timed too, so that a report shows what a wrong config would have "won".
      c.us = detail::median(detail::time_calls_us(run, nullptr, l2, opts.warmup, repeats));
    } catch (const std::exception& e) {
      c.status = fmt::format("error: {}", e.what());
      if (i == 0) {
        r.note = fmt::format("the default config failed: {}", e.what());
        return finish();
      }
    }
  }

  r.winner = choose(r.candidates);
  r.default_us = r.best_us = r.candidates[0].us;
  if (r.winner != 0) {
    // Confirmation: the default and the winner alternately, each call on a cold L2, so that drift over the run
    // (clocks, temperature) hits both alike.
    const CandidateResult& w = r.candidates[r.winner];
    const InjectedCandidate* inj =
        w.injected ? &opts.inject[r.winner - (r.candidates.size() - opts.inject.size())] : nullptr;
    std::vector<double> d_us, w_us;
    for (int k = 0; k < repeats; ++k) {
      {
        detail::ForceConfigScope force(r.candidates[0].spec);
        d_us.push_back(detail::time_calls_us(inst.run, nullptr, l2, k == 0 ? 2 : 0, 1)[0]);
      }
      {
        detail::ForceConfigScope force(w.spec);
        std::function<void(Stream)> run = inst.run;
        if (inj) run = [&, inj](Stream st) { inj->run(inst, st); };
        w_us.push_back(detail::time_calls_us(run, nullptr, l2, k == 0 ? 2 : 0, 1)[0]);
      }
    }
    const double dm = detail::median(d_us), wm = detail::median(w_us);
    r.default_us = dm;
    if (dm - wm <= noise_band_us(dm)) {
      r.note = fmt::format("{} measured {:.2f} µs vs the default's {:.2f} µs, but re-timed side by side {:.2f} vs "
                           "{:.2f} µs: within the noise band, kept the default",
                           w.label, w.us, r.candidates[0].us, wm, dm);
      r.winner = 0;
      r.best_us = dm;
    } else {
      r.best_us = wm;
    }
  }
  const size_t skipped = static_cast<size_t>(std::count_if(r.candidates.begin(), r.candidates.end(), [](const auto& c) {
    return c.status.rfind("skipped", 0) == 0;
  }));
  if (skipped)
    r.note += fmt::format("{}{} of {} candidates skipped (time budget {:.0f} s)", r.note.empty() ? "" : "; ", skipped,
                          r.candidates.size(), opts.spec_budget_s);
  r.entry = make_entry(rt, def, r.candidates[r.winner].spec, tokens, r.best_us, r.default_us, l2.cold_code());
  r.has_entry = true;
  return finish();
}

std::vector<Specialization> unique_tunable(const std::vector<Specialization>& specs) {
  std::vector<Specialization> out;
  std::vector<detail::Key128> seen;
  for (const Specialization& s : specs) {
    if (!tunable(s)) continue;
    const detail::Key128 k = shape_key(s);
    if (std::find(seen.begin(), seen.end(), k) != seen.end()) continue;  // a family may list one shape twice
    seen.push_back(k);
    out.push_back(s);
  }
  return out;
}

std::vector<TuneResult> tune(Runtime& rt, const std::vector<Specialization>& all_specs,
                             const std::vector<int64_t>& tokens, const TuneOptions& opts,
                             const std::function<void(const TuneResult&)>& on_result) {
  const std::vector<Specialization> specs = unique_tunable(all_specs);
  const auto start = Clock::now();
  const auto run_deadline =
      opts.run_budget_s > 0
          ? start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opts.run_budget_s))
          : Clock::time_point::max();
  auto& impl = rt.impl();
  impl.bind_device();

  // Every candidate of every specialization, compiled in parallel through the cache before anything is timed.
  std::vector<Specialization> all;
  for (const Specialization& s : specs) {
    if (!tunable(s)) continue;
    std::vector<Specialization> space;
    s.family->search_space(s, space);
    all.push_back(s);
    all.insert(all.end(), space.begin(), space.end());
  }
  std::vector<Specialization> unique;
  {
    std::vector<detail::Key128> seen;
    for (const Specialization& s : all) {
      const detail::Key128 k = s.key();
      if (std::find(seen.begin(), seen.end(), k) == seen.end()) {
        seen.push_back(k);
        unique.push_back(s);
      }
    }
  }
  // A candidate that fails to compile (a family's bug) is rejected, not fatal to the run.
  std::vector<std::string> errors;
  impl.ensure_all(unique, opts.compile_jobs, nullptr, nullptr, &errors);
  TuneOptions run_opts = opts;
  for (size_t i = 0; i < unique.size(); ++i)
    if (!errors[i].empty()) {
      const std::string first_line = errors[i].substr(0, errors[i].find('\n'));
      detail::log(LogLevel::warn, "tune: {} [{}] does not compile: {}", unique[i].family->name, unique[i].describe(),
          first_line);
      run_opts.compile_errors.emplace(unique[i].key(), first_line);
    }

  detail::L2Flusher l2(rt, nullptr);
  if (opts.cold_code) l2.set_cold_code(true, nullptr);
  std::vector<TuneResult> results;
  for (const Specialization& s : specs) {
    if (!tunable(s)) continue;
    for (int64_t m : tokens) {
      TuneResult r;
      if (Clock::now() > run_deadline) {
        r.base = s;
        r.tokens = m;
        r.note = fmt::format("skipped: run time budget of {:.0f} s spent", opts.run_budget_s);
      } else {
        try {
          r = tune_one(rt, s, m, run_opts, l2, run_deadline);
        } catch (const std::exception& e) {  // one broken family must not end the run
          r = TuneResult{};
          r.base = s;
          r.tokens = m;
          r.note = fmt::format("error: {}", e.what());
        }
      }
      if (on_result) on_result(r);
      results.push_back(std::move(r));
    }
  }
  return results;
}

}  // namespace kiln::tuner
