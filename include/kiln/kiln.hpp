// kiln/kiln.hpp — everything a trainer needs.
#pragma once
#include "kiln/dtype.hpp"
#include "kiln/errors.hpp"
#include "kiln/model.hpp"
#include "kiln/ops/qk_norm_half_rope.hpp"
#include "kiln/ops/moe.hpp"
#include "kiln/ops/rms_norm.hpp"
#include "kiln/ops/group_rms_norm_gate.hpp"
#include "kiln/ops/rms_norm_rope.hpp"
#include "kiln/ops/router_gemm.hpp"
#include "kiln/runtime.hpp"
#include "kiln/tensor.hpp"
#include "kiln/version.hpp"
