"""PyTorch baselines for the SiLU + block-quant families (silu_block_quant_fwd/bwd,
batch_weighted_silu_block_quant_fwd/bwd): the same math (fp32 SwiGLU, power-of-two 1x128 scales, both layouts; the
batched op per expert segment), eager and torch.compile, at kiln's bench shapes."""
import torch
from common import time_us


def quant(t):
    """1x128 blocks along the last dim of t [R, C] (C % 128 == 0), power-of-two scales: codes [R, C], scales [R, C/128]."""
    R, C = t.shape
    tb = t.view(R, C // 128, 128)
    s = torch.exp2(torch.ceil(torch.log2(torch.clamp(tb.abs().amax(-1) / 448.0, min=1e-30))))
    q = (tb / s[..., None]).clamp(-448, 448).to(torch.float8_e4m3fn).view(R, C)
    return q, s


def quant_both(y):
    """Row-wise codes + [W/128, M] scales, and transposed codes [W, M] + [ceil(M/128), W] scales (zero-padded tokens)."""
    M, W = y.shape
    q, s = quant(y)
    pad = (-M) % 128
    yt = torch.nn.functional.pad(y.t(), (0, pad))  # [W, M + pad]
    qt, st = quant(yt)
    return q, s.t().contiguous(), qt[:, :M].contiguous(), st.t().contiguous()


def silu_fwd(x):
    n = x.shape[1] // 2
    xf = x.float()
    a, b = xf[:, :n], xf[:, n:]
    return quant_both(a * torch.sigmoid(a) * b)


def silu_grads(g, x, w=None):
    n = x.shape[1] // 2
    xf, gf = x.float(), g.float()
    a, b = xf[:, :n], xf[:, n:]
    sig = torch.sigmoid(a)
    gw = gf if w is None else gf * w[:, None]
    dx1 = gw * b * sig * (1 + a * (1 - sig))
    dx2 = gw * a * sig
    return torch.cat([dx1, dx2], 1), a * sig * b


def silu_bwd(g, x):
    dx, _ = silu_grads(g, x)
    return quant_both(dx)


def batch_fwd(x, w, splits):
    n = x.shape[1] // 2
    xf = x.float()
    a, b = xf[:, :n], xf[:, n:]
    y = a * torch.sigmoid(a) * b * w[:, None]
    return [quant_both(ye) for ye in torch.split(y, splits)]


def batch_bwd(g, x, w, splits):
    dx, sb = silu_grads(g, x, w)
    dw = (sb * g.float()).sum(1)
    return [quant_both(d) for d in torch.split(dx, splits)], dw


def cases():
    rows = []
    M, n = 16384, 512
    x = torch.randn(M, 2 * n, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(M, n, device="cuda", dtype=torch.bfloat16)
    cf, cb = torch.compile(silu_fwd), torch.compile(silu_bwd)
    rows.append(dict(op="silu_block_quant_fwd", shape=f"M={M} n={n} mode=2 round_scale=1",
                     eager_us=time_us(lambda: silu_fwd(x)), compile_us=time_us(lambda: cf(x))))
    rows.append(dict(op="silu_block_quant_bwd", shape=f"M={M} n={n} round_scale=1",
                     eager_us=time_us(lambda: silu_bwd(g, x)), compile_us=time_us(lambda: cb(g, x))))
    del x, g

    splits = [2048 + 16 * ((97 * e + 31) % 257) for e in range(32)]  # as ops/bench/silu.cpp
    M, n = sum(splits), 1024
    x = torch.randn(M, 2 * n, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(M, n, device="cuda", dtype=torch.bfloat16)
    w = torch.rand(M, device="cuda", dtype=torch.float32) * 0.95 + 0.05
    cf = torch.compile(lambda x, w: batch_fwd(x, w, splits))
    cb = torch.compile(lambda g, x, w: batch_bwd(g, x, w, splits))
    rows.append(dict(op="batch_weighted_silu_block_quant_fwd", shape=f"E=32 M={M} n={n} mode=2 round_scale=1",
                     eager_us=time_us(lambda: batch_fwd(x, w, splits)), compile_us=time_us(lambda: cf(x, w))))
    rows.append(dict(op="batch_weighted_silu_block_quant_bwd", shape=f"E=32 M={M} n={n} round_scale=1",
                     eager_us=time_us(lambda: batch_bwd(g, x, w, splits)), compile_us=time_us(lambda: cb(g, x, w))))
    return rows
