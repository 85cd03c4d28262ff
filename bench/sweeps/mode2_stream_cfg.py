#!/usr/bin/env python3
"""A tuning file naming mode-2 stream configs for an in-process A/B (sessions 14–15, helpers q2f / q2g): one entry a
(N, round_scale, prefetch) at distinct token counts, so that `kiln prewarm --tuning FILE --jobs N` compiles them all
in parallel before the sweep (tests/gpu/rms_norm_block_quant_stream_measure_test.cpp) finds them in the cache.
Every entry: two blocks an item, 4 slots, overlap 19203, exchange 3.
  mode2_stream_cfg.py OUT N[,N…] ROUND_SCALE[,ROUND_SCALE…] PREFETCH …
  e.g. mode2_stream_cfg.py cfg.json 4096,7168 1 17 526353 786449"""
import json
import sys

if len(sys.argv) < 5:
    sys.exit(__doc__)
out = sys.argv[1]
ns, rss = ([int(v) for v in a.split(",")] for a in sys.argv[2:4])
pfs = [int(v) for v in sys.argv[4:]]
entries, tok = [], 2
for n in ns:
    for pf in pfs:
        for rs in rss:
            entries.append({"family": "rms_norm_block_quant", "kernel": "tile", "arch": "sm_90a",
                            "params": {"N": n, "mode": 2, "round_scale": rs, "w_f32": 0}, "tokens": tok,
                            "config": {"warps": 16, "col_blocks": 2, "prefetch": pf, "stages": 4, "overlap": 19203,
                                       "exchange": 3},
                            "median_us": 1.0, "default_us": 1.0,
                            "provenance": {"gpu": "forced", "sm_count": 0, "driver": "", "cuda": "", "nvrtc": "",
                                           "kiln_version": "", "date": "", "host": ""}})
            tok *= 2
json.dump({"schema": "kiln-tuning", "version": 1, "entries": entries}, open(out, "w"), indent=1)
print(f"{out}: {len(entries)} entries")
