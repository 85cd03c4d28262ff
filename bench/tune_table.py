#!/usr/bin/env python3
"""Prints the candidate table of a `kiln tune --json` result (stdin or a file): per specialization and token count,
every candidate config with its µs and status, fastest first. Used by GPU rounds to report whole sweeps compactly."""
import json
import sys

text = open(sys.argv[1]).read() if len(sys.argv) > 1 else sys.stdin.read()
text = text[text.index("{"):]  # skip anything printed before the JSON object
doc = json.loads(text)
for r in doc.get("results", []):
    head = {k: v for k, v in r.items() if k not in ("candidates",)}
    print("==", json.dumps(head, ensure_ascii=False))
    for c in sorted(r.get("candidates", []), key=lambda c: (c.get("us") or 1e30)):
        mark = " (default)" if c.get("default") else ""
        print(f"  {c.get('us') or 0:9.2f} us  {c.get('config')}{mark}  {c.get('status')}")
