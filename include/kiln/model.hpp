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
  // FP4 block-scaled MoE inference (fp4_block_scale_moe, ../shared/spec/fp4-moe.md): set when the routed experts run
  // on FP4 weights, so that prewarm compiles the layer's kernels. kiln preset keys of the same names; a Hugging Face
  // config's quantization_config with quant_method "mxfp4" (gpt-oss) sets "mxfp4", quant_algo "NVFP4" sets "nvfp4".
  std::string fp4_moe;                         // "" (not FP4), "nvfp4" or "mxfp4": the expert weights' format
  std::string fp4_moe_hidden = "bf16";         // the hidden states' format: "bf16", "nvfp4", "mxfp8" or "e4m3"
  std::string fp4_moe_activation = "swiglu";   // "swiglu", "geglu", "relu2" or "identity"
  int fp4_moe_routing = -1;                    // fp4-moe.md §3 method 0 … 8; −1: from the routing fields above
  int fp4_moe_local_experts = 0;               // experts a rank holds under expert parallelism (0: num_experts)
};

// Built-in presets: "ling-mini-2.0", "deepseek-v3", "qwen3-30b-a3b", "gpt-oss-120b".
std::vector<std::string> preset_names();
// A preset by name, or a JSON file: kiln's own preset format or a Hugging Face config.json. Throws InvalidArgument.
ModelConfig load_model(const std::string& preset_or_path);
// Parses JSON text (kiln preset or HF config.json). `origin` names the source in error messages.
ModelConfig parse_model_json(const std::string& text, const std::string& origin);

}  // namespace kiln
