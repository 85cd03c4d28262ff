// Model configs: the built-in presets, Hugging Face config.json files, and the errors malformed configs raise.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>

#include "kiln/errors.hpp"
#include "kiln/model.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using kiln::test::TempDir;


// The message of the InvalidArgument `fn` throws ("" and a test failure if it throws nothing or something else).
template <typename Fn>
std::string invalid_argument_message(Fn&& fn) {
  try {
    fn();
  } catch (const kiln::InvalidArgument& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected kiln::InvalidArgument, got: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected kiln::InvalidArgument, nothing was thrown";
  return "";
}

// parse_model_json(json, file) must throw InvalidArgument naming `field`; returns the message.
std::string rejected(const char* json, const char* field, const char* file = "cfg.json") {
  const std::string msg = invalid_argument_message([&] { kiln::parse_model_json(json, file); });
  EXPECT_NE(msg.find(field), std::string::npos) << msg;
  return msg;
}

// Abridged from Qwen/Qwen3-30B-A3B's config.json (every key kiln reads, and a sample of those it ignores).
constexpr const char* kQwen3MoeConfig = R"({
  "architectures": ["Qwen3MoeForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "decoder_sparse_step": 1,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 6144,
  "max_position_embeddings": 40960,
  "max_window_layers": 48,
  "mlp_only_layers": [],
  "model_type": "qwen3_moe",
  "moe_intermediate_size": 768,
  "norm_topk_prob": true,
  "num_attention_heads": 32,
  "num_experts": 128,
  "num_experts_per_tok": 8,
  "num_hidden_layers": 48,
  "num_key_value_heads": 4,
  "output_router_logits": false,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000.0,
  "router_aux_loss_coef": 0.001,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
})";

// Abridged from deepseek-ai/DeepSeek-V3's config.json: MLA (no head_dim), n_routed_experts / n_shared_experts.
constexpr const char* kDeepSeekV3Config = R"({
  "architectures": ["DeepseekV3ForCausalLM"],
  "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config"},
  "first_k_dense_replace": 3,
  "hidden_act": "silu",
  "hidden_size": 7168,
  "intermediate_size": 18432,
  "kv_lora_rank": 512,
  "max_position_embeddings": 163840,
  "model_type": "deepseek_v3",
  "moe_intermediate_size": 2048,
  "moe_layer_freq": 1,
  "n_group": 8,
  "n_routed_experts": 256,
  "n_shared_experts": 1,
  "norm_topk_prob": true,
  "num_attention_heads": 128,
  "num_experts_per_tok": 8,
  "num_hidden_layers": 61,
  "num_key_value_heads": 128,
  "q_lora_rank": 1536,
  "qk_nope_head_dim": 128,
  "qk_rope_head_dim": 64,
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                          "weight_block_size": [128, 128]},
  "rms_norm_eps": 1e-06,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "type": "yarn"},
  "routed_scaling_factor": 2.5,
  "scoring_func": "sigmoid",
  "topk_group": 4,
  "topk_method": "noaux_tc",
  "torch_dtype": "bfloat16",
  "v_head_dim": 128,
  "vocab_size": 129280
})";

constexpr const char* kMinimalPreset = R"({"name": "tiny", "hidden_size": 256, "num_attention_heads": 4,
  "vocab_size": 1000})";

TEST(ModelPresets, NamesListTheBuiltInPresets) {
  const std::vector<std::string> names = kiln::preset_names();
  for (const char* expected : {"ling-mini-2.0", "deepseek-v3", "qwen3-30b-a3b"})
    EXPECT_NE(std::find(names.begin(), names.end(), expected), names.end()) << expected;
  for (const std::string& name : names) EXPECT_FALSE(name.ends_with(".json")) << name;
}

// The fields of a preset the families size their kernels from, as the published config.json files give them.
struct PresetWant {
  const char* name;
  int hidden_size, num_attention_heads, num_key_value_heads, head_dim, num_experts, num_experts_per_tok,
      num_shared_experts, moe_intermediate_size, intermediate_size, vocab_size;
};
void expect_preset(const PresetWant& w) {
  SCOPED_TRACE(w.name);
  const kiln::ModelConfig m = kiln::load_model(w.name);
  EXPECT_EQ(m.name, w.name);
  EXPECT_EQ(m.hidden_size, w.hidden_size);
  EXPECT_EQ(m.num_attention_heads, w.num_attention_heads);
  EXPECT_EQ(m.num_key_value_heads, w.num_key_value_heads);
  EXPECT_EQ(m.head_dim, w.head_dim);
  EXPECT_EQ(m.num_experts, w.num_experts);
  EXPECT_EQ(m.num_experts_per_tok, w.num_experts_per_tok);
  EXPECT_EQ(m.num_shared_experts, w.num_shared_experts);
  EXPECT_EQ(m.moe_intermediate_size, w.moe_intermediate_size);
  EXPECT_EQ(m.intermediate_size, w.intermediate_size);
  EXPECT_EQ(m.vocab_size, w.vocab_size);
}

TEST(ModelPresets, LingMini2) {
  expect_preset({"ling-mini-2.0", 2048, 16, 4, 128, 256, 8, 1, 512, 5120, 157184});
  EXPECT_DOUBLE_EQ(kiln::load_model("ling-mini-2.0").rms_norm_eps, 1e-6);
}

TEST(ModelPresets, DeepSeekV3) { expect_preset({"deepseek-v3", 7168, 128, 128, 128, 256, 8, 1, 2048, 18432, 129280}); }

TEST(ModelPresets, Qwen3_30B_A3B) {
  expect_preset({"qwen3-30b-a3b", 2048, 32, 4, 128, 128, 8, 0, 768, 6144, 151936});
}

TEST(ModelPresets, PresetFileOnDiskLoadsLikeTheEmbeddedOne) {
  const kiln::ModelConfig embedded = kiln::load_model("ling-mini-2.0");
  const kiln::ModelConfig file = kiln::load_model(KILN_SOURCE_DIR "/presets/ling-mini-2.0.json");
  EXPECT_EQ(file.name, embedded.name);
  EXPECT_EQ(file.hidden_size, embedded.hidden_size);
  EXPECT_EQ(file.num_experts, embedded.num_experts);
  EXPECT_EQ(file.vocab_size, embedded.vocab_size);
}

TEST(ModelPresets, UnknownNameListsThePresets) {
  const std::string msg = invalid_argument_message([] { kiln::load_model("no-such-model"); });
  EXPECT_NE(msg.find("no-such-model"), std::string::npos) << msg;
  EXPECT_NE(msg.find("ling-mini-2.0"), std::string::npos) << msg;
}

TEST(ModelHuggingFace, Qwen3MoeConfigMatchesThePreset) {
  TempDir dir;
  const kiln::ModelConfig m = kiln::load_model(dir.write("config.json", kQwen3MoeConfig).string());
  const kiln::ModelConfig preset = kiln::load_model("qwen3-30b-a3b");
  EXPECT_EQ(m.name, "qwen3_moe");  // no "_name_or_path": model_type names it
  EXPECT_EQ(m.hidden_size, preset.hidden_size);
  EXPECT_EQ(m.num_attention_heads, preset.num_attention_heads);
  EXPECT_EQ(m.num_key_value_heads, preset.num_key_value_heads);
  EXPECT_EQ(m.head_dim, preset.head_dim);
  EXPECT_EQ(m.intermediate_size, preset.intermediate_size);
  EXPECT_EQ(m.moe_intermediate_size, preset.moe_intermediate_size);
  EXPECT_EQ(m.num_experts, preset.num_experts);
  EXPECT_EQ(m.num_experts_per_tok, preset.num_experts_per_tok);
  EXPECT_EQ(m.num_shared_experts, 0);
  EXPECT_EQ(m.vocab_size, preset.vocab_size);
  EXPECT_DOUBLE_EQ(m.rms_norm_eps, 1e-6);
}

TEST(ModelHuggingFace, DeepSeekV3ConfigMatchesThePreset) {
  TempDir dir;
  dir.write("config.json", kDeepSeekV3Config);
  // A model directory stands for the config.json inside it.
  const kiln::ModelConfig m = kiln::load_model(dir.path().string());
  const kiln::ModelConfig preset = kiln::load_model("deepseek-v3");
  EXPECT_EQ(m.name, "deepseek_v3");
  EXPECT_EQ(m.hidden_size, preset.hidden_size);
  EXPECT_EQ(m.num_attention_heads, preset.num_attention_heads);
  EXPECT_EQ(m.num_key_value_heads, preset.num_key_value_heads);
  EXPECT_EQ(m.head_dim, 128);  // MLA: v_head_dim, not hidden/heads = 56
  EXPECT_EQ(m.num_experts, 256);
  EXPECT_EQ(m.num_shared_experts, 1);
  EXPECT_EQ(m.num_experts_per_tok, 8);
  EXPECT_EQ(m.moe_intermediate_size, preset.moe_intermediate_size);
  EXPECT_EQ(m.intermediate_size, preset.intermediate_size);
  EXPECT_EQ(m.vocab_size, preset.vocab_size);
}

TEST(ModelHuggingFace, NameOrPathWinsOverModelType) {
  const kiln::ModelConfig m = kiln::parse_model_json(
      R"({"_name_or_path": "inclusionAI/Ling-mini-2.0", "model_type": "bailing_moe", "hidden_size": 2048,
          "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 128, "num_experts": 256,
          "num_shared_experts": 1, "num_experts_per_tok": 8, "moe_intermediate_size": 512,
          "intermediate_size": 5120, "vocab_size": 157184, "rms_norm_eps": 1e-06})",
      "ling.json");
  EXPECT_EQ(m.name, "inclusionAI/Ling-mini-2.0");
  EXPECT_EQ(m.num_shared_experts, 1);
}

TEST(ModelHuggingFace, DenseDefaults) {
  // Llama-style: no head_dim (hidden / heads), no experts; null means "not set".
  const kiln::ModelConfig m = kiln::parse_model_json(
      R"({"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": null,
          "intermediate_size": 14336, "vocab_size": 128256, "rms_norm_eps": 1e-05})",
      "llama.json");
  EXPECT_EQ(m.head_dim, 128);
  EXPECT_EQ(m.num_key_value_heads, 32);
  EXPECT_EQ(m.num_experts, 0);
  EXPECT_EQ(m.num_experts_per_tok, 0);
  EXPECT_EQ(m.moe_intermediate_size, 0);
  EXPECT_DOUBLE_EQ(m.rms_norm_eps, 1e-5);
}

TEST(ModelHuggingFace, MixtralExpertsUseIntermediateSize) {
  const kiln::ModelConfig m = kiln::parse_model_json(
      R"({"model_type": "mixtral", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
          "intermediate_size": 14336, "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 32000})",
      "mixtral.json");
  EXPECT_EQ(m.num_experts, 8);
  EXPECT_EQ(m.num_experts_per_tok, 2);
  EXPECT_EQ(m.moe_intermediate_size, 14336);
}

TEST(ModelKilnFormat, OptionalFieldsDefault) {
  const kiln::ModelConfig m = kiln::parse_model_json(kMinimalPreset, "tiny.json");
  EXPECT_EQ(m.name, "tiny");
  EXPECT_EQ(m.head_dim, 64);
  EXPECT_EQ(m.num_key_value_heads, 4);
  EXPECT_EQ(m.num_experts, 0);
  EXPECT_DOUBLE_EQ(m.rms_norm_eps, 1e-6);
}

TEST(ModelErrors, MalformedJsonNamesTheOrigin) {
  const std::string msg = invalid_argument_message([] { kiln::parse_model_json("{\"hidden_size\": 2048,", "bad.json"); });
  EXPECT_NE(msg.find("bad.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("JSON"), std::string::npos) << msg;
}

TEST(ModelErrors, EmptyFileIsMalformed) {
  TempDir dir;
  const std::string path = dir.write("empty.json", "").string();
  const std::string msg = invalid_argument_message([&] { kiln::load_model(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
}

TEST(ModelErrors, NotAnObject) {
  const std::string msg = invalid_argument_message([] { kiln::parse_model_json("[1, 2]", "list.json"); });
  EXPECT_NE(msg.find("list.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("object"), std::string::npos) << msg;
}

TEST(ModelErrors, MissingHiddenSizeNamesTheField) {
  const std::string msg = invalid_argument_message(
      [] { kiln::parse_model_json(R"({"model_type": "x", "num_attention_heads": 8, "vocab_size": 100})", "cfg.json"); });
  EXPECT_NE(msg.find("hidden_size"), std::string::npos) << msg;
  EXPECT_NE(msg.find("cfg.json"), std::string::npos) << msg;
}

TEST(ModelErrors, MissingFieldInAFileNamesThePath) {
  TempDir dir;
  const std::string path = dir.write("config.json", R"({"model_type": "x", "hidden_size": 512})").string();
  const std::string msg = invalid_argument_message([&] { kiln::load_model(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("num_attention_heads"), std::string::npos) << msg;
}

TEST(ModelErrors, NegativeValueNamesTheField) {
  const std::string msg = rejected(
      R"({"model_type": "x", "hidden_size": 512, "num_attention_heads": 8, "vocab_size": 100, "num_experts": -4})",
      "num_experts", "neg.json");
  EXPECT_NE(msg.find("-4"), std::string::npos) << msg;
}

TEST(ModelErrors, NonIntegerValuesNameTheField) {
  for (const char* value : {"2048.5", "\"2048\"", "true", "[2048]", "1e12"}) {
    const std::string text = std::string(R"({"model_type": "x", "num_attention_heads": 8, "vocab_size": 100, )") +
                             R"("hidden_size": )" + value + "}";
    const std::string msg = invalid_argument_message([&] { kiln::parse_model_json(text, "cfg.json"); });
    EXPECT_NE(msg.find("hidden_size"), std::string::npos) << value << ": " << msg;
  }
}

TEST(ModelErrors, AliasSpellingIsNamedInTheError) {
  rejected(
      R"({"model_type": "x", "hidden_size": 512, "num_attention_heads": 8, "vocab_size": 100,
            "n_routed_experts": 1.5})",
      "n_routed_experts");
}

TEST(ModelErrors, BadEpsilon) {
  rejected(
      R"({"model_type": "x", "hidden_size": 512, "num_attention_heads": 8, "vocab_size": 100, "rms_norm_eps": 0})",
      "rms_norm_eps");
}

TEST(ModelErrors, InconsistentHeadsAndExperts) {
  rejected(
      R"({"model_type": "x", "hidden_size": 512, "num_attention_heads": 8, "num_key_value_heads": 3,
            "vocab_size": 100})",
      "num_key_value_heads");

  rejected(
      R"({"model_type": "x", "hidden_size": 512, "num_attention_heads": 8, "vocab_size": 100,
            "num_experts": 4, "num_experts_per_tok": 8})",
      "num_experts_per_tok");
}

TEST(ModelErrors, KilnFormatRejectsUnknownFields) {
  // A typo in a preset must not silently fall back to a default.
  const std::string msg = rejected(
      R"({"name": "t", "hidden_size": 512, "num_attention_heads": 8, "vocab_size": 100, "num_expert": 64})",
      "num_expert", "t.json");
  EXPECT_NE(msg.find("t.json"), std::string::npos) << msg;
}

// ---- MoE routing fields ----------------------------------------------------------------------------------------

void expect_routing(const kiln::ModelConfig& m, const char* score, int n_group, int topk_group, double scale,
                    bool norm, bool bias) {
  EXPECT_EQ(m.scoring_func, score) << m.name;
  EXPECT_EQ(m.n_group, n_group) << m.name;
  EXPECT_EQ(m.topk_group, topk_group) << m.name;
  EXPECT_DOUBLE_EQ(m.routed_scaling_factor, scale) << m.name;
  EXPECT_EQ(m.norm_topk_prob, norm) << m.name;
  EXPECT_EQ(m.expert_bias, bias) << m.name;
}

TEST(ModelRouting, Presets) {
  expect_routing(kiln::load_model("ling-mini-2.0"), "sigmoid", 8, 4, 2.5, true, true);
  expect_routing(kiln::load_model("deepseek-v3"), "sigmoid", 8, 4, 2.5, true, true);
  expect_routing(kiln::load_model("qwen3-30b-a3b"), "softmax", 1, 1, 1.0, true, false);
}

TEST(ModelRouting, HuggingFaceConfigsMatchThePresets) {
  expect_routing(kiln::parse_model_json(kDeepSeekV3Config, "ds.json"), "sigmoid", 8, 4, 2.5, true, true);
  expect_routing(kiln::parse_model_json(kQwen3MoeConfig, "qwen.json"), "softmax", 1, 1, 1.0, true, false);
  // BailingMoeV2 (Ling 2.0) spells the score function and the bias switch its own way.
  const kiln::ModelConfig ling = kiln::parse_model_json(
      R"({"model_type": "bailing_moe", "hidden_size": 2048, "num_attention_heads": 16, "num_key_value_heads": 4,
          "head_dim": 128, "num_experts": 256, "num_experts_per_tok": 8, "vocab_size": 157184,
          "score_function": "sigmoid", "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5,
          "norm_topk_prob": true, "moe_router_enable_expert_bias": true})",
      "ling.json");
  expect_routing(ling, "sigmoid", 8, 4, 2.5, true, true);
  // A config that stores the correction bias itself.
  const kiln::ModelConfig withbias = kiln::parse_model_json(
      R"({"model_type": "x", "hidden_size": 512, "num_attention_heads": 8, "vocab_size": 100, "num_experts": 16,
          "num_experts_per_tok": 2, "e_score_correction_bias": [0.0]})",
      "cfg.json");
  expect_routing(withbias, "softmax", 1, 1, 1.0, false, true);
}

TEST(ModelRouting, DefaultsWithoutRoutingFields) {
  expect_routing(kiln::parse_model_json(kMinimalPreset, "tiny.json"), "softmax", 1, 1, 1.0, false, false);
}

TEST(ModelRouting, Errors) {
  auto msg = [](const char* extra) {
    return invalid_argument_message([&] {
      kiln::parse_model_json(std::string(R"({"name": "t", "hidden_size": 512, "num_attention_heads": 8,
          "vocab_size": 100, "num_experts": 64, "num_experts_per_tok": 8, )") + extra + "}",
                             "t.json");
    });
  };
  std::string m = msg(R"("scoring_func": "relu")");
  EXPECT_NE(m.find("scoring_func"), std::string::npos) << m;
  m = msg(R"("n_group": 6)");
  EXPECT_NE(m.find("n_group"), std::string::npos) << m;
  m = msg(R"("n_group": 8, "topk_group": 9)");
  EXPECT_NE(m.find("topk_group"), std::string::npos) << m;
  m = msg(R"("n_group": 16, "topk_group": 1)");  // 4 experts per group < top-8
  EXPECT_NE(m.find("num_experts_per_tok"), std::string::npos) << m;
  m = msg(R"("routed_scaling_factor": -1)");
  EXPECT_NE(m.find("routed_scaling_factor"), std::string::npos) << m;
  m = msg(R"("norm_topk_prob": 1)");
  EXPECT_NE(m.find("norm_topk_prob"), std::string::npos) << m;
  m = msg(R"("expert_bias": "yes")");
  EXPECT_NE(m.find("expert_bias"), std::string::npos) << m;
}

TEST(ModelErrors, KilnFormatNeedsANonEmptyName) {
  const std::string msg = invalid_argument_message([] {
    kiln::parse_model_json(R"({"name": "", "hidden_size": 512, "num_attention_heads": 8, "vocab_size": 100})",
                           "t.json");
  });
  EXPECT_NE(msg.find("name"), std::string::npos) << msg;
}

// gpt-oss-120b: MXFP4 experts (fp4_block_scale_moe), routed by a softmax over the selected logits (method 1).
TEST(ModelPresets, GptOss120bHasAnFp4Moe) {
  expect_preset({"gpt-oss-120b", 2880, 64, 8, 64, 128, 4, 0, 2880, 2880, 201088});
  const kiln::ModelConfig m = kiln::load_model("gpt-oss-120b");
  EXPECT_EQ(m.fp4_moe, "mxfp4");
  EXPECT_EQ(m.fp4_moe_hidden, "bf16");
  EXPECT_EQ(m.fp4_moe_activation, "swiglu");
  EXPECT_EQ(m.fp4_moe_routing, 1);
  EXPECT_EQ(m.fp4_moe_local_experts, 0);
  EXPECT_EQ(kiln::load_model("deepseek-v3").fp4_moe, "");  // a trained (bf16 / fp8) model has none
}

// Abridged from openai/gpt-oss-120b's config.json: num_local_experts, experts_per_token, quantization_config.
TEST(ModelHuggingFace, GptOssMxfp4ConfigSetsTheFp4Moe) {
  const kiln::ModelConfig m = kiln::parse_model_json(R"({
    "model_type": "gpt_oss", "hidden_size": 2880, "num_attention_heads": 64, "num_key_value_heads": 8,
    "head_dim": 64, "intermediate_size": 2880, "num_local_experts": 128, "experts_per_token": 4,
    "vocab_size": 201088, "rms_norm_eps": 1e-05, "swiglu_limit": 7.0,
    "quantization_config": {"modules_to_not_convert": ["model.layers.*.self_attn"], "quant_method": "mxfp4"}
  })", "config.json");
  EXPECT_EQ(m.num_experts, 128);
  EXPECT_EQ(m.num_experts_per_tok, 4);
  EXPECT_EQ(m.moe_intermediate_size, 2880);
  EXPECT_EQ(m.fp4_moe, "mxfp4");
  EXPECT_EQ(m.fp4_moe_routing, 1);
  const kiln::ModelConfig n = kiln::parse_model_json(R"({
    "hidden_size": 7168, "num_attention_heads": 128, "vocab_size": 129280, "n_routed_experts": 256,
    "num_experts_per_tok": 8, "moe_intermediate_size": 2048, "head_dim": 128,
    "quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4"}
  })", "config.json");
  EXPECT_EQ(n.fp4_moe, "nvfp4");
  EXPECT_EQ(n.fp4_moe_routing, -1);  // derived from the routing fields
}

TEST(ModelErrors, Fp4MoeFieldsNameTheField) {
  auto cfg = [](const char* extra) {
    return std::string(R"({"name": "t", "hidden_size": 512, "num_attention_heads": 8, "vocab_size": 100, )"
                       R"("num_experts": 16, "num_experts_per_tok": 2, )") +
           extra + "}";
  };
  rejected(cfg(R"("fp4_moe": "fp8")").c_str(), "fp4_moe");
  rejected(cfg(R"("fp4_moe": "mxfp4", "fp4_moe_hidden": "fp16")").c_str(), "fp4_moe_hidden");
  rejected(cfg(R"("fp4_moe": "mxfp4", "fp4_moe_activation": "gelu")").c_str(), "fp4_moe_activation");
  rejected(cfg(R"("fp4_moe": "mxfp4", "fp4_moe_routing": 9)").c_str(), "fp4_moe_routing");
  rejected(cfg(R"("fp4_moe": "mxfp4", "fp4_moe_local_experts": 17)").c_str(), "fp4_moe_local_experts");
  rejected(R"({"name": "t", "hidden_size": 512, "num_attention_heads": 8, "vocab_size": 100, "fp4_moe": "nvfp4"})",
           "fp4_moe");
}

}  // namespace
