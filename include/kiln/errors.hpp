// kiln/errors.hpp — every error kiln raises derives from kiln::Error.
//
// Messages name the op, the argument, what was expected and what was given, e.g.
//   rms_norm_block_quant_fwd: argument 'x': expected dtype bf16, got fp32
#pragma once
#include <stdexcept>
#include <string>

namespace kiln {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// No driver, no device, a failed driver call, or a pointer that is not device memory.
class DeviceError : public Error { public: using Error::Error; };
// A tensor's rank, dims or strides do not match what the op needs.
class ShapeMismatchError : public Error { public: using Error::Error; };
// A tensor's dtype is not one the op supports.
class UnsupportedDtypeError : public Error { public: using Error::Error; };
// Any other bad argument: null or misaligned pointer, bad option value, int32 overflow.
class InvalidArgument : public Error { public: using Error::Error; };
// On-disk cache problems that cannot be repaired (e.g. KILN_REQUIRE_PREWARMED and a miss).
class CacheError : public Error { public: using Error::Error; };

// NVRTC rejected a rendered kernel. Carries the compiler log and where the rendered source was written.
class CompileError : public Error {
 public:
  CompileError(const std::string& what, std::string log, std::string source_path)
      : Error(what), log_(std::move(log)), source_path_(std::move(source_path)) {}
  const std::string& log() const noexcept { return log_; }
  const std::string& source_path() const noexcept { return source_path_; }

 private:
  std::string log_;
  std::string source_path_;
};

}  // namespace kiln
