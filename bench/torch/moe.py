"""PyTorch baselines for the MoE families: top-k routing (fwd, bwd), the padded row-id map, permute, unpermute.
Same math and shapes as ops/bench/moe.cpp (8192 tokens, 256 experts, top-8, hidden 2048, Ling-mini-2.0 routing:
sigmoid, 8 groups / 4 kept, bias, renormalized, x2.5; padded to 16)."""
import sys

import torch
from common import time_us

T, E, K, H, P = 8192, 256, 8, 2048, 16
G, TG, SCALE = 8, 4, 2.5
SHAPE = f"T={T} E={E} k={K}"


def route(z, bias):
    s = torch.sigmoid(z)
    key = s + bias
    gs = key.view(T, G, E // G).topk(2, dim=-1).values.sum(-1)
    keep = torch.zeros_like(gs).scatter_(1, gs.topk(TG, dim=-1).indices, 1.0)
    key = key.masked_fill(keep.repeat_interleave(E // G, dim=1) == 0, float("-inf"))
    idx = key.topk(K, dim=-1).indices
    w = s.gather(1, idx)
    w = w / (w.sum(-1, keepdim=True) + 1e-20) * SCALE
    probs = torch.zeros_like(z).scatter_(1, idx, w)
    rmap = torch.zeros_like(z, dtype=torch.bool).scatter_(1, idx, True)
    return probs, rmap, rmap.sum(0, dtype=torch.int32)


def row_id_map(rmap):
    m = rmap.int()
    counts = m.sum(0)
    padded = (counts + P - 1) // P * P
    offsets = torch.cumsum(padded, 0) - padded
    rank = torch.cumsum(m, 0) - m
    rows = torch.where(rmap, rank + offsets, torch.full_like(rank, -1))
    return rows, counts, padded, offsets


def routing_bwd(g, z, rmap):
    s = torch.sigmoid(z)
    sel = rmap.float()
    d = (s * sel).sum(-1, keepdim=True) + 1e-20
    c = (g * s * sel).sum(-1, keepdim=True)
    ds = sel * SCALE / d * (g - c / d)
    return ds * s * (1 - s)


def compiled_us(fn, *args):
    """torch.compile timing, or NaN (with a note on stderr) when inductor cannot compile the function."""
    try:
        c = torch.compile(fn)
        return time_us(lambda: c(*args))
    except Exception as e:  # an inductor failure must not hide the other rows
        print(f"moe.py: torch.compile of {fn.__name__} failed: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
        return float("nan")


def cases():
    rows = []
    z = torch.randn(T, E, device="cuda")
    bias = torch.randn(E, device="cuda") * 0.02
    rows.append(dict(op="moe_topk_routing_fwd", shape=SHAPE + " sigmoid groups=8/4 bias",
                     eager_us=time_us(lambda: route(z, bias)), compile_us=compiled_us(route, z, bias)))

    def route_map(z, bias):
        probs, rmap, counts = route(z, bias)
        return probs, rmap, counts, row_id_map(rmap)
    rows.append(dict(op="moe_topk_routing_fwd", shape=SHAPE + " sigmoid groups=8/4 bias map P=16",
                     eager_us=time_us(lambda: route_map(z, bias)), compile_us=compiled_us(route_map, z, bias)))

    probs, rmap, _ = route(z, bias)
    g = torch.randn(T, E, device="cuda")
    rows.append(dict(op="moe_topk_routing_bwd", shape=SHAPE + " sigmoid renorm",
                     eager_us=time_us(lambda: routing_bwd(g, z, rmap)), compile_us=compiled_us(routing_bwd, g, z, rmap)))
    rows.append(dict(op="moe_make_row_id_map", shape=SHAPE + " P=16",
                     eager_us=time_us(lambda: row_id_map(rmap)), compile_us=compiled_us(row_id_map, rmap)))

    rid, counts, padded, offsets = row_id_map(rmap)
    num_out = int(padded.sum())
    tok, exp = rmap.nonzero(as_tuple=True)            # routed (token, expert) pairs
    dst = rid[tok, exp]

    def permute(x, scale, probs):
        out = torch.zeros(num_out, x.shape[1], dtype=x.dtype, device=x.device)
        out.index_copy_(0, dst, x.index_select(0, tok))
        pout = torch.zeros(num_out, device=x.device)
        pout.index_copy_(0, dst, probs[tok, exp])
        if scale is None:
            return out, pout
        sout = torch.full((scale.shape[0], num_out), 1e-30, device=x.device)
        sout.index_copy_(1, dst, scale.index_select(1, tok))
        return out, pout, sout
    x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16)
    rows.append(dict(op="moe_permute", shape=SHAPE + " H=2048 P=16 bf16 probs",
                     eager_us=time_us(lambda: permute(x, None, probs)), compile_us=compiled_us(permute, x, None, probs)))
    x8 = torch.randint(1, 120, (T, H), device="cuda", dtype=torch.uint8)  # fp8 bytes
    sc = torch.rand(H // 128, T, device="cuda")
    rows.append(dict(op="moe_permute", shape=SHAPE + " H=2048 P=16 fp8 m_major_scales probs",
                     eager_us=time_us(lambda: permute(x8, sc, probs)), compile_us=compiled_us(permute, x8, sc, probs)))

    def unpermute(y, w):
        out = torch.zeros(T, H, device=y.device)
        out.index_add_(0, tok, y.index_select(0, dst).float() * w.index_select(0, dst)[:, None])
        restore = torch.zeros(T, E, device=y.device)
        restore[tok, exp] = w[dst]
        return out.to(torch.bfloat16), restore
    y = torch.randn(num_out, H, device="cuda", dtype=torch.bfloat16)
    w = torch.rand(num_out, device="cuda")
    rows.append(dict(op="moe_unpermute", shape=SHAPE + " H=2048 P=16 bf16 weighted restore",
                     eager_us=time_us(lambda: unpermute(y, w)), compile_us=compiled_us(unpermute, y, w)))
    return rows
