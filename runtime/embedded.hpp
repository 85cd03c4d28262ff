// runtime/embedded.hpp — files compiled into the library (kiln's templates, model presets).
#pragma once
#include <cstddef>
#include <span>

namespace kiln::detail {

struct EmbeddedFile {
  const char* name;  // "kiln/rms_norm_block_quant.cuh", "ling-mini-2.0.json"
  const char* data;
  size_t size;
};

std::span<const EmbeddedFile> embedded_templates();
std::span<const EmbeddedFile> embedded_presets();

}  // namespace kiln::detail
