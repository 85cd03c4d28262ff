"""PyTorch baselines for the RMSNorm families (rms_norm_block_quant_fwd, rms_norm_fwd, rms_norm_bwd)."""
import torch
from common import time_us


def rms_block_quant(x, w, mode: int, eps: float = 1e-6):
    xf = x.float()
    r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    y = xf * r * w.float()
    M, N = y.shape

    def quant(t):  # 1x128 blocks along the last dim, power-of-two scales
        R, C = t.shape
        tb = t.view(R, C // 128, 128)
        s = torch.exp2(torch.ceil(torch.log2(torch.clamp(tb.abs().amax(-1) / 448.0, min=1e-30))))
        q = (tb / s[..., None]).clamp(-448, 448).to(torch.float8_e4m3fn).view(R, C)
        return q, s

    outs = []
    if mode in (0, 2):
        q, s = quant(y)
        outs += [q, s.t().contiguous(), r]
    if mode in (1, 2):
        outs += list(quant(y.t().contiguous()))
    return outs


def rms_fwd(x, w, eps=1e-6):
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), w, eps)


def rms_bwd(g, x, w, eps=1e-6):
    xf, gf, wf = x.float(), g.float(), w.float()
    r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    dot = (xf * gf * wf).sum(-1, keepdim=True)
    dx = r * gf * wf - r.pow(3) * xf * dot / x.shape[-1]
    dw = (xf * gf * r).sum(0)
    return dx.to(x.dtype), dw


def cases():
    rows = []
    M = 8192
    for N, mode in [(2048, 2), (7168, 2), (2048, 0), (7168, 0)]:
        x = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(N, device="cuda", dtype=torch.bfloat16) * 0.5
        comp = torch.compile(lambda x, w, mode=mode: rms_block_quant(x, w, mode))
        rows.append(dict(op="rms_norm_block_quant_fwd", shape=f"M={M} N={N} mode={mode} round_scale=1",
                         eager_us=time_us(lambda: rms_block_quant(x, w, mode)), compile_us=time_us(lambda: comp(x, w))))
    for N in (2048, 7168):
        x = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
        g = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(N, device="cuda", dtype=torch.bfloat16) * 0.5
        cf, cb = torch.compile(rms_fwd), torch.compile(rms_bwd)
        rows.append(dict(op="rms_norm_fwd", shape=f"M={M} N={N} bf16", eager_us=time_us(lambda: rms_fwd(x, w)),
                         compile_us=time_us(lambda: cf(x, w))))
        rows.append(dict(op="rms_norm_bwd", shape=f"M={M} N={N} bf16", eager_us=time_us(lambda: rms_bwd(g, x, w)),
                         compile_us=time_us(lambda: cb(g, x, w))))
    return rows
