#!/usr/bin/env python3
"""Prints the candidate table of a `kiln tune --json` output: one line per measured config, fastest first."""
import json
import sys

for path in sys.argv[1:]:
    with open(path) as f:
        j = json.load(f)
    for r in j["results"]:
        print(f"== {r['family']} {r['specialization'].split(' |')[0]} tokens={r['tokens']}: "
              f"default {r['default_us']:.2f} µs, best {r['best_us']:.2f} µs with {r['config']}")
        for c in sorted(r["candidates"], key=lambda c: (c["us"] <= 0, c["us"])):
            mark = " (default)" if c["default"] else ""
            print(f"   {c['us']:8.2f}  {c['config']}{mark}  {c['status'] if c['status'] != 'ok' else ''}")
