// kiln/group_rms_norm_gate_args.h — kernel argument blocks of group RMSNorm × sigmoid gate forward/backward (template
// and host). Token (b, s) of every tensor is the row at base + b·*_sb + s·*_ss (elements; last dim dense), so the
// transposed [S, B, dim] and the plain [B, S, dim] layouts (and strided slices of either) are the same kernel.
#pragma once

namespace kiln {

// Tokens are walked in the order of gate's layout: t = s·B + b when seq_major (transpose: gate, out, dy, dgate
// sequential, x and dx as B interleaved sequential streams), else t = b·S + s.
struct GroupNormGateFwdArgs {
  const void* x; long long x_sb, x_ss;
  const void* gate; long long g_sb, g_ss;
  const void* w;
  void* out; long long o_sb, o_ss;
  int M;  // B·S tokens
  int B, S;
  int seq_major;
  float eps;
};

struct GroupNormGateBwdArgs {
  const void* dy; long long dy_sb, dy_ss;  // out's layout
  const void* x; long long x_sb, x_ss;
  const void* gate; long long g_sb, g_ss;
  const void* w;
  void* dx; long long dx_sb, dx_ss;        // x's layout
  void* dgate; long long dg_sb, dg_ss;     // gate's layout
  float* partial;  // [gridDim.x, dim] fp32: one dweight slice per CTA column (CTA (x, seg) writes seg's channels)
  float* dw;       // dweight [dim] or [dim/G] fp32: written by the kernel itself when it reduces in-kernel (FUSE)
  int M;
  int B, S;
  int seq_major;
  float eps;
  unsigned long long* trace;  // staged backward, measurement only (null in the ops): kGateTraceSlots per CTA
};

// Trace slots of the staged backward (GroupNormGateBwdArgs::trace; CTA y·gridDim.x + x at slot base
// (y·gridDim.x + x)·kGateTraceSlots): globaltimer ns at start and end, the SM, and clock64 values at the CTA's phases;
// per warp w (< 16) at kGateTraceWarp + w·kGateTraceWarpSlots: its first item landed, the item at a quarter, half and
// three quarters of its items landed, its last item computed (stores issued), its last item landed.
enum : int {
  kGateTraceStartNs = 0, kGateTraceStartClk, kGateTraceSm, kGateTraceEndNs, kGateTraceEndClk, kGateTraceStreamsDone,
  kGateTracePartial, kGateTraceBarrier, kGateTraceReduced, kGateTraceItems,
  kGateTraceWarp = 16, kGateTraceWarpSlots = 6, kGateTraceSlots = kGateTraceWarp + 16 * kGateTraceWarpSlots
};

}  // namespace kiln
