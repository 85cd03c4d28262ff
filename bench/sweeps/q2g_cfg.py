#!/usr/bin/env python3
"""Session 15 (helper q2g): a tuning file naming the mode-2 stream configs of the round's A/B (one entry a config, at
distinct token counts), so that `kiln prewarm --tuning FILE --jobs N` compiles them in parallel before the in-process
sweep (tests/gpu/rms_norm_block_quant_stream_measure_test.cpp) finds them in the cache.
  q2g_cfg.py OUT N[,N…] PREFETCH …     (round_scale 1, overlap 19203, two blocks an item, 4 slots)"""
import json
import sys

out, ns, pfs = sys.argv[1], [int(v) for v in sys.argv[2].split(",")], [int(v) for v in sys.argv[3:]]
entries, tok = [], 2
for n in ns:
    for pf in pfs:
        entries.append({"family": "rms_norm_block_quant", "kernel": "tile", "arch": "sm_90a",
                        "params": {"N": n, "mode": 2, "round_scale": 1, "w_f32": 0}, "tokens": tok,
                        "config": {"warps": 16, "col_blocks": 2, "prefetch": pf, "stages": 4, "overlap": 19203,
                                   "exchange": 3},
                        "median_us": 1.0, "default_us": 1.0,
                        "provenance": {"gpu": "forced", "sm_count": 0, "driver": "", "cuda": "", "nvrtc": "",
                                       "kiln_version": "", "date": "", "host": ""}})
        tok *= 2
json.dump({"schema": "kiln-tuning", "version": 1, "entries": entries}, open(out, "w"), indent=1)
print(f"{out}: {len(entries)} entries")
