// runtime/model.cpp — model configs: kiln's embedded presets and JSON files (kiln's preset format or a Hugging Face
// config.json).
//
// The two formats share most key names (kiln took Hugging Face's), so one reader handles both. kiln's format is
// recognised by its "name" key and read strictly — an unknown key is an error, because in a file we write a typo
// would otherwise silently become a default. A config.json carries dozens of keys kiln has no use for, so there
// unknown keys are ignored, and the spellings different model families use for the same quantity are accepted.
#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>

#include "kiln/errors.hpp"
#include "kiln/model.hpp"
#include "runtime/embedded.hpp"

namespace kiln {
namespace {

using nlohmann::json;

constexpr std::string_view kPresetExtension = ".json";

// Every key kiln's preset format may hold: "name" plus the fields of ModelConfig.
constexpr const char* kKilnKeys[] = {
    "name", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
    "moe_intermediate_size", "num_experts", "num_experts_per_tok", "num_shared_experts", "vocab_size",
    "rms_norm_eps", "scoring_func", "n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob", "expert_bias",
    "fp4_moe", "fp4_moe_hidden", "fp4_moe_activation", "fp4_moe_routing", "fp4_moe_local_experts",
};

[[noreturn]] void fail(const std::string& origin, const std::string& message) {
  throw InvalidArgument(fmt::format("model config {}: {}", origin, message));
}

// Reads ModelConfig fields out of one parsed document, naming the origin and the key in every error.
class FieldReader {
 public:
  FieldReader(const json& doc, const std::string& origin, bool kiln_format)
      : doc_(doc), origin_(origin), kiln_format_(kiln_format) {}

  // The first of `keys` present with a non-null value (config.json files write null for "not set"), or nullptr.
  // kiln's own format only knows the first spelling.
  const json* find(std::initializer_list<const char*> keys, const char** found_key = nullptr) const {
    for (const char* key : keys) {
      auto it = doc_.find(key);
      if (it != doc_.end() && !it->is_null()) {
        if (found_key) *found_key = key;
        return &*it;
      }
      if (kiln_format_) break;
    }
    return nullptr;
  }

  std::optional<int> integer(std::initializer_list<const char*> keys) const {
    const char* key = *keys.begin();
    const json* v = find(keys, &key);
    if (!v) return std::nullopt;
    // is_number_integer() is false for 2048.0 and "2048": a config with those is malformed, not approximately right.
    bool ok = v->is_number_integer();
    if (ok && v->is_number_unsigned()) ok = v->get<uint64_t>() <= static_cast<uint64_t>(INT_MAX);
    if (ok && !v->is_number_unsigned()) ok = v->get<int64_t>() >= 0 && v->get<int64_t>() <= INT_MAX;
    if (!ok) fail(origin_, fmt::format("field '{}': expected a non-negative integer, got {}", key, v->dump()));
    return static_cast<int>(v->get<int64_t>());
  }

  int required_integer(std::initializer_list<const char*> keys) const {
    std::optional<int> v = integer(keys);
    if (!v) fail(origin_, fmt::format("missing required field '{}'", *keys.begin()));
    if (*v == 0) fail(origin_, fmt::format("field '{}': must be positive, got 0", *keys.begin()));
    return *v;
  }

  std::optional<double> number(const char* key) const {
    const json* v = find({key});
    if (!v) return std::nullopt;
    if (!v->is_number() || !std::isfinite(v->get<double>()) || v->get<double>() <= 0)
      fail(origin_, fmt::format("field '{}': expected a positive number, got {}", key, v->dump()));
    return v->get<double>();
  }

  std::optional<bool> boolean(const char* key) const {
    const json* v = find({key});
    if (!v) return std::nullopt;
    if (!v->is_boolean()) fail(origin_, fmt::format("field '{}': expected true or false, got {}", key, v->dump()));
    return v->get<bool>();
  }

  std::optional<std::string> string(const char* key) const {
    const json* v = find({key});
    if (!v) return std::nullopt;
    if (!v->is_string() || v->get<std::string>().empty())
      fail(origin_, fmt::format("field '{}': expected a non-empty string, got {}", key, v->dump()));
    return v->get<std::string>();
  }

 private:
  const json& doc_;
  const std::string& origin_;
  bool kiln_format_;
};

void reject_unknown_kiln_keys(const json& doc, const std::string& origin) {
  for (const auto& [key, value] : doc.items()) {
    if (std::find(std::begin(kKilnKeys), std::end(kKilnKeys), key) == std::end(kKilnKeys))
      fail(origin, fmt::format("unknown field '{}' (kiln preset format: \"name\" and the fields of ModelConfig)", key));
  }
}

void validate_routing(const ModelConfig& m, const std::string& origin);
void validate_fp4_moe(const ModelConfig& m, const std::string& origin);

// Relations between fields that every later enumeration relies on.
void validate(const ModelConfig& m, const std::string& origin) {
  if (m.num_key_value_heads == 0 || m.num_attention_heads % m.num_key_value_heads != 0)
    fail(origin, fmt::format("num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                             m.num_attention_heads, m.num_key_value_heads));
  if (m.head_dim == 0) fail(origin, "field 'head_dim': must be positive, got 0");
  if (m.num_experts > 0 && (m.num_experts_per_tok == 0 || m.num_experts_per_tok > m.num_experts))
    fail(origin, fmt::format("num_experts_per_tok ({}) must be between 1 and num_experts ({})", m.num_experts_per_tok,
                             m.num_experts));
  validate_routing(m, origin);
  validate_fp4_moe(m, origin);
}

void validate_routing(const ModelConfig& m, const std::string& origin) {
  if (m.topk_group > m.n_group)
    fail(origin, fmt::format("topk_group ({}) must not exceed n_group ({})", m.topk_group, m.n_group));
  if (m.num_experts > 0 && m.num_experts % m.n_group != 0)
    fail(origin, fmt::format("n_group ({}) does not divide num_experts ({})", m.n_group, m.num_experts));
  if (m.num_experts > 0 && m.num_experts_per_tok > m.topk_group * (m.num_experts / m.n_group))
    fail(origin, fmt::format("num_experts_per_tok ({}) exceeds the experts of topk_group ({}) groups of {}",
                             m.num_experts_per_tok, m.topk_group, m.num_experts / m.n_group));
}

bool one_of(const std::string& v, std::initializer_list<const char*> allowed) {
  for (const char* a : allowed)
    if (v == a) return true;
  return false;
}

void validate_fp4_moe(const ModelConfig& m, const std::string& origin) {
  if (!one_of(m.fp4_moe, {"", "nvfp4", "mxfp4"}))
    fail(origin, fmt::format("field 'fp4_moe': expected \"nvfp4\" or \"mxfp4\", got \"{}\"", m.fp4_moe));
  if (!one_of(m.fp4_moe_hidden, {"bf16", "nvfp4", "mxfp8", "e4m3"}))
    fail(origin, fmt::format("field 'fp4_moe_hidden': expected \"bf16\", \"nvfp4\", \"mxfp8\" or \"e4m3\", got \"{}\"",
                             m.fp4_moe_hidden));
  if (!one_of(m.fp4_moe_activation, {"swiglu", "geglu", "relu2", "identity"}))
    fail(origin, fmt::format("field 'fp4_moe_activation': expected \"swiglu\", \"geglu\", \"relu2\" or \"identity\", "
                             "got \"{}\"",
                             m.fp4_moe_activation));
  if (m.fp4_moe_routing < -1 || m.fp4_moe_routing > 8)
    fail(origin, fmt::format("field 'fp4_moe_routing': expected a routing method 0 … 8 (or −1), got {}",
                             m.fp4_moe_routing));
  if (m.fp4_moe_local_experts < 0 || m.fp4_moe_local_experts > m.num_experts)
    fail(origin, fmt::format("field 'fp4_moe_local_experts': expected 0 … num_experts ({}), got {}", m.num_experts,
                             m.fp4_moe_local_experts));
  if (!m.fp4_moe.empty() && m.num_experts <= 0)
    fail(origin, "field 'fp4_moe': an FP4 MoE needs num_experts > 0");
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& s : items) out += (out.empty() ? "" : ", ") + s;
  return out;
}

const detail::EmbeddedFile* find_preset(std::string_view name) {
  for (const detail::EmbeddedFile& f : detail::embedded_presets()) {
    std::string_view file = f.name;
    if (file.size() == name.size() + kPresetExtension.size() && file.starts_with(name) &&
        file.ends_with(kPresetExtension))
      return &f;
  }
  return nullptr;
}

}  // namespace

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const detail::EmbeddedFile& f : detail::embedded_presets()) {
    std::string_view file = f.name;
    if (file.ends_with(kPresetExtension)) names.emplace_back(file.substr(0, file.size() - kPresetExtension.size()));
  }
  std::sort(names.begin(), names.end());
  return names;
}

ModelConfig parse_model_json(const std::string& text, const std::string& origin) {
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::parse_error& e) {
    fail(origin, fmt::format("not valid JSON: {}", e.what()));
  }
  if (!doc.is_object()) fail(origin, fmt::format("expected a JSON object, got {}", doc.type_name()));

  const bool kiln_format = doc.contains("name");
  if (kiln_format) reject_unknown_kiln_keys(doc, origin);
  const FieldReader r(doc, origin, kiln_format);

  ModelConfig m;
  if (kiln_format) {
    m.name = *r.string("name");
  } else {
    // "_name_or_path" is what transformers writes on save; hub configs often have only "model_type".
    std::optional<std::string> name = r.string("_name_or_path");
    if (!name) name = r.string("model_type");
    m.name = name ? *name : origin;
  }

  m.hidden_size = r.required_integer({"hidden_size"});
  m.num_attention_heads = r.required_integer({"num_attention_heads"});
  m.vocab_size = r.required_integer({"vocab_size"});
  // Without a separate count, every head has its own K/V (multi-head attention), as in transformers.
  m.num_key_value_heads = r.integer({"num_key_value_heads"}).value_or(m.num_attention_heads);

  // MLA configs (DeepSeek-V2/V3) have no head_dim; their value head width is what attention's output projection and
  // the per-head kernels see, whereas hidden/heads (56 for DeepSeek-V3) matches no tensor of the model.
  if (std::optional<int> head_dim = r.integer({"head_dim", "v_head_dim"})) {
    m.head_dim = *head_dim;
  } else {
    if (m.hidden_size % m.num_attention_heads != 0)
      fail(origin, fmt::format("no 'head_dim', and hidden_size ({}) is not a multiple of num_attention_heads ({})",
                               m.hidden_size, m.num_attention_heads));
    m.head_dim = m.hidden_size / m.num_attention_heads;
  }

  m.intermediate_size = r.integer({"intermediate_size"}).value_or(0);
  m.num_experts = r.integer({"num_experts", "n_routed_experts", "num_local_experts"}).value_or(0);
  m.num_experts_per_tok = r.integer({"num_experts_per_tok", "experts_per_token"}).value_or(0);
  m.num_shared_experts = r.integer({"num_shared_experts", "n_shared_experts"}).value_or(0);
  // Mixtral-style configs size each expert with intermediate_size and have no moe_intermediate_size.
  std::optional<int> moe_intermediate = r.integer({"moe_intermediate_size"});
  m.moe_intermediate_size = moe_intermediate ? *moe_intermediate
                            : (!kiln_format && m.num_experts > 0) ? m.intermediate_size
                                                                  : 0;
  m.rms_norm_eps = r.number("rms_norm_eps").value_or(1e-6);

  // MoE routing.
  const char* score_key = "scoring_func";
  std::optional<std::string> score = r.string("scoring_func");
  if (!score && !kiln_format && (score = r.string("score_function"))) score_key = "score_function";
  if (score) {
    if (*score != "softmax" && *score != "sigmoid")
      fail(origin, fmt::format("field '{}': expected \"softmax\" or \"sigmoid\", got \"{}\"", score_key, *score));
    m.scoring_func = *score;
  }
  m.n_group = std::max(1, r.integer({"n_group"}).value_or(1));
  m.topk_group = std::max(1, r.integer({"topk_group"}).value_or(1));
  m.routed_scaling_factor = r.number("routed_scaling_factor").value_or(1.0);
  m.norm_topk_prob = r.boolean("norm_topk_prob").value_or(false);
  if (kiln_format) {
    m.expert_bias = r.boolean("expert_bias").value_or(false);
  } else {
    const std::optional<std::string> method = r.string("topk_method");
    m.expert_bias = (method && *method == "noaux_tc") || r.boolean("moe_router_enable_expert_bias").value_or(false) ||
                    doc.contains("e_score_correction_bias");
  }

  // FP4 MoE inference.
  if (kiln_format) {
    m.fp4_moe = r.string("fp4_moe").value_or("");
    m.fp4_moe_hidden = r.string("fp4_moe_hidden").value_or("bf16");
    m.fp4_moe_activation = r.string("fp4_moe_activation").value_or("swiglu");
    m.fp4_moe_routing = r.integer({"fp4_moe_routing"}).value_or(-1);
    m.fp4_moe_local_experts = r.integer({"fp4_moe_local_experts"}).value_or(0);
  } else if (auto q = doc.find("quantization_config"); q != doc.end() && q->is_object()) {
    auto str = [&](const char* k) -> std::string {
      auto it = q->find(k);
      return it != q->end() && it->is_string() ? it->get<std::string>() : std::string();
    };
    if (str("quant_method") == "mxfp4") m.fp4_moe = "mxfp4";
    if (str("quant_algo") == "NVFP4" || str("quant_method") == "nvfp4") m.fp4_moe = "nvfp4";
    // gpt-oss routes by a softmax over the selected logits (method 1, Renormalize) and gates with SwiGLU.
    const std::optional<std::string> type = r.string("model_type");
    if (!m.fp4_moe.empty() && type && *type == "gpt_oss") m.fp4_moe_routing = 1;
  }

  validate(m, origin);
  return m;
}

ModelConfig load_model(const std::string& preset_or_path) {
  // An exact preset name is a preset; anything else is a path, so an edited copy "ling-mini-2.0.json" is read
  // from disk rather than shadowed by the built-in one.
  if (const detail::EmbeddedFile* preset = find_preset(preset_or_path))
    return parse_model_json(std::string(preset->data, preset->size), "preset '" + preset_or_path + "'");

  namespace fs = std::filesystem;
  fs::path path(preset_or_path);
  std::error_code ec;
  if (fs::is_directory(path, ec)) path /= "config.json";  // a Hugging Face model directory
  if (!fs::exists(path, ec))
    throw InvalidArgument(fmt::format("unknown model '{}': not a preset ({}) and no such file", preset_or_path,
                                      join(preset_names())));

  std::ifstream in(path, std::ios::binary);
  std::string text;
  if (in) text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  if (!in && !in.eof())
    throw InvalidArgument(fmt::format("cannot read model file '{}': {}", path.string(), std::strerror(errno)));
  return parse_model_json(text, path.string());
}

}  // namespace kiln
