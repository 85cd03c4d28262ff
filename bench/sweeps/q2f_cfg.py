#!/usr/bin/env python3
"""Session 14 (helper q2f): a tuning file naming the mode-2 stream configs of the L2-hint A/B (one entry a config, at
distinct token counts), so that `kiln prewarm --tuning FILE --jobs N` compiles them all in parallel before the
in-process sweep (tests/gpu/rms_norm_block_quant_stream_measure_test.cpp) finds them in the cache.
  q2f_cfg.py OUT [PREFETCH …]     (default prefetch values: 1 5 9 17 33 65 129 257 = the default, the five hint bits, PFS1, PFS2 and PFS1's control)"""
import json
import sys

out = sys.argv[1]
pfs = [int(v) for v in sys.argv[2:]] or [1, 17, 65]
entries, tok = [], 2
for n in (2048, 4096, 7168):
    for pf in pfs:
      for rs in (1, 0):
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
