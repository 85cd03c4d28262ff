"""PyTorch baselines for the loss-side families: softmax cross-entropy (softmax_cross_entropy_fwd / _bwd / _fused) and
the list reductions (batch_sum_with_ord, batch_count_zero). Shapes and op strings match ops/bench/*.cpp."""
import torch
import torch.nn.functional as F
from common import time_us

M = 8192


def ce_rows():
    rows = []
    for V in (157184, 151936, 129280):
        x = torch.randn(M, V, device="cuda", dtype=torch.bfloat16) * 2
        y = torch.randint(0, V, (M,), device="cuda")
        fwd = lambda x, y: F.cross_entropy(x, y, reduction="none")
        cf = torch.compile(fwd)
        rows.append(dict(op="softmax_cross_entropy_fwd", shape=f"M={M} V={V} bf16",
                         eager_us=time_us(lambda: fwd(x, y)), compile_us=time_us(lambda: cf(x, y))))
        del x
        torch.cuda.empty_cache()

    V = 157184
    x = (torch.randn(M, V, device="cuda", dtype=torch.bfloat16) * 2).requires_grad_()
    y = torch.randint(0, V, (M,), device="cuda")
    g = torch.randn(M, device="cuda") * 1e-4

    # Backward only. Eager: autograd through F.cross_entropy (graph built once, retained). Compiled: the same math
    # from saved statistics (what kiln's backward computes), dlogits in bf16.
    loss = F.cross_entropy(x, y, reduction="none")
    eager_bwd = lambda: torch.autograd.grad(loss, x, g, retain_graph=True)
    with torch.no_grad():
        xf = x.float()
        m = xf.max(-1).values
        s = torch.exp(xf - m[:, None]).sum(-1)
        del xf

    def bwd(x, y, m, s, g):
        p = torch.exp(x.float() - m[:, None]) / s[:, None]
        p = p - F.one_hot(y, x.shape[-1]).float()
        return (p * g[:, None]).to(x.dtype)

    cb = torch.compile(bwd)
    xd = x.detach()
    rows.append(dict(op="softmax_cross_entropy_bwd", shape=f"M={M} V={V} bf16 inplace",
                     eager_us=time_us(eager_bwd), compile_us=time_us(lambda: cb(xd, y, m, s, g))))
    del loss
    torch.cuda.empty_cache()

    # Forward + backward of the mean loss (a training step's view).
    def step(fn):
        def run():
            x.grad = None
            fn(x, y).backward()
        return run

    mean_ce = lambda x, y: F.cross_entropy(x, y)
    cm = torch.compile(mean_ce)
    rows.append(dict(op="softmax_cross_entropy_fused", shape=f"M={M} V={V} bf16 inplace mean",
                     eager_us=time_us(step(mean_ce)), compile_us=time_us(step(cm))))
    return rows


def cases():
    return ce_rows()
