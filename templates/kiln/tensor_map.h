// kiln/tensor_map.h — a CUtensorMap as kernel argument blocks carry it: 128 opaque bytes, 128-byte aligned (as cuda.h
// declares it). The host encodes it with cuTensorMapEncodeTiled; a kernel reads it from its __grid_constant__
// parameter (kiln/mbarrier.cuh's TMA copies take its address). Shared by every family's *_args.h that uses TMA.
#pragma once

namespace kiln {

struct alignas(128) TensorMap {
  unsigned long long opaque[16];
};

}  // namespace kiln
