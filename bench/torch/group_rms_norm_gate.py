"""PyTorch baselines for group RMSNorm x sigmoid gate (group_rms_norm_gate_fwd / _bwd): the same math as kiln's
kernels (fp32 inside; x [B, S, dim] normalized per group of dim/G channels, times weight and sigmoid(gate); gate and
out [S, B, dim] when transpose), eager and torch.compile, at B = 2, S = 4096, dim = 2048, G = 4, bf16."""
import torch
from common import row


def _gate_layout(t, transpose):  # [S, B, dim] <-> [B, S, dim]
    return t.transpose(0, 1) if transpose else t


def fwd(x, gate, w, G, transpose, eps=1e-6):
    B, S, dim = x.shape
    xf = x.float().view(B, S, G, dim // G)
    r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    wf = w.float().view(-1, dim // G) if w.numel() != dim else w.float().view(G, dim // G)
    n = (xf * r * wf).view(B, S, dim)
    out = n * torch.sigmoid(_gate_layout(gate, transpose).float())
    return _gate_layout(out, transpose).contiguous().to(x.dtype)


def bwd(dy, x, gate, w, G, transpose, eps=1e-6):
    B, S, dim = x.shape
    d = dim // G
    xf = x.float().view(B, S, G, d)
    sg = torch.sigmoid(_gate_layout(gate, transpose).float()).view(B, S, G, d)
    dyf = _gate_layout(dy, transpose).float().view(B, S, G, d)
    shared = w.numel() != dim
    wf = w.float().view(1, d) if shared else w.float().view(G, d)
    r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    t = dyf * wf * sg
    q = (xf * t).sum(-1, keepdim=True)
    dx = (r * t - r.pow(3) * xf * q / d).view(B, S, dim)
    dgate = (xf * r * t * (1 - sg)).view(B, S, dim)
    dw = (xf * r * dyf * sg).sum((0, 1))
    dw = dw.sum(0) if shared else dw.reshape(dim)
    return dx.to(x.dtype), _gate_layout(dgate, transpose).contiguous().to(x.dtype), dw


def cases():
    B, S, dim, G = 2, 4096, 2048, 4
    dev, dt = "cuda", torch.bfloat16
    rows = []
    for transpose, shared in ((True, False), (False, True)):
        x = torch.randn(B, S, dim, device=dev, dtype=dt)
        gshape = (S, B, dim) if transpose else (B, S, dim)
        gate = torch.randn(*gshape, device=dev, dtype=dt) * 2
        dy = torch.randn(*gshape, device=dev, dtype=dt)
        w = torch.randn(dim // G if shared else dim, device=dev, dtype=dt) * 0.5
        shape = f"B={B} S={S} dim={dim} G={G} bf16 transpose={int(transpose)}" + (" shared_w=1" if shared else "")
        cf, cb = torch.compile(fwd), torch.compile(bwd)
        rows.append(row("group_rms_norm_gate_fwd", shape, lambda: fwd(x, gate, w, G, transpose),
                        lambda: cf(x, gate, w, G, transpose)))
        rows.append(row("group_rms_norm_gate_bwd", shape, lambda: bwd(dy, x, gate, w, G, transpose),
                        lambda: cb(dy, x, gate, w, G, transpose)))
    return rows
