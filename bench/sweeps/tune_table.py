#!/usr/bin/env python3
"""Prints every candidate of a `kiln tune --json` run, fastest first per specialization (bench/NOTES.md sweeps)."""
import json
import sys

doc = json.load(open(sys.argv[1]))
for r in doc["results"]:
    name = " ".join(f"{k}={v}" for k, v in r.items() if k not in ("candidates",) and not isinstance(v, (list, dict)))
    print(name)
    cands = sorted(r.get("candidates", []), key=lambda c: (c["us"] <= 0, c["us"]))
    for c in cands:
        mark = " (default)" if c.get("default") else ""
        print(f"  {c['us']:9.2f}  {c['config']}{mark}  {c['status'] if c['status'] != 'ok' else ''}")
