// runtime/family.hpp — how a kernel family describes itself to the runtime.
//
// A family's host recipe (ops/<family>.cpp) defines one static FamilyDef and registers it with
// KILN_REGISTER_FAMILY. The runtime never names a family: it renders, compiles and enumerates through this table.
#pragma once
#include <string>
#include <vector>

#include "kiln/model.hpp"
#include "runtime/bench.hpp"
#include "runtime/specialization.hpp"

namespace kiln::detail {

struct FamilyDef {
  const char* name;                       // "rms_norm_block_quant"; also the template file: templates/kiln/<name>.cuh
  std::vector<const char*> kernels;       // kernel variants of the family ("fwd", "bwd", …)
  std::vector<const char*> param_names;   // compile-time parameters, in Specialization::params order
  std::vector<const char*> config_names;  // tile-config fields, in Specialization::config order

  // NVRTC source for one specialization, and the C++ name expression of its __global__ function
  // (NVRTC instantiates the template from the expression and reports the lowered name).
  void (*render)(const Specialization& s, std::string& source, std::string& name_expression);

  // Dynamic shared memory the kernel needs at its largest launch (set as the function's max dynamic smem at load).
  int (*dynamic_smem_bytes)(const Specialization& s);

  // The specializations `model` needs on `arch` (kiln prewarm).
  void (*enumerate)(const ModelConfig& model, Arch arch, std::vector<Specialization>& out);

  // The tile configs the tuner may try for `s` (its kernel, params and arch; s.config ignored), already pruned to
  // those valid for the shape and arch (divisibility, cluster size, shared memory, register budget). The heuristic
  // default is always among them. A config outside this set is invalid (a tuning file naming one is rejected).
  // Null: the family has nothing to tune.
  void (*search_space)(const Specialization& s, std::vector<Specialization>& out) = nullptr;

  // A runnable instance of `s` (kernel and params; s.config ignored) at `tokens` rows, for the tuner: inputs allocated
  // and filled with random non-zero data, run(stream) calls the public op (which picks its config through
  // Runtime::Impl::tuned, where the tuner forces the candidate), outputs lists the tensors to compare between
  // configs. Null: the family has nothing to tune.
  BenchInstance (*tune_instance)(Runtime& rt, const Specialization& s, int64_t tokens) = nullptr;

  // Stable 64-bit id derived from `name` (filled in by registration).
  uint64_t id = 0;
};

// The element type kiln's templates name for a dtype parameter (a DType stored in Specialization::params), for
// render: kiln::bf16, kiln::f16, else float.
const char* cxx_type(int64_t dtype);

// Whether s.config is one of its family's search-space points (true for families with no search space).
bool in_search_space(const Specialization& s);

// Every registered family, in registration order.
const std::vector<FamilyDef*>& families();
const FamilyDef* find_family(std::string_view name);
void register_family(FamilyDef& def);

}  // namespace kiln::detail

// Registers a family from its host recipe's translation unit. `var` is a FamilyDef with static storage.
// Registration functions are collected by CMake (generated list), so static-library users keep every family.
#define KILN_REGISTER_FAMILY(ident, var) \
  extern "C" void kiln_register_family_##ident() { ::kiln::detail::register_family(var); }
