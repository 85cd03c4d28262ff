"""Shared timing for the PyTorch baselines: CUDA events, L2 flushed before every timed call by reading a 256 MB
buffer, median of 30 after warm-up (the way `kiln bench` times)."""
import statistics
import torch

_FLUSH = None


def time_us(fn, repeats=30, warmup=5):
    global _FLUSH
    if _FLUSH is None:
        _FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        _FLUSH.sum(dtype=torch.int32)  # a read: no dirty lines left for the timed call
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize()
        out.append(a.elapsed_time(b) * 1e3)
    return statistics.median(out)


def row(op, shape, eager_fn, compiled_fn):
    """One result row: the same math eager and under torch.compile (shape string as kiln bench prints it)."""
    return dict(op=op, shape=shape, eager_us=time_us(eager_fn), compile_us=time_us(compiled_fn))
