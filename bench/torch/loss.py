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


def uniform_list():
    return [4096 * 8192] * 32


def ep_list():  # as ops/bench/batch_reduce.cpp: 1423 fp32 tensors, 11.5 GB
    v = []
    for _ in range(20):
        v += [2048, 2048, 128, 128, 3072 * 2048, 2048 * 2048, 256 * 2048, 1024 * 2048, 2048 * 512]
        v += [1024 * 2048, 2048 * 512] * 31
    return v + [157184 * 2048, 2048, 157184 * 2048]


def reduce_rows():
    rows = []

    def sq_sum(xs):  # Σx² over the list, as clip_grad_norm_ forms it
        return torch.stack(torch._foreach_norm(xs, 2)).pow(2).sum()

    def count_zero(xs):
        return sum((x == 0).sum() for x in xs)

    for name, sizes in (("32x4096x8192 fp32", uniform_list()), ("ep-list 1423 fp32 11.4GB", ep_list())):
        flat = torch.randn(sum((n + 63) // 64 * 64 for n in sizes), device="cuda") * 1e-3
        xs, off = [], 0
        for n in sizes:
            xs.append(flat[off:off + n])
            off += (n + 63) // 64 * 64
        # torch.compile of a function over 1423 list inputs compiles for minutes (a guard and a reduction per
        # tensor): compiled only for the 32-tensor list; NaN marks "not measured".
        compiled = len(sizes) <= 64
        cs, cz = (torch.compile(sq_sum), torch.compile(count_zero)) if compiled else (None, None)
        rows.append(dict(op="batch_sum_with_ord", shape=f"{name} ord=2", eager_us=time_us(lambda: sq_sum(xs)),
                         compile_us=time_us(lambda: cs(xs)) if compiled else float("nan")))
        rows.append(dict(op="batch_count_zero", shape=name, eager_us=time_us(lambda: count_zero(xs)),
                         compile_us=time_us(lambda: cz(xs)) if compiled else float("nan")))
        del xs, flat
        torch.cuda.empty_cache()
    return rows


def cases():
    return ce_rows() + reduce_rows()
