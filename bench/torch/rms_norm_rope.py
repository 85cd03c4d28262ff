"""PyTorch baselines for fused RMSNorm + RoPE (rms_norm_rope_fwd / rms_norm_rope_bwd): the same math as kiln's
kernels (fp32 inside, norm over the whole hidden dim, rotate-half RoPE per head from the first D/2 table columns),
eager and torch.compile, at the bench shape x [2, 4096, 2048], D = 128, bf16."""
import torch
from common import row


def _rot(t, c, s):
    h = t.shape[-1] // 2
    a, b = t[..., :h], t[..., h:]
    return torch.cat([a * c - b * s, a * s + b * c], dim=-1)


def _tables(cos, sin, D):
    h = D // 2
    return cos[:, :h].float()[None, :, None, :], sin[:, :h].float()[None, :, None, :]


def rms_norm_rope_fwd(x, w, cos, sin, eps=1e-6):
    B, S, Hd = x.shape
    D = cos.shape[-1]
    xf = x.float()
    r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    n = (xf * r * w.float()).view(B, S, Hd // D, D)
    c, s = _tables(cos, sin, D)
    return _rot(n, c, s).reshape(B, S, Hd).to(x.dtype)


def rms_norm_rope_bwd(dy, x, w, cos, sin, eps=1e-6):
    B, S, Hd = x.shape
    D = cos.shape[-1]
    c, s = _tables(cos, sin, D)
    gn = _rot(dy.float().view(B, S, Hd // D, D), c, -s).reshape(B, S, Hd)  # the adjoint: rotation by −θ
    xf, wf = x.float(), w.float()
    r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    p = (xf * wf * gn).sum(-1, keepdim=True)
    dx = r * wf * gn - r.pow(3) * xf * p / Hd
    dw = (xf * r * gn).sum((0, 1))
    return dx.to(x.dtype), dw


def cases():
    B, S, Hd, D = 2, 4096, 2048, 128
    dev, dt = "cuda", torch.bfloat16
    x = torch.randn(B, S, Hd, device=dev, dtype=dt)
    dy = torch.randn(B, S, Hd, device=dev, dtype=dt)
    w = torch.randn(Hd, device=dev, dtype=dt) * 0.5
    cos = torch.randn(S, D, device=dev, dtype=dt)
    sin = torch.randn(S, D, device=dev, dtype=dt)
    shape = f"B={B} S={S} Hd={Hd} D={D} bf16"
    cf, cb = torch.compile(rms_norm_rope_fwd), torch.compile(rms_norm_rope_bwd)
    return [
        row("rms_norm_rope_fwd", shape, lambda: rms_norm_rope_fwd(x, w, cos, sin), lambda: cf(x, w, cos, sin)),
        row("rms_norm_rope_bwd", shape, lambda: rms_norm_rope_bwd(dy, x, w, cos, sin),
            lambda: cb(dy, x, w, cos, sin)),
    ]
