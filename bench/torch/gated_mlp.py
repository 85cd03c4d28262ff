"""PyTorch baselines for the fused gated MLP expansion (fused_gated_mlp): act(x @ Wg.T) * (x @ Wu.T) with
act = F.silu, or F.gelu(approximate='none') (kiln's exact erf GELU) for the gelu row, eager and torch.compile, at
kiln's bench shapes and op / shape strings (ops/bench/gated_mlp.cpp). x ~ N(0, 1) [M, H], weights ~ N(0, 1/H) [I, H]
in the row's dtype. fp32 rows: TF32 matmuls (allow_tf32, what kiln's fp32 path and triton_ops' tl.dot compute);
bf16 / fp16 rows: cuBLAS with fp32 accumulation. Eager runs two GEMMs and the elementwise kernels over two [M, I]
intermediates; torch.compile may fuse the epilogue, not the GEMMs."""
import torch
import torch.nn.functional as F
from common import row

SHAPES = [  # (M, H, I, dtype name, activation), as in the bench rows
    (8192, 2048, 5120, "bf16", "silu"),  # Ling-mini-2.0 dense MLP
    (8192, 7168, 2048, "bf16", "silu"),  # DeepSeek-V3 shared expert
    (8192, 2048, 5120, "f16", "gelu"),
    (8192, 2048, 5120, "f32", "silu"),
    (128, 2048, 5120, "bf16", "silu"),   # small M
]
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def gated_mlp_silu(x, wg, wu):
    return F.silu(x @ wg.t()) * (x @ wu.t())


def gated_mlp_gelu(x, wg, wu):
    return F.gelu(x @ wg.t(), approximate="none") * (x @ wu.t())


FNS = {"silu": gated_mlp_silu, "gelu": gated_mlp_gelu}


def cases():
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 row: TF32 products, as kiln's (restored below: the other
    rows = []                                     # modules' fp32 baselines keep their own setting)
    try:
        rows = _cases()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return rows


def _cases():
    rows = []
    for M, H, I, tn, act in SHAPES:
        dt = DTYPES[tn]
        x = torch.randn(M, H, device="cuda", dtype=dt)
        wg = (torch.randn(I, H, device="cuda") * H ** -0.5).to(dt)
        wu = (torch.randn(I, H, device="cuda") * H ** -0.5).to(dt)
        fn = FNS[act]
        cf = torch.compile(fn, dynamic=False)  # specialized per shape (no automatic dynamic shapes across rows)
        rows.append(row("fused_gated_mlp", f"M={M} H={H} I={I} {tn} {act}", lambda: fn(x, wg, wu),
                        lambda: cf(x, wg, wu)))
        del x, wg, wu
        torch.cuda.empty_cache()
    return rows
