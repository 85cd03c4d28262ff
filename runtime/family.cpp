#include "runtime/family.hpp"

#include "kiln/dtype.hpp"

#include <xxhash.h>

#include <cstring>
#include <mutex>

namespace kiln::detail {

void register_builtin_families();  // generated from ops/*.cpp (cmake/KilnEmbed.cmake)

namespace {
std::vector<FamilyDef*>& table() {
  static std::vector<FamilyDef*> t;
  return t;
}
}  // namespace

void register_family(FamilyDef& def) {
  def.id = XXH3_64bits(def.name, std::strlen(def.name));
  table().push_back(&def);
}

const std::vector<FamilyDef*>& families() {
  static std::once_flag once;
  std::call_once(once, [] { register_builtin_families(); });
  return table();
}

const char* cxx_type(int64_t dtype) {
  switch (static_cast<DType>(dtype)) {
    case DType::bf16: return "kiln::bf16";
    case DType::f16: return "kiln::f16";
    default: return "float";
  }
}

bool in_search_space(const Specialization& s) {
  if (!s.family || !s.family->search_space) return true;
  std::vector<Specialization> space;
  s.family->search_space(s, space);
  for (const Specialization& c : space)
    if (c.config == s.config) return true;
  return false;
}

const FamilyDef* find_family(std::string_view name) {
  for (FamilyDef* f : families())
    if (name == f->name) return f;
  return nullptr;
}

}  // namespace kiln::detail
