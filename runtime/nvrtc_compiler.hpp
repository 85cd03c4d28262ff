// runtime/nvrtc_compiler.hpp — NVRTC: rendered source → cubin for a named arch.
#pragma once
#include <string>
#include <vector>

#include "runtime/specialization.hpp"

namespace kiln::detail {

struct CompileRequest {
  std::string source;           // the rendered instantiation (includes kiln's embedded headers)
  std::string name_expression;  // e.g. "kiln::rms_norm_block_quant_kernel<2048, 2, 1, 2, 8, 256>"
  Arch arch;
  bool lineinfo = false;
  bool want_ptx = false;        // KILN_DUMP=ptx
};

struct CompileOutput {
  std::string cubin;
  std::string ptx;            // only if want_ptx
  std::string lowered_name;   // the symbol to load
  std::string log;
  double ms = 0;
};

// Compile flags kiln always passes (part of the cache key).
const std::vector<std::string>& base_compile_flags();
// NVRTC version as "13.0".
std::string nvrtc_version();
// The CUDA toolkit include dir ($KILN_CUDA_HOME, $CUDA_HOME or /usr/local/cuda, + /include) and a fingerprint of it.
const std::string& cuda_include_dir();
const std::string& toolkit_fingerprint();
// xxh3-128 hex over every embedded kiln header (name + bytes).
const std::string& embedded_headers_hash();

// Throws CompileError (with the log; `failed_source_path` is where the caller should say the source was written).
CompileOutput nvrtc_compile(const CompileRequest& req, const std::string& failed_source_path);

}  // namespace kiln::detail
