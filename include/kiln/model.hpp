// kiln/model.hpp — a model's shapes, from which kiln enumerates the specializations the model needs.
#pragma once
#include <string>
#include <vector>

namespace kiln {

struct ModelConfig {
  std::string name;
  int hidden_size = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;   // query groups
  int head_dim = 0;
  int intermediate_size = 0;     // dense MLP
  int moe_intermediate_size = 0; // per expert
  int num_experts = 0;
  int num_experts_per_tok = 0;   // top-k
  int num_shared_experts = 0;
  int vocab_size = 0;
  double rms_norm_eps = 1e-6;
  // MoE routing (optional; the defaults are plain softmax top-k). Hugging Face names: scoring_func / score_function,
  // n_group, topk_group, routed_scaling_factor, norm_topk_prob; expert_bias from topk_method "noaux_tc",
  // moe_router_enable_expert_bias or an e_score_correction_bias entry.
  std::string scoring_func = "softmax";  // "softmax" or "sigmoid"
  int n_group = 1;                       // expert groups (DeepSeek-V3 grouped top-k); 1 = no grouping
  int topk_group = 1;                    // groups kept per token
  double routed_scaling_factor = 1.0;
  bool norm_topk_prob = false;           // renormalize the selected probabilities
  bool expert_bias = false;              // a selection-only expert bias (aux-loss-free balancing)
};

// Built-in presets: "ling-mini-2.0", "deepseek-v3", "qwen3-30b-a3b".
std::vector<std::string> preset_names();
// A preset by name, or a JSON file: kiln's own preset format or a Hugging Face config.json. Throws InvalidArgument.
ModelConfig load_model(const std::string& preset_or_path);
// Parses JSON text (kiln preset or HF config.json). `origin` names the source in error messages.
ModelConfig parse_model_json(const std::string& text, const std::string& origin);

}  // namespace kiln
