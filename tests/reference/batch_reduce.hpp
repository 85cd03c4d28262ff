// tests/reference/batch_reduce.hpp — CPU reference (double) of the list reductions: Σ|x|, Σx², max|x|, zero count.
// Semantics: shared/spec/linghe-kernels.md §9, §10 and include/kiln/ops/batch_reduce.hpp.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace kiln::ref {

enum class ListReduce { sum_abs, sum_sq, max_abs, count_zero };

// Over every value of every list entry (values as the kernel reads them, already in fp32). Sums in double (pairwise
// per tensor, so the reference itself is accurate for billions of elements); max|x| is NaN if any value is NaN;
// count_zero counts ±0 and never NaN.
double list_reduce(const std::vector<std::span<const float>>& xs, ListReduce op);

}  // namespace kiln::ref
