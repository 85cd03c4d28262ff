#!/usr/bin/env python3
"""Writes a one-entry tuning file that forces a config for one specialization (bench/NOTES.md forced-config sweeps).

  forced_config.py BASE FAMILY KERNEL TOKENS PARAMS SET OUT
    BASE    a tuning file holding an entry of that (family, kernel, params, tokens) — its template; '-': none
            (PARAMS then names every param of the specialization and SET every config field)
    PARAMS  k=v,… selecting the entry's params (e.g. N=2048,mode=0,round_scale=1)
    SET     k=v,… config fields to override (e.g. warps=16,overlap=1)
Then `KILN_TUNING_DB=OUT kiln bench --filter …` times that config in the bench case of that shape (the tuning file
is only consulted for that specialization; every other op runs its heuristic default).
"""
import json
import sys


def kv(s):
    return {k: int(v) for k, v in (p.split("=") for p in s.split(",") if p)}


base, family, kernel, tokens, params, changes, out = sys.argv[1:8]
want = kv(params)
if base == "-":
    # No template: an entry built from PARAMS (all of the specialization's params) and SET (the config fields the
    # family has; unset ones 0), for sm_90a.
    e = {"family": family, "kernel": kernel, "arch": "sm_90a", "params": want, "tokens": int(tokens),
         "config": kv(changes), "median_us": 1.0, "default_us": 1.0,
         "provenance": {"gpu": "forced", "sm_count": 0, "driver": "", "cuda": "", "nvrtc": "", "kiln_version": "",
                        "date": "", "host": ""}}
    json.dump({"schema": "kiln-tuning", "version": 1, "entries": [e]}, open(out, "w"), indent=1)
    print(f"{out}: {family} {kernel} {want} tokens {tokens} config {e['config']}")
    sys.exit(0)
doc = json.load(open(base))
for e in doc["entries"]:
    if (e["family"] == family and e["kernel"] == kernel and e["tokens"] == int(tokens)
            and all(e["params"].get(k) == v for k, v in want.items())):
        e = json.loads(json.dumps(e))
        e["config"].update(kv(changes))
        doc["entries"] = [e]
        json.dump(doc, open(out, "w"), indent=1)
        print(f"{out}: {family} {kernel} {e['params']} tokens {tokens} config {e['config']}")
        sys.exit(0)
sys.exit(f"no entry {family} {kernel} {want} tokens {tokens} in {base}")
