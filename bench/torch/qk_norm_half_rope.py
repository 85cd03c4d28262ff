"""PyTorch baselines for qk-norm + half RoPE (qk_norm_half_rope_fwd / _bwd): split the interleaved qkv
[S, B, (H+2h)·D], RMSNorm per q/k head (fp32), rotate-half RoPE on the first D/2 channels from the angle table
freqs [S, D/2], transpose to [B, S, heads, D]; the backward is the same math's explicit gradient (as kiln computes it).
"""
import torch
from common import time_us


def _split(qkv, H, h):
    S, B, width = qkv.shape
    D = width // (H + 2 * h)
    x = qkv.view(S, B, h, H // h + 2, D)
    return x[:, :, :, : H // h].reshape(S, B, H, D), x[:, :, :, H // h], x[:, :, :, H // h + 1], D


def _norm_rope(t, w, cos, sin, eps):
    D = t.shape[-1]
    R, Q = D // 2, D // 4
    tf = t.float()
    n = tf * torch.rsqrt(tf.pow(2).mean(-1, keepdim=True) + eps) * w.float()
    a = n[..., :R]
    rot = torch.cat([-a[..., Q:], a[..., :Q]], dim=-1)
    return torch.cat([a * cos + rot * sin, n[..., R:]], dim=-1)


def fwd(qkv, wq, wk, freqs, H, h, eps=1e-6):
    q, k, v, D = _split(qkv, H, h)
    cos, sin = freqs.cos()[:, None, None, :], freqs.sin()[:, None, None, :]
    qo = _norm_rope(q, wq, cos, sin, eps).to(qkv.dtype).transpose(0, 1).contiguous()
    ko = _norm_rope(k, wk, cos, sin, eps).to(qkv.dtype).transpose(0, 1).contiguous()
    return qo, ko, v.transpose(0, 1).contiguous()


def _norm_rope_bwd(t, g, w, cos, sin, eps):
    D = t.shape[-1]
    R, Q = D // 2, D // 4
    tf, gf, wf = t.float(), g.float(), w.float()
    ga, gb = gf[..., :Q], gf[..., Q:R]
    gp = torch.cat([ga * cos[..., :Q] + gb * sin[..., Q:], gb * cos[..., Q:] - ga * sin[..., :Q], gf[..., R:]], dim=-1)
    r = torch.rsqrt(tf.pow(2).mean(-1, keepdim=True) + eps)
    dot = (tf * gp * wf).sum(-1, keepdim=True)
    dt = r * gp * wf - r.pow(3) * tf * dot / D
    dw = (tf * r * gp).reshape(-1, D).sum(0)
    return dt.to(t.dtype), dw


def bwd(gq, gk, gv, qkv, wq, wk, freqs, H, h, eps=1e-6):
    q, k, _, D = _split(qkv, H, h)
    S, B = qkv.shape[:2]
    cos, sin = freqs.cos()[:, None, None, :], freqs.sin()[:, None, None, :]
    dq, dwq = _norm_rope_bwd(q, gq.transpose(0, 1), wq, cos, sin, eps)
    dk, dwk = _norm_rope_bwd(k[:, :, :, None], gk.transpose(0, 1)[:, :, :, None], wk, cos[:, :, None], sin[:, :, None], eps)
    dqkv = torch.cat([dq.view(S, B, h, H // h, D), dk, gv.transpose(0, 1)[:, :, :, None]], dim=3)
    return dqkv.view(S, B, -1), dwq, dwk


def _freqs(S, D, device):
    j = torch.arange(D // 4, device=device, dtype=torch.float64)
    f = torch.arange(S, device=device, dtype=torch.float64)[:, None] * 10000.0 ** (-2.0 * j / (D // 2))
    return torch.cat([f, f], dim=-1).float()


def cases():
    rows = []
    S, B, D = 4096, 2, 128
    for H, h in [(16, 4), (32, 8)]:
        dev = "cuda"
        qkv = torch.randn(S, B, (H + 2 * h) * D, device=dev, dtype=torch.bfloat16)
        wq = 1 + 0.1 * torch.randn(D, device=dev, dtype=torch.bfloat16)
        wk = 1 + 0.1 * torch.randn(D, device=dev, dtype=torch.bfloat16)
        freqs = _freqs(S, D, dev)
        gq = 0.1 * torch.randn(B, S, H, D, device=dev, dtype=torch.bfloat16)
        gk = 0.1 * torch.randn(B, S, h, D, device=dev, dtype=torch.bfloat16)
        gv = 0.1 * torch.randn(B, S, h, D, device=dev, dtype=torch.bfloat16)
        shape = f"S={S} B={B} H={H} h={h} D={D}"
        # dynamic=False: the second shape must not turn the first compile into a dynamic-shape kernel.
        cf, cb = torch.compile(fwd, dynamic=False), torch.compile(bwd, dynamic=False)
        rows.append(dict(op="qk_norm_half_rope_fwd", shape=shape,
                         eager_us=time_us(lambda: fwd(qkv, wq, wk, freqs, H, h)),
                         compile_us=time_us(lambda: cf(qkv, wq, wk, freqs, H, h))))
        rows.append(dict(op="qk_norm_half_rope_bwd", shape=shape,
                         eager_us=time_us(lambda: bwd(gq, gk, gv, qkv, wq, wk, freqs, H, h)),
                         compile_us=time_us(lambda: cb(gq, gk, gv, qkv, wq, wk, freqs, H, h))))
    return rows
