// kiln/kiln.hpp — everything a trainer needs.
#pragma once
#include "kiln/dtype.hpp"
#include "kiln/errors.hpp"
#include "kiln/model.hpp"
#include "kiln/ops/batch_reduce.hpp"
#include "kiln/ops/rms_norm.hpp"
#include "kiln/ops/softmax_cross_entropy.hpp"
#include "kiln/runtime.hpp"
#include "kiln/tensor.hpp"
#include "kiln/version.hpp"
