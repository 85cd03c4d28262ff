"""PyTorch baselines for the fp32 router GEMM (router_gemm_fp32_fwd / _bwd / _bwd_dx / _bwd_dw).

Forward: cuBLAS with bf16 operands and an fp32 output, `torch.mm(x, w.t(), out_dtype=torch.float32)` (the issue's
19.7 us reference). Backward: dx = (g @ w.float()).bf16() and dw = g.t() @ x.float() in fp32 (TF32 off, so this is
full fp32 math on fp32 copies of the operands, the accuracy kiln matches); the same math under torch.compile."""
import torch
from common import row

T = 8192


def fwd(x, w):
    return torch.mm(x, w.t(), out_dtype=torch.float32)


def dx_fn(g, w):
    return (g @ w.float()).to(torch.bfloat16)


def dw_fn(g, x):
    return g.t() @ x.float()


def bwd(g, x, w):
    return dx_fn(g, w), dw_fn(g, x)


def cases():
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for K in (2048, 7168):
        shape = f"T={T} K={K} E=256"
        x = torch.randn(T, K, device="cuda", dtype=torch.bfloat16)
        w = (torch.randn(256, K, device="cuda") * 0.02).to(torch.bfloat16)
        g = torch.randn(T, 256, device="cuda") * 1e-4
        rows.append(row("router_gemm_fp32_fwd", shape, lambda: fwd(x, w), lambda f=torch.compile(fwd): f(x, w)))
        rows.append(row("router_gemm_fp32_bwd", shape, lambda: bwd(g, x, w),
                        lambda f=torch.compile(bwd): f(g, x, w)))
        if K == 2048:
            rows.append(row("router_gemm_fp32_bwd_dx", shape, lambda: dx_fn(g, w),
                            lambda f=torch.compile(dx_fn): f(g, w)))
            rows.append(row("router_gemm_fp32_bwd_dw", shape, lambda: dw_fn(g, x),
                            lambda f=torch.compile(dw_fn): f(g, x)))
    return rows
